"""KS events on a pin: clock position and interval marks on the stream clock, end of
stream on a render pin; disabled or closed, they stop."""

from __future__ import annotations

import time

import pytest

import ksclient
from ipc.ks import KsState
from ipc.status import Status


def _open(client: ksclient.Client) -> tuple[ksclient.RenderPin, ksclient.CapturePin]:
    client.wait_for_filter("loopback")
    out, inp = client.open_render("loopback"), client.open_capture("loopback")
    inp.run()
    return out, inp


def test_position_mark_fires_once_on_stream_time_and_waits_out_pause(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        out, inp = _open(c)
        out.walk_to(KsState.PAUSE)
        mark = out.enable_event("position", time=1_000_000)  # 100 ms of stream time
        with pytest.raises(ksclient.KsTimeoutError):
            out.next_pin_event(timeout=0.3)  # the clock stands still in PAUSE
        out.run()
        event = out.next_pin_event(timeout=5)
        assert (event.kind, event.cookie) == ("position", mark)
        assert event.time >= 1_000_000
        print(f"position mark fired at stream time {event.time / 10_000:.1f} ms (mark 100 ms)")
        with pytest.raises(ksclient.KsTimeoutError):
            out.next_pin_event(timeout=0.2)  # once only
        with pytest.raises(ksclient.KsError) as err:
            out.disable_event(mark)
        assert err.value.status == Status.INVALID_PARAMETER
        out.close()
        inp.close()


def test_interval_marks_repeat_until_disabled(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        out, inp = _open(c)
        fired: list[ksclient.PinEvent] = []
        tick = inp.enable_event("interval", time=0, interval=200_000, callback=fired.append)
        deadline = time.monotonic() + 5
        while len(fired) < 3 and time.monotonic() < deadline:
            c.pump_events()
            time.sleep(0.01)
        assert len(fired) >= 3
        times = [e.time for e in fired]
        assert times == sorted(times)
        inp.disable_event(tick)
        c.pump_events()
        count = len(fired)
        time.sleep(0.2)
        c.pump_events()
        assert len(fired) == count, "no interval mark after disabling"
        with pytest.raises(ksclient.KsError):
            inp.enable_event("interval", interval=10)  # under 1 ms
        out.close()
        inp.close()


def test_end_of_stream_after_the_queue_played(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        out, inp = _open(c)
        out.run()
        out.send(b"\x90\x3c\x40", at=out.time() + 5_000_000)
        eos = out.enable_event("end_of_stream")
        with pytest.raises(ksclient.KsTimeoutError):
            out.next_pin_event(timeout=0.1)  # the note waits for its time
        event = out.next_pin_event(timeout=5)
        assert (event.kind, event.cookie) == ("end_of_stream", eos)
        assert inp.receive(timeout=5).data == b"\x90\x3c\x40"
        with pytest.raises(ksclient.KsError):
            inp.enable_event("end_of_stream")  # a render event
        out.close()
        inp.close()


def test_closing_the_pin_cancels_its_events(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        out, inp = _open(c)
        inp.enable_event("interval", interval=100_000)
        inp.enable_event("position", time=10_000_000)
        inp.close()
        out.close()
        stats = c.stats()
        assert stats["pins"] == []
        time.sleep(0.2)
        c.pump_events()  # nothing arrives for the closed pin, and nothing breaks
