"""Generation over KServe v2 gRPC with the stock tritonclient.grpc client, on the real micro
Whisper bundle served in process: ``ModelInfer`` gives the whole answer (as HTTP /infer), and
``ModelStreamInfer`` answers in Triton's decoupled style (``start_stream`` /
``async_stream_infer(enable_empty_final_response=True)``): one response per token, the last one
marked ``triton_final_response`` with the ``finish_reason``."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.fixtures.whisper import whisper_model_dir

from .conftest import wait_until
from .test_generate_http import AUDIO, LONG, GenerationServer, tokenized_bundle, words

Callback = tuple[Any, InferenceServerException | None]


@pytest.fixture(scope="module")
def bundle() -> Path:
    return whisper_model_dir("micro")


@pytest.fixture(scope="module")
def server(bundle: Path) -> Iterator[GenerationServer]:
    served = GenerationServer(bundle, grpc=True, max_batch_size=4)
    yield served
    served.close()


@pytest.fixture
def client(server: GenerationServer) -> Iterator[grpcclient.InferenceServerClient]:
    connected = grpcclient.InferenceServerClient(server.grpc_address)
    yield connected
    connected.close()


def audio_input(audio: np.ndarray = AUDIO) -> grpcclient.InferInput:
    given = grpcclient.InferInput("audio", [audio.size], "FP32")
    given.set_data_from_numpy(audio)
    return given


class Stream:
    """A tritonclient stream whose callbacks land in a queue."""

    def __init__(self, client: grpcclient.InferenceServerClient) -> None:
        self.client = client
        self.received: queue.Queue[Callback] = queue.Queue()
        client.start_stream(callback=lambda result, error: self.received.put((result, error)))

    def send(self, request_id: str, **parameters: Any) -> None:
        self.client.async_stream_infer(
            "w", [audio_input()], request_id=request_id, parameters=parameters,
            enable_empty_final_response=True,
        )  # fmt: skip

    def next(self) -> Callback:
        return self.received.get(timeout=60)

    def until_final(self, count: int) -> tuple[dict[str, list[Any]], list[str]]:
        """Responses by request id until ``count`` requests ended (final response or error),
        and the errors' messages."""
        by_id: dict[str, list[Any]] = {}
        errors: list[str] = []
        ended = 0
        while ended < count:
            result, error = self.next()
            if error is not None:
                errors.append(error.message())
                ended += 1
                continue
            response = result.get_response()
            by_id.setdefault(response.id, []).append(result)
            ended += response.parameters["triton_final_response"].bool_param
        return by_id, errors


def parameters(result: Any) -> dict[str, Any]:
    found = result.get_response().parameters
    return {key: getattr(p, p.WhichOneof("parameter_choice")) for key, p in found.items()}


def test_stream_and_model_infer_agree_with_http(
    server: GenerationServer, client: grpcclient.InferenceServerClient
) -> None:
    whole = client.infer("w", [audio_input()], request_id="i", parameters={"max_new_tokens": 6})
    tokens = whole.as_numpy("tokens")
    assert tokens is not None and tokens.dtype == np.int64 and 1 <= tokens.size <= 6
    assert whole.get_response().id == "i"
    with httpx.Client(base_url=server.url, timeout=60) as http:
        body = {"audio": AUDIO.tolist(), "parameters": {"max_new_tokens": 6}}
        assert http.post("/v2/models/w/generate", json=body).json()["tokens"] == tokens.tolist()
    stream = Stream(client)
    try:
        stream.send("s", max_new_tokens=6)
        by_id, errors = stream.until_final(1)
    finally:
        client.stop_stream()
    assert not errors
    *token_results, final = by_id["s"]
    for result in token_results:
        piece = result.as_numpy("tokens")
        assert piece.dtype == np.int64 and piece.shape == (1,)
        assert parameters(result) == {"triton_final_response": False}
    streamed = [int(r.as_numpy("tokens")[0]) for r in token_results]
    assert streamed == tokens.tolist()
    assert final.as_numpy("tokens").shape == (0,)
    assert parameters(final) == {
        "triton_final_response": True,
        "finish_reason": "length" if tokens.size == 6 else "eos",
        "output_tokens": tokens.size,
    }


def test_requests_on_one_stream_run_together_and_fail_alone(
    server: GenerationServer, client: grpcclient.InferenceServerClient
) -> None:
    failed = server.requests("bad_request")
    succeeded = server.requests("success")
    stream = Stream(client)
    try:
        stream.send("a", max_new_tokens=3)
        stream.send("b", max_new_tokens=3, num_beams=5)
        stream.send("c", max_new_tokens=4, num_beams=2)
        by_id, errors = stream.until_final(3)
    finally:
        client.stop_stream()
    assert len(errors) == 1 and "num_beams must be an integer in [1, 4]" in errors[0]
    assert sorted(by_id) == ["a", "c"]
    for request_id in ("a", "c"):
        *token_results, final = by_id[request_id]
        count = sum(r.as_numpy("tokens").size for r in token_results)
        assert parameters(final)["output_tokens"] == count >= 1
    assert len(by_id["c"]) <= 2  # beam search: the answer in one response, then the final one
    assert server.requests("bad_request") == failed + 1
    assert server.requests("success") == succeeded + 2


def test_model_infer_errors_are_invalid_argument(client: grpcclient.InferenceServerClient) -> None:
    cases = [
        ({"num_beams": 5}, "num_beams must be an integer in [1, 4]"),
        ({"max_new_tokens": 0}, "max_new_tokens must be an integer in [1, 444]"),
        ({"temperature": "hot"}, "unknown parameters ['temperature']"),
    ]
    for given, said in cases:
        with pytest.raises(InferenceServerException) as exc:
            client.infer("w", [audio_input()], parameters=given)
        assert str(exc.value.status()) == "StatusCode.INVALID_ARGUMENT"
        assert said in str(exc.value.message())
    with pytest.raises(InferenceServerException, match="audio is empty"):
        client.infer("w", [audio_input(np.zeros(0, np.float32))])


def test_a_cancelled_stream_frees_its_rows(
    server: GenerationServer, client: grpcclient.InferenceServerClient
) -> None:
    engine = server.engine
    finished = server.sample("eas_generation_output_tokens_total")
    stream = Stream(client)
    try:
        stream.send("long", max_new_tokens=LONG)
        result, error = stream.next()
        assert error is None and result.as_numpy("tokens").size == 1
        wait_until(lambda: engine.steps > 0)
        steps = engine.steps
    finally:
        client.stop_stream(cancel_requests=True)
    wait_until(lambda: engine.scheduler.rows_in_use == 0)
    assert engine.steps - steps <= 3, (steps, engine.steps)  # nowhere near LONG steps
    assert server.sample("eas_generation_output_tokens_total") == finished


def test_text_output_with_a_tokenizer(bundle: Path, tmp_path: Path) -> None:
    served = GenerationServer(tokenized_bundle(bundle, tmp_path / "w"), grpc=True)
    connected = grpcclient.InferenceServerClient(served.grpc_address)
    try:
        whole = connected.infer("w", [audio_input()], parameters={"max_new_tokens": 4})
        tokens = whole.as_numpy("tokens").tolist()
        assert whole.as_numpy("text").tolist() == [words(tokens).encode()]
        stream = Stream(connected)
        try:
            stream.send("t", max_new_tokens=4)
            by_id, errors = stream.until_final(1)
        finally:
            connected.stop_stream()
        assert not errors
        pieces = [r.as_numpy("text")[0].decode() for r in by_id["t"]]
        assert "".join(pieces) == words(tokens) and pieces[-1] == ""
    finally:
        connected.close()
        served.close()
