"""Stock tritonclient (sync and asyncio) against a live eas-server, compared with onnxruntime run
in-process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

from .conftest import StartServer


def _bert_inputs(batch: int = 3, seq: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 100, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[0, 5:] = 0
    return ids, mask


def _reference(model: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def _triton_inputs(ids: np.ndarray, mask: np.ndarray, binary: bool) -> list[httpclient.InferInput]:
    inputs = [
        httpclient.InferInput("input_ids", list(ids.shape), "INT64"),
        httpclient.InferInput("attention_mask", list(mask.shape), "INT64"),
    ]
    inputs[0].set_data_from_numpy(ids, binary_data=binary)
    inputs[1].set_data_from_numpy(mask, binary_data=binary)
    return inputs


def test_health_metadata_config_and_binary_infer(
    start_server: StartServer, models: dict[str, Path]
) -> None:
    server = start_server(models["tiny_bert"], name="tiny-bert", env=None)
    client = httpclient.InferenceServerClient(server.address)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("tiny-bert") and client.is_model_ready("tiny-bert", "1")
        assert not client.is_model_ready("other")
        meta = client.get_server_metadata()
        assert {"binary_tensor_data", "model_configuration", "statistics"} <= set(
            meta["extensions"]
        )
        model = client.get_model_metadata("tiny-bert")
        assert model["platform"] == "onnxruntime_onnx" and model["versions"] == ["1"]
        assert {i["name"]: i["shape"] for i in model["inputs"]} == {
            "input_ids": [-1, -1],
            "attention_mask": [-1, -1],
        }
        config = client.get_model_config("tiny-bert")
        assert config["max_batch_size"] == 32
        assert [i["dims"] for i in config["input"]] == [[-1], [-1]]
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 5000

        ids, mask = _bert_inputs()
        expected = _reference(models["tiny_bert"], {"input_ids": ids, "attention_mask": mask})
        result = client.infer(
            "tiny-bert", _triton_inputs(ids, mask, binary=True), request_id="req-1"
        )
        assert result.get_response()["id"] == "req-1"
        for name, want in expected.items():
            np.testing.assert_allclose(result.as_numpy(name), want, rtol=1e-5, atol=1e-5)
    finally:
        client.close()


def test_json_inputs_and_outputs_and_output_selection(
    start_server: StartServer, models: dict[str, Path]
) -> None:
    server = start_server(models["tiny_bert"], name="tiny-bert")
    client = httpclient.InferenceServerClient(server.address)
    try:
        ids, mask = _bert_inputs(batch=2, seq=5)
        expected = _reference(models["tiny_bert"], {"input_ids": ids, "attention_mask": mask})
        outputs = [httpclient.InferRequestedOutput("sentence_embedding", binary_data=False)]
        result = client.infer(
            "tiny-bert", _triton_inputs(ids, mask, binary=False), outputs=outputs, model_version="1"
        )
        response = result.get_response()
        assert [o["name"] for o in response["outputs"]] == ["sentence_embedding"]
        assert "data" in response["outputs"][0]
        np.testing.assert_allclose(
            result.as_numpy("sentence_embedding"),
            expected["sentence_embedding"],
            rtol=1e-5,
            atol=1e-6,
        )
        stats = client.get_inference_statistics("tiny-bert")["model_stats"][0]
        assert stats["inference_stats"]["success"]["count"] >= 1 and stats["inference_count"] >= 2
    finally:
        client.close()


def test_every_datatype_round_trips_in_binary_and_json(
    start_server: StartServer, models: dict[str, Path]
) -> None:
    server = start_server(models["multi_dtype"])
    client = httpclient.InferenceServerClient(server.address)
    rng = np.random.default_rng(1)
    arrays: dict[str, np.ndarray] = {
        "int32": rng.integers(-1000, 1000, (3, 2), dtype=np.int32),
        "int64": rng.integers(-(2**40), 2**40, (3, 2), dtype=np.int64),
        "fp16": rng.standard_normal((3, 2)).astype(np.float16),
        "bool": rng.integers(0, 2, (3, 2)).astype(bool),
        "uint8": rng.integers(0, 255, (3, 2), dtype=np.uint8),
    }
    try:
        for binary in (True, False):
            inputs = []
            for suffix, arr in arrays.items():
                inp = httpclient.InferInput(f"in_{suffix}", list(arr.shape), suffix.upper())
                inp.set_data_from_numpy(arr, binary_data=binary)
                inputs.append(inp)
            outputs = [
                httpclient.InferRequestedOutput(f"out_{s}", binary_data=binary) for s in arrays
            ]
            result = client.infer("m", inputs, outputs=outputs)
            for suffix, arr in arrays.items():
                got = result.as_numpy(f"out_{suffix}")
                assert got.dtype == arr.dtype, suffix
                np.testing.assert_array_equal(got, arr)
    finally:
        client.close()


def test_bytes_tensors(start_server: StartServer, models: dict[str, Path]) -> None:
    server = start_server(models["string_identity"])
    client = httpclient.InferenceServerClient(server.address)
    try:
        text = np.array([[b"hello"], ["w\u00f6rld".encode()], [b""]], dtype=object)
        for binary in (True, False):
            inp = httpclient.InferInput("text", [3, 1], "BYTES")
            inp.set_data_from_numpy(text, binary_data=binary)
            out = [httpclient.InferRequestedOutput("text_out", binary_data=binary)]
            got = client.infer("m", [inp], outputs=out).as_numpy("text_out")
            assert [
                bytes(x) if not isinstance(x, str) else x.encode() for x in got.ravel()
            ] == list(text.ravel())
    finally:
        client.close()


def test_asyncio_client_with_concurrent_requests_batches_them(
    start_server: StartServer, models: dict[str, Path]
) -> None:
    server = start_server(models["tiny_bert"], "--max-batch-timeout-ms", "20", name="tiny-bert")
    ids, mask = _bert_inputs(batch=1, seq=6)
    expected = _reference(models["tiny_bert"], {"input_ids": ids, "attention_mask": mask})

    async def body() -> None:
        client = aioclient.InferenceServerClient(server.address)
        try:
            assert await client.is_server_ready()
            results = await asyncio.gather(
                *(
                    client.infer("tiny-bert", _triton_inputs(ids + k % 3, mask, binary=True))
                    for k in range(24)
                )
            )
            for k, result in enumerate(results):
                if k % 3 == 0:
                    np.testing.assert_allclose(
                        result.as_numpy("sentence_embedding"),
                        expected["sentence_embedding"],
                        rtol=1e-5,
                        atol=1e-6,
                    )
            stats = (await client.get_inference_statistics("tiny-bert"))["model_stats"][0]
            assert (
                stats["execution_count"] < stats["inference_count"]
            )  # some requests shared a batch
        finally:
            await client.close()

    asyncio.run(body())


def test_errors_reach_tritonclient_as_inference_server_exceptions(
    start_server: StartServer, models: dict[str, Path]
) -> None:
    server = start_server(models["tiny_bert"], name="tiny-bert")
    client = httpclient.InferenceServerClient(server.address)
    try:
        ids, mask = _bert_inputs()
        with pytest.raises(InferenceServerException, match="not served here"):
            client.infer("nope", _triton_inputs(ids, mask, binary=True))
        bad = [httpclient.InferInput("input_ids", [3, 7], "INT32")]
        bad[0].set_data_from_numpy(ids.astype(np.int32))
        with pytest.raises(InferenceServerException, match="expects INT64") as exc:
            client.infer("tiny-bert", bad)
        assert exc.value.status() == "400"
    finally:
        client.close()
