"""Text in, text out: Python strings for BYTES inputs, ``str`` back from BYTES outputs.

The conversion and the check (pure), the round trip through the real OIP codec (no server), and
``ModelClient`` / ``AsyncModelClient`` against a real eas-server running a string model in ONNX
Runtime, over JSON and binary."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from prometheus_client import CollectorRegistry

from autoai.sdk import AsyncModelClient, InvalidInput, ModelClient
from autoai.sdk._routes import Signature, TensorSpec
from autoai.sdk._signature import check_inputs
from autoai.sdk._strings import decode_outputs, string_inputs, to_arrays
from eas_client import decode_request, decode_response, encode_request, encode_response
from tests.eas_server.bundles import CLASSIFY_EXAMPLES, SLOT_EXAMPLES, make_bundle

from ._text_models import (
    MODEL,
    PIPELINE_SIGNATURES,
    Answers,
    TextFleet,
    route_table,
    slots,
    text_fleet,
)

TEXT = Signature(
    inputs=(TensorSpec("text", "BYTES", (-1,)),), outputs=(TensorSpec("label", "BYTES", (-1,)),)
)
PAIRS = Signature(inputs=(TensorSpec("pair", "BYTES", (-1, 2)),))
MIXED = Signature(inputs=(TensorSpec("text", "BYTES", (-1,)), TensorSpec("ids", "INT64", (-1, -1))))
FORMS = "str, a list of str, or a numpy str/bytes/object array"


def _arrays(signature: Signature, inputs: dict[str, Any]) -> dict[str, Any]:
    """What ``predict`` sends: the converted inputs, after the signature check."""
    arrays = dict(to_arrays(inputs, string_inputs(signature)))
    check_inputs(signature, arrays)
    return arrays


def _problems(signature: Signature, inputs: dict[str, Any]) -> tuple[str, ...]:
    with pytest.raises(InvalidInput) as info:
        _arrays(signature, inputs)
    return info.value.problems


# -- inputs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "texts", [["turn on the lights", "Café ☕"], ("a", "b")], ids=["list", "tuple"]
)
def test_a_list_of_str_is_an_object_array_of_the_same_str(texts: Any) -> None:
    text = _arrays(TEXT, {"text": texts})["text"]
    assert text.dtype == object and text.shape == (2,)
    assert text.tolist() == list(texts) and all(type(t) is str for t in text)


@pytest.mark.parametrize("one", ["turn on the lights", b"turn on the lights"], ids=["str", "bytes"])
def test_a_single_str_or_bytes_is_a_batch_of_one(one: str | bytes) -> None:
    text = _arrays(TEXT, {"text": one})["text"]
    assert text.shape == (1,) and text[0] == one


def test_nested_lists_fill_a_higher_rank() -> None:
    pair = _arrays(PAIRS, {"pair": [["what is it", "a lamp"], ["who", "me"]]})["pair"]
    assert pair.shape == (2, 2) and pair[1, 0] == "who"
    # one str is one element: shape [1, 1], which a pair input of width 2 refuses
    assert _problems(PAIRS, {"pair": "q"}) == (
        "input 'pair': dim 1 is 1 (shape [1, 1]), expected 2 (shape [-1, 2])",
    )


def test_an_empty_list_is_an_empty_batch() -> None:
    assert _arrays(TEXT, {"text": []})["text"].shape == (0,)


@pytest.mark.parametrize(
    "array",
    [np.array(["a", "é"]), np.array([b"a", b"b"]), np.array(["a", b"b"], dtype=object)],
    ids=["str_", "bytes_", "object"],
)
def test_numpy_text_arrays_are_passed_as_they_are(array: np.ndarray) -> None:
    assert _arrays(TEXT, {"text": array})["text"] is array


def test_models_without_text_inputs_get_the_callers_mapping_back() -> None:
    numeric = Signature(inputs=(TensorSpec("x", "FP32", (-1, 4)),))
    inputs = {"x": np.zeros((1, 4), np.float32)}
    assert to_arrays(inputs, string_inputs(numeric)) is inputs
    all_arrays = {"text": np.array(["a"], dtype=object)}
    assert to_arrays(all_arrays, string_inputs(TEXT)) is all_arrays  # nothing to convert


def test_text_and_numeric_inputs_together() -> None:
    arrays = _arrays(MIXED, {"text": ["a", "b"], "ids": np.zeros((2, 3), np.int64)})
    assert arrays["text"].tolist() == ["a", "b"]
    # a list for a numeric input is not converted: arrays are required there, as before
    assert _problems(MIXED, {"text": ["a"], "ids": [[1, 2]]}) == (
        "input 'ids': expected a numpy array, got list",
    )


def test_non_text_in_a_bytes_input_is_refused_naming_the_element() -> None:
    expected = "input 'text': element [1] is int 5; BYTES elements must be str or bytes"
    assert _problems(TEXT, {"text": ["a", 5]}) == (expected,)
    # the same for an object array, which the fast path of the check would otherwise pass
    assert _problems(TEXT, {"text": np.array(["a", 5], dtype=object)}) == (expected,)
    assert _problems(TEXT, {"text": np.array([None], dtype=object)}) == (
        "input 'text': element [0] is NoneType None; BYTES elements must be str or bytes",
    )


def test_ragged_pairs_are_refused_naming_the_element() -> None:
    (problem,) = _problems(PAIRS, {"pair": [["q", "a"], ["only one"]]})
    assert problem.startswith("input 'pair': rank 1 (shape [2]), expected rank 2")
    (problem,) = _problems(TEXT, {"text": [["nested"], ["list"]]})
    assert problem == "input 'text': rank 2 (shape [2, 1]), expected rank 1 (shape [-1])"
    (problem,) = _problems(TEXT, {"text": [["a", "b"], ["c"]]})  # ragged: an array of lists
    assert problem == (
        "input 'text': element [0] is list ['a', 'b']; BYTES elements must be str or bytes"
    )


def test_numbers_and_other_objects_for_a_bytes_input_say_what_text_looks_like() -> None:
    assert _problems(TEXT, {"text": np.array([1, 2])}) == (
        f"input 'text': datatype INT64, expected BYTES ({FORMS})",
    )
    assert _problems(TEXT, {"text": 7}) == (f"input 'text': expected {FORMS} for BYTES, got int",)
    assert _problems(TEXT, {"text": {"a": 1}}) == (
        f"input 'text': expected {FORMS} for BYTES, got dict",
    )


def test_every_problem_is_reported_at_once() -> None:
    problems = _problems(MIXED, {"text": ["a", 1.5], "extra": "x"})
    assert problems == (
        "input 'text': element [1] is float 1.5; BYTES elements must be str or bytes",
        "input 'ids': missing (expected INT64 [-1, -1])",
        "unknown input 'extra' (expected: text, ids)",
    )


def test_without_a_signature_text_is_converted_and_checked() -> None:
    anything = Signature()
    arrays = _arrays(anything, {"text": ["a", "b"], "one": "c", "x": np.ones(2)})
    assert arrays["text"].tolist() == ["a", "b"] and arrays["one"].tolist() == ["c"]
    with pytest.raises(InvalidInput) as info:
        _arrays(anything, {"text": ["a", 2]})
    assert info.value.problems == (
        "input 'text': element [1] is int 2; BYTES elements must be str or bytes",
    )


# -- outputs -----------------------------------------------------------------------------------


def test_bytes_outputs_are_decoded_to_str_in_their_shape() -> None:
    labels = np.array([[b"lights_on", "caf\xe9".encode()], [b"", b"x"]], dtype=object)
    scores = np.array([0.5, 0.25], np.float32)
    out = decode_outputs({"labels": labels, "score": scores})
    assert out["labels"].dtype == object and out["labels"].shape == (2, 2)
    assert out["labels"].tolist() == [["lights_on", "café"], ["", "x"]]
    assert out["score"] is scores


def test_an_output_with_any_element_not_utf8_stays_bytes_throughout() -> None:
    raw = np.array([b"ok", b"\xff\xfe"], dtype=object)
    assert decode_outputs({"blob": raw})["blob"] is raw


def test_empty_bytes_outputs_stay_empty() -> None:
    out = decode_outputs({"label": np.empty((0,), dtype=object)})
    assert out["label"].shape == (0,) and out["label"].dtype == object


# The default alphabet of st.text() has no surrogates: every value is encodable as UTF-8.
@given(st.lists(st.text(max_size=20), max_size=8), st.booleans())
@settings(max_examples=100, deadline=None)
def test_text_round_trips_through_the_codec(texts: list[str], binary: bool) -> None:
    arrays = _arrays(TEXT, {"text": texts})
    body, length = encode_request(arrays, binary_inputs=binary, binary_outputs=binary)
    received = decode_request(body, length).inputs[0].data  # what a server's model gets
    assert received.tolist() == [t.encode() for t in texts]
    body, length = encode_response(
        model_name=MODEL,
        model_version="1",
        request_id=None,
        outputs=[("echo", received)],
        binary=binary,
    )
    echo = decode_outputs(decode_response(body, length).outputs)["echo"]
    assert echo.tolist() == texts and echo.dtype == object


# -- a real server -----------------------------------------------------------------------------

LIGHTS = "turn on the lights in the kitchen"
MUSIC = "play some jazz"
FRENCH = "allume la lumière ☀"
V1 = Answers(
    labels={LIGHTS: "lights_on", MUSIC: "music", FRENCH: "lights_on"},
    slots={LIGHTS: slots(("room", "kitchen", 26, 33)), MUSIC: slots(("genre", "jazz", 10, 14))},
    scores={LIGHTS: 0.75, MUSIC: 0.5, FRENCH: 0.25},
)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TextFleet]:
    with text_fleet(tmp_path_factory.mktemp("textfleet")) as fleet:
        fleet.serve_answers("1", V1)
        yield fleet


@pytest.fixture
def published(fleet: TextFleet) -> TextFleet:
    fleet.publish(route_table([{"version": "1", "weight": 100}]))
    return fleet


def _check_answers(out: dict[str, np.ndarray], texts: list[str]) -> None:
    assert set(out) == {"echo", "label", "slots", "score"}
    for name in ("echo", "label", "slots"):
        assert out[name].dtype == object and all(type(v) is str for v in out[name]), name
    assert out["echo"].tolist() == texts  # the exact text, through UTF-8 both ways
    assert out["label"].tolist() == [V1.labels.get(t, "other") for t in texts]
    assert out["slots"].tolist() == [V1.slots.get(t, "[]") for t in texts]
    assert out["score"].tolist() == [V1.scores.get(t, 0.0) for t in texts]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_predict_takes_a_list_of_str_and_gives_str_back(published: TextFleet, binary: bool) -> None:
    texts = [LIGHTS, FRENCH, "something else", MUSIC]
    with ModelClient(published.url, registry=CollectorRegistry(), binary=binary) as client:
        _check_answers(client.predict(MODEL, {"text": texts}), texts)
        _check_answers(client.predict(MODEL, {"text": FRENCH}), [FRENCH])
        _check_answers(client.predict(MODEL, {"text": np.array(texts)}), texts)  # str_ array
        only = client.predict(MODEL, {"text": texts}, outputs=["label"])
        assert only["label"].tolist() == ["lights_on", "lights_on", "other", "music"]


def test_the_async_client_takes_and_gives_str_too(published: TextFleet) -> None:
    texts = [MUSIC, FRENCH]

    async def main() -> dict[str, np.ndarray]:
        async with AsyncModelClient(published.url, registry=CollectorRegistry()) as client:
            return await client.predict(MODEL, {"text": texts})

    _check_answers(asyncio.run(main()), texts)


def test_decode_bytes_false_gives_the_bytes_as_sent(published: TextFleet) -> None:
    with ModelClient(published.url, registry=CollectorRegistry(), decode_bytes=False) as client:
        out = client.predict(MODEL, {"text": [FRENCH]})
    assert out["echo"].tolist() == [FRENCH.encode()] and out["label"].tolist() == [b"lights_on"]


def test_non_text_is_refused_before_anything_is_sent(published: TextFleet) -> None:
    registry = CollectorRegistry()
    with ModelClient(published.url, registry=registry) as client:
        with pytest.raises(InvalidInput, match=r"element \[1\] is int 3; BYTES elements"):
            client.predict(MODEL, {"text": [LIGHTS, 3]})
        with pytest.raises(InvalidInput, match=r"datatype FP32, expected BYTES \(str, a list"):
            client.predict(MODEL, {"text": np.zeros(2, np.float32)})
    labels = {"model": MODEL, "version": "1", "processor": "onnx"}
    sent = [
        registry.get_sample_value("autoai_client_requests_total", {**labels, "outcome": outcome})
        for outcome in ("ok", "error", "invalid")
    ]
    assert sent == [None, None, None]  # no call reached the transport


# -- the real pipeline processor ---------------------------------------------------------------


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TextFleet]:
    """A classify bundle served as ``intent-pipe`` and a slots bundle as ``slots-pipe``."""
    root = tmp_path_factory.mktemp("pipelines")
    with text_fleet(root) as fleet:
        for task, model in (("classify", "intent-pipe"), ("slots", "slots-pipe")):
            fleet.serve("1", make_bundle(root / "bundles", task), name=model)
            route = {"version": "1", "weight": 100, "processor": "pipeline"}
            signature = PIPELINE_SIGNATURES[task]
            fleet.publish(route_table([route], model=model, signature=signature), model=model)
        yield fleet


def test_a_pipeline_bundle_answers_text_with_labels_through_the_sdk(pipelines: TextFleet) -> None:
    texts = [text for text, _ in CLASSIFY_EXAMPLES]
    with ModelClient(pipelines.url, registry=CollectorRegistry()) as client:
        out = client.predict("intent-pipe", {"text": texts})
        assert out["label"].tolist() == [label for _, label in CLASSIFY_EXAMPLES]
        assert all(type(label) is str for label in out["label"])
        assert out["score"].dtype == np.float32 and out["score"].shape == (len(texts),)
        assert client.predict("intent-pipe", {"text": texts[0]})["label"].tolist() == [
            CLASSIFY_EXAMPLES[0][1]
        ]
        spans = client.predict("slots-pipe", {"text": [text for text, _ in SLOT_EXAMPLES]})
    assert [json.loads(row) for row in spans["slots"]] == [slots for _, slots in SLOT_EXAMPLES]
