"""Padding requests of different lengths into one batch on the ``onnx`` processor: the probe (pure,
on numpy models, then on real ONNX models), declarations, settings and flags, and end to end
through the batcher."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from eas_client import decode_response, encode_request
from eas_server import ModelLoadError, Padding
from eas_server._cli import main
from eas_server._server import build_app
from eas_server._settings import ServerSettings, load_service_json
from eas_server.processors import Processor, create_processor
from eas_server.processors._padding import (
    LENGTHS,
    ModelTensor,
    PaddingDeclaration,
    _difference,
    check_declaration,
    decide,
    padded_axes,
    padding_json,
    probe,
)
from tests.fixtures import onnx_models

Arrays = dict[str, np.ndarray]
IDS = ModelTensor("input_ids", "INT64", ("batch", "seq"))
MASK = ModelTensor("attention_mask", "INT64", ("batch", "seq"))
BERT_OUTPUTS = [
    ModelTensor("last_hidden_state", "FP32", ("batch", "seq", 16)),
    ModelTensor("sentence_embedding", "FP32", ("batch", 16)),
]
TABLE = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)


# ----------------------------------------------------------------- numpy models for the probe


def masked_mean(feed: Mapping[str, np.ndarray]) -> Arrays:
    emb, mask = TABLE[feed["input_ids"]], feed["attention_mask"][..., None].astype(np.float32)
    tokens = emb * mask
    return {"pooled": tokens.sum(1) / mask.sum(1), "tokens": tokens}


def unmasked_mean(feed: Mapping[str, np.ndarray]) -> Arrays:
    return {"pooled": TABLE[feed["input_ids"]].mean(1)}


def rows_interact(feed: Mapping[str, np.ndarray]) -> Arrays:
    """Masked, but each row's answer depends on the other rows of its batch."""
    pooled = masked_mean(feed)["pooled"]
    return {"pooled": pooled + pooled.mean(0, keepdims=True)}


def length_feature(feed: Mapping[str, np.ndarray]) -> Arrays:
    """Masked, but the padded length itself is a feature."""
    seq = feed["input_ids"].shape[1]
    return {"pooled": masked_mean(feed)["pooled"] + np.float32(seq)}


def pairwise(feed: Mapping[str, np.ndarray]) -> Arrays:
    """A [batch, seq, seq] output: padding changes two axes, which cannot be cut back."""
    m = feed["attention_mask"].astype(np.float32)
    return {"pairs": m[:, :, None] * m[:, None, :]}


def noisy(scale: float) -> Any:
    """Masked mean off by a relative ``scale`` per padded length (1e-7: what other kernels for
    another shape give)."""

    def run(feed: Mapping[str, np.ndarray]) -> Arrays:
        pooled = masked_mean(feed)["pooled"]
        return {"pooled": pooled * np.float32(1 + scale * feed["input_ids"].shape[1])}

    return run


def failing(feed: Mapping[str, np.ndarray]) -> Arrays:
    if feed["input_ids"].shape[0] > 1:
        raise RuntimeError("batch too large")
    return masked_mean(feed)


# --------------------------------------------------------------------------- pure: the probe


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ([IDS, MASK], {"input_ids": 1, "attention_mask": 1}),
        ([ModelTensor("x", "FP32", (None, None))], {"x": 1}),  # one input: the name is moot
        ([ModelTensor("x", "FP32", ("batch", 3, -1, 8))], {"x": 2}),
        ([IDS, ModelTensor("lang", "INT64", ("batch", 1))], {"input_ids": 1}),
        ([IDS, ModelTensor("ids2", "INT64", ("batch", "len"))], "vary together"),
        ([ModelTensor("a", "INT64", (None, None)), ModelTensor("b", "INT64", (None, None))], "a"),
        ([ModelTensor("img", "FP32", ("batch", 3, "h", "w"))], "varies along 2 axes"),
        ([ModelTensor("text", "BYTES", ("batch", "seq"))], "BYTES"),
        ([ModelTensor("x", "FP32", ("batch", 8))], "no input has a variable-length axis"),
    ],
)
def test_padded_axes_are_the_variable_axis_shared_by_every_input(
    inputs: list[ModelTensor], expected: dict[str, int] | str
) -> None:
    got = padded_axes(inputs)
    if isinstance(expected, str):
        assert isinstance(got, str) and expected in got
    else:
        assert got == expected


