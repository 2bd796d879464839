"""A pin's stream clock (KSPROPERTY_CLOCK_TIME): runs in RUN, stands still in PAUSE,
back to 0 at STOP; `send(at=T)` plays when the clock reaches T."""

from __future__ import annotations

import time

import pytest

import ksclient
from ipc.ks import KsState


def _open(client: ksclient.Client) -> tuple[ksclient.RenderPin, ksclient.CapturePin]:
    client.wait_for_filter("loopback")
    out, inp = client.open_render("loopback"), client.open_capture("loopback")
    inp.run()
    return out, inp


def test_clock_runs_only_in_run_and_resets_at_stop(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        out, inp = _open(c)
        assert out.time() == 0
        out.walk_to(KsState.PAUSE)
        time.sleep(0.05)
        assert out.time() == 0, "the clock stands still before RUN"
        out.run()
        time.sleep(0.1)
        out.pause()
        paused = out.time()
        assert paused >= 1_000_000
        time.sleep(0.1)
        stream, phys = out.correlated_time()
        assert stream == paused, "PAUSE stops the clock"
        assert phys <= ksclient.now()
        out.run()
        time.sleep(0.05)
        assert out.time() >= paused + 500_000, "RUN counts on from where it stood"
        out.stop()
        assert out.time() == 0
        out.close()
        inp.close()


def test_an_event_paused_after_sending_plays_its_delay_after_run(loopback_kernel) -> None:
    # The case: due 300 ms ahead, the pin paused for 800 ms right after sending.
    with loopback_kernel.connect() as c:
        out, inp = _open(c)
        out.run()
        sent_at = out.time()
        out.send(b"\x90\x3c\x40", at=sent_at + 3_000_000)
        out.pause()
        remaining_ms = (sent_at + 3_000_000 - out.time()) / 10_000
        time.sleep(0.8)
        with pytest.raises(ksclient.KsTimeoutError):
            inp.receive(timeout=0)
        run_at = ksclient.now()
        out.run()
        msg = inp.receive(timeout=5)
        after_run = (msg.timestamp - run_at) / 10_000
        print(f"played {after_run:.1f} ms after RUN (due 300 ms of stream time ahead, "
              f"{remaining_ms:.1f} ms of it left at PAUSE)")
        assert msg.data == b"\x90\x3c\x40"
        # Never before its stream time (the capture stamp comes after the release, and
        # the kernel entered RUN after `run_at`), and not at once as before.
        assert after_run >= remaining_ms - 1
        assert min(200, remaining_ms - 1) < after_run < 800
        out.close()
        inp.close()


def test_stop_resets_time_and_drops_what_is_pending(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        out, inp = _open(c)
        out.run()
        out.send(b"\x90\x3c\x40", at=out.time() + 2_000_000)
        out.stop()
        assert out.time() == 0
        out.run()
        with pytest.raises(ksclient.KsTimeoutError):
            inp.receive(timeout=0.4)
        assert out.statistics()["stats"]["flushed"] == 1
        out.close()
        inp.close()


def test_physical_times_still_work_and_capture_carries_both_clocks(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        out, inp = _open(c)
        out.run()
        at = ksclient.now() + 500_000
        assert isinstance(at, ksclient.PhysicalTime)
        out.send(b"\x90\x3d\x40", at=at)
        msg = inp.receive(timeout=5)
        assert msg.timestamp >= at and msg.physical_time == msg.timestamp
        # The capture pin has run since before the render pin: its stream time at the
        # message is its own clock, close to what it reads now and never above it.
        assert 0 < msg.stream_time <= inp.time()
        inp.pause()
        frozen = inp.time()
        inp.run()
        out.send(b"\x90\x3e\x40")
        later = inp.receive(timeout=5)
        assert later.stream_time >= frozen
        out.close()
        inp.close()
