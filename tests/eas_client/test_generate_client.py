"""Generation from the client side: the pure request/answer/SSE pieces, the retry and pinning
policy of ``generate`` / ``generate_stream`` over scripted answers (``httpx.MockTransport``), an
early close seen by a real socket, and ``EasClient`` / ``AsyncEasClient`` against real eas-server
processes serving the micro Whisper bundle."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import socket
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from hypothesis import given, settings, strategies as st

from eas_client import (
    AsyncEasClient,
    ConnectError,
    EasClient,
    GenerateChunk,
    InvalidRequest,
    NoInstanceAvailable,
    ProtocolError,
    ServerError,
    ServiceUnavailable,
    SseDecoder,
    encode_audio,
    encode_error,
)
from eas_client._generate import GenerateRequest, parse_chunk, parse_result
from tests.eas_client.loopback import Server
from tests.fixtures.servers import ServerProcess
from tests.fixtures.waiting import wait
from tests.fixtures.whisper import WhisperBuildUnavailable, whisper_model_dir

AUDIO = (0.1 * np.sin(np.linspace(0, 200, 8000))).astype(np.float32)  # 0.5 s at 16 kHz
URLS = ["http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000"]

# ------------------------------------------------------------------------------ pure: audio


def test_audio_goes_as_base64_of_float32_little_endian() -> None:
    samples = np.array([0.5, -0.25, 1.0], dtype=np.float64)
    decoded = np.frombuffer(base64.b64decode(encode_audio(samples)), dtype="<f4")
    np.testing.assert_array_equal(decoded, samples.astype(np.float32))
    assert encode_audio([0.5, -0.25, 1.0]) == encode_audio(samples)  # a list of floats too
    big_endian = samples.astype(">f4")
    assert encode_audio(big_endian) == encode_audio(samples)


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        (np.array([1, 2], dtype=np.int16), "int16 samples; expected float samples in [-1, 1]"),
        ([1, 2, 3], "int64 samples"),
        (np.array([True]), "bool samples"),
        (np.zeros((2, 3), np.float32), "must be 1-D (one mono utterance), got shape [2, 3]"),
        (np.zeros(0, np.float32), "audio is empty"),
        (np.array([0.0, np.nan], np.float32), "audio sample 1 is nan; samples must be finite"),
        (np.array([np.inf], np.float64), "audio sample 0 is inf"),
        ("0.5,0.2", "got str"),
        (np.array([1 + 2j]), "got dtype complex128"),
        (np.array(["a"]), "got dtype <U1"),
    ],
    ids=["int16", "int-list", "bool", "2d", "empty", "nan", "inf", "str", "complex", "text"],
)
def test_audio_that_is_not_1d_finite_floats_is_refused_before_sending(
    audio: Any, message: str
) -> None:
    with pytest.raises(ProtocolError, match=re.escape(message)):
        encode_audio(audio)


def test_the_body_carries_the_parameters_and_the_time_left_in_microseconds() -> None:
    request = GenerateRequest(AUDIO, max_new_tokens=8, num_beams=2, request_id="r-1")
    body = orjson.loads(request.body(1.5))
    assert body["id"] == "r-1" and body["audio"] == encode_audio(AUDIO)
    assert body["parameters"] == {"num_beams": 2, "max_new_tokens": 8, "timeout": 1_500_000}
    assert orjson.loads(request.body(0.0))["parameters"]["timeout"] == 1  # never 0 (= none)
    assert "id" not in orjson.loads(GenerateRequest(AUDIO).body(1))
    assert "max_new_tokens" not in orjson.loads(GenerateRequest(AUDIO).body(1))["parameters"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_beams": 0}, "num_beams must be an integer >= 1, got 0"),
        ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1, got 0"),
        ({"max_new_tokens": 2.0}, "max_new_tokens must be an integer >= 1, got 2.0"),
        ({"num_beams": True}, "num_beams must be an integer >= 1, got True"),
        ({"request_id": 7}, "request_id must be a string, got int"),
    ],
)
def test_bad_parameters_are_refused_before_sending(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GenerateRequest(AUDIO, **options)


# -------------------------------------------------------------------------------- pure: SSE


STREAM = (
    b": keep-alive\r\n"
    b'data: {"index": 0, "tokens": [5], "text": "a"}\r\n\r\n'
    b"event: token\nid: 2\nretry: 10\n"
    b'data: {"index": 1,\ndata:"tokens": [6], "text": "\xc3\xa9"}\n\n'
    b"data\n\n"  # a data line without a colon: empty data
    b"\n\n"  # blank lines alone: no event
    b'data: {"index": 2, "tokens": [], "finish_reason": "eos", "output_tokens": 2}\r\r'
)
EVENTS = [
    '{"index": 0, "tokens": [5], "text": "a"}',
    '{"index": 1,\n"tokens": [6], "text": "é"}',
    "",
    '{"index": 2, "tokens": [], "finish_reason": "eos", "output_tokens": 2}',
]


def _decode_in_pieces(stream: bytes, cuts: list[int]) -> list[str]:
    decoder = SseDecoder()
    events: list[str] = []
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        events += decoder.feed(stream[start:cut])
        start = cut
    assert not decoder.pending
    return events


def test_sse_events_whole_and_byte_by_byte() -> None:
    assert _decode_in_pieces(STREAM, []) == EVENTS
    assert _decode_in_pieces(STREAM, list(range(len(STREAM)))) == EVENTS


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_sse_events_do_not_depend_on_how_the_bytes_arrive(cuts: list[int]) -> None:
    assert _decode_in_pieces(STREAM, cuts) == EVENTS


def test_sse_reports_an_event_cut_short_and_refuses_what_is_not_utf8() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b'data: {"index": 0') == [] and decoder.pending
    decoder = SseDecoder()
    assert decoder.feed(b"data: x\n") == [] and decoder.pending  # no blank line yet
    with pytest.raises(ProtocolError, match="not UTF-8"):
        SseDecoder().feed(b"data: \xff\n\n")


def test_events_parse_into_chunks_and_an_error_event_raises_a_server_error() -> None:
    chunk = parse_chunk(
        '{"model_name": "w", "model_version": "2", "index": 3, "tokens": [7, 8], "text": "hi"}'
    )
    assert chunk == GenerateChunk(3, (7, 8), "hi", None, None, "w", "2")
    final = parse_chunk('{"index": 5, "tokens": [], "finish_reason": "length", "output_tokens": 5}')
    assert final.finish_reason == "length" and final.output_tokens == 5 and final.tokens == ()
    with pytest.raises(ServerError, match="500: the stream failed after it started: boom") as info:
        parse_chunk('{"error": "boom"}')
    assert info.value.status_code == 500 and info.value.message.endswith("boom")
    for bad, what in [
        ("[1]", "must be a JSON object"),
        ('{"index": -1, "tokens": []}', "'index' must be an integer >= 0"),
        ('{"index": 0, "tokens": [1.5]}', "'tokens' must be a list of token ids"),
        ('{"index": 0, "tokens": [true]}', "'tokens' must be a list of token ids"),
        ('{"index": 0, "tokens": [], "finish_reason": "done"}', "one of eos, length, deadline"),
        ('{"index": 0, "tokens": [], "text": 3}', "'text' must be a str"),
        ("{", "not valid JSON"),
    ]:
        with pytest.raises(ProtocolError, match=what):
            parse_chunk(bad)


def test_whole_answers_parse_into_a_result() -> None:
    answer = {
        "model_name": "w",
        "model_version": "",
        "id": "r",
        "tokens": [1, 2],
        "text": "ab",
        "finish_reason": "eos",
        "output_tokens": 2,
        "timing": {"queue_ms": 0.5, "time_to_first_token_ms": None, "total_ms": 9},
    }
    result = parse_result(orjson.dumps(answer))
    assert result.tokens == (1, 2) and result.text == "ab" and result.finish_reason == "eos"
    assert result.timing == {"queue_ms": 0.5, "total_ms": 9.0}  # no first token: no key
    assert result.model_version is None and result.id == "r" and result.output_tokens == 2
    with pytest.raises(ProtocolError, match="has no 'finish_reason'"):
        parse_result(b'{"tokens": []}')


# ---------------------------------------------------------------- scripted retries and pins

Behaviour = Callable[[httpx.Request], httpx.Response]


def _event(document: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(document) + b"\n\n"


def _events(tokens: list[int], reason: str = "length") -> list[bytes]:
    events = [_event({"index": i, "tokens": [t]}) for i, t in enumerate(tokens)]
    final = {"index": len(tokens), "tokens": [], "finish_reason": reason}
    return [*events, _event({**final, "output_tokens": len(tokens)})]


class _Body(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A scripted body for either client: ``pieces``, then ``fail`` raised while reading."""

    def __init__(
        self, request: httpx.Request, pieces: list[bytes], fail: type[httpx.HTTPError] | None
    ):
        self.request, self.pieces, self.fail = request, pieces, fail

    def __iter__(self) -> Iterator[bytes]:
        yield from self.pieces
        if self.fail is not None:
            raise self.fail("scripted drop", request=self.request)  # type: ignore[call-arg]

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self:
            yield piece


