"""Shadow comparison of BYTES outputs by agreement: the top label per row, the set of slot spans per
row (pure), and ``autoai_client_shadow_label_agreement_total`` counting rows when a real shadow
version disagrees with the primary on some labels."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from autoai.sdk import AsyncModelClient, Comparison, LabelAgreement, ModelClient
from autoai.sdk._compare import compare_outputs
from tests.eas_server.bundles import CLASSIFY_EXAMPLES, SLOT_EXAMPLES, VOCAB, make_bundle

from ._text_models import (
    MODEL,
    PIPELINE_SIGNATURES,
    Answers,
    TextFleet,
    route_table,
    slots,
    text_fleet,
)
from .conftest import wait_for


def _objects(*items: object) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = list(items)
    return array


# -- labels ------------------------------------------------------------------------------------


def test_equal_labels_agree_on_every_row_and_leave_cosine_unmeasured() -> None:
    labels = _objects(b"pos", b"neg")
    result = compare_outputs({"label": labels}, {"label": labels.copy()})
    assert result == Comparison(
        None, None, None, ("label",), None, (LabelAgreement("label", 2, 2),)
    )
    assert result.label_agreement == 1.0


def test_label_agreement_is_the_fraction_of_rows_with_the_same_label() -> None:
    primary = _objects("lights_on", "music", "lights_on", "other")
    shadow = _objects("lights_on", "music", "lights_off", "other")
    result = compare_outputs({"label": primary}, {"label": shadow})
    assert result.labels == (LabelAgreement("label", 4, 3),)
    assert result.label_agreement == 0.75 and result.reason is None


def test_bytes_and_str_of_the_same_text_agree() -> None:
    result = compare_outputs(
        {"label": _objects("café", "x")}, {"label": _objects("café".encode(), b"x")}
    )
    assert result.label_agreement == 1.0
    fixed = compare_outputs({"label": np.array(["a", "b"])}, {"label": np.array([b"a", b"c"])})
    assert fixed.labels == (LabelAgreement("label", 2, 1),)


def test_bytes_that_are_not_utf8_compare_as_bytes() -> None:
    result = compare_outputs(
        {"blob": _objects(b"\xff", b"\xfe")}, {"blob": _objects(b"\xff", b"x")}
    )
    assert result.labels == (LabelAgreement("blob", 2, 1),)


def test_top_k_labels_agree_on_their_first_label_only() -> None:
    primary = np.array([["music", "radio"], ["lights_on", "music"]], dtype=object)
    shadow = np.array([["music", "lights_on"], ["music", "lights_on"]], dtype=object)
    result = compare_outputs({"labels": primary}, {"labels": shadow})
    assert result.labels == (LabelAgreement("labels", 2, 1),)
    no_labels = compare_outputs(
        {"labels": np.empty((3, 0), dtype=object)}, {"labels": np.empty((3, 0), dtype=object)}
    )
    assert no_labels.labels == (LabelAgreement("labels", 3, 3),)


# -- slots -------------------------------------------------------------------------------------


def test_slot_spans_agree_as_sets_of_slot_and_value() -> None:
    primary = _objects(
        slots(("room", "kitchen", 12, 19), ("action", "on", 5, 7)),
        slots(("genre", "jazz", 10, 14)),
        "[]",
    )
    shadow = _objects(
        # the same spans in another order, other offsets, other key order and spacing
        json.dumps(
            [{"value": "on", "slot": "action"}, {"end": 20, "slot": "room", "value": "kitchen"}]
        ),
        slots(("genre", "blues", 10, 15)),  # another value
        "[ ]",
    )
    result = compare_outputs({"slots": primary}, {"slots": shadow})
    assert result.labels == (LabelAgreement("slots", 3, 2),)


def test_a_missing_or_extra_span_is_disagreement() -> None:
    one = slots(("room", "kitchen", 12, 19))
    two = slots(("room", "kitchen", 12, 19), ("room", "hall", 24, 28))
    result = compare_outputs({"slots": _objects(one, two)}, {"slots": _objects(two, one)})
    assert result.labels == (LabelAgreement("slots", 2, 0),)


def test_text_that_is_not_a_slots_document_compares_as_text() -> None:
    # JSON that is not [{slot, value}]: compared as the text it is
    odd = ["[1, 2]", '[{"slot": "a"}]', "[not json", '[{"slot": ["x"], "value": 1}]']
    same = compare_outputs({"x": _objects(*odd)}, {"x": _objects(*odd)})
    assert same.labels == (LabelAgreement("x", 4, 4),)
    spaced = compare_outputs({"x": _objects("[1, 2]")}, {"x": _objects("[1,2]")})
    assert spaced.labels == (LabelAgreement("x", 1, 0),)


# -- mixed outputs and mismatches --------------------------------------------------------------


def test_numeric_outputs_keep_cosine_beside_label_agreement() -> None:
    primary = {"label": _objects("a", "b"), "score": np.array([0.9, 0.8], np.float32)}
    shadow = {"label": _objects("a", "c"), "score": np.array([0.9, 0.8], np.float32)}
    result = compare_outputs(primary, shadow)
    assert (result.cosine, result.max_abs, result.top1_agreement) == (1.0, 0.0, None)
    assert result.labels == (LabelAgreement("label", 2, 1),)
    assert result.outputs_compared == ("label", "score")


def test_the_lowest_output_is_the_label_agreement() -> None:
    primary = {"label": _objects("a", "b"), "slots": _objects("[]", "[]")}
    shadow = {"label": _objects("a", "b"), "slots": _objects("[]", slots(("x", "y", 0, 1)))}
    result = compare_outputs(primary, shadow)
    assert result.labels == (LabelAgreement("label", 2, 2), LabelAgreement("slots", 2, 1))
    assert result.label_agreement == 0.5


def test_mismatched_shapes_leave_every_row_disagreeing() -> None:
    result = compare_outputs({"label": _objects("a", "b", "c")}, {"label": _objects("a", "b")})
    assert result.labels == (LabelAgreement("label", 3, 0),)
    assert result.reason == "output 'label': shape [3] vs [2]"


def test_bytes_on_one_side_only_is_complete_disagreement() -> None:
    result = compare_outputs(
        {"label": _objects("a", "b")}, {"label": np.array([1.0, 2.0], np.float32)}
    )
    assert result.labels == (LabelAgreement("label", 2, 0),)
    assert result.reason == "output 'label': object vs float32"
    assert result.cosine is None


def test_an_empty_batch_has_no_label_agreement() -> None:
    result = compare_outputs(
        {"label": np.empty(0, dtype=object)}, {"label": np.empty(0, dtype=object)}
    )
    assert result.labels == (LabelAgreement("label", 0, 0),)
    assert result.label_agreement is None


def test_no_output_in_common_is_still_complete_disagreement() -> None:
    result = compare_outputs({"label": _objects("a")}, {"other": _objects("a")})
    assert (result.cosine, result.max_abs, result.labels) == (0.0, math.inf, ())


# -- a real primary and shadow -----------------------------------------------------------------

LIGHTS = "turn on the lights in the kitchen"
MUSIC = "play some jazz"
FRENCH = "allume la lumière ☀"
UNKNOWN = "what time is it"
PRIMARY = Answers(
    labels={LIGHTS: "lights_on", MUSIC: "music", FRENCH: "lights_on"},
    slots={
        LIGHTS: slots(("action", "on", 5, 7), ("room", "kitchen", 26, 33)),
        MUSIC: slots(("genre", "jazz", 10, 14)),
    },
    scores={LIGHTS: 0.75, MUSIC: 0.5, FRENCH: 0.25},
)
SHADOW = Answers(
    labels={LIGHTS: "lights_off", MUSIC: "music", FRENCH: "lights_on"},  # LIGHTS disagrees
    slots={
        LIGHTS: slots(("room", "living room", 26, 33), ("action", "on", 5, 7)),  # disagrees
        MUSIC: json.dumps([{"value": "jazz", "slot": "genre"}]),  # the same span
    },
    scores=PRIMARY.scores,  # equal scores: cosine exactly 1
)
BATCH = [LIGHTS, MUSIC, FRENCH, UNKNOWN]  # 1 of 4 rows disagrees on label, 1 on slots
AGREEING = [MUSIC, FRENCH, UNKNOWN]
SHADOW_LABELS = {"model": MODEL, "version": "2", "processor": "onnx"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TextFleet]:
    with text_fleet(tmp_path_factory.mktemp("shadowfleet")) as fleet:
        fleet.serve_answers("1", PRIMARY)
        fleet.serve_answers("2", SHADOW)
        yield fleet


@pytest.fixture
def shadowed(fleet: TextFleet) -> TextFleet:
    fleet.publish(
        route_table(
            [{"version": "1", "weight": 100}, {"version": "2", "weight": 0}],
            shadow={"version": "2", "ratio": 1.0},
        )
    )
    return fleet


def _value(
    registry: CollectorRegistry, name: str, labels: dict[str, str] = SHADOW_LABELS, **more: str
) -> float:
    value = registry.get_sample_value(name, {**labels, **more})
    return 0.0 if value is None else value


def _rows(
    registry: CollectorRegistry, output: str, labels: dict[str, str] = SHADOW_LABELS
) -> tuple[float, float]:
    name = "autoai_client_shadow_label_agreement_total"
    return (
        _value(registry, name, labels, output=output, outcome="agree"),
        _value(registry, name, labels, output=output, outcome="disagree"),
    )


def _calls(registry: CollectorRegistry, labels: dict[str, str] = SHADOW_LABELS) -> dict[str, float]:
    return {
        o: _value(registry, "autoai_client_shadow_requests_total", labels, outcome=o)
        for o in ("agree", "disagree", "error", "dropped")
    }


def test_a_shadow_that_disagrees_on_some_labels_is_counted_per_row(shadowed: TextFleet) -> None:
    registry = CollectorRegistry()
    calls = 5
    with ModelClient(shadowed.url, registry=registry) as client:
        for n in range(1, calls + 1):
            out = client.predict(MODEL, {"text": BATCH})
            assert out["label"].tolist() == ["lights_on", "music", "lights_on", "other"]
            # one call at a time: no shadow is ever dropped for a full pool
            wait_for(lambda n=n: sum(_calls(registry).values()) == n, what=f"{n} comparisons")
        client.predict(MODEL, {"text": AGREEING})
        wait_for(lambda: sum(_calls(registry).values()) == calls + 1, what="the last comparison")
    assert _calls(registry) == {"agree": 1, "disagree": calls, "error": 0, "dropped": 0}
    assert _rows(registry, "label") == (3 * calls + 3, calls)
    assert _rows(registry, "slots") == (3 * calls + 3, calls)
    assert _rows(registry, "echo") == (4 * calls + 3, 0)
    assert _rows(registry, "score") == (0, 0)  # numeric: measured by cosine, not by rows
    # the score output alone feeds the cosine histogram: equal on both sides
    assert _value(registry, "autoai_client_shadow_agreement_count") == calls + 1
    assert _value(registry, "autoai_client_shadow_agreement_sum") == calls + 1


def test_the_async_client_counts_label_agreement_too(shadowed: TextFleet) -> None:
    registry = CollectorRegistry()

    async def main() -> None:
        async with AsyncModelClient(shadowed.url, registry=registry) as client:
            await client.predict(MODEL, {"text": BATCH})
        # leaving the block waits for the shadow task

    asyncio.run(main())
    assert _calls(registry)["disagree"] == 1
    assert _rows(registry, "label") == (3, 1)
    assert _rows(registry, "slots") == (3, 1)


# -- pipeline bundles whose tokenizer lost a word ------------------------------------------------


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TextFleet]:
    """Version 1 of a classify and a slots bundle, and a shadow version 2 of each whose vocabulary
    lost a keyword ("off", "lamp"): that token becomes [UNK], so one known sentence changes
    its answer (a tokenizer change that a cosine over scores alone would blur)."""
    root = tmp_path_factory.mktemp("pipeshadow")
    lost = {"classify": "off", "slots": "lamp"}
    with text_fleet(root) as fleet:
        for task, word in lost.items():
            model = f"{task}-pipe"
            fleet.serve("1", make_bundle(root / "v1", task), name=model)
            vocab = tuple(token for token in VOCAB if token != word)
            fleet.serve("2", make_bundle(root / "v2", task, vocab=vocab), name=model)
            routes = [
                {"version": "1", "weight": 100, "processor": "pipeline"},
                {"version": "2", "weight": 0, "processor": "pipeline"},
            ]
            table = route_table(
                routes,
                model=model,
                signature=PIPELINE_SIGNATURES[task],
                shadow={"version": "2", "ratio": 1.0},
            )
            fleet.publish(table, model=model)
        yield fleet


def test_pipeline_shadows_are_compared_by_label_and_by_slot_spans(pipelines: TextFleet) -> None:
    registry = CollectorRegistry()
    classify = {"model": "classify-pipe", "version": "2", "processor": "pipeline"}
    spans = {"model": "slots-pipe", "version": "2", "processor": "pipeline"}
    with ModelClient(pipelines.url, registry=registry) as client:
        out = client.predict("classify-pipe", {"text": [t for t, _ in CLASSIFY_EXAMPLES]})
        assert out["label"].tolist() == [label for _, label in CLASSIFY_EXAMPLES]  # primary's
        client.predict("slots-pipe", {"text": [t for t, _ in SLOT_EXAMPLES]})
        wait_for(
            lambda: (
                sum(_calls(registry, classify).values()) == 1
                and sum(_calls(registry, spans).values()) == 1
            ),
            what="both shadow comparisons",
        )
    # "switch the lights off" loses its keyword; "dim the living room lamp please" its device
    assert _rows(registry, "label", classify) == (3, 1)
    assert _rows(registry, "slots", spans) == (3, 1)
    assert _calls(registry, classify)["disagree"] == 1 and _calls(registry, spans)["disagree"] == 1
    assert _value(registry, "autoai_client_shadow_agreement_count", classify) == 1  # the score
    assert _value(registry, "autoai_client_shadow_agreement_count", spans) == 0  # no numbers
