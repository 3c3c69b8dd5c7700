"""The generation routes over HTTP (``/generate``, ``/generate_stream``, ``/infer`` of a seq2seq
model) on the real micro Whisper bundle: served in process (``build_app`` + uvicorn on a uvloop
loop of a thread of its own, as eas-server runs them, so that tests can read the engine's rows),
and as the real eas-server process, alone and in repository mode.

``GenerationServer`` is imported by test_generate_grpc.py too.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
import uvloop
from prometheus_client import CollectorRegistry
from tokenizers import Tokenizer, models

from eas_server._app import EasApp
from eas_server._build import build_app
from eas_server._http import uvicorn_config
from eas_server._settings import ServerSettings
from eas_server.generation._engine import GenerationEngine
from eas_server.processors import Processor, create_processor
from tests.fixtures.servers import ServerProcess
from tests.fixtures.whisper import whisper_model_dir

from .conftest import StartServer, wait_until

RATE = 16000
AUDIO = (0.1 * np.sin(np.arange(RATE) * 2 * np.pi * 440 / RATE)).astype(np.float32)
"""One second of a 440 Hz tone."""
LABELS = {"model": "w", "version": "1", "processor": "seq2seq"}
LONG = 400
"""max_new_tokens of a request that runs far longer than a test waits (a step takes ms)."""


class GenerationServer:
    """A seq2seq model served in process over HTTP (and gRPC with ``grpc=True``)."""

    def __init__(self, bundle: Path, *, grpc: bool = False, **settings: Any) -> None:
        self.settings = ServerSettings(model=str(bundle), name="w", intra_op_threads=1, **settings)
        assert self.settings.processor == "seq2seq"
        self.processor: Processor = create_processor(
            "seq2seq", str(bundle), intra_op_threads=1, **self.settings.processor_options()
        )
        self.processor.load()
        self.app: EasApp = build_app(self.settings, self.processor, CollectorRegistry())
        self.url = ""
        self.grpc_address = ""
        self._grpc = grpc
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="generation-test", daemon=True)
        self._thread.start()
        assert self._started.wait(60), "the server did not start"
        if self._error is not None:
            raise self._error

    @property
    def engine(self) -> GenerationEngine:
        assert self.app.generator is not None
        return self.app.generator

    def _run(self) -> None:
        try:
            uvloop.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        server = uvicorn.Server(uvicorn_config(self.app, log_level="warning", drain_timeout_s=1))
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        deadline = time.monotonic() + 30
        while not server.started:
            assert not serving.done() and time.monotonic() < deadline, "uvicorn did not start"
            await asyncio.sleep(0.01)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        grpc_server = None
        if self._grpc:
            from eas_server.grpc import start_grpc

            grpc_server, port = await start_grpc(self.app, "127.0.0.1", 0)
            self.grpc_address = f"127.0.0.1:{port}"
        self.app.batcher.start()
        self.app.ready = True
        self._started.set()
        await self._stop.wait()
        server.should_exit = True
        await serving
        if grpc_server is not None:
            await grpc_server.stop(0)
        await self.app.batcher.close()

    def sample(self, name: str) -> float:
        value = self.app.metrics.registry.get_sample_value(name, LABELS)
        return value or 0.0

    def requests(self, outcome: str) -> float:
        value = self.app.metrics.registry.get_sample_value(
            "eas_requests_total", {**LABELS, "outcome": outcome}
        )
        return value or 0.0

    def close(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self.processor.close()


def tokenized_bundle(bundle: Path, into: Path) -> Path:
    """A copy of ``bundle`` (ONNX files linked) with a word-level tokenizer.json: token i is
    ``t{i}``, ids from 50257 (Whisper's special tokens) are special."""
    into.mkdir()
    for item in bundle.iterdir():
        if item.suffix == ".onnx":
            (into / item.name).symlink_to(item)
        else:
            shutil.copy(item, into / item.name)
    vocab_size = json.loads((bundle / "generation.json").read_text())["vocab_size"]
    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, "t0"))
    tokenizer.add_special_tokens([f"t{i}" for i in range(50257, vocab_size)])
    tokenizer.save(str(into / "tokenizer.json"))
    return into


def words(tokens: list[int]) -> str:
    """What the test tokenizer makes of ``tokens`` (none of them special)."""
    return " ".join(f"t{t}" for t in tokens)


