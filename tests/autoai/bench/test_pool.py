"""``ProcessPool`` with real generator processes against a live eas-server: the steps run in every
process and merge, a process that cannot start says why, and a process that dies ends the run
and every other process (no orphans)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import numpy as np
import pytest

from autoai.bench import BenchReport, GeneratorFailed, Step
from autoai.bench._direct import DirectTarget
from autoai.bench._pool import ProcessPool
from autoai.bench._protocol import ChildSpec
from autoai.bench._runner import run_steps
from config_store import open_store
from tests.fixtures import onnx_models
from tests.fixtures.servers import StartServer
from tests.fixtures.system import served_requests
from tests.fixtures.waiting import wait

pytestmark = pytest.mark.slow

X = {"x": np.ones((1, 4), np.float32)}


def _specs(n: int, *, url: str | None = None, store: str | None = None) -> list[ChildSpec]:
    return [
        ChildSpec(i, "tagger", None, url, store, X, binary=True, timeout=5.0, max_in_flight=4)
        for i in range(n)
    ]


def _report() -> BenchReport:
    return BenchReport("tagger", None, "url", "-", "binary", 1, [], 0.2, 0.5, processes=2)


def inferences(url: str, model: str) -> int:
    """What the server itself counted for ``model`` (its statistics extension, batch 1)."""
    answer = httpx.get(f"{url}/v2/models/{model}/stats", timeout=5)
    return int(answer.json()["model_stats"][0]["inference_count"])


def gone(pid: int) -> bool:
    """The process has exited (and is reaped, or a zombie waiting for init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_a_pool_runs_every_step_in_every_process(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(onnx_models.tagged(tmp_path, 1.0), name="tagger")

    async def main() -> tuple[BenchReport, list[int]]:
        pool = ProcessPool(_specs(2, url=server.url))
        target = DirectTarget(server.url, "tagger", None, X)
        try:
            await pool.begin()
            pids = pool.pids
            assert len(pids) == 2 and os.getpid() not in pids
            steps = [Step(concurrency=2), Step(rate=100.0, max_in_flight=8)]
            before = inferences(server.url, "tagger")
            report = await run_steps(target, steps, _report(), generator=pool)
            # every call that any process made, and no other, reached the server
            made = sum(r.client.total_ok for r in report.steps)
            assert inferences(server.url, "tagger") - before == made
            assert sum(r.client.total_failed for r in report.steps) == 0
            return report, pids
        finally:
            await pool.aclose()
            await target.aclose()

    report, pids = asyncio.run(main())
    assert all(gone(pid) for pid in pids)
    closed, opened = report.steps
    for result in (closed, opened):
        assert result.client.requests > 0 and result.client.errors == {}
        assert result.generator.processes == 2
        assert all(p > 0 for p in result.generator.per_process_percent)
        assert result.server is not None
        # The parent scrapes /metrics at the window's edges, a moment after the children open and
        # close it (much later on a loaded machine): the server's window count is not the
        # client's, but it holds only calls of this step (the exact count is checked above).
        assert 0 < result.server.requests <= result.client.total_ok


def test_a_process_that_cannot_start_says_why(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'store.db'}"
    # created first, as ``bench`` does (its probe opens it): the children open a store that
    # exists, where the model is not published
    open_store(store, snapshot_dir=False).close()

    async def main() -> list[int]:
        pool = ProcessPool(_specs(2, store=store))
        try:
            with pytest.raises(
                GeneratorFailed, match=r"generator process \d \(pid \d+\): .*tagger"
            ):
                await pool.begin()
            return pool.pids
        finally:
            await pool.aclose()

    pids = asyncio.run(main())
    assert len(pids) == 2 and all(gone(pid) for pid in pids)


def test_a_process_that_dies_ends_the_run_and_the_others(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(onnx_models.tagged(tmp_path, 1.0), name="tagger")

    async def main() -> list[int]:
        pool = ProcessPool(_specs(2, url=server.url))
        target = DirectTarget(server.url, "tagger", None, X)
        report = BenchReport("tagger", None, "url", "-", "binary", 1, [], 60.0, 60.0)
        try:
            await pool.begin()
            pids = pool.pids
            run = asyncio.ensure_future(
                run_steps(target, [Step(concurrency=2)], report, generator=pool)
            )
            async with asyncio.timeout(30):  # the step is under way (its warmup lasts a minute)
                while await asyncio.to_thread(served_requests, server.url) < 2:
                    await asyncio.sleep(0.05)
            os.kill(pids[1], signal.SIGKILL)
            with pytest.raises(GeneratorFailed, match=rf"pid {pids[1]}\) ended with exit code -9"):
                await asyncio.wait_for(run, 30)
            return pids
        finally:
            await pool.aclose()
            await target.aclose()

    pids = asyncio.run(main())
    wait(lambda: all(gone(pid) for pid in pids), 10, "the generator processes to end")
