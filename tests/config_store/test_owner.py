"""The embedded store knows a dead process's lease at once: ``_owner`` and what SQLite does with it.

Every lease here has a TTL of 60 s, so a test that sees a registration disappear within its
bound saw the liveness check, never the TTL.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from config_store import ConfigStore, open_store
from config_store._owner import Owner, dead_owners, is_dead, process_started
from tests.config_store.conftest import Recorder, ids

_REGISTER_AND_HANG = """
import sys, time
import config_store
store = config_store.open_store(sys.argv[1], snapshot_dir=False, failover_dir=False)
store.register(sys.argv[2], "127.0.0.1", int(sys.argv[3]))
print("registered", flush=True)
time.sleep(300)
"""


def _url(tmp_path: Path, lease_ttl: float = 60) -> str:
    return f"sqlite://{tmp_path / 'store.db'}?lease_ttl={lease_ttl:g}"


class _Holder:
    """A separate process holding one lease, stopped by PID at teardown."""

    def __init__(self, url: str, service: str, port: int):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _REGISTER_AND_HANG, url, service, str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "registered"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def holders() -> Iterator[list[_Holder]]:
    started: list[_Holder] = []
    yield started
    for holder in started:
        holder.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ConfigStore]:
    with open_store(_url(tmp_path), snapshot_dir=False, failover_dir=False) as opened:
        yield opened


def _lease_rows(tmp_path: Path, service: str) -> int:
    with sqlite3.connect(tmp_path / "store.db") as conn:
        return int(
            conn.execute("SELECT COUNT(*) FROM instances WHERE service = ?", (service,)).fetchone()[
                0
            ]
        )


# ----------------------------------------------------------------------------------- owners


def test_owner_round_trips_and_names_this_process() -> None:
    me = Owner.this_process()
    assert me.pid == os.getpid()
    assert me.started == process_started(os.getpid())
    assert Owner.decode(me.encode()) == me
    assert not is_dead(me.encode())


def test_an_owner_without_scope_is_never_judged() -> None:
    """Leases of an older writer (``host:pid:token``) are left to their TTL."""
    assert Owner.decode("host:1:abcd") is None
    assert not is_dead(f"host:{2**22 + 7}:abcd")
    assert Owner.decode("garbage") is None


def test_a_reaped_process_and_a_reused_pid_are_dead() -> None:
    me = Owner.this_process()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(30)
    gone = Owner(me.host, proc.pid, "t", me.scope, 12345).encode()
    assert process_started(proc.pid) is None or proc.pid == os.getpid()
    assert is_dead(gone)
    assert me.started is not None
    reused = Owner(me.host, me.pid, "t", me.scope, me.started + 1).encode()
    assert is_dead(reused)  # this PID, another start time: another process
    assert dead_owners([gone, reused, me.encode(), me.encode()]) == {gone, reused}


def test_a_killed_child_not_yet_waited_for_is_dead() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        started = process_started(proc.pid)
        assert started is not None and started >= 0
        me = Owner.this_process()
        owner = Owner(me.host, proc.pid, "t", me.scope, started).encode()
        assert not is_dead(owner)
        os.kill(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not is_dead(owner):  # a zombie until we wait: dead all the same
            assert time.monotonic() < deadline, "the killed child never showed as dead"
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait(30)


def test_another_pid_namespace_is_left_to_the_ttl() -> None:
    me = Owner.this_process()
    elsewhere = Owner(me.host, 2**22 + 7, "t", "other-boot/pid:[1]", 1).encode()
    assert not is_dead(elsewhere)


# ------------------------------------------------------------------------------ the store


def test_a_sigkilled_holder_leaves_instances_at_once(
    tmp_path: Path, store: ConfigStore, holders: list[_Holder]
) -> None:
    holder = _Holder(_url(tmp_path), "svc", 9001)
    holders.append(holder)
    holders.append(_Holder(_url(tmp_path), "svc", 9002))
    assert ids(store.instances("svc")) == ["127.0.0.1:9001", "127.0.0.1:9002"]
    holder.kill()
    # No wait: the answer looks at the holders' processes, the 60 s lease is still running.
    assert ids(store.instances("svc")) == ["127.0.0.1:9002"]


def test_watchers_hear_of_a_sigkilled_holder(
    tmp_path: Path, store: ConfigStore, holders: list[_Holder], recorder: Recorder
) -> None:
    holder = _Holder(_url(tmp_path), "svc", 9001)
    holders.append(holder)
    store.watch_instances("svc", recorder)
    recorder.wait_for(lambda vs: bool(vs) and ids(vs[-1]) == ["127.0.0.1:9001"])
    holder.kill()
    # The sweep runs every 0.2 s; the bound is generous for a loaded machine, far below the TTL.
    recorder.wait_for(lambda vs: vs[-1] == [], timeout=20)


def test_a_heartbeat_deletes_the_lease_of_a_dead_holder(
    tmp_path: Path, store: ConfigStore, holders: list[_Holder]
) -> None:
    store.register("mine", "127.0.0.1", 9500)  # this store now heartbeats (every ttl / 5)
    holder = _Holder(_url(tmp_path), "svc", 9001)
    holders.append(holder)
    assert _lease_rows(tmp_path, "svc") == 1
    holder.kill()
    deadline = time.monotonic() + 60
    while _lease_rows(tmp_path, "svc"):
        assert time.monotonic() < deadline, "no heartbeat removed the dead holder's lease"
        time.sleep(0.05)
    assert ids(store.instances("mine")) == ["127.0.0.1:9500"]


def test_a_stopped_holder_is_not_dead(
    tmp_path: Path, store: ConfigStore, holders: list[_Holder]
) -> None:
    """A hung process keeps its lease: only the TTL may take it away."""
    holder = _Holder(_url(tmp_path), "svc", 9001)
    holders.append(holder)
    os.kill(holder.proc.pid, signal.SIGSTOP)
    try:
        assert ids(store.instances("svc")) == ["127.0.0.1:9001"]
    finally:
        os.kill(holder.proc.pid, signal.SIGCONT)


def test_a_read_only_client_does_not_list_a_dead_holder(
    tmp_path: Path, store: ConfigStore, holders: list[_Holder]
) -> None:
    holder = _Holder(_url(tmp_path), "svc", 9001)
    holders.append(holder)
    holder.kill()
    with open_store(_url(tmp_path) + "&mode=ro", snapshot_dir=False) as reader:
        assert reader.instances("svc") == []