@pytest.fixture(scope="module")
def bundle() -> Path:
    return whisper_model_dir("micro")


@pytest.fixture(scope="module")
def server(bundle: Path) -> Iterator[GenerationServer]:
    served = GenerationServer(bundle, max_batch_size=4)
    yield served
    served.close()


@pytest.fixture(scope="module")
def worded(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GenerationServer]:
    served = GenerationServer(tokenized_bundle(bundle, tmp_path_factory.mktemp("t") / "w"))
    yield served
    served.close()


@pytest.fixture
def http(server: GenerationServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def b64(audio: np.ndarray) -> str:
    return base64.b64encode(audio.astype("<f4").tobytes()).decode()


def infer_body(audio: np.ndarray, **parameters: Any) -> dict[str, Any]:
    entry = {"name": "audio", "datatype": "FP32", "shape": [audio.size], "data": audio.tolist()}
    return {"inputs": [entry], "parameters": parameters}


def events(text: str) -> list[dict[str, Any]]:
    """The documents of an SSE body, checking its framing: ``data: {json}`` and a blank line."""
    *chunks, rest = text.split("\n\n")
    assert rest == "", f"the stream does not end with a blank line: {rest!r}"
    assert all(chunk.startswith("data: ") and "\n" not in chunk for chunk in chunks), chunks
    return [json.loads(chunk.removeprefix("data: ")) for chunk in chunks]


def outputs(document: dict[str, Any]) -> dict[str, list[Any]]:
    return {o["name"]: o["data"] for o in document["outputs"]}


# ---------------------------------------------------------------------- one answer, three ways


def test_generate_infer_and_stream_give_the_same_tokens(
    server: GenerationServer, http: httpx.Client
) -> None:
    parameters = {"max_new_tokens": 6}
    whole = http.post(
        "/v2/models/w/generate", json={"id": "a", "audio": AUDIO.tolist(), "parameters": parameters}
    )
    assert whole.status_code == 200, whole.text
    answer = whole.json()
    tokens = answer["tokens"]
    assert len(tokens) == answer["output_tokens"] <= 6 and tokens
    assert answer["finish_reason"] == ("length" if len(tokens) == 6 else "eos")
    assert (answer["model_name"], answer["model_version"], answer["id"]) == ("w", "1", "a")
    assert "text" not in answer  # no tokenizer in the bundle
    timing = answer["timing"]
    assert 0 <= timing["queue_ms"] <= timing["time_to_first_token_ms"] <= timing["total_ms"]
    as_base64 = http.post(
        "/v2/models/w/versions/1/generate", json={"audio": b64(AUDIO), "parameters": parameters}
    )
    assert as_base64.json()["tokens"] == tokens and "id" not in as_base64.json()
    infer = http.post("/v2/models/w/infer", json=infer_body(AUDIO, **parameters))
    assert infer.status_code == 200, infer.text
    assert outputs(infer.json()) == {"tokens": tokens}
    assert [o["datatype"] for o in infer.json()["outputs"]] == ["INT64"]
    stream = http.post(
        "/v2/models/w/generate_stream", json={"audio": b64(AUDIO), "parameters": parameters}
    )
    streamed = events(stream.text)
    assert [t for event in streamed for t in event["tokens"]] == tokens


def test_sse_events_one_per_token_then_the_final_one(
    server: GenerationServer, http: httpx.Client
) -> None:
    body = {"id": "s1", "audio": b64(AUDIO), "parameters": {"max_new_tokens": 5}}
    with http.stream("POST", "/v2/models/w/generate_stream", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["cache-control"] == "no-cache"
        chunks = list(response.iter_raw())
        text = b"".join(chunks).decode()
    streamed = events(text)
    *tokens, final = streamed
    assert len(chunks) >= 2  # sent as they came, not as one body
    for index, event in enumerate(tokens):
        assert event == {"model_name": "w", "model_version": "1", "id": "s1", "index": index,
                         "tokens": event["tokens"]}  # fmt: skip
        assert len(event["tokens"]) == 1
    assert final == {
        "model_name": "w", "model_version": "1", "id": "s1", "index": len(tokens), "tokens": [],
        "finish_reason": final["finish_reason"], "output_tokens": len(tokens),
    }  # fmt: skip
    assert final["finish_reason"] in ("length", "eos")
    beams = http.post(
        "/v2/models/w/generate_stream",
        json={"audio": b64(AUDIO), "parameters": {"max_new_tokens": 4, "num_beams": 2}},
    )
    *beam_tokens, beam_final = events(beams.text)
    assert len(beam_tokens) <= 1  # beam search: the answer in one event at the end
    assert beam_final["output_tokens"] == sum(len(e["tokens"]) for e in beam_tokens)


def test_text_with_a_tokenizer_in_the_bundle(worded: GenerationServer) -> None:
    with httpx.Client(base_url=worded.url, timeout=60) as http:
        body = {"audio": b64(AUDIO), "parameters": {"max_new_tokens": 5}}
        answer = http.post("/v2/models/w/generate", json=body).json()
        assert answer["text"] == words(answer["tokens"]) != ""
        streamed = events(http.post("/v2/models/w/generate_stream", json=body).text)
        assert "".join(event["text"] for event in streamed) == answer["text"]
        assert streamed[-1]["text"] == ""
        infer = http.post("/v2/models/w/infer", json=infer_body(AUDIO, max_new_tokens=5))
        assert outputs(infer.json()) == {"tokens": answer["tokens"], "text": [answer["text"]]}
        only_text = infer_body(AUDIO, max_new_tokens=5) | {"outputs": [{"name": "text"}]}
        assert outputs(http.post("/v2/models/w/infer", json=only_text).json()) == {
            "text": [answer["text"]]
        }
        metadata = http.get("/v2/models/w").json()
        assert [(o["name"], o["datatype"]) for o in metadata["outputs"]] == [
            ("tokens", "INT64"), ("text", "BYTES")
        ]  # fmt: skip


# ------------------------------------------------------------------------------------ refusals

_31_S = np.zeros(31 * RATE, np.float32)
_NAN = np.array([0.0, np.nan, 0.0], np.float32)


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"{not json", "the body is not JSON"),
        (b"[1, 2]", "the body is a list; expected an object"),
        ({"parameters": {}}, "the body has no 'audio'"),
        ({"audio": [0.1], "language": "en"}, "unknown keys ['language'] in the body"),
        ({"audio": [0.1], "id": 7}, "'id' must be a string, got a number"),
        ({"audio": []}, "audio is empty"),
        ({"audio": b64(_31_S)}, "audio is 31.000 s long"),
        ({"audio": b64(_NAN)}, "audio sample 1 is nan"),
        ({"audio": "bm90IGF1ZGlv!"}, "'audio' is a string but not base64"),
        ({"audio": base64.b64encode(b"\0" * 6).decode()}, "decodes to 6 bytes, not a whole"),
        ({"audio": {"samples": [0.1]}}, "'audio' is an object; expected a JSON list of numbers"),
        ({"audio": [0.1, "0.2"]}, "'audio' element 1 is a string"),
        ({"audio": [[0.1, 0.2]]}, "'audio' element 0 is a list"),
        ({"audio": [True, 0.5]}, "'audio' element 0 is a boolean"),
        ({"audio": 0.5}, "'audio' is a number"),
        ({"audio": [0.1], "parameters": [1]}, "parameters must be an object, got a list"),
    ],
)
def test_bad_bodies_and_audio_are_400_saying_what_is_expected(
    http: httpx.Client, body: Any, said: str
) -> None:
    for route in ("generate", "generate_stream"):
        if isinstance(body, bytes):
            response = http.post(f"/v2/models/w/{route}", content=body)
        else:
            response = http.post(f"/v2/models/w/{route}", json=body)
        assert response.status_code == 400, response.text
        assert said in response.json()["error"], response.json()


