"""Who holds an embedded-store lease, and whether that process still lives.

Every client of one SQLite file runs on one host, so a lease can say which process holds it and
any other client can look: a lease whose process is gone (or whose PID now names another process,
told apart by its start time) is dead at once, without waiting for its TTL. The TTL stays the
fallback for what this cannot see: a hung process, a lease written by an older version, or a
process in another PID namespace (a container sharing the file), whose PIDs mean nothing here.

An owner is written as ``host:pid:token|scope|started``: ``token`` tells two stores of one process
apart, ``scope`` is the boot id and PID namespace in which ``pid`` is meaningful, ``started`` the
process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22).
"""

from __future__ import annotations

import functools
import os
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Owner", "dead_owners", "is_dead", "process_started"]


def process_started(pid: int) -> int | None:
    """Start time of a live process (clock ticks since boot); None if it is gone or a zombie.

    A process this host cannot inspect (``/proc`` hidden, permission) counts as alive with an
    unknown start time: ``-1``.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return -1
    # The command name (field 2) may hold spaces and parentheses: the fields after it start
    # after the last ')'. There, index 0 is the state (field 3) and index 19 the start time.
    fields = stat[stat.rfind(b")") + 2 :].split()
    if len(fields) < 20:
        return -1
    if fields[0] in (b"Z", b"X"):  # killed but not yet reaped by its parent: dead all the same
        return None
    return int(fields[19])


@functools.cache
def _scope() -> str | None:
    """Where PIDs of this process are comparable: the boot and the PID namespace."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{boot}/{namespace}"


@dataclass(frozen=True)
class Owner:
    """The process that holds a lease; ``encode()`` is what the ``owner`` column stores."""

    host: str
    pid: int
    token: str
    scope: str | None
    started: int | None

    @classmethod
    def this_process(cls) -> Owner:
        pid = os.getpid()
        started = process_started(pid)
        return cls(socket.gethostname(), pid, uuid.uuid4().hex[:8], _scope(), started)

    def encode(self) -> str:
        base = f"{self.host}:{self.pid}:{self.token}"
        if self.scope is None or self.started is None or self.started < 0:
            return base  # nothing to check it by: the lease's TTL decides
        return f"{base}|{self.scope}|{self.started}"

    @classmethod
    def decode(cls, text: str) -> Owner | None:
        """None for a text this version cannot read (an older writer's owner without a scope)."""
        base, _, rest = text.partition("|")
        scope, _, started = rest.rpartition("|")
        host, _, tail = base.partition(":")
        pid, _, token = tail.partition(":")
        if not (scope and pid.isdigit() and started.isdigit()):
            return None
        return cls(host, int(pid), token, scope, int(started))


def is_dead(owner: str) -> bool:
    """True when the lease's process is known to be gone; False when alive or unknowable."""
    found = Owner.decode(owner)
    if found is None or found.scope != _scope():
        return False
    started = process_started(found.pid)
    return started is None or (started >= 0 and started != found.started)


def dead_owners(owners: Iterable[str]) -> set[str]:
    """The owners among ``owners`` whose process is gone (each looked at once)."""
    return {owner for owner in set(owners) if is_dead(owner)}