def streams(pieces: list[bytes], fail: type[httpx.HTTPError] | None = None) -> Behaviour:
    """An event stream of ``pieces``, then ``fail`` raised while reading (if given)."""

    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "text/event-stream"}
        return httpx.Response(200, headers=headers, stream=_Body(request, pieces, fail))

    return answer


def whole(tokens: list[int]) -> Behaviour:
    def answer(request: httpx.Request) -> httpx.Response:
        document = {"model_name": "m", "tokens": tokens, "finish_reason": "length"}
        return httpx.Response(200, json={**document, "output_tokens": len(tokens)})

    return answer


def status(code: int) -> Behaviour:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(code, content=encode_error(f"scripted {code}"))

    return answer


def raises(exc: type[httpx.HTTPError]) -> Behaviour:
    def answer(request: httpx.Request) -> httpx.Response:
        raise exc("scripted", request=request)  # type: ignore[call-arg]

    return answer


class Fleet:
    """Scripted instances by host; keeps each request (path and body) in order."""

    def __init__(self, *behaviours: Behaviour):
        hosts = [u.split("//")[1].split(":")[0] for u in URLS]
        self.behaviours = dict(zip(hosts, behaviours, strict=False))
        self.calls: Counter[str] = Counter()
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self.urls = URLS[: len(behaviours)]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.calls[host] += 1
        self.requests.append((host, request.url.path, json.loads(request.content)))
        return self.behaviours[host](request)

    def client(self, **options: Any) -> EasClient:
        transport = httpx.MockTransport(self)
        options.setdefault("eject_after", 1000)
        return EasClient(urls=self.urls, model="m", transport=transport, **options)

    def async_client(self, **options: Any) -> AsyncEasClient:
        transport = httpx.MockTransport(self)
        options.setdefault("eject_after", 1000)
        return AsyncEasClient(urls=self.urls, model="m", transport=transport, **options)