@pytest.mark.parametrize(
    ("parameters", "said"),
    [
        ({"num_beams": 5}, "num_beams must be an integer in [1, 4]"),
        ({"num_beams": 0}, "num_beams must be an integer in [1, 4]"),
        ({"max_new_tokens": 0}, "max_new_tokens must be an integer in [1, 444]"),
        ({"max_new_tokens": 445}, "max_new_tokens must be an integer in [1, 444]"),
        ({"max_new_tokens": 4.0}, "max_new_tokens must be an integer"),
        ({"temperature": 0.7, "top_k": 5}, "unknown parameters ['temperature', 'top_k']"),
        ({"timeout": -1}, "'timeout' must be a non-negative integer"),
    ],
)
def test_bad_parameters_are_400(http: httpx.Client, parameters: Any, said: str) -> None:
    body = {"audio": b64(AUDIO), "parameters": parameters}
    for route in ("generate", "generate_stream"):
        response = http.post(f"/v2/models/w/{route}", json=body)
        assert response.status_code == 400 and said in response.json()["error"], response.text
    infer = http.post("/v2/models/w/infer", json=infer_body(AUDIO, **parameters))
    assert infer.status_code == 400 and said in infer.json()["error"], infer.text


def test_infer_refuses_other_inputs_and_unknown_parameters(http: httpx.Client) -> None:
    as_int16 = {"name": "audio", "datatype": "INT16", "shape": [3], "data": [1, 2, 3]}
    response = http.post("/v2/models/w/infer", json={"inputs": [as_int16]})
    assert response.status_code == 400
    assert "input 'audio' has datatype INT16; the model expects FP32" in response.json()["error"]
    two_d = {"name": "audio", "datatype": "FP32", "shape": [1, 2], "data": [0.1, 0.2]}
    response = http.post("/v2/models/w/infer", json={"inputs": [two_d]})
    assert response.status_code == 400 and "expects [-1]" in response.json()["error"]
    # what OIP clients send on their own is accepted; a typo is not
    ok = http.post(
        "/v2/models/w/infer",
        json=infer_body(AUDIO, max_new_tokens=2, priority=1, binary_data_output=False),
    )
    assert ok.status_code == 200, ok.text
    typo = http.post("/v2/models/w/infer", json=infer_body(AUDIO, max_new_token=2))
    assert typo.status_code == 400
    assert "unknown parameters ['max_new_token']" in typo.json()["error"]


