"""``ModelClient.generate`` / ``generate_stream`` (and the async twins) routed by published route
tables, against two real eas-server processes serving the micro Whisper bundle as versions 1 and
2 of model ``whisper``, registered in an embedded store: the weighted split, pinning, the shadow
comparison of whole answers, and the blade fallback taken only before a stream's first event."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from autoai.sdk import AsyncModelClient, ModelClient, ModelNotFound, VersionNotFound
from config_store import ConfigStore, open_store
from eas_client import ProtocolError
from tests.fixtures.servers import ServerProcess
from tests.fixtures.waiting import wait
from tests.fixtures.whisper import WhisperBuildUnavailable, whisper_model_dir

MODEL = "whisper"
RATE = 16000
TONE = (0.1 * np.sin(np.arange(RATE // 2) * 2 * np.pi * 440 / RATE)).astype(np.float32)
TOKENS = 3  # max_new_tokens of every call: fast


@dataclass
class WhisperFleet:
    """Versions 1 and 2 of ``whisper`` (services whisper-1, whisper-2) in one store."""

    url: str
    store: ConfigStore
    servers: list[ServerProcess]

    def publish(
        self, routes: Sequence[Mapping[str, Any]], shadow: Mapping[str, Any] | None = None
    ) -> None:
        entries = [
            {"service": f"{MODEL}-{r['version']}", "processor": "seq2seq", **dict(r)}
            for r in routes
        ]
        doc = {
            "schema_version": 1,
            "model": MODEL,
            "revision": 0,
            "routes": entries,
            "shadow": dict(shadow) if shadow else None,
            "signature": {"inputs": [{"name": "audio", "datatype": "FP32", "shape": [-1]}]},
        }
        self.store.publish(MODEL, json.dumps(doc).encode(), group="models")

    def client(self, registry: CollectorRegistry | None = None) -> ModelClient:
        return ModelClient(self.url, registry=registry or CollectorRegistry(), timeout=30)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WhisperFleet]:
    try:
        bundle = whisper_model_dir("micro")
    except WhisperBuildUnavailable as exc:
        pytest.skip(str(exc))
    tmp = tmp_path_factory.mktemp("whisper-fleet")
    url = f"sqlite:///{tmp / 'store.db'}"
    store = open_store(url, snapshot_dir=tmp / "snapshot")
    servers: list[ServerProcess] = []
    try:
        for version in ("1", "2"):
            args = ["--model", str(bundle), "--name", MODEL, "--version", version]
            servers.append(
                ServerProcess([*args, "--port", "0", "--store", url], env={"HOME": str(tmp)})
            )
        for version in ("1", "2"):
            service = f"{MODEL}-{version}"

            def registered(service: str = service) -> bool:
                return len(store.instances(service)) == 1

            wait(registered, 20.0, service, step=0.02)
        yield WhisperFleet(url, store, servers)
    finally:
        for server in servers:
            server.stop()
        store.close()


def _shadow(registry: CollectorRegistry, outcome: str) -> float:
    labels = {"model": MODEL, "version": "2", "processor": "seq2seq", "outcome": outcome}
    return registry.get_sample_value("autoai_client_shadow_requests_total", labels) or 0.0


def test_generate_follows_the_weighted_split(fleet: WhisperFleet) -> None:
    fleet.publish([{"version": "1", "weight": 1}, {"version": "2", "weight": 1}])
    with fleet.client() as client:
        results = [client.generate(MODEL, TONE, max_new_tokens=TOKENS) for _ in range(10)]
        streams = [list(client.generate_stream(MODEL, TONE, max_new_tokens=TOKENS))]
        streams += [list(client.generate_stream(MODEL, TONE, max_new_tokens=TOKENS))]
    # weights 1:1: any two consecutive calls go to both versions
    assert Counter(r.model_version for r in results) == {"1": 5, "2": 5}
    assert {r.tokens for r in results} == {results[0].tokens}  # the same bundle answers alike
    for chunks in streams:
        assert len({c.model_version for c in chunks}) == 1  # a stream stays on its version
        assert tuple(t for c in chunks for t in c.tokens) == results[0].tokens
    assert {s[0].model_version for s in streams} == {"1", "2"}


def test_a_pinned_version_and_the_errors_of_routing(fleet: WhisperFleet) -> None:
    fleet.publish([{"version": "1", "weight": 100}, {"version": "2", "weight": 0}])
    with fleet.client() as client:
        pinned = [client.generate(MODEL, TONE, version="2", max_new_tokens=TOKENS)]
        pinned += [client.generate(MODEL, TONE, max_new_tokens=TOKENS)]
        chunks = list(client.generate_stream(MODEL, TONE, version="2", max_new_tokens=TOKENS))
        assert [r.model_version for r in pinned] == ["2", "1"]
        assert {c.model_version for c in chunks} == {"2"}
        with pytest.raises(VersionNotFound):
            client.generate_stream(MODEL, TONE, version="9")
        with pytest.raises(ModelNotFound):
            client.generate("no-such-model", TONE)
        with pytest.raises(ProtocolError, match="int16"):
            client.generate_stream(MODEL, np.zeros(8, np.int16))


def test_whole_generate_calls_are_mirrored_to_the_shadow_and_streams_are_not(
    fleet: WhisperFleet,
) -> None:
    fleet.publish([{"version": "1", "weight": 100}, {"version": "2", "weight": 0}], {
        "version": "2", "ratio": 1.0,
    })  # fmt: skip
    registry = CollectorRegistry()
    with fleet.client(registry) as client:
        for _ in range(3):
            assert client.generate(MODEL, TONE, max_new_tokens=TOKENS).model_version == "1"
        for _ in range(2):
            list(client.generate_stream(MODEL, TONE, max_new_tokens=TOKENS))
    # close() waited for the shadow calls: three, all producing the same tokens
    assert _shadow(registry, "agree") == 3
    assert _shadow(registry, "disagree") == _shadow(registry, "error") == 0


def test_a_blade_route_falls_back_before_the_first_event(fleet: WhisperFleet) -> None:
    # version 3 is a blade route whose service has no instance: every call falls back to 1
    blade = {"engine": "ort-cpu", "fallback_version": "1"}
    fleet.publish([
        {"version": "3", "weight": 100, "processor": "blade", "blade": blade},
        {"version": "1", "weight": 0},
    ])  # fmt: skip
    registry = CollectorRegistry()
    with fleet.client(registry) as client:
        assert client.generate(MODEL, TONE, max_new_tokens=TOKENS).model_version == "1"
        chunks = list(client.generate_stream(MODEL, TONE, max_new_tokens=TOKENS))
        assert {c.model_version for c in chunks} == {"1"} and chunks[-1].finish_reason
        # pinned to 3, as predict does through a blade client: its fallback still applies
        assert client.generate(MODEL, TONE, version="3", max_new_tokens=1).model_version == "1"
    labels = {"model": MODEL, "version": "3", "processor": "blade", "reason": "blade_unavailable"}
    assert registry.get_sample_value("autoai_client_fallbacks_total", labels) == 3


def test_the_async_client_routes_the_same_way(fleet: WhisperFleet) -> None:
    fleet.publish([{"version": "1", "weight": 1}, {"version": "2", "weight": 1}])

    async def main() -> None:
        registry = CollectorRegistry()
        async with AsyncModelClient(fleet.url, registry=registry, timeout=30) as client:
            results = [await client.generate(MODEL, TONE, max_new_tokens=TOKENS) for _ in range(4)]
            assert Counter(r.model_version for r in results) == {"1": 2, "2": 2}
            versions = set()
            for _ in range(2):
                chunks = [
                    c async for c in client.generate_stream(MODEL, TONE, max_new_tokens=TOKENS)
                ]
                assert tuple(t for c in chunks for t in c.tokens) == results[0].tokens
                versions |= {c.model_version for c in chunks}
            assert versions == {"1", "2"}
            # the route's errors come with the first chunk
            stream = client.generate_stream(MODEL, TONE, version="9")
            with pytest.raises(VersionNotFound):
                await anext(stream)
            # an early close ends the stream (and its connection) at once
            async with contextlib.aclosing(
                client.generate_stream(MODEL, TONE, max_new_tokens=TOKENS)
            ) as stream:
                async for chunk in stream:
                    assert chunk.tokens
                    break

    asyncio.run(main())
