"""Every bad input gets its status and an {"error": ...} body, and never hurts other requests."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from eas_client import decode_response, encode_request

from .conftest import StartServer


def _body(inputs: list[Any], **extra: object) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


IDS: dict[str, Any] = {"name": "input_ids", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]}
MASK: dict[str, Any] = {
    "name": "attention_mask",
    "datatype": "INT64",
    "shape": [1, 3],
    "data": [1, 1, 1],
}
BINARY_HEADER = json.dumps(
    {"inputs": [{**IDS, "data": None, "parameters": {"binary_data_size": 24}}, MASK]}
).replace('"data": null, ', "")


BAD_REQUESTS: list[tuple[str, bytes, dict[str, str], str]] = [
    ("invalid JSON", b"{not json", {}, "JSON"),
    ("not an object", b"[1, 2]", {}, "object"),
    ("unknown input", _body([IDS, MASK, {**IDS, "name": "extra"}]), {}, "unknown input 'extra'"),
    ("missing input", _body([IDS]), {}, "missing inputs ['attention_mask']"),
    ("a JSON input named ''", _body([{**IDS, "name": ""}]), {}, "unknown input ''"),
    ("wrong datatype", _body([{**IDS, "datatype": "FP32"}, MASK]), {}, "expects INT64"),
    ("shape rank", _body([{**IDS, "shape": [3]}, MASK]), {}, "has shape [3]"),
    ("element count", _body([{**IDS, "shape": [1, 4]}, MASK]), {}, "4"),
    ("batch dims differ", _body([{**IDS, "shape": [3, 1]}, MASK]), {}, "batch dimension"),
    ("value kind", _body([{**IDS, "data": ["a", "b", "c"]}, MASK]), {}, "INT64"),
    (
        "unknown output",
        _body([IDS, MASK], outputs=[{"name": "nope"}]),
        {},
        "unknown outputs ['nope']",
    ),
    ("bad priority", _body([IDS, MASK], parameters={"priority": 7}), {}, "priority 7"),
    ("bad timeout", _body([IDS, MASK], parameters={"timeout": "soon"}), {}, "timeout"),
    (
        "header beyond body",
        BINARY_HEADER.encode() + b"\0" * 24,
        {"Inference-Header-Content-Length": "100000"},
        "Inference-Header-Content-Length",
    ),
    (
        "truncated binary",
        BINARY_HEADER.encode() + b"\0" * 10,
        {"Inference-Header-Content-Length": str(len(BINARY_HEADER))},
        "",
    ),
    (
        "over the row limit",
        _body(
            [
                {**IDS, "shape": [3000, 1], "data": [1] * 3000},
                {**MASK, "shape": [3000, 1], "data": [1] * 3000},
            ]
        ),
        {},
        "exceeds this server's limit",
    ),
]


@pytest.fixture
def server(start_server: StartServer, models: dict[str, Path]) -> str:
    return start_server(models["tiny_bert"], "--max-body-mb", "1", name="bert").url


def test_bad_requests_get_400_and_the_server_keeps_serving(server: str) -> None:
    with httpx.Client(base_url=server) as client:
        for label, body, headers, message in BAD_REQUESTS:
            r = client.post("/v2/models/bert/infer", content=body, headers=headers)
            assert r.status_code == 400, (label, r.text)
            assert message in r.json()["error"], (label, r.json())
        good = client.post("/v2/models/bert/infer", content=_body([IDS, MASK]))
        assert good.status_code == 200, good.text
        metrics = client.get("/metrics").text
        labels = 'model="bert",outcome="bad_request",processor="onnx",version="1"'
        assert f"eas_requests_total{{{labels}}} {len(BAD_REQUESTS)}.0" in metrics


def test_not_found_payload_too_large_and_wrong_method(server: str) -> None:
    with httpx.Client(base_url=server) as client:
        r = client.post("/v2/models/other/infer", content=_body([IDS, MASK]))
        assert r.status_code == 404 and "not served here" in r.json()["error"]
        assert (
            client.post("/v2/models/bert/versions/9/infer", content=_body([IDS, MASK])).status_code
            == 404
        )
        assert client.get("/v2/models/bert/versions/9").status_code == 404
        assert client.get("/v2/nothing/here").status_code == 404
        assert client.get("/v2/models/bert/infer").status_code == 404
        r = client.post("/v2/models/bert/infer", content=b"x" * (2 << 20))
        assert r.status_code == 413 and "limit" in r.json()["error"]


def test_token_is_required_on_model_routes(
    start_server: StartServer, models: dict[str, Path]
) -> None:
    url = start_server(models["tiny_bert"], name="bert", env={"EAS_TOKEN": "s3cret"}).url
    with httpx.Client(base_url=url) as client:
        assert client.get("/v2/health/ready").status_code == 200  # probes stay open
        assert client.get("/metrics").status_code == 200
        r = client.post("/v2/models/bert/infer", content=_body([IDS, MASK]))
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = client.post(
            "/v2/models/bert/infer",
            content=_body([IDS, MASK]),
            headers={"Authorization": "Bearer nope"},
        )
        assert r.status_code == 401 and r.json()["error"] == "invalid token"
        for auth in ("Bearer s3cret", "s3cret"):
            r = client.post(
                "/v2/models/bert/infer", content=_body([IDS, MASK]), headers={"Authorization": auth}
            )
            assert r.status_code == 200, auth
        assert client.get("/v2/models/bert", headers={"Authorization": "s3cret"}).status_code == 200


def test_queue_full_and_queue_timeout_answer_503_with_retry_after(
    start_server: StartServer, models: dict[str, Path]
) -> None:
    url = start_server(
        models["tiny_bert"],
        "--max-queue-size",
        "2",
        "--no-batching",
        "--max-request-rows",
        "4096",
        name="bert",
    ).url
    big = np.ones((4000, 64), dtype=np.int64)
    slow, slow_len = encode_request({"input_ids": big, "attention_mask": big})
    statuses: list[int] = []

    def send(body: bytes, headers: dict[str, str]) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            r = client.post("/v2/models/bert/infer", content=body, headers=headers)
            statuses.append(r.status_code)
            if r.status_code == 503:
                assert r.headers["retry-after"] == "1" and "queue" in r.json()["error"]

    headers = {"Inference-Header-Content-Length": str(slow_len)}
    threads = [threading.Thread(target=send, args=(slow, headers)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert statuses.count(503) >= 1 and statuses.count(200) >= 1, statuses
    with httpx.Client(base_url=url, timeout=60) as client:
        blocker = threading.Thread(target=send, args=(slow, headers))
        blocker.start()
        quick = _body([IDS, MASK], parameters={"timeout": 1000})  # 1 ms in the queue at most
        answers: list[httpx.Response] = []
        while blocker.is_alive() and not any(a.status_code == 503 for a in answers):
            answers.append(client.post("/v2/models/bert/infer", content=quick))
        blocker.join(120)
        expired = [a for a in answers if a.status_code == 503]
        assert expired and "timeout expired" in expired[0].json()["error"], [
            a.text for a in answers
        ]
        assert expired[0].headers["retry-after"] == "1"


def test_a_request_that_fails_at_run_time_does_not_poison_its_batch(
    start_server: StartServer, models: dict[str, Path]
) -> None:
    url = start_server(models["failing"], "--max-batch-timeout-ms", "50", name="gather").url
    results: dict[int, httpx.Response] = {}

    def send(i: int) -> None:
        idx = np.array([[99 if i == 3 else i % 10]], dtype=np.int64)
        body, length = encode_request({"idx": idx})
        with httpx.Client(base_url=url, timeout=30) as client:
            results[i] = client.post(
                "/v2/models/gather/infer",
                content=body,
                headers={"Inference-Header-Content-Length": str(length)},
            )

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, r in results.items():
        if i == 3:
            assert r.status_code == 400 and "rejected the input" in r.json()["error"], r.text
        else:
            assert r.status_code == 200, r.text
            out = decode_response(
                r.content, r.headers.get("inference-header-content-length")
            ).outputs["out"]
            np.testing.assert_array_equal(out[0, 0], np.arange(4, dtype=np.float32) + 4 * (i % 10))


def test_oversized_requests_are_split_and_answered_whole(
    start_server: StartServer, models: dict[str, Path]
) -> None:
    url = start_server(models["classifier"], "--max-batch-size", "8", name="cls").url
    x = np.random.default_rng(3).standard_normal((70, 8)).astype(np.float32)
    body, length = encode_request({"x": x})
    with httpx.Client(base_url=url) as client:
        r = client.post(
            "/v2/models/cls/infer",
            content=body,
            headers={"Inference-Header-Content-Length": str(length)},
        )
        assert r.status_code == 200
        probs = decode_response(r.content, r.headers["inference-header-content-length"]).outputs[
            "probs"
        ]
        assert probs.shape == (70, 3)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
        metrics = client.get("/metrics").text
        assert (
            'eas_batches_total{model="cls",processor="onnx",trigger="split",version="1"} 9.0'
            in metrics
        )


def test_models_without_a_batch_dim_and_raw_binary_requests(
    start_server: StartServer, models: dict[str, Path]
) -> None:
    url = start_server(models["no_batch"], name="fixed").url
    with httpx.Client(base_url=url) as client:
        meta = client.get("/v2/models/fixed").json()
        assert meta["inputs"][0]["shape"] == [3]
        assert client.get("/v2/models/fixed/config").json()["max_batch_size"] == 0
        raw = np.array([1, 2, 3], dtype=np.float32).tobytes()
        r = client.post(
            "/v2/models/fixed/infer", content=raw, headers={"Inference-Header-Content-Length": "0"}
        )
        assert r.status_code == 200, r.text
        y = decode_response(r.content, r.headers["inference-header-content-length"]).outputs["y"]
        np.testing.assert_array_equal(y, [2, 4, 6])
        r = client.post(
            "/v2/models/fixed/infer",
            content=raw[:5],
            headers={"Inference-Header-Content-Length": "0"},
        )
        assert r.status_code == 400