def test_a_request_past_its_timeout_before_decoding_is_503(http: httpx.Client) -> None:
    body = {"audio": b64(AUDIO), "parameters": {"max_new_tokens": 2, "timeout": 1}}  # 1 us
    for route in ("generate", "generate_stream"):
        response = http.post(f"/v2/models/w/{route}", json=body)
        assert response.status_code == 503, response.text
        assert "past its timeout" in response.json()["error"]
        assert response.headers["retry-after"] == "1"


def test_generate_on_a_model_that_is_not_generative(models: dict[str, Path]) -> None:
    settings = ServerSettings(model=str(models["identity"]), name="m", intra_op_threads=1)
    processor = create_processor("onnx", str(models["identity"]), intra_op_threads=1)
    processor.load()
    app = build_app(settings, processor, CollectorRegistry())
    assert app.generator is None

    async def call() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
            return [
                await client.post(f"/v2/models/m/{route}", json={"audio": [0.1]})
                for route in ("generate", "generate_stream")
            ]

    try:
        for response in asyncio.run(call()):
            assert response.status_code == 400
            assert response.json()["error"].startswith("model m is not generative")
    finally:
        processor.close()
    bad = app.metrics.registry.get_sample_value(
        "eas_requests_total",
        {"model": "m", "version": "1", "processor": "onnx", "outcome": "bad_request"},
    )
    assert bad == 2


# ------------------------------------------------------------------------------- load and metrics


def test_queue_full_is_503(bundle: Path) -> None:
    """One decoder row, one waiting place: a running request, a waiting one, then a refusal."""
    served = GenerationServer(bundle, max_batch_size=1, max_queue_size=1)
    try:
        engine = served.engine
        address = served.url.removeprefix("http://")
        running = _post(address, "generate_stream", {"audio": b64(AUDIO), "parameters": {
            "max_new_tokens": LONG}})  # fmt: skip
        _read_until(running, b"data: ")
        with httpx.Client(base_url=served.url, timeout=60) as http, _Background() as background:
            waiting = background.call(
                http.post, "/v2/models/w/generate",
                json={"audio": b64(AUDIO), "parameters": {"max_new_tokens": 2}},
            )  # fmt: skip
            wait_until(lambda: len(engine.scheduler.waiting) == 1)
            refused = http.post("/v2/models/w/generate", json={"audio": b64(AUDIO)})
            assert refused.status_code == 503, refused.text
            assert "generation requests are waiting (the limit)" in refused.json()["error"]
            assert refused.headers["retry-after"] == "1"
            running.close()  # its row goes to the waiting request
            answer = waiting.result(60)
            assert answer.status_code == 200 and answer.json()["output_tokens"] >= 1
        assert served.requests("queue_full") == 1
    finally:
        served.close()


