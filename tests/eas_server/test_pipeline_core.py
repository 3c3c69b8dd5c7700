"""eas_server.pipeline without a server: spec validation, bundle checks, encoding (padding,
truncation, pairs), decoding of every task, BIO merging with offsets, evaluation. The models are
run with onnxruntime in-process (tests/eas_server/bundles.py builds them)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from pydantic import ValidationError

from eas_server import InvalidInput, ModelLoadError, ProcessorError
from eas_server.pipeline import (
    Bundle,
    BundleError,
    Example,
    ExamplesError,
    PipelineSpec,
    RunFn,
    evaluate,
    inspect_bundle,
    is_bundle,
    load_bundle,
    merge_bio,
    read_bundle,
    read_examples,
)
from eas_server.processors import TensorSpec

from .bundles import (
    CLASSIFY_EXAMPLES,
    CLASSIFY_LABELS,
    EMBED_DIM,
    KEYWORD_LOGIT,
    SLOT_EXAMPLES,
    VOCAB,
    make_bundle,
    write_examples,
)


def _runner(bundle: Bundle) -> RunFn:
    session = ort.InferenceSession(str(bundle.model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(feeds: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        return dict(zip(names, session.run(names, feeds), strict=True))

    return run


def _tokens(bundle: Bundle, ids: np.ndarray) -> list[str | None]:
    return [bundle.tokenizer.id_to_token(int(i)) for i in ids]


# -- the spec ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"task": "translate"}, "task"),
        ({"task": "classify", "inputs": ["a", "b", "c"]}, "1 text input, or 2 for pairs"),
        ({"task": "classify", "inputs": ["a", "a"]}, "distinct"),
        ({"task": "classify", "inputs": ["has space"]}, "is not valid"),
        ({"task": "classify", "inputs": ["label"]}, "clash with the classify outputs"),
        ({"task": "classify", "labels": None}, "needs a label list"),
        ({"task": "slots", "inputs": ["a", "b"]}, "exactly one input"),
        ({"task": "score", "truncation": "only_second"}, "needs two inputs"),
        ({"task": "score", "top_k": 3, "labels": None}, "top_k applies to task 'classify'"),
        ({"task": "classify", "pooling": "mean"}, "pooling applies to task 'embed'"),
        ({"task": "classify", "model": "/etc/passwd"}, "inside the bundle"),
        ({"task": "classify", "tokenizer": "../tok.json"}, "inside the bundle"),
        ({"task": "classify", "max_length": 1}, "greater than or equal to 2"),
        ({"task": "score", "threshold": 1.5}, "less than or equal to 1"),
        ({"task": "classify", "schema_version": 2}, "schema_version"),
        ({"task": "classify", "lables": "x.txt"}, "Extra inputs are not permitted"),
    ],
)
def test_spec_refuses_what_it_cannot_serve(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PipelineSpec.model_validate(doc)


def test_spec_defaults() -> None:
    spec = PipelineSpec(task="classify")
    assert spec.inputs == ("text",) and spec.max_length == 128 and spec.labels == "labels.txt"
    assert spec.labelled and not PipelineSpec(task="embed", labels=None).labelled


# -- loading and checking ---------------------------------------------------------------------


def _bundle_error(path: Path, **kwargs: Any) -> str:
    with pytest.raises(BundleError) as info:
        inspect_bundle(path, **kwargs)
    assert isinstance(info.value, ModelLoadError)  # the server's start-up error
    return str(info.value)


def test_bad_bundles_say_what_is_wrong(tmp_path: Path) -> None:
    assert "has no pipeline.json" in _bundle_error(tmp_path)
    assert "not a directory" in _bundle_error(tmp_path / "nowhere")

    bad_json = make_bundle(tmp_path, name="bad_json")
    (bad_json / "pipeline.json").write_text("{not json")
    assert "is not a valid pipeline spec" in _bundle_error(bad_json)

    bad_spec = make_bundle(tmp_path, name="bad_spec", spec={"task": "classify", "top_k": 0})
    message = _bundle_error(bad_spec)
    assert "top_k" in message and "greater than or equal to 1" in message

    no_tok = make_bundle(tmp_path, name="no_tok", omit=("tokenizer.json",))
    assert "the bundle has no tokenizer" in _bundle_error(no_tok)

    bad_tok = make_bundle(tmp_path, name="bad_tok")
    (bad_tok / "tokenizer.json").write_text('{"version": "1.0"}')
    assert "is not a Hugging Face tokenizer.json" in _bundle_error(bad_tok)

    no_labels = make_bundle(tmp_path, name="no_labels", omit=("labels.txt",))
    assert "needs a label list" in _bundle_error(no_labels)

    no_model = make_bundle(tmp_path, name="no_model", omit=("model.onnx",))
    assert "the bundle has no model" in _bundle_error(no_model)

    not_onnx = make_bundle(tmp_path, name="not_onnx")
    (not_onnx / "model.onnx").write_text("hello")
    assert "is not an ONNX model" in _bundle_error(not_onnx)

    (tmp_path / "dir_model").mkdir()
    dir_model = make_bundle(tmp_path, name="dir_model2", model="sub")
    (dir_model / "sub").mkdir()
    assert "a directory without blade.json" in _bundle_error(dir_model)

    short = make_bundle(tmp_path, name="short", max_length=2)
    assert "leaves no room for text" in _bundle_error(short)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("a\n\nb\n", "line 2 is blank"),
        ("a\nb\na\n", "lists 'a' twice (lines 1 and 3)"),
        ("only\n", "a classifier needs at least 2"),
    ],
)
def test_label_lists_are_checked(tmp_path: Path, labels: str, message: str) -> None:
    root = make_bundle(tmp_path)
    (root / "labels.txt").write_text(labels)
    assert message in _bundle_error(root)


def test_slot_labels_must_be_bio(tmp_path: Path) -> None:
    root = make_bundle(tmp_path, "slots")
    (root / "labels.txt").write_text("O\nB-room\nroom\nB-device\n")
    assert "line 3: 'room' is not a BIO tag" in _bundle_error(root)


def test_label_list_must_match_the_head(tmp_path: Path) -> None:
    wide = make_bundle(tmp_path, name="wide", head_width=4)
    message = _bundle_error(wide)
    assert "labels.txt lists 3 labels but the head 'logits' has 4" in message
    slots = make_bundle(tmp_path, "slots", head_width=3)
    assert "lists 4 labels but the head 'logits' has 3" in _bundle_error(slots)
    score = make_bundle(tmp_path, "score", head_width=3)
    assert "expected [batch], [batch, 1]" in _bundle_error(score)
    embed = make_bundle(tmp_path, "embed", pooling="mean", name="embed_none")
    (embed / "pipeline.json").write_text(json.dumps({"task": "embed", "labels": None}))
    assert "with pooling 'none' expected [batch, dim]" in _bundle_error(embed)
    top = make_bundle(tmp_path, name="top", top_k=4)
    assert "top_k 4 is more than the 3 labels" in _bundle_error(top)
    named = make_bundle(tmp_path, name="named", output="probs")
    assert "names output 'probs', but the model" in _bundle_error(named)


def test_model_inputs_a_pipeline_cannot_feed(tmp_path: Path) -> None:
    root = make_bundle(tmp_path)
    with pytest.raises(BundleError, match=r"takes \['pixel_values'\]; a pipeline feeds"):
        load_bundle(root, model_inputs=["pixel_values"])


def test_load_checks_the_head_only_when_told(tmp_path: Path) -> None:
    root = make_bundle(tmp_path, head_width=4)
    bundle = load_bundle(root, model_inputs=["input_ids", "attention_mask"])
    assert bundle.model_outputs is None and is_bundle(root) and not is_bundle(tmp_path)
    with pytest.raises(BundleError, match="has 4"):
        load_bundle(root, model_outputs={"logits": (-1, 4)}, model_inputs=["input_ids"])
    unbound = read_bundle(root)
    with pytest.raises(BundleError, match="has 4"):
        unbound.bind(["input_ids"], {"logits": (-1, 4)})
    assert unbound.bind(["input_ids"], {"logits": (-1, -1)}).model_inputs == ("input_ids",)


def test_signature(tmp_path: Path) -> None:
    top = inspect_bundle(make_bundle(tmp_path, name="top", top_k=2))
    assert top.signature() == (
        [TensorSpec("text", "BYTES", (-1,))],
        [
            TensorSpec("label", "BYTES", (-1,)),
            TensorSpec("score", "FP32", (-1,)),
            TensorSpec("labels", "BYTES", (-1, 2)),
            TensorSpec("scores", "FP32", (-1, 2)),
        ],
    )
    pair = inspect_bundle(make_bundle(tmp_path, "score", inputs=("query", "answer")))
    assert pair.signature() == (
        [TensorSpec("query", "BYTES", (-1,)), TensorSpec("answer", "BYTES", (-1,))],
        [TensorSpec("score", "FP32", (-1,))],
    )
    embed = inspect_bundle(make_bundle(tmp_path, "embed", pooling="mean"))
    assert embed.signature()[1] == [TensorSpec("embedding", "FP32", (-1, EMBED_DIM))]
    slots = inspect_bundle(make_bundle(tmp_path, "slots"))
    assert slots.signature()[1] == [TensorSpec("slots", "BYTES", (-1,))]


# -- encoding ---------------------------------------------------------------------------------


def test_encode_pads_to_the_longest_row(tmp_path: Path) -> None:
    bundle = inspect_bundle(make_bundle(tmp_path))
    encoded = bundle.encode([["turn on the lights", "on", ""]])
    assert set(encoded.feeds) == {"input_ids", "attention_mask"}  # what the model takes
    ids, mask = encoded.feeds["input_ids"], encoded.feeds["attention_mask"]
    assert ids.dtype == np.int64 and ids.shape == (3, 6)
    assert encoded.lengths.tolist() == [6, 3, 2]
    assert _tokens(bundle, ids[0]) == ["[CLS]", "turn", "on", "the", "lights", "[SEP]"]
    assert (
        _tokens(bundle, ids[1])[:3] == ["[CLS]", "on", "[SEP]"] and ids[1, 3:].tolist() == [0] * 3
    )
    assert mask.tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]]
    assert encoded.special[1].tolist() == [True, False, True, True, True, True]
    assert bundle.encode([["on"]], pad_to=8).feeds["input_ids"].shape == (1, 8)
    assert bundle.encode([["turn on the lights"]], pad_to=2).feeds["input_ids"].shape == (1, 6)


def test_encode_truncates_to_max_length(tmp_path: Path) -> None:
    bundle = inspect_bundle(make_bundle(tmp_path, max_length=5))
    encoded = bundle.encode([["turn on the lights please", "on"]])
    assert encoded.feeds["input_ids"].shape == (2, 5)
    assert _tokens(bundle, encoded.feeds["input_ids"][0]) == [
        "[CLS]", "turn", "on", "the", "[SEP]",
    ]  # fmt: skip


def test_encode_pairs(tmp_path: Path) -> None:
    root = make_bundle(tmp_path, "score", inputs=("query", "answer"), token_type_ids=True)
    bundle = inspect_bundle(root)
    encoded = bundle.encode([["is it good", "yes"], ["yes", "no no"]])
    assert set(encoded.feeds) == {"input_ids", "attention_mask", "token_type_ids"}
    assert _tokens(bundle, encoded.feeds["input_ids"][0]) == [
        "[CLS]", "is", "it", "good", "[SEP]", "yes", "[SEP]",
    ]  # fmt: skip
    assert encoded.feeds["token_type_ids"].tolist() == [
        [0, 0, 0, 0, 0, 1, 1],
        [0, 0, 0, 1, 1, 1, 0],
    ]
    with pytest.raises(InvalidInput, match=r"same number of rows, got query: 2, answer: 1"):
        bundle.encode([["a", "b"], ["c"]])
    with pytest.raises(InvalidInput, match=r"expected 2 text column\(s\) \(query, answer\)"):
        bundle.encode([["a"]])
    with pytest.raises(InvalidInput, match="input 'answer' row 0: expected text, got bytes"):
        bundle.encode([["a"], [b"b"]])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("strategy", "first", "second"),
    [("longest_first", 3, 2), ("only_first", 1, 4), ("only_second", 5, 0)],
)
def test_pair_truncation_strategies(tmp_path: Path, strategy: str, first: int, second: int) -> None:
    root = make_bundle(
        tmp_path,
        "score",
        inputs=("query", "answer"),
        token_type_ids=True,
        truncation=strategy,
        max_length=8,
    )
    bundle = inspect_bundle(root)
    if second == 0:  # only_second: the answer alone must absorb the cut
        with pytest.raises(InvalidInput, match="cannot tokenize the text: Truncation error"):
            bundle.encode([["a a a a a"], ["b b b b"]])  # 5 + 4 + 3 specials: cut 4 of 4
        first, second = 3, 2
        encoded = bundle.encode([["a a a"], ["b b b b b b"]])
    else:
        encoded = bundle.encode([["a a a a a"], ["b b b b"]])
    tokens = _tokens(bundle, encoded.feeds["input_ids"][0])
    assert len(tokens) == 8 and (tokens.count("a"), tokens.count("[UNK]")) == (first, second)
    assert encoded.feeds["token_type_ids"].tolist()[0].count(1) == second + 1


# -- decoding ---------------------------------------------------------------------------------


def test_classify_known_sentences_and_top_k(tmp_path: Path) -> None:
    bundle = inspect_bundle(make_bundle(tmp_path, top_k=2))
    texts = [t for t, _ in CLASSIFY_EXAMPLES] + ["on on off"]
    out = bundle.run([texts], _runner(bundle))
    assert [b.decode() for b in out["label"]] == [label for _, label in CLASSIFY_EXAMPLES] + [
        "lights_on"
    ]
    one = np.exp(KEYWORD_LOGIT) / (np.exp(KEYWORD_LOGIT) + 2)
    np.testing.assert_allclose(out["score"][0], one, rtol=1e-6)
    assert out["score"].dtype == np.float32 and out["labels"].shape == (5, 2)
    assert out["labels"][4].tolist() == [b"lights_on", b"lights_off"]
    probs = np.exp([8.0, 4.0, 0.0]) / np.exp([8.0, 4.0, 0.0]).sum()
    np.testing.assert_allclose(out["scores"][4], probs[:2], rtol=1e-6)


def test_score_single_logit_and_two_wide(tmp_path: Path) -> None:
    one = inspect_bundle(make_bundle(tmp_path, "score", inputs=("query", "answer")))
    out = one.run([["yes", "no", "a"], ["good", "a", "a"]], _runner(one))
    np.testing.assert_allclose(out["score"], 1 / (1 + np.exp(-np.array([4.5, -3.0, 0.0]))), 1e-6)
    two = inspect_bundle(make_bundle(tmp_path, "score", name="two", head_width=2))
    out = two.run([["yes", "bad"]], _runner(two))
    np.testing.assert_allclose(out["score"], np.exp([3.0, -1.5]) / (1 + np.exp([3.0, -1.5])), 1e-6)


@pytest.mark.parametrize("pooling", ["none", "mean", "cls"])
def test_embed_pooling_and_normalize(tmp_path: Path, pooling: str) -> None:
    bundle = inspect_bundle(make_bundle(tmp_path, "embed", pooling=pooling))
    run = _runner(bundle)
    batch = bundle.run([["turn on the lights", "on"]], run)["embedding"]
    alone = bundle.run([["on"]], run)["embedding"]
    assert batch.shape == (2, EMBED_DIM) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(batch[1], alone[0], rtol=1e-5, atol=1e-6)  # padding is masked
    if pooling == "cls":  # every row starts with [CLS]
        np.testing.assert_allclose(batch[0], batch[1], rtol=1e-6)
    raw = inspect_bundle(
        make_bundle(tmp_path, "embed", name="raw", pooling=pooling, normalize=False)
    )
    assert not np.allclose(np.linalg.norm(raw.run([["on"]], _runner(raw))["embedding"]), 1.0)


def test_slots_on_known_sentences(tmp_path: Path) -> None:
    bundle = inspect_bundle(make_bundle(tmp_path, "slots"))
    out = bundle.run([[text for text, _ in SLOT_EXAMPLES]], _runner(bundle))
    assert out["slots"].dtype == object
    for (text, expected), got in zip(SLOT_EXAMPLES, out["slots"], strict=True):
        spans = json.loads(got)
        assert spans == expected, text
        assert all(text[s["start"] : s["end"]] == s["value"] for s in spans)


def test_slots_over_word_pieces(tmp_path: Path) -> None:
    vocab = [t for t in VOCAB if t != "kitchen"]  # "kitchen" becomes kitch + ##en
    bundle = inspect_bundle(make_bundle(tmp_path, "slots", vocab=vocab))
    encoded = bundle.encode([["the kitchen lamp"]])
    assert _tokens(bundle, encoded.feeds["input_ids"][0])[2:4] == ["kitch", "##en"]
    out = bundle.run([["the kitchen lamp", "kitchen"]], _runner(bundle))
    assert json.loads(out["slots"][0]) == [
        {"slot": "room", "value": "kitchen", "start": 4, "end": 11},
        {"slot": "device", "value": "lamp", "start": 12, "end": 16},
    ]
    assert json.loads(out["slots"][1]) == [
        {"slot": "room", "value": "kitchen", "start": 0, "end": 7}
    ]


def test_merge_bio_rules() -> None:
    text = "aa bb cc dd"
    offsets = [(0, 2), (3, 5), (6, 8), (9, 11)]
    words = [0, 1, 2, 3]

    def spans(tags: list[str | None], w: Sequence[int | None] = words) -> list[tuple[str, str]]:
        return [(s.slot, s.value) for s in merge_bio(tags, w, offsets, text)]

    assert spans(["B-x", "I-x", "O", "B-x"]) == [("x", "aa bb"), ("x", "dd")]
    assert spans(["I-x", "I-x", "I-y", "O"]) == [("x", "aa bb"), ("y", "cc")]  # lenient I-
    assert spans(["B-x", "B-x", "I-x", "I-x"]) == [("x", "aa"), ("x", "bb cc dd")]
    assert spans(["B-x", None, "I-x", "O"]) == [("x", "aa"), ("x", "cc")]  # a special splits
    assert spans(["O", "O", "O", "O"]) == []
    # two pieces of one word: the second's tag is ignored, it only extends the span
    assert spans(["B-x", "O", "B-y", "O"], [0, 0, 1, 2]) == [("x", "aa bb"), ("y", "cc")]
    assert spans(["O", "B-x", "O", "O"], [0, 0, 1, 2]) == []


def test_decode_refuses_heads_that_do_not_fit(tmp_path: Path) -> None:
    bundle = inspect_bundle(make_bundle(tmp_path))
    encoded = bundle.encode([["on", "off"]])
    with pytest.raises(ProcessorError, match=r"shape \[2, 4\]; the classify task needs \[2, 3\]"):
        bundle.decode({"logits": np.zeros((2, 4), np.float32)}, encoded)
    with pytest.raises(ProcessorError, match="expected 2 rows first"):
        bundle.decode({"logits": np.zeros((1, 3), np.float32)}, encoded)
    with pytest.raises(ProcessorError, match="returned no output 'logits'"):
        bundle.decode({"other": np.zeros((2, 3), np.float32)}, encoded)


# -- evaluation -------------------------------------------------------------------------------


def test_evaluate_classify(tmp_path: Path) -> None:
    bundle = inspect_bundle(make_bundle(tmp_path))
    rows = [{"text": t, "label": label} for t, label in CLASSIFY_EXAMPLES]
    rows.append({"text": "turn the lights off", "label": "lights_on"})  # the model says off
    examples = read_examples(write_examples(tmp_path / "eval.jsonl", rows), bundle.spec)
    assert examples[0] == Example(("turn on the lights",), label="lights_on")
    score = evaluate(bundle, _runner(bundle), examples, batch_size=2)
    assert (score.metric, score.value, score.examples) == ("accuracy", 0.8, 5)
    with pytest.raises(ExamplesError, match=r"expects label 'lights_dim', which the bundle"):
        evaluate(bundle, _runner(bundle), [Example(("x",), label="lights_dim")])
    assert set(CLASSIFY_LABELS) == set(bundle.labels)


def test_evaluate_score_pairs(tmp_path: Path) -> None:
    root = make_bundle(tmp_path, "score", inputs=("query", "answer"), threshold=0.9)
    bundle = inspect_bundle(root)
    rows = [
        {"query": "is it", "answer": "yes", "label": 1},  # sigmoid(3) = 0.95
        {"query": "is it", "answer": "good", "label": 1},  # sigmoid(1.5) = 0.82 < 0.9
        {"query": "is it", "answer": "no", "label": False},
    ]
    examples = read_examples(write_examples(tmp_path / "e.jsonl", rows), bundle.spec)
    assert examples[2] == Example(("is it", "no"), label=0)
    score = evaluate(bundle, _runner(bundle), examples)
    assert score.metric == "accuracy" and score.value == pytest.approx(2 / 3)


def test_evaluate_slots_f1(tmp_path: Path) -> None:
    bundle = inspect_bundle(make_bundle(tmp_path, "slots"))
    rows: list[dict[str, Any]] = [
        {"text": "turn on the kitchen lights", "slots": [
            {"slot": "room", "value": "kitchen"}, {"slot": "device", "value": "lights"}]},
        {"text": "dim the living room lamp", "slots": [{"slot": "room", "value": "living"}]},
        {"text": "what is the weather", "slots": []},
    ]  # fmt: skip
    examples = read_examples(write_examples(tmp_path / "s.jsonl", rows), bundle.spec)
    score = evaluate(bundle, _runner(bundle), examples)
    # predicted 4 spans, expected 3, 2 shared: F1 = 2 * 2 / (4 + 3)
    assert score.metric == "slot_f1" and score.value == pytest.approx(4 / 7)
    nothing = evaluate(bundle, _runner(bundle), examples[2:])
    assert nothing.value == 1.0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2 is not JSON"),
        ('["a"]', "line 2: expected a JSON object"),
        ('{"label": "lights_on"}', "line 2: expected 'text' to be a string"),
        ('{"text": "a", "label": 3}', "line 2: expected 'label' to be a label name"),
    ],
)
def test_read_examples_errors(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text('{"text": "on", "label": "lights_on"}\n' + line + "\n")
    with pytest.raises(ExamplesError, match=message):
        read_examples(path, PipelineSpec(task="classify"))


def test_read_examples_per_task_errors(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text('{"text": "a", "label": 2}\n')
    with pytest.raises(ExamplesError, match="expected 'label' to be 0 or 1, got 2"):
        read_examples(path, PipelineSpec(task="score", labels=None))
    path.write_text('{"text": "a", "slots": [{"slot": "room"}]}\n')
    with pytest.raises(ExamplesError, match="each slot must be"):
        read_examples(path, PipelineSpec(task="slots"))
    with pytest.raises(ExamplesError, match="embed bundles have no task metric"):
        read_examples(path, PipelineSpec(task="embed", labels=None))
    path.write_text("\n\n")
    with pytest.raises(ExamplesError, match="holds no examples"):
        read_examples(path, PipelineSpec(task="slots"))
    with pytest.raises(ExamplesError, match="cannot read the evaluation set"):
        read_examples(tmp_path / "missing.jsonl", PipelineSpec(task="slots"))
