"""Server-side figures from ``/metrics`` deltas: parsed from a live eas-server's text, and the
histogram and counter arithmetic on hand-made snapshots."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from autoai.bench import Histogram, ServerSnapshot, parse_metrics, server_stats
from eas_client import EasClient, InvalidRequest
from tests.fixtures import onnx_models
from tests.fixtures.servers import StartServer


def test_deltas_of_a_live_servers_metrics(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(onnx_models.tagged(tmp_path, 1.0), "--max-batch-size", "8")
    x = np.ones((1, 4), np.float32)
    with EasClient(urls=[server.url], model="m") as client:
        for _ in range(3):
            client.infer({"x": x})
        before = parse_metrics(httpx.get(f"{server.url}/metrics").text)
        for _ in range(5):
            client.infer({"x": x})
        client.infer({"x": np.ones((3, 4), np.float32)})
        with pytest.raises(InvalidRequest):
            client.infer({"x": np.ones((1, 4), np.int64)})
        after = parse_metrics(httpx.get(f"{server.url}/metrics").text)
    assert before.requests["success"] == 3
    assert set(before.batches) == {"full", "delay", "idle", "split"}
    stats = server_stats({server.url: before}, {server.url: after}, 2.0)
    assert stats.instances == [server.url] and stats.unreachable == []
    assert stats.requests == 6
    assert stats.qps == pytest.approx(3.0)
    assert stats.errors == {"bad_request": 1}
    assert sum(stats.batches.values()) == 6  # one call at a time: a batch each
    assert stats.batch_size_mean == pytest.approx(8 / 6)
    assert stats.rt_mean is not None and stats.queue_mean is not None
    assert stats.compute_mean is not None
    assert 0 < stats.queue_mean < stats.rt_mean and 0 < stats.compute_mean < stats.rt_mean
    assert stats.rt_p50 is not None and stats.rt_p99 is not None
    assert 0 < stats.rt_p50 <= stats.rt_p99 <= 10.0


def test_an_instance_missing_from_a_scrape_is_unreachable_and_left_out() -> None:
    one = ServerSnapshot(requests={"success": 10.0})
    two = ServerSnapshot(requests={"success": 30.0})
    stats = server_stats(
        {"http://a": one, "http://b": one}, {"http://a": two}, 1.0, failed=["http://c"]
    )
    assert stats.instances == ["http://a"]
    assert stats.unreachable == ["http://b", "http://c"]
    assert stats.requests == 20
    assert stats.rt_mean is None and stats.batch_size_mean is None


def test_instances_add_up_and_a_restarted_one_counts_from_zero() -> None:
    def snap(success: float, count: float, total: float) -> ServerSnapshot:
        hist = Histogram(count, total, ((0.001, count), (float("inf"), count)))
        return ServerSnapshot(
            requests={"success": success}, batches={"idle": count}, request_duration=hist
        )

    before = {"http://a": snap(100, 100, 0.05), "http://b": snap(500, 500, 0.25)}
    after = {"http://a": snap(150, 150, 0.075), "http://b": snap(40, 40, 0.02)}  # b restarted
    stats = server_stats(before, after, 1.0)
    assert stats.requests == 50 + 40
    assert stats.batches == {"idle": 90}
    assert stats.rt_mean == pytest.approx((0.025 + 0.02) / 90)


def test_histogram_quantiles_interpolate_inside_the_bucket() -> None:
    # 100 observations: 50 in (0, 1], 40 in (1, 2], 10 in (2, +Inf)
    h = Histogram(100, 150.0, ((1.0, 50.0), (2.0, 90.0), (float("inf"), 100.0)))
    assert h.quantile(0.25) == pytest.approx(0.5)
    assert h.quantile(0.50) == pytest.approx(1.0)
    assert h.quantile(0.70) == pytest.approx(1.5)
    assert h.quantile(0.99) == pytest.approx(2.0)  # in +Inf: the highest finite bound
    assert h.mean == pytest.approx(1.5)
    assert Histogram().quantile(0.5) is None
    earlier = Histogram(20, 10.0, ((1.0, 20.0), (2.0, 20.0), (float("inf"), 20.0)))
    delta = h.minus(earlier)
    assert delta.count == 80 and delta.buckets[0] == (1.0, 30.0)
    assert h.minus(Histogram(500, 1.0)) is h  # restarted: everything is new


def test_text_that_is_not_prometheus_is_refused() -> None:
    with pytest.raises(ValueError):
        parse_metrics("eas_requests_total{outcome=success 1\n")
    assert parse_metrics("") == ServerSnapshot()