def test_metrics_count_generation(server: GenerationServer, http: httpx.Client) -> None:
    before = {
        "tokens": server.sample("eas_generation_output_tokens_total"),
        "ttft": server.sample("eas_generation_time_to_first_token_seconds_count"),
        "per_token": server.sample("eas_generation_time_per_output_token_seconds_count"),
        "success": server.requests("success"),
        "bad": server.requests("bad_request"),
        "duration": server.sample("eas_request_duration_seconds_count"),
    }
    body = {"audio": b64(AUDIO), "parameters": {"max_new_tokens": 3}}
    whole = http.post("/v2/models/w/generate", json=body).json()
    streamed = events(http.post("/v2/models/w/generate_stream", json=body).text)
    assert http.post("/v2/models/w/generate", json={"audio": []}).status_code == 400
    count = whole["output_tokens"]
    assert streamed[-1]["output_tokens"] == count
    wait_until(
        lambda: server.sample("eas_generation_output_tokens_total") >= before["tokens"] + 2 * count
    )  # fmt: skip (the engine thread reports as it posts the events)
    assert server.sample("eas_generation_output_tokens_total") == before["tokens"] + 2 * count
    assert server.sample("eas_generation_time_to_first_token_seconds_count") == before["ttft"] + 2
    if count > 1:
        per_token = server.sample("eas_generation_time_per_output_token_seconds_count")
        assert per_token == before["per_token"] + 2
    assert server.requests("success") == before["success"] + 2
    assert server.requests("bad_request") == before["bad"] + 1
    assert server.sample("eas_request_duration_seconds_count") == before["duration"] + 2
    assert server.sample("eas_generation_running_sequences") == 0
    assert server.sample("eas_generation_waiting_sequences") == 0
    exposition = http.get("/metrics").text
    for name in (
        "eas_generation_time_to_first_token_seconds_bucket",
        "eas_generation_time_per_output_token_seconds_bucket",
        "eas_generation_output_tokens_total",
        "eas_generation_running_sequences",
        "eas_generation_waiting_sequences",
    ):
        assert f"{name}{{" in exposition, name


# ----------------------------------------------------------------------------------- disconnects


class _Background:
    """Calls run on threads of their own, joined on exit."""

    def __enter__(self) -> _Background:
        self._threads: list[threading.Thread] = []
        return self

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> _Result:
        result = _Result()

        def run() -> None:
            try:
                result.value = fn(*args, **kwargs)
            except BaseException as exc:
                result.error = exc
            result.done.set()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._threads.append(thread)
        return result

    def __exit__(self, *exc: object) -> None:
        for thread in self._threads:
            thread.join(60)


class _Result:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def result(self, timeout: float) -> Any:
        assert self.done.wait(timeout), "the call did not return"
        if self.error is not None:
            raise self.error
        return self.value


