"""ModelClient / AsyncModelClient against real eas-server processes and real stores: weighted
split, pinning, stickiness, revision changes under load, shadow, bad input, sync/async parity."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from autoai.sdk import (
    AsyncModelClient,
    InvalidInput,
    ModelClient,
    ModelNotFound,
    VersionNotFound,
)

from .conftest import MODEL, Fleet, route_table, tag_of, wait_for, x

pytestmark = pytest.mark.zk


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_weighted_split_follows_the_table(zk_fleet: Fleet) -> None:
    zk_fleet.publish(route_table([{"version": "1", "weight": 70}, {"version": "2", "weight": 30}]))
    with ModelClient(zk_fleet.url, registry=CollectorRegistry()) as client:
        inputs = x()
        tags = Counter(tag_of(inputs, client.predict(MODEL, inputs)) for _ in range(400))
    assert tags.keys() == {1, 2}
    assert abs(tags[1] / 400 - 0.70) <= 0.01


def test_a_pinned_version_bypasses_the_weights(zk_fleet: Fleet) -> None:
    zk_fleet.publish(route_table([{"version": "1", "weight": 100}, {"version": "2", "weight": 0}]))
    with ModelClient(zk_fleet.url, registry=CollectorRegistry()) as client:
        inputs = x()
        assert tag_of(inputs, client.predict(MODEL, inputs, version="2")) == 2
        assert tag_of(inputs, client.predict(MODEL, inputs)) == 1
        with pytest.raises(VersionNotFound, match="versions: '1', '2'"):
            client.predict(MODEL, inputs, version="9")


def test_a_sticky_key_always_reaches_the_same_version(zk_fleet: Fleet) -> None:
    table = route_table(
        [{"version": "1", "weight": 50}, {"version": "2", "weight": 50}], sticky_key="user"
    )
    zk_fleet.publish(table)
    inputs = x()
    with ModelClient(zk_fleet.url, registry=CollectorRegistry()) as client:
        first = {k: tag_of(inputs, client.predict(MODEL, inputs, key=f"u{k}")) for k in range(40)}
        again = {k: tag_of(inputs, client.predict(MODEL, inputs, key=f"u{k}")) for k in range(40)}
    assert first == again
    assert set(first.values()) == {1, 2}  # 40 keys do not all hash to one side of 50/50
    with ModelClient(zk_fleet.url, registry=CollectorRegistry()) as other:  # another process's view
        assert {
            k: tag_of(inputs, other.predict(MODEL, inputs, key=f"u{k}")) for k in first
        } == first


def test_a_new_revision_is_used_by_the_next_call_under_load(zk_fleet: Fleet) -> None:
    zk_fleet.publish(route_table([{"version": "1", "weight": 100}]))
    failures: list[BaseException] = []
    seen: list[int] = []
    stop = threading.Event()
    with ModelClient(zk_fleet.url, registry=CollectorRegistry()) as client:
        inputs = x()
        client.predict(MODEL, inputs)

        def load() -> None:
            while not stop.is_set():
                try:
                    seen.append(tag_of(inputs, client.predict(MODEL, inputs)))
                except BaseException as exc:
                    failures.append(exc)

        threads = [threading.Thread(target=load) for _ in range(8)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(seen) > 50, what="traffic on version 1")
            revision = zk_fleet.publish(route_table([{"version": "2", "weight": 100}]))
            wait_for(lambda: client.routes(MODEL).revision == revision, what="the new revision")
            assert tag_of(inputs, client.predict(MODEL, inputs)) == 2
            mark = len(seen)
            wait_for(lambda: len(seen) > mark + 50, what="traffic after the switch")
        finally:
            stop.set()
            for t in threads:
                t.join(10)
    assert not failures, failures[:3]
    assert set(seen[mark + 8 :]) == {2}  # at most one in-flight call per thread was older


def test_unknown_model_and_bad_input_are_clear_and_send_nothing(zk_fleet: Fleet) -> None:
    zk_fleet.publish(route_table([{"version": "1", "weight": 100}]))
    with ModelClient(zk_fleet.url, registry=CollectorRegistry(), subscribe_timeout=2) as client:
        with pytest.raises(ModelNotFound, match=f"published models: '{MODEL}'"):
            client.predict("no-such-model", x())
        with pytest.raises(InvalidInput, match="datatype FP64, expected FP32"):
            client.predict(MODEL, {"x": np.zeros((1, 4), np.float64)})
        with pytest.raises(InvalidInput, match="'x'"):
            client.predict(MODEL, {"z": np.zeros((1, 4), np.float32)})


def test_shadow_calls_are_compared_and_counted(zk_fleet: Fleet) -> None:
    table = route_table(
        [{"version": "1", "weight": 100}, {"version": "3", "weight": 0}],
        shadow={"version": "3", "ratio": 0.5},
    )
    zk_fleet.publish(table)
    registry = CollectorRegistry()
    labels = {"model": MODEL, "version": "3", "processor": "onnx"}
    with ModelClient(zk_fleet.url, registry=registry) as client:
        inputs = x(rows=4, n=8)
        for _ in range(40):
            assert tag_of(inputs, client.predict(MODEL, inputs)) == 1  # never the shadow's answer
        # pinned calls are not mirrored
        client.predict(MODEL, inputs, version="1")

        def counted() -> float:
            return sum(
                _sample(registry, "autoai_client_shadow_requests_total", **labels, outcome=o)
                for o in ("agree", "disagree", "error", "dropped")
            )

        wait_for(lambda: counted() >= 20, what="20 shadow comparisons")
    assert counted() == 20
    # x + 1 against x + 3: different answers, recorded as disagreement with their cosine
    assert (
        _sample(registry, "autoai_client_shadow_requests_total", **labels, outcome="disagree") > 0
    )
    assert _sample(registry, "autoai_client_shadow_agreement_count", **labels) > 0


def test_client_metrics_have_model_version_processor_labels(zk_fleet: Fleet) -> None:
    zk_fleet.publish(route_table([{"version": "2", "weight": 100}]))
    registry = CollectorRegistry()
    with ModelClient(zk_fleet.url, registry=registry) as client:
        for _ in range(5):
            client.predict(MODEL, x())
        revision = client.routes(MODEL).revision
    labels = {"model": MODEL, "version": "2", "processor": "onnx"}
    assert _sample(registry, "autoai_client_requests_total", **labels, outcome="ok") == 5
    assert _sample(registry, "autoai_client_request_duration_seconds_count", **labels) == 5
    assert _sample(registry, "autoai_client_route_revision", **labels) == revision


def test_async_and_sync_clients_agree(zk_fleet: Fleet) -> None:
    zk_fleet.publish(
        route_table(
            [{"version": "1", "weight": 50}, {"version": "2", "weight": 50}], sticky_key="user"
        )
    )
    inputs = x(rows=3, n=5)
    keys = [f"k{i}" for i in range(20)]
    with ModelClient(zk_fleet.url, registry=CollectorRegistry()) as client:
        sync = [client.predict(MODEL, inputs, key=k)["y"] for k in keys]

    async def main() -> list[np.ndarray]:
        async with AsyncModelClient(zk_fleet.url, registry=CollectorRegistry()) as aclient:
            outs = await asyncio.gather(*(aclient.predict(MODEL, inputs, key=k) for k in keys))
            with pytest.raises(ModelNotFound):
                await aclient.predict("missing", inputs)
            return [o["y"] for o in outs]

    for a, b in zip(sync, asyncio.run(main()), strict=True):
        np.testing.assert_array_equal(a, b)


def test_embedded_store_routes_the_same_way(sqlite_fleet: Fleet) -> None:
    sqlite_fleet.publish(
        route_table([{"version": "1", "weight": 50}, {"version": "2", "weight": 50}])
    )
    with ModelClient(sqlite_fleet.url, registry=CollectorRegistry()) as client:
        inputs = x()
        tags = Counter(tag_of(inputs, client.predict(MODEL, inputs)) for _ in range(100))
        assert abs(tags[1] - 50) <= 1
        revision = sqlite_fleet.publish(route_table([{"version": "2", "weight": 100}]))
        wait_for(lambda: client.routes(MODEL).revision == revision, what="the new revision")
        assert tag_of(inputs, client.predict(MODEL, inputs)) == 2


def test_clients_of_routes_a_revision_dropped_are_closed_after_the_grace_period(
    zk_fleet: Fleet,
) -> None:
    zk_fleet.publish(route_table([{"version": "1", "weight": 50}, {"version": "2", "weight": 50}]))
    inputs = x()
    with ModelClient(zk_fleet.url, registry=CollectorRegistry(), retire_after=0.2) as client:
        for _ in range(4):
            client.predict(MODEL, inputs)
        first = dict(client._clients)
        assert {k[1] for k in first} == {"1", "2"}
        revision = zk_fleet.publish(route_table([{"version": "2", "weight": 100}]))
        # The listener swaps the routing in, then sets the dropped clients aside: wait for both.
        wait_for(
            lambda: (
                client.routes(MODEL).revision == revision
                and {k[1] for k in client._clients} == {"2"}
            ),  # version 1's client set aside
            what="the new revision, and version 1's client set aside",
        )
        old = next(c for k, c in first.items() if k[1] == "1")
        assert not old._closed  # calls still in flight on it may finish
        time.sleep(0.3)
        assert tag_of(inputs, client.predict(MODEL, inputs)) == 2  # this call closes it
        assert old._closed
        assert (
            next(c for k, c in first.items() if k[1] == "2")
            is client._clients[next(iter(client._clients))]
        )  # the surviving route kept its client (and its connections)


def test_a_blade_client_is_retired_with_the_fallback_client_it_calls(zk_fleet: Fleet) -> None:
    meta = {
        "engine": "ort-cpu",
        "profiles": {"batch": [1, 8], "seq": [1, 4]},
        "fallback_version": "1",
    }
    blade = {"version": "3", "weight": 100, "processor": "blade", "blade": meta}
    zk_fleet.publish(route_table([blade, {"version": "1", "weight": 0}]))
    with ModelClient(zk_fleet.url, registry=CollectorRegistry(), retire_after=60) as client:
        assert tag_of(x(n=4), client.predict(MODEL, x(n=4))) == 3
        assert tag_of(x(n=6), client.predict(MODEL, x(n=6))) == 1  # seq 6: the fallback
        assert {k[1] for k in client._clients} == {"1", "3"}
        moved = {"version": "1", "weight": 0, "service": f"{MODEL}-2"}  # v1 now served elsewhere
        revision = zk_fleet.publish(route_table([blade, moved]))
        wait_for(  # v1's client went, and the blade client built on it
            lambda: client.routes(MODEL).revision == revision and client._clients == {},
            what="the new revision, and v1's client and the blade client on it set aside",
        )
        assert tag_of(x(n=6), client.predict(MODEL, x(n=6))) == 2  # fallback: the new service
