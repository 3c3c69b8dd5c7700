"""How the runtime shares the usable cores: threads, spinning, and where batches run."""

from __future__ import annotations

import os

import pytest

from eas_server._cpu import plan_runtime, usable_cores


def test_usable_cores_follow_the_affinity() -> None:
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("cores", "workers", "device", "threads", "spinning", "inline"),
    [
        # one CPU worker owns every core: the loop's thread is one of its threads, so it spins
        (2, 1, "cpu", 2, True, True),
        (16, 1, "cpu", 16, True, True),
        (1, 1, "cpu", 1, True, True),
        # worker threads: the loop's thread comes on top of theirs, so no core is left to spin
        (2, 2, "cpu", 1, False, False),
        (8, 2, "cpu", 4, False, False),
        (9, 2, "cpu", 4, True, False),
        # a GPU runs the batches: keep the event loop free of them, never spin against it
        (16, 1, "gpu", 16, False, False),
    ],
)
def test_plan(
    cores: int, workers: int, device: str, threads: int, spinning: bool, inline: bool
) -> None:
    plan = plan_runtime(cores, workers=workers, device=device)
    assert (plan.threads, plan.spinning, plan.inline) == (threads, spinning, inline)
    assert f"{cores} usable cores" in plan.reason


def test_what_the_user_set_wins() -> None:
    plan = plan_runtime(2, threads=1, spinning=False, inline=False)
    assert (plan.threads, plan.spinning, plan.inline) == (1, False, False)
    # inline needs one worker, whatever is asked; on a GPU only when asked
    assert not plan_runtime(4, workers=2, inline=True).inline
    assert plan_runtime(4, device="gpu", inline=True).inline
    # one thread on two cores, inline: the loop's thread alone computes, a core is free
    assert plan_runtime(2, threads=1).spinning and not plan_runtime(2, threads=1).inline
