"""KServe v2 gRPC with stock tritonclient.grpc: the gRPC front end in process (build_app +
start_grpc on a uvloop loop of its own thread, as eas-server runs it), and once as the real
eas-server process with --grpc-port, registered in a store."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import types
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import uvloop
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import eas_server.grpc
from config_store import open_store
from eas_server._app import _STATUS, EasApp
from eas_server._cli import _parser
from eas_server._server import build_app
from eas_server._settings import ServerSettings, load_service_json
from eas_server.grpc import CODES, start_grpc
from eas_server.processors import Processor, create_processor

from .conftest import StartServer, wait_until

LABELS = {"model": "m", "version": "1", "processor": "onnx"}


class GrpcServer:
    """The gRPC front end of one model, served from a uvloop loop on a thread of its own."""

    def __init__(
        self,
        model: Path,
        *,
        broken: bool = False,
        gate: threading.Event | None = None,
        **settings: Any,
    ) -> None:
        self.settings = ServerSettings(model=str(model), name="m", intra_op_threads=1, **settings)
        self.processor: Processor = create_processor("onnx", str(model), intra_op_threads=1)
        self.processor.load()
        run = self.processor.run
        self.rows_run: list[int] = []
        """Rows of every batch the runtime was given (before the gate)."""

        def gated_run(inputs: Any, worker: int, outputs: Any) -> Any:
            if broken:  # a runtime failure that is not the request's fault
                raise RuntimeError("the device fell off")
            self.rows_run.append(len(next(iter(inputs.values()))))
            if gate is not None:
                assert gate.wait(30), "the test never opened the gate"
            return run(inputs, worker, outputs)

        setattr(self.processor, "run", gated_run)  # noqa: B010 - mypy: method assignment
        self.app: EasApp = build_app(self.settings, self.processor, CollectorRegistry())
        self.loop: asyncio.AbstractEventLoop | None = None
        self.address = ""
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="grpc-test-loop", daemon=True)
        self._thread.start()
        assert self._started.wait(30), "the gRPC server did not start"
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            uvloop.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._started.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.app.batcher.start()
        self.app.ready = True
        limit = int(self.settings.max_body_mb * (1 << 20))
        server, port = await start_grpc(self.app, "127.0.0.1", 0, max_message_bytes=limit)
        self.address = f"127.0.0.1:{port}"
        self._started.set()
        await self._stop.wait()
        await server.stop(0)
        await self.app.batcher.close()

    def call(self, coroutine: Any) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def requests(self, outcome: str) -> float:
        value = self.app.metrics.registry.get_sample_value(
            "eas_requests_total", {**LABELS, "outcome": outcome}
        )
        return value or 0.0

    def close(self) -> None:
        if self.loop is not None and self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self.processor.close()


@pytest.fixture
def serve(models: dict[str, Path]) -> Iterator[Callable[..., GrpcServer]]:
    started: list[GrpcServer] = []

    def start(model: str, **settings: Any) -> GrpcServer:
        server = GrpcServer(models[model], **settings)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def client_of() -> Iterator[Callable[[GrpcServer], grpcclient.InferenceServerClient]]:
    clients: list[grpcclient.InferenceServerClient] = []

    def connect(server: GrpcServer) -> grpcclient.InferenceServerClient:
        clients.append(grpcclient.InferenceServerClient(server.address))
        return clients[-1]

    yield connect
    for client in clients:
        client.close()


def _reference(model: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def _input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    given = grpcclient.InferInput(name, list(array.shape), datatype)
    given.set_data_from_numpy(array)
    return given


def _status(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(exc.value.status())


# ------------------------------------------------------------------------------ health, documents


def test_health_metadata_config_like_http(serve: Callable[..., GrpcServer], client_of: Any) -> None:
    server = serve("classifier")
    client = client_of(server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("m") and client.is_model_ready("m", "1")
    assert not client.is_model_ready("other") and not client.is_model_ready("m", "2")
    http_server, http_metadata, http_config = server.app.documents()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "eas-server" and meta["extensions"] == http_server["extensions"]
    model = client.get_model_metadata("m", as_json=True)
    assert model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
    assert [(i["name"], i["datatype"], i["shape"]) for i in model["inputs"]] == [
        ("x", "FP32", ["-1", "8"])  # proto3 JSON writes int64 as strings
    ]
    assert [o["name"] for o in model["outputs"]] == [o["name"] for o in http_metadata["outputs"]]
    config = client.get_model_config("m", as_json=True)["config"]
    assert config["max_batch_size"] == http_config["max_batch_size"] == 32
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        ("x", "TYPE_FP32", ["8"])
    ]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == "5000"
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    server.app.ready = False  # draining: not ready, still live
    assert client.is_server_live() and not client.is_server_ready()
    assert not client.is_model_ready("m")


# ------------------------------------------------------------------------------------ inference


def test_raw_fp32_infer_and_statistics(
    serve: Callable[..., GrpcServer], client_of: Any, models: dict[str, Path]
) -> None:
    server = serve("classifier")
    client = client_of(server)
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    expected = _reference(models["classifier"], {"x": x})
    before = client.get_inference_statistics("m").model_stats[0]
    result = client.infer("m", [_input("x", x, "FP32")], request_id="req-1", model_version="1")
    response = result.get_response()
    assert response.id == "req-1" and (response.model_name, response.model_version) == ("m", "1")
    assert len(response.raw_output_contents) == 2  # raw in, raw out, as Triton answers
    for name, want in expected.items():
        np.testing.assert_allclose(result.as_numpy(name), want, rtol=1e-6, atol=1e-6)
    after = client.get_inference_statistics("m").model_stats[0]
    assert after.inference_count == before.inference_count + 3
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert after.execution_count == before.execution_count + 1
    all_models = client.get_inference_statistics().model_stats
    assert [(s.name, s.version) for s in all_models] == [("m", "1")]
    assert server.requests("success") == 1


def test_typed_contents_get_typed_answers(
    serve: Callable[..., GrpcServer], models: dict[str, Path]
) -> None:
    server = serve("classifier")
    x = np.arange(16, dtype=np.float32).reshape(2, 8) / 10
    request = service_pb2.ModelInferRequest(model_name="m", id="typed")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 8])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    request.outputs.add(name="logits")
    with grpc.insecure_channel(server.address) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert not response.raw_output_contents and [o.name for o in response.outputs] == ["logits"]
    (output,) = response.outputs
    assert (output.datatype, list(output.shape)) == ("FP32", [2, 3])
    got = np.array(output.contents.fp32_contents, dtype=np.float32).reshape(2, 3)
    want = _reference(models["classifier"], {"x": x})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_fp16_raw_infer_and_typed_fp16_refused(
    serve: Callable[..., GrpcServer], client_of: Any, tmp_path: Path
) -> None:
    server = serve("multi_dtype")
    client = client_of(server)
    rng = np.random.default_rng(1)
    arrays: dict[str, np.ndarray] = {
        "int32": rng.integers(-1000, 1000, (3, 2), dtype=np.int32),
        "int64": rng.integers(-(2**40), 2**40, (3, 2), dtype=np.int64),
        "fp16": rng.standard_normal((3, 2)).astype(np.float16),
        "bool": rng.integers(0, 2, (3, 2)).astype(bool),
        "uint8": rng.integers(0, 255, (3, 2), dtype=np.uint8),
    }
    inputs = [_input(f"in_{s}", a, s.upper()) for s, a in arrays.items()]
    result = client.infer("m", inputs)
    for suffix, array in arrays.items():
        got = result.as_numpy(f"out_{suffix}")
        assert got.dtype == array.dtype, suffix
        np.testing.assert_array_equal(got, array)
    request = service_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="in_fp16", datatype="FP16", shape=[1, 2])
    with grpc.insecure_channel(server.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as exc:
            stub.ModelInfer(request)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "FP16 has no typed contents" in exc.value.details()


def test_bytes_raw_and_typed(serve: Callable[..., GrpcServer], client_of: Any) -> None:
    server = serve("string_identity")
    client = client_of(server)
    text = np.array([[b"hello"], ["w\u00f6rld".encode()], [b""]], dtype=object)
    got = client.infer("m", [_input("text", text, "BYTES")]).as_numpy("text_out")
    assert got.shape == (3, 1) and [bytes(v) for v in got.ravel()] == list(text.ravel())
    request = service_pb2.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[3, 1])
    tensor.contents.bytes_contents.extend(text.ravel().tolist())
    with grpc.insecure_channel(server.address) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert list(response.outputs[0].contents.bytes_contents) == list(text.ravel())


def test_requested_outputs_priority_and_timeout(
    serve: Callable[..., GrpcServer], client_of: Any
) -> None:
    server = serve("classifier")
    client = client_of(server)
    x = np.ones((2, 8), dtype=np.float32)
    outputs = [grpcclient.InferRequestedOutput("probs")]
    result = client.infer(
        "m", [_input("x", x, "FP32")], outputs=outputs, priority=1, timeout=5_000_000
    )
    assert [o.name for o in result.get_response().outputs] == ["probs"]
    assert result.as_numpy("logits") is None
    np.testing.assert_allclose(result.as_numpy("probs").sum(axis=1), [1, 1], rtol=1e-6)
    with pytest.raises(InferenceServerException, match="priority 7") as exc:
        client.infer("m", [_input("x", x, "FP32")], priority=7)
    assert _status(exc) == "StatusCode.INVALID_ARGUMENT"


# ---------------------------------------------------------------------------------------- errors


def test_errors_map_to_status_codes_with_http_texts_and_outcomes(
    serve: Callable[..., GrpcServer], client_of: Any
) -> None:
    server = serve("classifier")
    client = client_of(server)
    x = np.ones((1, 8), dtype=np.float32)
    cases = [
        ("nope", _input("x", x, "FP32"), "NOT_FOUND", "model nope is not served here"),
        ("m", _input("y", x, "FP32"), "INVALID_ARGUMENT", "unknown input 'y'"),
        ("m", _input("x", np.ones((1, 4), np.float32), "FP32"), "INVALID_ARGUMENT", "shape"),
        ("m", _input("x", x.astype(np.float64), "FP64"), "INVALID_ARGUMENT", "expects FP32"),
    ]
    for model, given, code, text in cases:
        with pytest.raises(InferenceServerException) as exc:
            client.infer(model, [given])
        assert _status(exc) == f"StatusCode.{code}" and text in str(exc.value.message())
    with pytest.raises(InferenceServerException, match="not served here") as exc:
        client.get_model_metadata("nope")
    assert _status(exc) == "StatusCode.NOT_FOUND"
    assert (server.requests("not_found"), server.requests("bad_request")) == (1, 3)
    for call in (
        client.get_model_repository_index,
        client.get_system_shared_memory_status,
        client.get_cuda_shared_memory_status,
        client.get_log_settings,
        client.get_trace_settings,
    ):
        with pytest.raises(InferenceServerException, match="not supported") as exc:
            call()
        assert _status(exc) == "StatusCode.UNIMPLEMENTED"
    # streaming is implemented (generation); a model that is not generative answers once, final
    with grpc.insecure_channel(server.address) as channel:
        (answer,) = list(
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
                iter([service_pb2.ModelInferRequest(model_name="m")])
            )
        )
    assert "missing inputs" in answer.error_message


def test_a_message_over_the_body_limit_is_resource_exhausted(
    serve: Callable[..., GrpcServer], client_of: Any
) -> None:
    client = client_of(serve("classifier", max_body_mb=0.01))
    big = np.ones((512, 8), dtype=np.float32)  # 16 KiB, over 10 KiB
    with pytest.raises(InferenceServerException) as exc:
        client.infer("m", [_input("x", big, "FP32")])
    assert _status(exc) == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.infer("m", [_input("x", big[:8], "FP32")]).as_numpy("probs").shape == (8, 3)


def test_runtime_failures_are_invalid_argument_or_internal_as_on_http(
    serve: Callable[..., GrpcServer], client_of: Any
) -> None:
    failing = serve("failing")
    client = client_of(failing)
    with pytest.raises(InferenceServerException, match="the model rejected the input") as exc:
        client.infer("m", [_input("idx", np.array([[42]], dtype=np.int64), "INT64")])
    assert _status(exc) == "StatusCode.INVALID_ARGUMENT" and failing.requests("bad_request") == 1
    ok = client.infer("m", [_input("idx", np.array([[3]], dtype=np.int64), "INT64")])
    assert ok.as_numpy("out").shape == (1, 1, 4)
    broken = serve("classifier", broken=True)
    with pytest.raises(InferenceServerException, match="RuntimeError: the device fell off") as exc:
        client_of(broken).infer("m", [_input("x", np.ones((1, 8), np.float32), "FP32")])
    assert _status(exc) == "StatusCode.INTERNAL" and broken.requests("error") == 1


def test_one_status_table_with_the_outcomes_of_http() -> None:
    http = {cls: outcome for cls, _, outcome in _STATUS}
    assert {cls: outcome for cls, _, outcome in CODES} == http
    public = {
        n
        for n, v in vars(eas_server.grpc).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    }
    assert public == set(eas_server.grpc.__all__)


def test_token_in_metadata(serve: Callable[..., GrpcServer], client_of: Any) -> None:
    server = serve("classifier", token="s3cret")
    client = client_of(server)
    assert client.is_server_live() and client.is_server_ready()  # health stays open
    x = np.ones((1, 8), dtype=np.float32)
    for headers, text in ((None, "missing token"), ({"authorization": "Bearer nope"}, "invalid")):
        with pytest.raises(InferenceServerException, match=text) as exc:
            client.infer("m", [_input("x", x, "FP32")], headers=headers)
        assert _status(exc) == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as exc:
            client.get_model_metadata("m", headers=headers)
        assert _status(exc) == "StatusCode.UNAUTHENTICATED"
    assert server.requests("unauthorized") == 2
    for value in ("Bearer s3cret", "s3cret"):  # EAS also takes the bare token
        result = client.infer("m", [_input("x", x, "FP32")], headers={"authorization": value})
        assert result.as_numpy("probs").shape == (1, 3)
        assert client.is_model_ready("m", headers={"authorization": value})


# ----------------------------------------------------------------------------- batching, binding


def test_concurrent_infers_are_answered_and_batched(
    serve: Callable[..., GrpcServer], client_of: Any, models: dict[str, Path]
) -> None:
    """The first batch holds the worker until every other request waits in the queue: the
    batcher must then run those in fewer batches than requests, whatever the machine's speed."""
    gate = threading.Event()
    server = serve("classifier", gate=gate)
    client = client_of(server)
    xs = [np.full((1, 8), k / 32, dtype=np.float32) for k in range(32)]
    want = _reference(models["classifier"], {"x": np.concatenate(xs)})["probs"]

    def infer(k: int) -> np.ndarray:
        return np.asarray(client.infer("m", [_input("x", xs[k], "FP32")]).as_numpy("probs"))

    def queued() -> float:
        return server.app.metrics.registry.get_sample_value("eas_queue_depth", LABELS) or 0.0

    with ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(infer, k) for k in range(32)]
        try:
            wait_until(lambda: sum(server.rows_run) + queued() == 32)
        finally:
            gate.set()
        results = [f.result(30) for f in futures]
    for k, got in enumerate(results):
        np.testing.assert_allclose(got[0], want[k], rtol=1e-5, atol=1e-6)
    stats = client.get_inference_statistics("m").model_stats[0]
    assert stats.inference_count == 32 and stats.execution_count < 32  # requests shared batches