def _post(address: str, route: str, document: dict[str, Any]) -> socket.socket:
    """A request on a raw socket (closed by the test to play a client that goes away)."""
    host, port = address.split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    body = json.dumps(document).encode()
    head = (
        f"POST /v2/models/w/{route} HTTP/1.1\r\nHost: {address}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    seen = b""
    while marker not in seen:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection before {marker!r}: {seen!r}"
        seen += chunk
    return seen


@pytest.mark.parametrize("route", ["generate_stream", "generate", "infer"])
def test_a_client_that_goes_away_frees_its_rows(server: GenerationServer, route: str) -> None:
    engine = server.engine
    finished = server.sample("eas_generation_output_tokens_total")
    if route == "infer":
        document = infer_body(AUDIO, max_new_tokens=LONG)
    else:
        document = {"audio": b64(AUDIO), "parameters": {"max_new_tokens": LONG}}
    sock = _post(server.url.removeprefix("http://"), route, document)
    if route == "generate_stream":
        assert b"HTTP/1.1 200" in _read_until(sock, b"data: ")
    else:
        wait_until(lambda: engine.scheduler.rows_in_use == 1 and engine.steps > 0)
    steps = engine.steps
    sock.close()
    wait_until(lambda: engine.scheduler.rows_in_use == 0)
    # Freed at the step after the server saw the close (one more may have been running):
    # nowhere near the LONG steps the request asked for, and it never finished.
    assert engine.steps - steps <= 3, (steps, engine.steps)
    assert server.sample("eas_generation_output_tokens_total") == finished
    assert not engine.scheduler.running and not engine.scheduler.waiting


def test_an_error_after_the_first_event_ends_the_stream_with_an_error_event(
    bundle: Path,
) -> None:
    """The engine stops (the server shuts down) while a stream runs: the stream, already 200,
    ends with ``data: {"error": ...}`` and counts as a failure."""
    served = GenerationServer(bundle, max_batch_size=1)
    try:
        document = {"audio": b64(AUDIO), "parameters": {"max_new_tokens": LONG}}
        sock = _post(served.url.removeprefix("http://"), "generate_stream", document)
        assert b"HTTP/1.1 200" in _read_until(sock, b"data: ")
        served.engine.stop()
        body = _read_until(sock, b"\r\n0\r\n\r\n")  # the last chunk of a chunked body
        sock.close()
        last = body.rsplit(b"data: ", 1)[1].split(b"\n\n")[0]
        assert json.loads(last) == {"error": "the server is shutting down"}
        assert served.requests("unavailable") == 1 and served.requests("success") == 0
    finally:
        served.close()


# --------------------------------------------------------------------------- eas-server processes


def test_eas_server_serves_a_generation_bundle_in_one_process(
    start_server: StartServer, bundle: Path
) -> None:
    server = start_server(bundle, "--frontends", "2", "--intra-op-threads", "1", name="w")
    with httpx.Client(base_url=server.url, timeout=60) as http:
        body = {"audio": b64(AUDIO), "parameters": {"max_new_tokens": 3}}
        answer = http.post("/v2/models/w/generate", json=body)
        assert answer.status_code == 200, answer.text
        streamed = events(http.post("/v2/models/w/generate_stream", json=body).text)
        assert [t for e in streamed for t in e["tokens"]] == answer.json()["tokens"]
        config = http.get("/v2/models/w/config").json()
        assert config["platform"] == "seq2seq" and config["max_batch_size"] == 0
        parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
        spec = json.loads(parameters["generation"])
        assert spec["eos_token_id"] == 50257 and spec["decoder_start"][0] == 50258
        assert parameters["max_beams"] == "4" and parameters["max_output_tokens"] == "444"
        assert "eas_generation_output_tokens_total{" in http.get("/metrics").text
    server.terminate()
    assert server.proc.wait(30) == 0
    assert "--frontends 2 ignored: a generative model is served by one process" in server.stderr()


def test_repository_mode_routes_generation_to_the_hosted_model(
    tmp_path: Path, bundle: Path
) -> None:
    repository = tmp_path / "repository"
    repository.mkdir()
    server = ServerProcess(["--model-repository", str(repository), "--port", "0",
                            "--intra-op-threads", "1"])  # fmt: skip
    try:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            config = json.dumps({"model_path": str(bundle), "processor": "seq2seq"})
            loaded = http.post(
                "/v2/repository/models/w/load", json={"parameters": {"config": config}}
            )
            assert loaded.status_code == 200, loaded.text
            body = {"audio": b64(AUDIO), "parameters": {"max_new_tokens": 3}}
            answer = http.post("/v2/models/w/generate", json=body)
            assert answer.status_code == 200, answer.text
            tokens = answer.json()["tokens"]
            streamed = events(http.post("/v2/models/w/versions/1/generate_stream", json=body).text)
            assert [t for e in streamed for t in e["tokens"]] == tokens
            infer = http.post("/v2/models/w/infer", json=infer_body(AUDIO, max_new_tokens=3))
            assert outputs(infer.json()) == {"tokens": tokens}
            missing = http.post("/v2/models/nope/generate", json=body)
            assert missing.status_code == 404
            exposition = http.get("/metrics").text
            assert 'eas_generation_output_tokens_total{model="w"' in exposition
    finally:
        server.stop()