def test_the_probe_accepts_a_model_that_ignores_masked_positions() -> None:
    padding, reason = probe(masked_mean, [IDS, MASK])
    assert padding == Padding(
        inputs={"input_ids": (1, 0), "attention_mask": (1, 0)}, outputs={"tokens": 1}
    )
    assert reason.startswith("probed:") and "tokens on axis 1" in reason


@pytest.mark.parametrize(("scale", "safe"), [(1e-7, True), (2e-6, True), (1e-4, False)])
def test_float_noise_of_another_shape_is_tolerated(scale: float, safe: bool) -> None:
    padding, reason = probe(noisy(scale), [IDS, MASK])
    assert (padding is not None) is safe, reason


@pytest.mark.parametrize(
    ("expected", "got", "why"),
    [
        ([1.0, np.nan, 3.0], [1.0, np.nan, 3.0], None),
        ([1.0, np.nan, 3.0], [1.0, 2.0, 3.0], "NaN or Inf in other places"),
        ([1000.0, 0.0], [1000.05, 0.0], None),  # within 1e-4 of the largest value
        ([1000.0, 0.0], [1000.0, 0.2], "max abs diff 0.2"),
        ([1e-9, 0.0], [2e-9, 0.0], "rel L2 1"),  # tiny values: relative L2 catches it
        # FP16: tolerance at its precision (1 ulp off passes)
        (np.array([1.0, 2.0], np.float16), np.array([1.001, 2.0], np.float16), None),
        (np.array([1.0, 2.0], np.float16), np.array([1.1, 2.0], np.float16), "max abs diff"),
        ([[1, 2]], [[1, 2]], None),
        ([[1, 2]], [[1, 3]], "different values"),
        ([[1, 2]], [[1, 2, 0]], "shape [1, 3] instead of [1, 2]"),
    ],
)
def test_outputs_match_within_tolerance(expected: Any, got: Any, why: str | None) -> None:
    e, g = np.array(expected), np.array(got)
    if e.dtype == np.float64:  # the lists above: FP32, as models answer
        e, g = e.astype(np.float32), g.astype(np.float32)
    found, _ = _difference(e, g)
    if why is None:
        assert found is None
    else:
        assert found is not None and why in found


@pytest.mark.parametrize(
    ("run", "why"),
    [
        (unmasked_mean, "does not ignore padded positions"),
        (rows_interact, "does not ignore padded positions"),
        (length_feature, "does not ignore padded positions"),
        (pairwise, "cannot be cut back"),
        (failing, "the probe run failed: RuntimeError: batch too large"),
    ],
)
def test_the_probe_refuses_what_padding_would_change(run: Any, why: str) -> None:
    padding, reason = probe(run, [IDS, MASK])
    assert padding is None
    assert reason.startswith("not padding:") and why in reason


def test_the_probe_sends_rows_of_ones_and_zeros_padded_with_zeros() -> None:
    seen: list[Arrays] = []

    def record(feed: Mapping[str, np.ndarray]) -> Arrays:
        seen.append(dict(feed))
        return masked_mean(feed)

    probe(record, [IDS, MASK, ModelTensor("lang", "INT32", ("batch", 2))])
    *alone, batched = seen
    assert [a["input_ids"].shape for a in alone] == [(1, n) for n in LENGTHS]
    for a in alone:
        assert a["lang"].tolist() == [[1, 1]]
        for name in ("input_ids", "attention_mask"):
            assert set(a[name].ravel().tolist()) <= {0, 1}
            assert a[name][0, 0] == a[name][0, -1] == 1 and a[name].sum() > a[name].size / 2
    assert not np.array_equal(alone[2]["input_ids"][0, :5], alone[0]["input_ids"][0])  # rows differ
    assert not np.array_equal(alone[0]["input_ids"], alone[0]["attention_mask"])  # inputs differ
    longest = max(LENGTHS)
    for name in ("input_ids", "attention_mask"):
        assert batched[name].shape == (len(LENGTHS), longest)
        for row, (length, a) in enumerate(zip(LENGTHS, alone, strict=True)):
            assert np.array_equal(batched[name][row, :length], a[name][0])
            assert not batched[name][row, length:].any()  # padded with zeros
    assert batched["lang"].shape == (len(LENGTHS), 2)


