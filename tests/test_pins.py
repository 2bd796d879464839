"""KS filters and pins: properties, formats, instance limits, the KSSTATE machine."""

from __future__ import annotations

import pytest

import ksclient
from ipc.ks import (
    KSDATAFORMAT_SUBTYPE_MIDI_BUS,
    KSDATAFORMAT_TYPE_MUSIC,
    Communication,
    DataFlow,
    DataFormat,
    KsState,
)
from ipc.status import Status


def test_pin_properties(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        c.wait_for_filter("loopback")
        assert c.pin_property("loopback", 0, "ctypes") == 4
        assert c.pin_property("loopback", 0, "dataflow") == DataFlow.IN
        assert c.pin_property("loopback", 3, "dataflow") == DataFlow.OUT
        assert c.pin_property("loopback", 1, "communication") == Communication.NONE
        assert c.pin_property("loopback", 0, "communication") == Communication.SINK
        (rng,) = c.pin_property("loopback", 0, "dataranges")
        assert rng["major"] == KSDATAFORMAT_TYPE_MUSIC and rng["channel_mask"] == 0xFFFF
        assert c.pin_property("loopback", 0, "name") == "MIDI Out"
        assert c.pin_property("loopback", 3, "cinstances") == {"possible": 4, "current": 0}
        with c.open_capture("loopback"):
            assert c.pin_property("loopback", 3, "cinstances") == {"possible": 4, "current": 1}
        assert c.pin_property("loopback", 3, "cinstances")["current"] == 0
        with pytest.raises(ksclient.KsError) as err:
            c.pin_property("loopback", 9, "name")
        assert err.value.status == Status.INVALID_PARAMETER
        with pytest.raises(ksclient.KsError) as err:
            c.pin_property("loopback", 0, "no-such-property")
        assert err.value.status == Status.NOT_SUPPORTED
        with pytest.raises(ksclient.NotFoundError):
            c.pin_property("nothing", 0, "name")


def test_open_errors(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        c.wait_for_filter("loopback")
        bus = DataFormat(KSDATAFORMAT_TYPE_MUSIC, KSDATAFORMAT_SUBTYPE_MIDI_BUS)
        with pytest.raises(ksclient.NoMatchError):
            c.open_pin("loopback", 0, bus)
        with pytest.raises(ksclient.KsError) as err:
            c.open_pin("loopback", 1)  # a bridge pin
        assert err.value.status == Status.INVALID_DEVICE_REQUEST
        with pytest.raises(ksclient.KsError) as err:
            c.open_pin("loopback", 0, capacity=1000)
        assert err.value.status == Status.INVALID_PARAMETER
        with pytest.raises(ksclient.NotFoundError):
            c.open_render("nothing")
        with c.open_render("loopback"), pytest.raises(ksclient.InstancesExhaustedError):
            c.open_render("loopback")
        with c.open_render("loopback"):  # the instance came back on close
            pins = [c.open_capture("loopback") for _ in range(4)]
            with pytest.raises(ksclient.InstancesExhaustedError):
                c.open_capture("loopback")
            for pin in pins:
                pin.close()
        # a client that disappears without closing gives its instances back
        with loopback_kernel.connect() as other:
            other.open_render("loopback")
        with c.open_render("loopback"):
            pass


def test_ksstate_steps(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        c.wait_for_filter("loopback")
        with c.open_render("loopback") as out:
            assert out.state == KsState.STOP
            with pytest.raises(ksclient.InvalidStateError):
                out.set_state(KsState.RUN)
            with pytest.raises(ksclient.InvalidStateError):
                out.send(b"\x90\x3c\x40")  # nothing moves in STOP
            out.set_state(KsState.ACQUIRE)
            out.set_state(KsState.ACQUIRE)  # same state: success
            with pytest.raises(ksclient.InvalidStateError):
                out.set_state(KsState.STOP + 3)
            out.set_state(KsState.PAUSE)
            out.set_state(KsState.RUN)
            with pytest.raises(ksclient.InvalidStateError):
                out.set_state(KsState.STOP)
            with pytest.raises(ksclient.KsError) as err:
                c._call(__import__("ipc.protocol").protocol.SetState(out.handle, 7))
            assert err.value.status == Status.INVALID_PARAMETER
            out.stop()
            assert out.state == KsState.STOP


def test_stop_flushes_queued_render_data(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        c.wait_for_filter("loopback")
        with c.open_render("loopback") as out, c.open_capture("loopback") as inp:
            inp.run()
            out.run()
            out.send(b"\x90\x3c\x40", at=ksclient.now() + 3_000_000)  # 300 ms ahead
            out.pause()  # PAUSE keeps it
            out.stop()  # STOP flushes it
            with pytest.raises(ksclient.KsTimeoutError):
                inp.receive(timeout=0.6)
            out.run()
            out.send(b"\x90\x3d\x40")
            assert inp.receive(timeout=5).data == b"\x90\x3d\x40"
            assert out.statistics()["stats"]["flushed"] == 1


def test_paused_render_data_moves_on_run(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        c.wait_for_filter("loopback")
        with c.open_render("loopback") as out, c.open_capture("loopback") as inp:
            inp.run()
            out.walk_to(KsState.PAUSE)
            out.send(b"\x90\x3c\x40")
            with pytest.raises(ksclient.KsTimeoutError):
                inp.receive(timeout=0.3)
            out.run()
            assert inp.receive(timeout=5).data == b"\x90\x3c\x40"