def test_generate_is_retried_on_503_with_the_time_left_as_the_servers_deadline() -> None:
    fleet = Fleet(status(503), whole([4, 5]))
    with fleet.client(timeout=2.0) as client:
        for _ in range(10):
            assert client.generate(AUDIO, max_new_tokens=2).tokens == (4, 5)
    assert fleet.calls["10.0.0.2"] == 10 and fleet.calls["10.0.0.1"] > 0
    for _, path, body in fleet.requests:
        assert path == "/v2/models/m/generate"
        assert 0 < body["parameters"]["timeout"] <= 2_000_000
        assert body["parameters"]["max_new_tokens"] == 2


def test_generate_answers_other_than_503_are_not_retried() -> None:
    fleet = Fleet(status(400), status(400))
    with fleet.client() as client, pytest.raises(InvalidRequest, match="scripted 400"):
        client.generate(AUDIO)
    assert sum(fleet.calls.values()) == 1


def test_a_stream_is_retried_before_its_first_event() -> None:
    # a 503, a refused connection, and a stream that ended before any event: each moves on
    for failing in (status(503), raises(httpx.ConnectError), streams([b": hello\n\n"])):
        fleet = Fleet(failing, streams(_events([7, 8, 9])))
        calls = 0
        with fleet.client() as client:
            # at least 8 calls, and until the balancer has tried the failing instance (its
            # choice between two idle instances is random: bounded, not assumed)
            while calls < 8 or fleet.calls["10.0.0.1"] == 0:
                assert calls < 64, "the balancer never tried the failing instance"
                chunks = list(client.generate_stream(AUDIO, max_new_tokens=3))
                assert [c.tokens for c in chunks] == [(7,), (8,), (9,), ()]
                assert chunks[-1].finish_reason == "length" and chunks[-1].output_tokens == 3
                calls += 1
        assert fleet.calls["10.0.0.2"] == calls, "every call ended on the healthy instance"
        assert all(path == "/v2/models/m/generate_stream" for _, path, _ in fleet.requests)


def test_a_stream_is_pinned_to_its_instance_after_the_first_event() -> None:
    # Both instances drop the stream after its first event: the call ends there, untried
    # elsewhere, with the event it handed out.
    dropping = streams(_events([7, 8, 9])[:1], fail=httpx.ReadError)
    fleet = Fleet(dropping, dropping)
    got: list[GenerateChunk] = []
    with fleet.client(max_attempts=3) as client, pytest.raises(ConnectError) as info:
        got.extend(client.generate_stream(AUDIO))
    assert [c.tokens for c in got] == [(7,)] and sum(fleet.calls.values()) == 1
    assert "failed after 1 event(s); a started stream is not retried" in info.value.__notes__[-1]


