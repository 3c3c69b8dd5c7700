"""The latest-value mailboxes that carry callbacks off backend threads."""

from __future__ import annotations

import threading
import time

from config_store._dispatch import Mailbox


def test_a_mailbox_delivers_in_order_and_coalesces_to_the_latest() -> None:
    seen: list[int] = []
    gate = threading.Event()
    done = threading.Event()

    def deliver(v: int) -> None:
        if v == 0:
            gate.wait(5)
        seen.append(v)
        if v == 99:
            done.set()

    box: Mailbox[int] = Mailbox(deliver)
    box.post(0)
    time.sleep(0.05)
    for v in range(1, 100):
        box.post(v)  # all while 0 is still being delivered
    gate.set()
    assert done.wait(5)
    assert seen[0] == 0 and seen[-1] == 99 and seen == sorted(seen) and len(seen) <= 3


def test_accept_can_drop_values_and_close_stops_delivery() -> None:
    seen: list[int] = []
    box: Mailbox[int] = Mailbox(seen.append, accept=lambda v: v % 2 == 0)
    for v in (1, 2):
        box.post(v)
        time.sleep(0.05)
    box.close()
    box.post(4)
    time.sleep(0.05)
    assert seen == [2] and box.closed


def test_a_blocked_mailbox_does_not_block_others() -> None:
    gate = threading.Event()
    fast = threading.Event()

    def slow(v: int) -> None:
        gate.wait(5)

    def quick(v: int) -> None:
        fast.set()

    slow_box: Mailbox[int] = Mailbox(slow)
    fast_box: Mailbox[int] = Mailbox(quick)
    slow_box.post(1)
    fast_box.post(1)
    assert fast.wait(2)
    gate.set()