def test_the_probe_pads_float_and_bool_inputs_too() -> None:
    def run(feed: Mapping[str, np.ndarray]) -> Arrays:
        keep = feed["keep"][..., None]
        return {"y": (feed["x"] * keep).sum(1) / keep.sum(1)}

    inputs = [ModelTensor("x", "FP32", ("b", "n", 3)), ModelTensor("keep", "BOOL", ("b", "n"))]
    padding, reason = probe(run, inputs)
    assert padding is not None and padding.inputs == {"x": (1, 0), "keep": (1, 0)}, reason


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ({"inputs": {"ids": {"axis": 1}}}, "unknown input 'ids'; the model's inputs are"),
        ({"inputs": {"input_ids": {"axis": 0}}}, "axis 0 must be between 1 and 1"),
        ({"inputs": {"input_ids": {"axis": 2}}}, "has 2 dims (the batch dim is axis 0)"),
        ({"inputs": {"lang": {"axis": 1}}}, "fixed size 2: only a variable axis can be padded"),
        ({"inputs": {"input_ids": {"axis": 1, "value": 0.5}}}, "must be an integer, not 0.5"),
        ({"inputs": {"text": {"axis": 1}}}, "'text' is BYTES"),
        (
            {"inputs": {"input_ids": {"axis": 1}}, "outputs": {"pooled": 1}},
            "unknown output 'pooled'",
        ),
        (
            {"inputs": {"input_ids": {"axis": 1}}, "outputs": {"last_hidden_state": 3}},
            "output 'last_hidden_state' has 3 dims",
        ),
        (
            {"inputs": {"input_ids": {"axis": 1}}, "outputs": {"sentence_embedding": 1}},
            "axis 1 of output 'sentence_embedding' has the fixed size 16",
        ),
    ],
)
def test_bad_declarations_say_what_does_not_fit(declared: dict[str, Any], message: str) -> None:
    inputs = [IDS, MASK, ModelTensor("lang", "INT64", ("batch", 2))]
    inputs.append(ModelTensor("text", "BYTES", ("batch", "seq")))
    with pytest.raises(ModelLoadError, match=r"^metadata\.padding: ") as info:
        check_declaration(PaddingDeclaration.model_validate(declared), inputs, BERT_OUTPUTS, True)
    assert message in str(info.value)


def test_a_declaration_needs_a_batch_dim() -> None:
    declared = PaddingDeclaration.model_validate({"inputs": {"input_ids": {"axis": 1}}})
    with pytest.raises(ModelLoadError, match="no batch dim"):
        check_declaration(declared, [IDS], BERT_OUTPUTS, False)


def test_a_declaration_round_trips_through_the_config_form() -> None:
    declared = PaddingDeclaration.model_validate(
        {
            "inputs": {"input_ids": {"axis": 1, "value": 0}, "attention_mask": {"axis": 1}},
            "outputs": {"last_hidden_state": 1},
        }
    )
    padding = check_declaration(declared, [IDS, MASK], BERT_OUTPUTS, True)
    assert padding == Padding(
        inputs={"input_ids": (1, 0), "attention_mask": (1, 0)}, outputs={"last_hidden_state": 1}
    )
    again = PaddingDeclaration.model_validate_json(padding_json(padding))
    assert check_declaration(again, [IDS, MASK], BERT_OUTPUTS, True) == padding
    assert padding_json(None) == "false"


def test_decide_off_and_declared_never_run_the_model() -> None:
    def never(feed: Mapping[str, np.ndarray]) -> Arrays:
        raise AssertionError("the model ran")

    assert decide("off", [IDS, MASK], BERT_OUTPUTS, never, True)[0] is None
    declared = PaddingDeclaration.model_validate({"inputs": {"input_ids": {"axis": 1}}})
    padding, reason = decide(declared, [IDS, MASK], BERT_OUTPUTS, never, True)
    assert padding == Padding(inputs={"input_ids": (1, 0)}) and reason.startswith("declared")
    assert decide("auto", [IDS, MASK], BERT_OUTPUTS, never, False) == (
        None,
        "not probed: the model has no batch dim",
    )