def test_a_connection_lost_after_the_final_event_does_not_fail_the_stream() -> None:
    fleet = Fleet(streams(_events([7, 8]), fail=httpx.ReadError))
    with fleet.client() as client:
        assert [c.tokens for c in client.generate_stream(AUDIO)] == [(7,), (8,), ()]


def test_an_error_event_raises_a_server_error_and_is_not_retried() -> None:
    fleet = Fleet(streams([_events([3])[0], _event({"error": "decoder failed"})]))
    with fleet.client() as client:
        stream = client.generate_stream(AUDIO)
        assert next(stream).tokens == (3,)
        with pytest.raises(ServerError, match="decoder failed"):
            next(stream)
    assert fleet.calls["10.0.0.1"] == 1


def test_retries_stop_at_max_attempts_with_what_was_tried() -> None:
    fleet = Fleet(status(503), status(503), status(503))
    with fleet.client(max_attempts=2) as client, pytest.raises(ServiceUnavailable) as info:
        list(client.generate_stream(AUDIO))
    assert sum(fleet.calls.values()) == 2 and "max_attempts=2 reached" in info.value.__notes__[-1]
    fleet = Fleet(raises(httpx.ConnectError))
    with fleet.client() as client, pytest.raises(NoInstanceAvailable):
        list(client.generate_stream(AUDIO))


def test_arguments_are_checked_when_the_stream_is_made() -> None:
    fleet = Fleet(streams(_events([1])))
    with fleet.client() as client:
        with pytest.raises(ProtocolError, match="int16 samples"):
            client.generate_stream(np.zeros(4, np.int16))
        with pytest.raises(ValueError, match="num_beams"):
            client.generate_stream(AUDIO, num_beams=0)
        with pytest.raises(ValueError, match="timeout"):
            client.generate_stream(AUDIO, timeout_s=-1)
    assert not fleet.calls
    with pytest.raises(RuntimeError, match="closed"):
        client.generate_stream(AUDIO)


def test_the_async_client_retries_and_pins_the_same_way() -> None:
    async def main() -> None:
        fleet = Fleet(status(503), streams(_events([7, 8])))
        async with fleet.async_client() as client:
            for _ in range(6):
                chunks = [c async for c in client.generate_stream(AUDIO)]
                assert [c.tokens for c in chunks] == [(7,), (8,), ()]
        assert fleet.calls["10.0.0.2"] == 6 and fleet.calls["10.0.0.1"] > 0
        fleet = Fleet(status(503), whole([4, 5]))
        async with fleet.async_client() as client:
            for _ in range(6):
                assert (await client.generate(AUDIO)).tokens == (4, 5)
        assert fleet.calls["10.0.0.2"] == 6 and fleet.calls["10.0.0.1"] > 0
        fleet = Fleet(streams(_events([7, 8])[:1], fail=httpx.ReadError))
        async with fleet.async_client() as client:
            got = []
            with pytest.raises(ConnectError):
                async for chunk in client.generate_stream(AUDIO):
                    got.append(chunk)
            assert [c.tokens for c in got] == [(7,)] and fleet.calls["10.0.0.1"] == 1

    asyncio.run(main())


# -------------------------------------------------------------- early close, on a real socket


class _HoldingStream:
    """A loopback instance that sends one event and then holds the stream open, recording
    whether the client closed the connection."""

    def __init__(self) -> None:
        self.closed = threading.Event()
        self.server = Server(self._handle)

    def _handle(self, conn: socket.socket, index: int) -> None:
        if not self.server.read_request(conn):
            return
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        event = _events([11])[0]
        chunk = f"{len(event):x}\r\n".encode() + event + b"\r\n"
        conn.sendall(head + b"transfer-encoding: chunked\r\n\r\n" + chunk)
        conn.settimeout(30)
        try:
            while conn.recv(4096):
                pass
        except OSError:
            pass
        self.closed.set()


def test_closing_a_stream_early_closes_its_connection() -> None:
    instance = _HoldingStream()
    try:
        with EasClient(urls=[instance.server.url], model="m", timeout=30) as client:
            stream = client.generate_stream(AUDIO)
            assert next(stream).tokens == (11,)
            assert not instance.closed.is_set()
            stream.close()
            assert instance.closed.wait(10), "the server never saw the connection close"
    finally:
        instance.server.close()


def test_closing_an_async_stream_early_closes_its_connection() -> None:
    instance = _HoldingStream()

    async def main() -> None:
        async with AsyncEasClient(urls=[instance.server.url], model="m", timeout=30) as client:
            async with contextlib.aclosing(client.generate_stream(AUDIO)) as stream:
                async for chunk in stream:
                    assert chunk.tokens == (11,)
                    break
            assert await asyncio.to_thread(instance.closed.wait, 10)

    try:
        asyncio.run(main())
    finally:
        instance.server.close()


