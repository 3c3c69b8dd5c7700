"""Batcher semantics with a fake processor: real threads, real asyncio, no model."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np
import pytest

from eas_server import InvalidInput, ProcessorError, QueueFull, QueueTimeout, ShuttingDown
from eas_server.batching import BatchResult, DynamicBatcher, Padding


class FakeProcessor:
    """Doubles its input; records every batch; can be held at a gate; fails on negative values."""

    def __init__(self, compute_s: float = 0.0) -> None:
        self.batches: list[np.ndarray] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.compute_s = compute_s

    def run(
        self, inputs: dict[str, np.ndarray], worker: int, outputs: frozenset[str] | None = None
    ) -> Mapping[str, np.ndarray]:
        self.entered.set()
        self.gate.wait(10)
        x = inputs["x"]
        self.batches.append(x.copy())
        if (x < 0).any():
            raise ValueError("negative input")
        if self.compute_s:
            time.sleep(self.compute_s)
        return {"y": x * 2, "worker": np.full((x.shape[0],), worker)}


class Observer:
    def __init__(self) -> None:
        self.batches: list[tuple[int, str, bool]] = []
        self.depths: list[int] = []

    def on_queue_depth(self, depth: int) -> None:
        self.depths.append(depth)

    def on_batch(self, rows: int, trigger: str, compute_s: float, ok: bool) -> None:
        self.batches.append((rows, trigger, ok))


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(test(), 30))


def rows(value: float, n: int = 1, width: int = 2) -> dict[str, np.ndarray]:
    return {"x": np.full((n, width), value, dtype=np.float32)}


def make(proc: FakeProcessor, observer: Observer | None = None, **kwargs: Any) -> DynamicBatcher:
    kwargs.setdefault("max_batch_size", 8)
    kwargs.setdefault("max_delay_s", 0.05)
    return DynamicBatcher(proc.run, observer=observer, **kwargs)


async def _hold(proc: FakeProcessor, batcher: DynamicBatcher) -> asyncio.Task[BatchResult]:
    """Occupy the only worker so that what follows queues up."""
    proc.gate.clear()
    proc.entered.clear()
    blocker = asyncio.create_task(batcher.infer(rows(0)))
    while not proc.entered.is_set():
        await asyncio.sleep(0.001)
    return blocker


def test_a_lone_request_is_not_held_back() -> None:
    async def body() -> None:
        proc, obs = FakeProcessor(), Observer()
        batcher = make(proc, obs, max_delay_s=1.0)
        for i in range(5):
            result = await batcher.infer(rows(i))
            np.testing.assert_array_equal(result.outputs["y"], rows(i)["x"] * 2)
            assert result.queue_s < 0.5  # far below the 1 s delay
        assert [t for _, t, _ in obs.batches] == ["idle"] * 5
        await batcher.close()

    run(body)


def test_a_full_batch_fires_at_once_and_answers_go_to_the_right_request() -> None:
    async def body() -> None:
        proc, obs = FakeProcessor(), Observer()
        batcher = make(proc, obs, max_delay_s=10.0)
        blocker = await _hold(proc, batcher)
        tasks = [asyncio.create_task(batcher.infer(rows(i + 1))) for i in range(8)]
        await asyncio.sleep(0.01)
        proc.gate.set()
        results = await asyncio.gather(*tasks)
        await blocker
        assert obs.batches[-1] == (8, "full", True)
        for i, result in enumerate(results):
            assert result.batch_rows == 8
            np.testing.assert_array_equal(result.outputs["y"], rows(i + 1)["x"] * 2)
        await batcher.close()

    run(body)


def test_delay_counts_from_the_oldest_request_when_more_rows_are_expected() -> None:
    async def body() -> None:
        proc, obs = FakeProcessor(), Observer()
        batcher = make(proc, obs, max_batch_size=8, max_delay_s=1.0)
        # teach the batcher that 8 rows of demand exist
        blocker = await _hold(proc, batcher)
        first = [asyncio.create_task(batcher.infer(rows(1))) for _ in range(8)]
        await asyncio.sleep(0.01)
        proc.gate.set()
        await asyncio.gather(blocker, *first)
        # b comes at least 0.5 s after a (a sleep is never shorter), so counted from a the batch
        # fires at 1.0 s, counted from b at 1.5 s or later; the bounds leave 0.4 s for a loaded
        # machine to be late, and b half a second of slack to arrive before a's delay is over
        t0 = time.monotonic()
        a = asyncio.create_task(batcher.infer(rows(2)))
        await asyncio.sleep(0.5)
        b = asyncio.create_task(batcher.infer(rows(3)))
        ra, rb = await asyncio.gather(a, b)
        waited = time.monotonic() - t0
        assert obs.batches[-1] == (2, "delay", True)
        assert 1.0 <= ra.queue_s < 1.4 and rb.queue_s < ra.queue_s - 0.4
        assert waited < 1.45
        # load fell to one client: it waits one delay at most, then is served at once
        await batcher.infer(rows(4))
        assert obs.batches[-1] == (1, "delay", True)
        lone = await batcher.infer(rows(5))
        assert obs.batches[-1] == (1, "idle", True) and lone.queue_s < 0.5  # not the 1 s delay
        await batcher.close()

    run(body)


def test_an_oversized_request_is_split_and_reassembled_in_order() -> None:
    async def body() -> None:
        proc, obs = FakeProcessor(), Observer()
        batcher = make(proc, obs, max_batch_size=8)
        x = np.arange(19 * 2, dtype=np.float32).reshape(19, 2)
        result = await batcher.infer({"x": x})
        np.testing.assert_array_equal(result.outputs["y"], x * 2)
        assert [(r, t) for r, t, _ in obs.batches] == [(8, "split"), (8, "split"), (3, "split")]
        await batcher.close()

    run(body)


def test_queue_full_and_queue_timeout_are_unavailable_errors() -> None:
    async def body() -> None:
        proc = FakeProcessor()
        batcher = make(proc, max_batch_size=1, max_queue_size=2, max_delay_s=0)
        blocker = await _hold(proc, batcher)
        queued = [asyncio.create_task(batcher.infer(rows(1))) for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match="queue full"):
            await batcher.infer(rows(1))
        proc.gate.set()
        await asyncio.gather(blocker, *queued)

        blocker = await _hold(proc, batcher)
        with pytest.raises(QueueTimeout, match="timeout expired"):
            await batcher.infer(rows(1), timeout_s=0.05)
        proc.gate.set()
        await blocker
        assert batcher.queue_depth == 0
        await batcher.close()

    run(body)


def test_a_failing_request_fails_alone_not_its_batch() -> None:
    async def body() -> None:
        proc, obs = FakeProcessor(), Observer()
        batcher = make(proc, obs, max_batch_size=8, max_delay_s=10)
        blocker = await _hold(proc, batcher)
        values = [1, 2, -1, 4, 5, 6, 7, 8]
        tasks = [asyncio.create_task(batcher.infer(rows(v))) for v in values]
        await asyncio.sleep(0.01)
        proc.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await blocker
        for v, result in zip(values, results, strict=True):
            if v < 0:
                assert isinstance(result, ProcessorError) and "negative input" in str(result)
            else:
                assert isinstance(result, BatchResult)
                np.testing.assert_array_equal(result.outputs["y"], rows(v)["x"] * 2)
        assert obs.batches[-1] == (8, "full", False)
        await batcher.close()

    run(body)


def test_higher_priority_goes_first_and_bad_priorities_are_refused() -> None:
    async def body() -> None:
        proc = FakeProcessor()
        batcher = make(proc, max_batch_size=1, max_delay_s=0, priority_levels=2)
        blocker = await _hold(proc, batcher)
        low = asyncio.create_task(batcher.infer(rows(10), priority=2))
        default = asyncio.create_task(batcher.infer(rows(20)))
        high = asyncio.create_task(batcher.infer(rows(30), priority=1))
        await asyncio.sleep(0.01)
        proc.gate.set()
        await asyncio.gather(blocker, low, default, high)
        order = [float(b[0, 0]) for b in proc.batches[1:]]
        assert order == [30.0, 10.0, 20.0]
        with pytest.raises(InvalidInput, match="priority 3"):
            await batcher.infer(rows(1), priority=3)
        await batcher.close()

    run(body)


def test_requests_with_different_shapes_never_share_a_batch_unless_padding_is_safe() -> None:
    async def body(padding: Padding | None) -> list[int]:
        proc = FakeProcessor()
        batcher = make(proc, max_batch_size=8, max_delay_s=0.2, padding=padding)
        blocker = await _hold(proc, batcher)
        tasks = [asyncio.create_task(batcher.infer(rows(1, width=w))) for w in (2, 3, 2, 3)]
        await asyncio.sleep(0.01)
        proc.gate.set()
        results = await asyncio.gather(*tasks)
        await blocker
        for w, result in zip((2, 3, 2, 3), results, strict=True):
            assert result.outputs["y"].shape == (1, w)
        await batcher.close()
        return [b.shape[0] for b in proc.batches[1:]]

    assert sorted(run(lambda: body(None))) == [2, 2]
    assert run(lambda: body(Padding(inputs={"x": (1, 0)}, outputs={"y": 1}))) == [4]


def test_models_without_a_batch_dim_run_each_request_alone() -> None:
    async def body() -> None:
        proc = FakeProcessor()
        batcher = make(proc, batchable=False, max_delay_s=10)
        blocker = await _hold(proc, batcher)
        tasks = [asyncio.create_task(batcher.infer(rows(i, n=3))) for i in range(3)]
        await asyncio.sleep(0.01)
        proc.gate.set()
        await asyncio.gather(blocker, *tasks)
        assert [b.shape[0] for b in proc.batches[1:]] == [3, 3, 3]
        await batcher.close()

    run(body)


def test_cancelled_requests_leave_the_queue_and_close_fails_the_rest() -> None:
    async def body() -> None:
        proc = FakeProcessor()
        batcher = make(proc, max_batch_size=1, max_delay_s=0)
        blocker = await _hold(proc, batcher)
        gone = asyncio.create_task(batcher.infer(rows(1)))
        waiting = asyncio.create_task(batcher.infer(rows(2)))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.01)
        assert batcher.queue_depth == 1
        closing = asyncio.create_task(batcher.close())
        with pytest.raises(ShuttingDown):
            await waiting
        with pytest.raises(ShuttingDown):
            await batcher.infer(rows(3))
        proc.gate.set()
        await closing
        assert (await blocker).outputs["y"].shape == (1, 2)  # running work finishes

    run(body)


def test_many_concurrent_clients_get_full_batches_and_two_workers_run_in_parallel() -> None:
    async def body() -> None:
        proc, obs = FakeProcessor(compute_s=0.01), Observer()
        batcher = make(proc, obs, max_batch_size=8, max_delay_s=0.05, workers=2)

        async def client(i: int) -> None:
            for _ in range(10):
                result = await batcher.infer(rows(i))
                assert float(result.outputs["y"][0, 0]) == 2 * i

        await asyncio.gather(*(client(i) for i in range(16)))
        sizes = [r for r, _, _ in obs.batches]
        assert sum(sizes) == 160
        assert max(sizes) == 8 and sum(sizes) / len(sizes) >= 4
        await batcher.close()

    run(body)


def test_the_runtime_is_asked_for_the_outputs_the_batch_wants() -> None:
    seen: list[frozenset[str] | None] = []

    def run(
        inputs: dict[str, np.ndarray], worker: int, outputs: frozenset[str] | None
    ) -> Mapping[str, np.ndarray]:
        seen.append(outputs)
        return {"y": inputs["x"], "z": inputs["x"]}

    async def body() -> None:
        batcher = DynamicBatcher(run, max_batch_size=8, max_delay_s=0)
        await batcher.infer(rows(1), outputs=frozenset({"y"}))
        await batcher.infer(rows(1))
        await batcher.close()

    asyncio.run(body())
    assert seen == [frozenset({"y"}), None]


def test_inline_runs_on_the_loop_thread_and_batches_what_arrived_meanwhile() -> None:
    async def body() -> None:
        proc, obs = FakeProcessor(), Observer()
        batcher = make(proc, obs, max_delay_s=10.0, inline=True)
        threads = threading.active_count()
        values = [1, 2, -1, 4, 5, 6, 7, 8]
        # all eight arrive in one loop turn: the batch is taken after every one of them has
        # queued, so they share it (the first does not run alone)
        results = await asyncio.gather(
            *(batcher.infer(rows(v)) for v in values), return_exceptions=True
        )
        assert threading.active_count() == threads  # no worker thread was started
        assert [(r, ok) for r, _, ok in obs.batches] == [(8, False)]
        for v, result in zip(values, results, strict=True):
            if v < 0:  # the failing request failed alone, as with worker threads
                assert isinstance(result, ProcessorError)
            else:
                assert isinstance(result, BatchResult)
                np.testing.assert_array_equal(result.outputs["y"], rows(v)["x"] * 2)
        await batcher.close()

    run(body)


def test_inline_needs_exactly_one_worker() -> None:
    with pytest.raises(ValueError, match="workers must be 1"):
        DynamicBatcher(FakeProcessor().run, workers=2, inline=True)


def test_ahead_a_full_batch_waits_for_a_busy_worker_and_a_partial_one_does_not() -> None:
    async def body() -> None:
        proc, obs = FakeProcessor(), Observer()
        batcher = make(proc, obs, max_delay_s=10.0, ahead=True)
        blocker = await _hold(proc, batcher)
        full = [asyncio.create_task(batcher.infer(rows(i + 1))) for i in range(8)]
        await asyncio.sleep(0)  # every request of the full batch is queued
        # The full batch left the queue for the worker's hand (it waits ahead of it) ...
        assert batcher.queue_depth == 0
        partial = [asyncio.create_task(batcher.infer(rows(10 + i))) for i in range(3)]
        await asyncio.sleep(0)
        # ... but a partial batch stays queued, free to fill, while no worker is free.
        assert batcher.queue_depth == 3
        proc.gate.set()
        done = await asyncio.gather(*full)
        await blocker
        # The full batch ran next, as one batch; its queue time ends when the worker took it.
        assert [len(b) for b in proc.batches[:2]] == [1, 8]
        assert all(r.batch_rows == 8 for r in done)
        rest = await asyncio.gather(*partial)
        assert all(r.batch_rows == 3 for r in rest)
        assert [b[0] for b in obs.batches] == [1, 8, 3]
        await batcher.close()

    run(body)


def test_inline_never_forms_a_batch_ahead() -> None:
    async def body() -> None:
        proc = FakeProcessor()
        batcher = make(proc, inline=True, ahead=True, max_delay_s=10.0)
        tasks = [asyncio.create_task(batcher.infer(rows(i + 1))) for i in range(16)]
        results = await asyncio.gather(*tasks)
        assert [len(b) for b in proc.batches] == [8, 8]
        assert {r.batch_rows for r in results} == {8}
        await batcher.close()

    run(body)
