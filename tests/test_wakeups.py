"""Wake-up mechanics the kernel's loop relies on: deferred doorbell rings, a hung-up
doorbell, the loop's sweeps and timers sharing wake-ups.

Real pipes and sealed channels throughout; a real child process where a peer must
go away. No timing assertions: only what was rung, read and run.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

from ipc import doorbell
from ipc.channel import ChannelReader, ChannelWriter, create_sealed_channel
from ipc.doorbell import Doorbell
from kernel.dpc import Dpc, Timer
from kernel.loop import SAFETY_POLL_MS, KernelLoop


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def test_deferred_rings_are_written_at_the_flush_once_each_in_order() -> None:
    first, first_ringer = Doorbell.pipe()
    second, second_ringer = Doorbell.pipe()
    try:
        doorbell.defer_rings()
        try:
            second_ringer.ring()
            first_ringer.ring()
            second_ringer.ring()
            assert not _readable(first.fileno()) and not _readable(second.fileno())
        finally:
            assert doorbell.flush_deferred_rings() == 2
        assert first.drain() == 1 and second.drain() == 1
        # Back to immediate rings after the flush.
        first_ringer.ring()
        assert first.drain() == 1
        assert doorbell.flush_deferred_rings() == 0
    finally:
        for bell in (first, first_ringer, second, second_ringer):
            bell.close()


def test_rings_written_before_a_message_leaves_and_deferring_goes_on() -> None:
    """What the kernel's router does before every send: a control message (a STOP, say)
    must not reach a host before the doorbell of the data released ahead of it."""
    waiter, ringer = Doorbell.pipe()
    try:
        doorbell.defer_rings()
        ringer.ring()
        doorbell.write_deferred_rings()
        assert _readable(waiter.fileno()) and waiter.drain() == 1
        ringer.ring()  # still deferred after the early write
        assert not _readable(waiter.fileno())
        assert doorbell.flush_deferred_rings() == 1
        assert waiter.drain() == 1
    finally:
        doorbell.flush_deferred_rings()
        waiter.close()
        ringer.close()


def test_a_deferred_ring_of_a_bell_closed_meanwhile_is_dropped() -> None:
    waiter, ringer = Doorbell.pipe()
    try:
        doorbell.defer_rings()
        ringer.ring()
        ringer.close()
        assert doorbell.flush_deferred_rings() == 1  # counted, nothing written, no error
        assert waiter.drain() == 0
    finally:
        doorbell.flush_deferred_rings()
        waiter.close()
        ringer.close()


def test_a_channel_whose_producer_exited_reports_its_peer_gone() -> None:
    reader, fds = create_sealed_channel(1 << 14, owner_writes=False)
    assert isinstance(reader, ChannelReader)
    ring_fd, data_fd, space_fd = fds
    code = (
        "import sys\n"
        "from ipc.channel import ChannelWriter\n"
        "w = ChannelWriter.from_fds([int(x) for x in sys.argv[1:4]])\n"
        "assert w.send(b'\\x90\\x40\\x7f') and w.wakeups_sent == 1\n"
    )
    try:
        assert reader.prepare_to_sleep() is True  # asleep: the child's send rings
        child = subprocess.run(
            [sys.executable, "-c", code, str(ring_fd), str(data_fd), str(space_fd)],
            pass_fds=fds, env={**os.environ}, timeout=60, check=False,
        )
        assert child.returncode == 0
        for fd in fds:
            os.close(fd)
        records = reader.receive_many()
        assert [r.data for r in records] == [b"\x90\x40\x7f"]
        # Every write end is closed now: the doorbell reads end-of-file, and stays
        # readable although nobody can ring it.
        assert _readable(reader.data_fileno())
        assert reader.prepare_to_sleep() is True
        assert reader.receive_many() == []
        assert reader.peer_gone
        assert _readable(reader.data_fileno())  # which is why a poller must stop
    finally:
        reader.close()


def test_a_writer_keeps_its_peer_until_the_last_write_end_closes() -> None:
    writer, fds = create_sealed_channel(1 << 14, owner_writes=True)
    assert isinstance(writer, ChannelWriter)
    reader = ChannelReader.from_fds(fds)
    try:
        assert reader.prepare_to_sleep()
        assert writer.send(b"\xf8")
        assert [r.data for r in reader.receive_many()] == [b"\xf8"]
        assert not reader.peer_gone
    finally:
        writer.close()
        reader.close()


def test_the_loop_defers_rings_until_the_end_of_a_turn() -> None:
    loop = KernelLoop()
    waiter, ringer = Doorbell.pipe()
    trigger_r, trigger_w = os.pipe()
    seen: list[bool] = []
    try:
        def handler() -> None:
            os.read(trigger_r, 64)
            ringer.ring()
            # Still inside the turn: the peer has not been woken yet.
            seen.append(_readable(waiter.fileno()))

        loop.watch_fd(trigger_r, handler)
        os.write(trigger_w, b"x")
        loop.turn(max_timeout_ms=1000)
        assert seen == [False]
        assert waiter.drain() == 1  # written when the turn ended
    finally:
        loop.close()
        for bell in (waiter, ringer):
            bell.close()
        os.close(trigger_r)
        os.close(trigger_w)


def test_a_sweep_rides_on_a_timer_due_just_after_it() -> None:
    loop = KernelLoop()
    try:
        sweeps: list[int] = []
        fired: list[int] = []
        loop.idle_sweeps.append(lambda: sweeps.append(loop.scheduler.clock()))
        sched = loop.scheduler
        # A timer due 5 % of the sweep interval after the sweep: one wake-up for both.
        due = loop._sweep_due + SAFETY_POLL_MS * 10_000 // 20
        sched.set_timer(Timer(Dpc(lambda: fired.append(sched.clock()))), due)
        turns = 0
        deadline = time.monotonic() + 5 * SAFETY_POLL_MS / 1000
        while not fired and time.monotonic() < deadline:
            # The sweep is due SAFETY_POLL_MS after the loop was made, the timer a little
            # later: let one wait reach it.
            loop.turn(max_timeout_ms=2 * SAFETY_POLL_MS)
            turns += 1
        assert fired and len(sweeps) == 1
        assert turns == 1  # the loop did not wake separately for the sweep
        assert sweeps[0] >= due
    finally:
        loop.close()
