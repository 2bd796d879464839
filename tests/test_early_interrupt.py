"""An interrupt through the ring may overtake the GroupNew the host sent on the bus just
before it: the kernel holds it until the group exists instead of dropping the device's
notification (found by the hostile-peer work: only the safety sweep rescued it)."""

from __future__ import annotations

import os
import time

from ipc import protocol as p
from kernel.connection import ConnectionLimits, MiniportConnection
from kernel.loop import KernelLoop


def _connection() -> tuple[KernelLoop, MiniportConnection, list[list[int]]]:
    loop = KernelLoop()
    reg = p.Register("dev", os.getpid(), "loopback", False, False)
    conn = MiniportConnection(loop, lambda identity, frame: None,
                              ConnectionLimits(5.0, 50, 10.0), reg, b"dev")
    notified: list[list[int]] = []
    conn.on_interrupt = notified.append
    return loop, conn, notified


def test_an_interrupt_that_overtakes_its_group_is_held_until_the_group_exists() -> None:
    loop, conn, notified = _connection()
    try:
        conn.new_group(1)
        conn.interrupt([1])
        conn.interrupt([7])          # group 7's GroupNew is still on its way
        conn.interrupt([1, p.NOTIFY_ALL])
        assert notified == [[1]]     # held, and what came after it waits behind it
        conn.new_group(7)
        assert notified == [[1], [7], [1, p.NOTIFY_ALL]]
        assert conn.malformed == 0 and loop.stats["interrupts_held"] == 2
    finally:
        conn.close()
        loop.close()


def test_an_interrupt_for_a_group_that_never_comes_is_counted_against_the_miniport() -> None:
    loop, conn, notified = _connection()
    try:
        conn.interrupt([9])
        deadline = time.monotonic() + 3
        while conn.malformed == 0 and time.monotonic() < deadline:
            loop.turn(max_timeout_ms=50)
        assert notified == [] and conn.malformed == 1
    finally:
        conn.close()
        loop.close()


def test_interrupts_held_behind_a_bad_one_still_go_on_when_it_expires() -> None:
    loop, conn, notified = _connection()
    try:
        conn.new_group(1)
        conn.interrupt([9])
        conn.interrupt([1])
        deadline = time.monotonic() + 3
        while not notified and time.monotonic() < deadline:
            loop.turn(max_timeout_ms=50)
        assert notified == [[1]] and conn.malformed == 1
    finally:
        conn.close()
        loop.close()