def test_a_busy_port_is_an_os_error(serve: Callable[..., GrpcServer]) -> None:
    server = serve("classifier")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="cannot bind gRPC"):
            server.call(start_grpc(server.app, "127.0.0.1", taken.getsockname()[1]))


def test_grpc_port_setting(tmp_path: Path, models: dict[str, Path]) -> None:
    assert _parser().parse_args(["--grpc-port", "0"]).grpc_port == 0
    service = tmp_path / "service.json"
    service.write_text(json.dumps({"metadata": {"rpc": {"grpc_port": 9000}}}))
    assert load_service_json(service) == {"grpc_port": 9000}
    flags = {"model": str(models["classifier"]), "name": "m"}
    assert ServerSettings.load(flags).grpc_port is None
    assert ServerSettings.load(flags, {"grpc_port": 9000}).grpc_port == 9000


# --------------------------------------------------------------------------------- real process


def test_eas_server_process_serves_grpc_and_registers_its_port(
    start_server: StartServer, models: dict[str, Path], tmp_path: Path
) -> None:
    url = f"sqlite://{tmp_path / 'store.db'}"
    server = start_server(models["classifier"], "--grpc-port", "0", "--store", url)
    assert server.proc.stdout is not None
    line = server.proc.stdout.readline().strip()
    assert line.startswith("grpc listening on 127.0.0.1:"), line
    address = line.removeprefix("grpc listening on ")
    port = int(address.rsplit(":", 1)[1])
    client = grpcclient.InferenceServerClient(address)
    try:
        x = np.ones((2, 8), dtype=np.float32)
        assert client.infer("m", [_input("x", x, "FP32")]).as_numpy("probs").shape == (2, 3)
    finally:
        client.close()
    with open_store(url, snapshot_dir=False, failover_dir=False) as store:
        wait_until(lambda: bool(store.instances("m-1")))
        (instance,) = store.instances("m-1")
        assert instance.address == server.address and instance.payload["grpc_port"] == port
        assert server.stop() == 0
        assert store.instances("m-1") == []