# ------------------------------------------------------------------- real ONNX models, loaded


@pytest.fixture(scope="module")
def pooling(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pooling")
    return {
        "masked": onnx_models.mean_pooling(d),
        "unmasked": onnx_models.mean_pooling(d, masked=False),
        "one_token": onnx_models.mean_pooling(d, vocab=1, name="one_token"),
    }


def _loaded(model: Path, **options: Any) -> Processor:
    processor = create_processor("onnx", str(model), intra_op_threads=1, **options)
    processor.load()
    return processor


def test_a_bert_like_model_is_probed_safe(models: dict[str, Path]) -> None:
    processor = _loaded(models["tiny_bert"])
    assert processor.padding == Padding(
        inputs={"input_ids": (1, 0), "attention_mask": (1, 0)}, outputs={"last_hidden_state": 1}
    )


@pytest.mark.parametrize(
    ("kind", "safe", "why"),
    [
        ("masked", True, "probed:"),
        ("unmasked", False, "does not ignore padded positions"),
        ("one_token", False, "the probe run failed: InvalidInput"),  # id 1 is out of its table
    ],
)
def test_pooling_models_are_probed(
    pooling: dict[str, Path], kind: str, safe: bool, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="eas_server.onnx"):
        processor = _loaded(pooling[kind])
    assert (processor.padding is not None) is safe
    assert why in processor.padding_reason  # type: ignore[attr-defined]
    assert any(why in r.getMessage() for r in caplog.records)  # logged at info


def test_a_declaration_is_trusted_and_off_is_off(pooling: dict[str, Path]) -> None:
    declared = PaddingDeclaration.model_validate({"inputs": {"input_ids": {"axis": 1}}})
    processor = _loaded(pooling["unmasked"], padding=declared)
    assert processor.padding == Padding(inputs={"input_ids": (1, 0)})
    assert _loaded(pooling["masked"], padding="off").padding is None


def test_a_bad_declaration_fails_the_load(pooling: dict[str, Path]) -> None:
    declared = PaddingDeclaration.model_validate({"inputs": {"input_ids": {"axis": 2}}})
    with pytest.raises(ModelLoadError, match="input 'input_ids' has 2 dims"):
        _loaded(pooling["masked"], padding=declared)


# -------------------------------------------------------------- settings, service JSON, flags


def _service(tmp_path: Path, padding: object) -> Path:
    path = tmp_path / "service.json"
    path.write_text(json.dumps({"name": "m", "metadata": {"padding": padding}}))
    return path


DECLARED = {"inputs": {"input_ids": {"axis": 1, "value": 0}}, "outputs": {"last_hidden_state": 1}}


def test_metadata_padding_is_a_declaration_or_false(
    models: dict[str, Path], tmp_path: Path
) -> None:
    flags = {"model": str(models["tiny_bert"])}
    settings = ServerSettings.load(flags, load_service_json(_service(tmp_path, DECLARED)))
    assert settings.padding == PaddingDeclaration.model_validate(DECLARED)
    settings = ServerSettings.load(flags, load_service_json(_service(tmp_path, False)))
    assert settings.padding == "off"
    assert ServerSettings.load({**flags, "name": "m"}).padding == "auto"


def test_padding_is_for_the_onnx_processor_only(models: dict[str, Path]) -> None:
    flags = {"model": str(models["tiny_bert"]), "name": "m", "processor": "blade"}
    with pytest.raises(ValidationError, match="only the onnx processor takes padding"):
        ServerSettings.load({**flags, "padding": "off"})
    assert ServerSettings.load(flags).padding == "auto"


@pytest.mark.parametrize(
    ("flag", "expected"),
    [([], "declared"), (["--padding", "auto"], "declared"), (["--padding", "off"], "off")],
)
def test_the_padding_flag(
    models: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flag: list[str],
    expected: str,
) -> None:
    """``--padding auto`` keeps what --config declares (auto: declared if given, else probe)."""
    seen: list[ServerSettings] = []

    def serve(settings: ServerSettings) -> int:
        seen.append(settings)
        return 0

    monkeypatch.setattr("eas_server._server.serve", serve)
    config = str(_service(tmp_path, DECLARED))
    assert main(["--model", str(models["tiny_bert"]), "--config", config, *flag]) == 0
    (settings,) = seen
    if expected == "off":
        assert settings.padding == "off"
    else:
        assert settings.padding == PaddingDeclaration.model_validate(DECLARED)


def test_a_bad_flag_value_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--padding", "on"])
    assert "invalid choice: 'on'" in capsys.readouterr().err


# ----------------------------------------------------------------- end to end, in process


LENGTHS_SENT = (3, 11, 1, 16, 6, 9)


def _request(length: int, seed: int) -> Arrays:
    ids = np.random.default_rng(seed).integers(1, 100, size=(1, length), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


async def _serve_concurrently(app: Any, gate: threading.Event, entered: threading.Event) -> Any:
    """One request holds the only worker at the gate; the others queue behind it, are let go
    together, and the stats come back with each answer."""
    app.batcher.start()
    app.ready = True
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://eas") as client:

            async def infer(inputs: Arrays) -> dict[str, np.ndarray]:
                body, length = encode_request(inputs)
                headers = {} if length is None else {"Inference-Header-Content-Length": str(length)}
                r = await client.post("/v2/models/m/infer", content=body, headers=headers)
                assert r.status_code == 200, r.text
                header = r.headers.get("Inference-Header-Content-Length")
                return decode_response(r.content, header).outputs

            blocker = asyncio.create_task(infer(_request(4, 99)))
            while not entered.is_set():
                await asyncio.sleep(0.005)
            tasks = [asyncio.create_task(infer(_request(n, i))) for i, n in enumerate(LENGTHS_SENT)]
            while app.batcher.queue_depth < len(LENGTHS_SENT):
                await asyncio.sleep(0.005)
            gate.set()
            await blocker
            answers = await asyncio.gather(*tasks)
            stats = (await client.get("/v2/models/m/stats")).json()["model_stats"][0]
            config = (await client.get("/v2/models/m/config")).json()
            return answers, stats, config
    finally:
        app.ready = False
        await app.batcher.close()


@pytest.mark.parametrize("padding", ["auto", "off"])
def test_requests_of_different_lengths_share_one_batch_and_get_their_own_answers(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, padding: str
) -> None:
    processor = _loaded(models["tiny_bert"], padding=padding)
    alone_run = processor.run
    gate, entered = threading.Event(), threading.Event()
    sizes: list[tuple[int, int]] = []

    def gated(inputs: Arrays, worker: int, outputs: frozenset[str] | None = None) -> Any:
        entered.set()
        assert gate.wait(30)
        sizes.append(inputs["input_ids"].shape)
        return alone_run(inputs, worker, outputs)

    monkeypatch.setattr(processor, "run", gated)
    settings = ServerSettings.load(
        {"model": str(models["tiny_bert"]), "name": "m", "max_batch_timeout_ms": 1.0}
    )
    app = build_app(settings, processor, CollectorRegistry())
    answers, stats, config = asyncio.run(
        asyncio.wait_for(_serve_concurrently(app, gate, entered), 60)
    )

    n = len(LENGTHS_SENT)
    assert stats["inference_count"] == n + 1
    if padding == "auto":
        assert sizes[1:] == [(n, max(LENGTHS_SENT))]  # one batch, padded to the longest
        assert stats["execution_count"] == 2
        assert {"batch_size": n} in [{"batch_size": b["batch_size"]} for b in stats["batch_stats"]]
        declared = json.loads(config["parameters"]["padding"]["string_value"])
        assert declared["outputs"] == {"last_hidden_state": 1}
    else:
        assert sorted(sizes[1:]) == sorted((1, length) for length in LENGTHS_SENT)  # all alone
        assert stats["execution_count"] == n + 1
        assert config["parameters"]["padding"] == {"string_value": "false"}
    for i, (length, got) in enumerate(zip(LENGTHS_SENT, answers, strict=True)):
        expected = alone_run(_request(length, i), 0)
        assert got.keys() == set(expected)
        for name, array in expected.items():
            assert got[name].shape == array.shape
            np.testing.assert_allclose(got[name], array, rtol=0, atol=1e-5)
