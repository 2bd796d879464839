"""Render: the sequencer releases events at their times, in order; short writes lose nothing."""

from __future__ import annotations

import pytest

import ksclient
from ipc.status import Status

PARTIAL = """
[[device]]
name = "slow"
miniport = "loopback"
options = { max_write = 2, busy_writes = 2 }
"""

FAILING = """
[[device]]
name = "broken"
miniport = "tests.probe_miniports:FailingWrite"
"""


def _open(client: ksclient.Client, name: str) -> tuple[ksclient.RenderPin, ksclient.CapturePin]:
    client.wait_for_filter(name)
    out, inp = client.open_render(name), client.open_capture(name)
    inp.run()
    out.run()
    return out, inp


def test_events_released_at_their_presentation_time_in_order(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        out, inp = _open(c, "loopback")
        start = ksclient.now()
        times = [start + ms * 10_000 for ms in (40, 80, 120, 160, 200)]
        for i, at in enumerate(times):
            out.send([0x90, i, 100], at=at)
        got = [inp.receive(timeout=5) for _ in times]
        assert [m.data[1] for m in got] == [0, 1, 2, 3, 4]
        for msg, at in zip(got, times, strict=True):
            assert msg.timestamp >= at, "released before its presentation time"
        # A past time plays at once, and order is never changed: a later event
        # queued behind an earlier-sent future one waits for it.
        out.send([0x90, 10, 1], at=ksclient.now() + 1_000_000)
        out.send([0x90, 11, 1], at=1)
        first, second = inp.receive(timeout=5), inp.receive(timeout=5)
        assert (first.data[1], second.data[1]) == (10, 11)
        out.close()
        inp.close()


def test_partial_and_zero_writes_lose_and_reorder_nothing(start_kernel) -> None:
    kernel = start_kernel(PARTIAL)
    with kernel.connect() as c:
        out, inp = _open(c, "slow")
        messages = [bytes([0x90, (i >> 7) & 0x7F, i & 0x7F]) for i in range(3000)]
        out.send_many(messages)
        out.send(bytes([0xF0]) + bytes(range(0x7F)) * 20 + bytes([0xF7]))
        got = [inp.receive(timeout=10).data for _ in messages]
        assert got == messages
        sysex = inp.receive(timeout=10)
        assert sysex.is_sysex and len(sysex.data) == 2 + 0x7F * 20
        out.close()
        inp.close()


def test_device_error_fails_the_pin_with_a_clear_status(start_kernel) -> None:
    kernel = start_kernel(FAILING)
    with kernel.connect() as c:
        c.wait_for_filter("broken")
        with c.open_render("broken") as out:
            out.run()
            out.send(b"\x90\x3c\x40")
            event = c.next_event(timeout=5)
            assert (event.kind, event.status) == ("pin_error", Status.IO_DEVICE_ERROR)
            with pytest.raises(ksclient.DeviceError) as err:
                out.send(b"\x90\x3c\x40")
            assert "unplugged" in str(err.value)


def test_interrupts_taken_show_in_the_kernel_stats(loopback_kernel) -> None:
    """The kernel counts interrupt records in a plain int on its hot path; the stats
    still report them (each captured message here came with its own interrupt)."""
    with loopback_kernel.connect() as c:
        out, inp = _open(c, "loopback")
        before = int(c.stats()["kernel"].get("interrupts", 0))
        for i in range(5):
            out.send([0x90, i, 100])
            assert inp.receive(timeout=5).data[1] == i
        assert int(c.stats()["kernel"]["interrupts"]) >= before + 5
        out.close()
        inp.close()
