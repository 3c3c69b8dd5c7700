"""The ``pipeline`` processor: real eas-server processes serving bundles (``bundles.py``), text in
and labels out through stock tritonclient (HTTP JSON and binary, gRPC), pairs, slots on
known sentences, bad input as 400s, concurrent requests batched together; and the processor in
process for what a server cannot show (a model unsafe to pad)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from eas_server import InvalidInput, ModelLoadError
from eas_server.processors import create_processor
from eas_server.processors.pipeline import PipelineProcessor
from tests.fixtures.servers import ServerProcess

from .bundles import CLASSIFY_EXAMPLES, KEYWORD_LOGIT, SLOT_EXAMPLES, make_bundle
from .conftest import StartServer

TEXTS = [text for text, _ in CLASSIFY_EXAMPLES]
LABELS = [label for _, label in CLASSIFY_EXAMPLES]
ON = float(np.exp(KEYWORD_LOGIT) / (np.exp(KEYWORD_LOGIT) + 2))
"""The classify score of a sentence with one keyword (softmax of [4, 0, 0])."""


def _strings(values: np.ndarray | None) -> list[str]:
    """BYTES outputs as str: tritonclient gives bytes from binary data, str from JSON."""
    assert values is not None
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _http(name: str, texts: list[str], binary: bool) -> httpclient.InferInput:
    h = httpclient.InferInput(name, [len(texts)], "BYTES")
    h.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object), binary_data=binary)
    return h


def _grpc(name: str, texts: list[str]) -> grpcclient.InferInput:
    g = grpcclient.InferInput(name, [len(texts)], "BYTES")
    g.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    return g


@pytest.fixture(scope="module")
def intent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    """A classify bundle (top 2) served with no --processor, over HTTP and gRPC."""
    root = make_bundle(tmp_path_factory.mktemp("intent"), top_k=2)
    server = ServerProcess(
        ["--model", str(root), "--name", "intent", "--port", "0", "--grpc-port", "0"]
    )
    try:
        assert server.proc.stdout is not None
        grpc_line = server.proc.stdout.readline().strip()
        assert grpc_line.startswith("grpc listening on "), grpc_line
        yield server, grpc_line.removeprefix("grpc listening on ")
    finally:
        server.stop()


def test_metadata_shows_the_external_signature(intent: tuple[ServerProcess, str]) -> None:
    server, _ = intent
    client = httpclient.InferenceServerClient(server.address)
    try:
        meta = client.get_model_metadata("intent")
        config = client.get_model_config("intent")
    finally:
        client.close()
    assert meta["platform"] == "pipeline" and config["backend"] == "pipeline"
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "score", "datatype": "FP32", "shape": [-1]},
        {"name": "labels", "datatype": "BYTES", "shape": [-1, 2]},
        {"name": "scores", "datatype": "FP32", "shape": [-1, 2]},
    ]


@pytest.mark.parametrize("binary", [False, True])
def test_text_in_labels_out_over_http(intent: tuple[ServerProcess, str], binary: bool) -> None:
    server, _ = intent
    client = httpclient.InferenceServerClient(server.address)
    try:
        outputs = [
            httpclient.InferRequestedOutput(name, binary_data=binary)
            for name in ("label", "score", "labels")
        ]
        result = client.infer("intent", [_http("text", TEXTS, binary)], outputs=outputs)
    finally:
        client.close()
    assert _strings(result.as_numpy("label")) == LABELS
    np.testing.assert_allclose(result.as_numpy("score"), [ON] * 4, rtol=1e-6)
    labels = result.as_numpy("labels")
    assert (
        labels is not None
        and labels.shape == (4, 2)
        and _strings(labels[0]) == ["lights_on", "lights_off"]  # a tie: label order
    )


def test_text_in_labels_out_over_grpc(intent: tuple[ServerProcess, str]) -> None:
    _, address = intent
    client = grpcclient.InferenceServerClient(address)
    try:
        result = client.infer("intent", [_grpc("text", ["héllo, turn it on", *TEXTS])])
    finally:
        client.close()
    assert _strings(result.as_numpy("label")) == ["lights_on", *LABELS]
    assert result.as_numpy("scores").shape == (5, 2)


def test_bad_input_is_a_400_that_says_why(intent: tuple[ServerProcess, str]) -> None:
    server, _ = intent
    url = f"{server.url}/v2/models/intent/infer"
    text = {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["on", "off"]}
    body = json.dumps({"inputs": [text]})
    header = json.dumps(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                     "parameters": {"binary_data_size": 4 + 2 + 4 + 2}}]}
    ).encode()  # fmt: skip
    raw = b"\x02\x00\x00\x00on" + b"\x02\x00\x00\x00\xff\xfe"  # row 1 is not UTF-8
    with httpx.Client(timeout=30) as http:
        assert http.post(url, content=body).status_code == 200
        bad = http.post(
            url,
            content=header + raw,
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert bad.status_code == 400
        assert "input 'text' row 1 is not valid UTF-8 text" in bad.json()["error"]
        ints = {**text, "datatype": "INT64", "data": [1, 2]}
        wrong = http.post(url, content=json.dumps({"inputs": [ints]}))
        assert wrong.status_code == 400 and "expects BYTES" in wrong.json()["error"]
        shaped = json.dumps({"inputs": [{**text, "shape": [2, 1]}]})
        two_d = http.post(url, content=shaped)
        assert two_d.status_code == 400 and "shape [2, 1]" in two_d.json()["error"]
        # the server still answers afterwards
        assert http.post(url, content=body).json()["outputs"][0]["data"] == [
            "lights_on",
            "lights_off",
        ]


def test_concurrent_requests_share_batches_and_match_alone(tmp_path: Path) -> None:
    root = make_bundle(tmp_path, top_k=1)
    server = ServerProcess(
        ["--model", str(root), "--name", "intent", "--port", "0", "--max-batch-timeout-ms", "200"]
    )
    texts = [f"{'please ' * (i % 7)}{TEXTS[i % 4]}" for i in range(48)]
    url = f"{server.url}/v2/models/intent/infer"

    async def call_all() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=60) as http:

            async def call(text: str) -> dict[str, Any]:
                one = {"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}
                response = await http.post(url, json={"inputs": [one]})
                response.raise_for_status()
                return {o["name"]: o["data"][0] for o in response.json()["outputs"]}

            return await asyncio.gather(*(call(t) for t in texts))

    try:
        got = asyncio.run(call_all())
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    finally:
        server.stop()
    assert [row["label"] for row in got] == [LABELS[i % 4] for i in range(48)]
    np.testing.assert_allclose([row["score"] for row in got], [ON] * 48, rtol=1e-6)
    batches = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("eas_batch_size_count")
    )
    assert 0 < batches < 48  # requests of different lengths were tokenized together


def test_pairs_over_http(tmp_path: Path, start_server: StartServer) -> None:
    root = make_bundle(tmp_path, "score", inputs=("query", "answer"), token_type_ids=True)
    server = start_server(root, name="qa")
    client = httpclient.InferenceServerClient(server.address)
    try:
        inputs = [
            _http("query", ["is it good", "really", "yes"], True),
            _http("answer", ["yes", "bad", "no"], False),
        ]
        result = client.infer("qa", inputs)
        with pytest.raises(InferenceServerException, match="answer"):
            client.infer("qa", [_http("query", ["x"], True)])
    finally:
        client.close()
    # answer tokens count double (token_type_ids): 1.5 + 2 * 3, 2 * -1.5, 3 + 2 * -3
    logits = np.array([7.5, -3.0, -3.0])
    np.testing.assert_allclose(result.as_numpy("score"), 1 / (1 + np.exp(-logits)), rtol=1e-6)


def test_slots_over_http_on_known_sentences(tmp_path: Path, start_server: StartServer) -> None:
    server = start_server(make_bundle(tmp_path, "slots"), name="slots")
    client = httpclient.InferenceServerClient(server.address)
    try:
        texts = [text for text, _ in SLOT_EXAMPLES]
        result = client.infer("slots", [_http("text", texts, False)])
    finally:
        client.close()
    got = [json.loads(row) for row in result.as_numpy("slots")]
    assert got == [expected for _, expected in SLOT_EXAMPLES]


def test_a_blade_bundle_runs_on_the_blade_processor(
    tmp_path: Path, start_server: StartServer
) -> None:
    import blade

    result = blade.optimize(
        make_bundle(tmp_path, "slots"),
        cache_dir=tmp_path / "cache",
        progress=False,
        batch_sizes=(1,),
        level="o1",
    )
    derived = Path(result.artifact_dir)
    assert json.loads((derived / "pipeline.json").read_text())["model"] == "blade"
    processor = _loaded(derived)
    assert processor.inner is not None and processor.inner.kind == "blade"
    processor.close()
    server = start_server(derived, name="slots")
    client = httpclient.InferenceServerClient(server.address)
    try:
        texts = [text for text, _ in SLOT_EXAMPLES]
        got = client.infer("slots", [_http("text", texts, True)]).as_numpy("slots")
    finally:
        client.close()
    assert got is not None
    assert [json.loads(row) for row in got] == [expected for _, expected in SLOT_EXAMPLES]


def test_repository_version_holding_a_bundle(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(make_bundle(tmp_path, "embed", pooling="mean"), repo / "vectors" / "1")
    server = ServerProcess(["--model-repository", str(repo), "--port", "0"])
    try:
        client = httpclient.InferenceServerClient(server.address)
        try:
            assert client.get_model_metadata("vectors")["platform"] == "pipeline"
            result = client.infer("vectors", [_http("text", ["turn on", "on"], True)])
        finally:
            client.close()
    finally:
        server.stop()
    embedding = result.as_numpy("embedding")
    assert embedding is not None and embedding.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"head_width": 4}, "labels.txt lists 3 labels but the head 'logits' has 4"),
        ({"omit": ("tokenizer.json",)}, "the bundle has no tokenizer"),
    ],
)
def test_a_bad_bundle_does_not_start(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    root = make_bundle(tmp_path, **kwargs)
    done = subprocess.run(
        [sys.executable, "-m", "eas_server", "--model", str(root), "--name", "m", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "listening on" not in done.stdout
    assert message in done.stderr


# -- in process -------------------------------------------------------------------------------


def _loaded(root: Path) -> PipelineProcessor:
    processor = create_processor("pipeline", str(root), intra_op_threads=1)
    assert isinstance(processor, PipelineProcessor)
    processor.load()
    return processor


def test_a_model_unsafe_to_pad_runs_each_length_alone(tmp_path: Path) -> None:
    processor = _loaded(make_bundle(tmp_path, pad_sensitive=True))
    assert processor.inner is not None and processor.inner.padding is None  # the probe saw it
    try:
        texts = ["off", "turn the lights off please", "on", "what is the weather"]
        batch = processor.run({"text": np.array([t.encode() for t in texts], dtype=object)}, 0)
        for i, text in enumerate(texts):
            alone = processor.run({"text": np.array([text.encode()], dtype=object)}, 0)
            assert batch["label"][i] == alone["label"][0]
            np.testing.assert_allclose(batch["score"][i], alone["score"][0], rtol=1e-6)
    finally:
        processor.close()
    assert processor.inner is None


def test_texts_must_be_utf8_bytes(tmp_path: Path) -> None:
    processor = _loaded(make_bundle(tmp_path))
    try:
        assert processor.device == "cpu" and processor.batchable and processor.padding is None
        assert processor.inner is not None and processor.inner.padding is not None  # masked
        with pytest.raises(InvalidInput, match="input 'text' row 1: expected BYTES text, got int"):
            processor.run({"text": np.array([b"on", 3], dtype=object)}, 0)
        with pytest.raises(InvalidInput, match=r"row 0 is not valid UTF-8 text .* at byte 1"):
            processor.run({"text": np.array([b"o\xffn"], dtype=object)}, 0)
        with pytest.raises(InvalidInput, match="missing input 'text'"):
            processor.run({}, 0)
    finally:
        processor.close()


def test_pipeline_json_path_and_bad_bundles_in_process(tmp_path: Path) -> None:
    root = make_bundle(tmp_path, "slots")
    processor = _loaded(root / "pipeline.json")
    assert [t.name for t in processor.outputs] == ["slots"]
    processor.close()
    with pytest.raises(ModelLoadError, match=r"has no pipeline\.json"):
        _loaded(tmp_path)
