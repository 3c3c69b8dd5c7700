"""LeaderElection on both backends: one leader, the next takes over when it leaves or dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from config_store import LeaderElection, StoreUnavailable

from .conftest import Recorder, StoreFactory


def _wait(predicate: object, timeout: float) -> bool:
    """Poll ``predicate`` until true (True) or ``timeout`` (False). A store unreachable for a
    moment (``StoreUnavailable`` from the predicate) is "not yet"; a timeout after one fails
    with the last such error instead of returning False."""
    deadline = time.monotonic() + timeout
    unavailable: StoreUnavailable | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return True
        except StoreUnavailable as exc:
            unavailable = exc
        time.sleep(0.05)
    if unavailable is not None:
        raise AssertionError(f"timed out after {timeout:g} s; the store last said: {unavailable}")
    return False


def test_the_first_candidate_leads_and_all_agree(factory: StoreFactory) -> None:
    first_changes, second_changes = Recorder(), Recorder()
    first = LeaderElection(factory(), "control", "127.0.0.1", 9001, on_change=first_changes)
    time.sleep(0.01)  # enters later (``since``); a slow machine only widens the gap
    second = LeaderElection(factory(), "control", "127.0.0.1", 9002, on_change=second_changes)
    first_changes.wait_for(lambda v: v == [True])
    assert _wait(lambda: second.leader is not None and first.leader is not None, 10)
    assert _wait(lambda: len(first.candidates()) == 2, 10)
    assert first.is_leader and not second.is_leader
    assert first.leader is not None and second.leader is not None
    assert first.leader.id == second.leader.id == first.id == "127.0.0.1:9001"
    assert [c.id for c in second.candidates()] == ["127.0.0.1:9001", "127.0.0.1:9002"]
    assert second_changes.values == []


def test_the_next_candidate_takes_over_when_the_leader_leaves(factory: StoreFactory) -> None:
    first = LeaderElection(factory(), "control", "127.0.0.1", 9001)
    time.sleep(0.01)  # enters later (``since``); a slow machine only widens the gap
    changes = Recorder()
    second = LeaderElection(factory(), "control", "127.0.0.1", 9002, on_change=changes)
    assert _wait(lambda: first.is_leader, 10)
    first.close()
    first.close()
    assert not first.is_leader
    changes.wait_for(lambda v: v == [True])
    assert second.is_leader


_CANDIDATE = textwrap.dedent(
    """
    import sys, time
    from config_store import LeaderElection, open_store
    store = open_store(sys.argv[1], snapshot_dir=False, failover_dir=False)
    election = LeaderElection(store, "control", "127.0.0.1", 9001)
    deadline = time.monotonic() + 60
    while not election.is_leader:
        if time.monotonic() > deadline:
            sys.exit("never led")  # the test reads EOF instead of waiting for ever
        time.sleep(0.05)
    print("leading", flush=True)
    time.sleep(120)
    """
)


def test_the_next_candidate_takes_over_when_the_leader_dies(factory: StoreFactory) -> None:
    """kill -9 of the leading process: its session or lease ends, and the follower leads within
    the session timeout (4 s) or lease TTL (2 s), plus delivery."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _CANDIDATE, factory.url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "leading"
        changes = Recorder()
        follower = LeaderElection(factory(), "control", "127.0.0.1", 9002, on_change=changes)
        assert _wait(lambda: follower.leader is not None, 10)
        assert not follower.is_leader
        assert follower.leader is not None and follower.leader.id == "127.0.0.1:9001"
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        changes.wait_for(lambda v: v == [True], timeout=15)
        assert time.monotonic() - killed < 10
        assert follower.is_leader
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
