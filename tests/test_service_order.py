"""The DPC in PortCls order: Service() before Read, in the DPC of the interrupt, for the
notified group's streams only. Real processes; the miniport logs its calls to a file."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

import ksclient
from miniports.testing import assert_conformant, toml_config
from tests.conftest import KernelProcess
from tests.latching_miniport import DELAY, MAIN_IN, MAIN_OUT, SIDE_IN, SIDE_OUT

LATCHING = "tests.latching_miniport:LatchingLoopback"


def test_a_miniport_that_moves_input_in_service_is_conformant() -> None:
    report = assert_conformant(LATCHING, checks=["roundtrip", "first_interrupt", "burst"])
    assert [r.outcome for r in report.results] == ["passed"] * 3, report.summary()


class CallLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen = 0

    def new(self) -> list[str]:
        """The lines logged since the last call."""
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        fresh, self.seen = lines[self.seen :], len(lines)
        return fresh


def _start(start_kernel: Callable[..., KernelProcess], log: Path, **options: object) -> (
    KernelProcess
):
    return start_kernel(toml_config([{
        "name": "latch", "miniport": LATCHING, "options": {"log": str(log), **options},
    }]))


def _roundtrip(out: ksclient.RenderPin, inp: ksclient.CapturePin, message: bytes) -> float:
    sent = time.monotonic()
    out.send(message)
    assert inp.receive(timeout=1.0).data == message  # on its first interrupt
    return time.monotonic() - sent


@pytest.mark.parametrize("interrupt", ["notify", "request_service", "delayed"])
def test_every_message_comes_on_its_first_interrupt_read_after_service(
    start_kernel: Callable[..., KernelProcess], tmp_path: Path, interrupt: str
) -> None:
    """Whether the ISR notifies, requests service on the group itself or asks for a
    delayed service (its timer in the host), the DPC runs in PortCls order."""
    log = CallLog(tmp_path / "calls.log")
    kernel = _start(start_kernel, log.path, interrupt=interrupt)
    least = DELAY / 1e7 if interrupt == "delayed" else 0.0
    with kernel.connect() as client:
        client.wait_for_filter("latch")
        with (
            client.open_render("latch", MAIN_OUT) as main_out,
            client.open_capture("latch", MAIN_IN) as main_in,
            client.open_render("latch", SIDE_OUT) as side_out,
            client.open_capture("latch", SIDE_IN) as side_in,
        ):
            for pin in (main_in, side_in, main_out, side_out):
                pin.run()
            assert log.new() == []
            for i in range(20):
                assert _roundtrip(main_out, main_in, bytes((0x90, i, 64))) >= least
                # One DPC: Service() first, then Read until 0 on the main group's stream;
                # the side stream, in another group, is not read.
                assert log.new() == ["isr main", "service", "read main 3", "read main 0"]
            assert _roundtrip(side_out, side_in, b"\x80\x01\x00") >= least
            # The side group does not hold the port's sink: no Service(), only its Read.
            assert log.new() == ["isr side", "read side 3", "read side 0"]
            assert not main_in.poll(0.1)


def test_notify_all_services_the_port_group_then_every_stream_group(
    start_kernel: Callable[..., KernelProcess], tmp_path: Path
) -> None:
    log = CallLog(tmp_path / "calls.log")
    kernel = _start(start_kernel, log.path, interrupt="notify_all")
    with kernel.connect() as client:
        client.wait_for_filter("latch")
        with (
            client.open_capture("latch", SIDE_IN) as side_in,
            client.open_capture("latch", MAIN_IN) as main_in,
            client.open_render("latch", MAIN_OUT) as main_out,
        ):
            for pin in (side_in, main_in, main_out):
                pin.run()
            _roundtrip(main_out, main_in, b"\x90\x40\x7f")
            # Notify(NULL): the port's group (port sink, main stream), then the groups
            # of the streams in the order they were opened (side; main coalesced).
            assert log.new() == [
                "isr main", "service", "read main 3", "read main 0", "read side 0",
            ]
            assert not side_in.poll(0.1)