# --------------------------------------------------------------------- against eas-server


RATE = 16000
TONE = (0.1 * np.sin(np.arange(RATE) * 2 * np.pi * 440 / RATE)).astype(np.float32)
LONG = 400
"""max_new_tokens of a generation that runs far longer than the test waits for it."""


@pytest.fixture(scope="module")
def whisper_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """eas-server serving the micro Whisper bundle as model ``w`` (one for the module)."""
    try:
        bundle = whisper_model_dir("micro")
    except WhisperBuildUnavailable as exc:
        pytest.skip(str(exc))
    home = tmp_path_factory.mktemp("home")
    server = ServerProcess(
        ["--model", str(bundle), "--name", "w", "--port", "0"], env={"HOME": str(home)}
    )
    yield server
    server.stop()


def _metric(url: str, name: str) -> float:
    """The sum of a metric's samples (every label set) on the server's /metrics."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_whole_answer_equals_the_stream_sync_and_async(whisper_server: ServerProcess) -> None:
    with EasClient(urls=[whisper_server.url], model="w", timeout=30) as client:
        result = client.generate(TONE, max_new_tokens=8, request_id="a-1")
        chunks = list(client.generate_stream(TONE, max_new_tokens=8))
    assert result.id == "a-1" and result.model_name == "w" and result.finish_reason == "length"
    assert len(result.tokens) == result.output_tokens == 8
    assert set(result.timing) <= {"queue_ms", "time_to_first_token_ms", "total_ms"}
    assert result.timing["total_ms"] >= result.timing["queue_ms"] >= 0
    assert [c.index for c in chunks] == list(range(9))
    assert tuple(t for c in chunks for t in c.tokens) == result.tokens
    assert chunks[-1].finish_reason == "length" and chunks[-1].output_tokens == 8

    async def main() -> None:
        async with AsyncEasClient(urls=[whisper_server.url], model="w", timeout=30) as client:
            again = await client.generate(TONE, max_new_tokens=8)
            streamed = [c async for c in client.generate_stream(TONE, max_new_tokens=8)]
        assert again.tokens == result.tokens
        assert tuple(t for c in streamed for t in c.tokens) == result.tokens

    asyncio.run(main())


def test_the_server_refuses_what_the_client_cannot_check(whisper_server: ServerProcess) -> None:
    too_long = np.zeros(31 * RATE, np.float32)  # the client does not know the model's 30 s
    with EasClient(urls=[whisper_server.url], model="w", timeout=30) as client:
        with pytest.raises(InvalidRequest):
            client.generate(too_long, max_new_tokens=2)
        with pytest.raises(InvalidRequest):
            list(client.generate_stream(TONE, num_beams=5, max_new_tokens=2))


def test_closing_a_stream_early_stops_the_generation_on_the_server(
    whisper_server: ServerProcess,
) -> None:
    url = whisper_server.url
    finished = _metric(url, "eas_generation_output_tokens_total")
    with EasClient(urls=[url], model="w", timeout=60) as client:
        stream = client.generate_stream(TONE, max_new_tokens=LONG)
        assert next(stream).tokens
        stream.close()
        _wait(lambda: _metric(url, "eas_generation_running_sequences") == 0, "rows freed")
    # A cancelled generation never finishes: the tokens of finished ones did not move.
    assert _metric(url, "eas_generation_output_tokens_total") == finished


def test_a_stream_moves_to_another_instance_before_its_first_event(
    whisper_server: ServerProcess,
) -> None:
    refused = Counter[str]()

    def busy(conn: socket.socket, index: int) -> None:
        while busy_server.read_request(conn):
            refused["503"] += 1
            body = encode_error("queue full")
            head = f"HTTP/1.1 503 Service Unavailable\r\ncontent-length: {len(body)}\r\n\r\n"
            conn.sendall(head.encode() + body)

    busy_server = Server(busy)
    try:
        urls = [busy_server.url, whisper_server.url]
        with EasClient(urls=urls, model="w", timeout=30, eject_after=1000) as client:
            for _ in range(50):  # the balancer's first pick is random: until it was the busy one
                chunks = list(client.generate_stream(TONE, max_new_tokens=2))
                assert chunks[-1].finish_reason == "length" and len(chunks) == 3
                if refused["503"]:
                    break
        assert refused["503"] >= 1
    finally:
        busy_server.close()


def _wait(predicate: Callable[[], bool], what: str) -> None:
    wait(predicate, 15.0, what, step=0.02)
