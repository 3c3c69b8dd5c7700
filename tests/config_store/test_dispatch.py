"""The latest-value mailboxes that carry callbacks off backend threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from config_store._dispatch import Mailbox, _Pool


def test_a_mailbox_delivers_in_order_and_coalesces_to_the_latest() -> None:
    seen: list[int] = []
    gate = threading.Event()
    delivering = threading.Event()
    done = threading.Event()

    def deliver(v: int) -> None:
        if v == 0:
            delivering.set()
            gate.wait(30)
        seen.append(v)
        if v == 99:
            done.set()

    box: Mailbox[int] = Mailbox(deliver)
    box.post(0)
    assert delivering.wait(30)  # 0 is being delivered, not merely queued
    for v in range(1, 100):
        box.post(v)  # all while 0 is still being delivered
    gate.set()
    assert done.wait(30)
    assert seen[0] == 0 and seen[-1] == 99 and seen == sorted(seen) and len(seen) <= 3


def test_accept_can_drop_values_and_close_stops_delivery() -> None:
    seen: list[int] = []
    judged: list[int] = []
    pool = _Pool(1)  # one worker, tasks in order: a marker task runs after any drain before it

    def accept(v: int) -> bool:
        judged.append(v)
        return v % 2 == 0

    box: Mailbox[int] = Mailbox(seen.append, accept=accept, pool=pool)
    box.post(1)
    _wait_for(lambda: judged == [1])  # 1 was judged on its own, not coalesced away by 2
    box.post(2)
    _wait_for(lambda: seen == [2])
    box.close()
    box.post(4)
    drained = threading.Event()
    pool.submit(drained.set)
    assert drained.wait(30)  # whatever post(4) scheduled has run
    assert seen == [2] and judged == [1, 2] and box.closed


def _wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_a_blocked_mailbox_does_not_block_others() -> None:
    gate = threading.Event()
    fast = threading.Event()

    def slow(v: int) -> None:
        gate.wait(60)  # held until the end: behind it, ``quick`` would never run

    def quick(v: int) -> None:
        fast.set()

    slow_box: Mailbox[int] = Mailbox(slow)
    fast_box: Mailbox[int] = Mailbox(quick)
    slow_box.post(1)
    fast_box.post(1)
    try:
        assert fast.wait(30)
    finally:
        gate.set()
