"""The emulated MPU-401 at register level, and the built-in UART miniport through a real kernel."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psutil
import pytest

from ipc.status import Status, StatusError
from miniports import mpu401
from miniports.mpu401 import (
    ACK,
    CMD_RESET,
    CMD_UART_MODE,
    DATA_PORT,
    STATUS_INPUT_EMPTY,
    STATUS_OUTPUT_NOT_READY,
    STATUS_PORT,
    IoSpace,
    LoopbackCable,
    MidiFramer,
    Mpu401,
)
from miniports.mpu401.dmusuart import DMusUartMiniport
from miniports.testing import assert_conformant, running_kernel, toml_config
from miniports.uart import (
    CLSID_MiniportDriverDMusUART,
    CLSID_MiniportDriverDMusUARTCapture,
    CLSID_MiniportDriverUart,
    UartMiniport,
    pc_new_miniport,
)

FAST = 1_000_000
"""A test wire rate: 10 us a byte, 32 times the real one."""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def card():
    cards: list[Mpu401] = []

    def make(**kwargs: object) -> Mpu401:
        cards.append(Mpu401(**kwargs))  # type: ignore[arg-type]
        return cards[-1]

    yield make
    for c in cards:
        c.close()


def _uart(card: Mpu401) -> None:
    card.write_port(STATUS_PORT, CMD_RESET)
    assert card.read_port(DATA_PORT) == ACK
    card.write_port(STATUS_PORT, CMD_UART_MODE)
    assert card.read_port(DATA_PORT) == ACK
    assert card.uart_mode


# The card, register by register.


def test_reset_is_acknowledged_except_when_leaving_uart_mode(card) -> None:
    c = card()
    assert c.read_port(STATUS_PORT) == STATUS_INPUT_EMPTY  # ready, no input
    c.write_port(STATUS_PORT, CMD_RESET)
    assert not c.read_port(STATUS_PORT) & STATUS_INPUT_EMPTY
    assert c.read_port(DATA_PORT) == ACK
    assert c.read_port(STATUS_PORT) & STATUS_INPUT_EMPTY
    c.write_port(STATUS_PORT, CMD_UART_MODE)
    assert c.read_port(DATA_PORT) == ACK and c.uart_mode
    # In UART mode only a reset is understood, and the first one is not answered.
    c.write_port(STATUS_PORT, CMD_UART_MODE)
    assert c.read_port(STATUS_PORT) & STATUS_INPUT_EMPTY
    c.write_port(STATUS_PORT, CMD_RESET)
    assert c.read_port(STATUS_PORT) & STATUS_INPUT_EMPTY and not c.uart_mode
    c.write_port(STATUS_PORT, CMD_RESET)
    assert c.read_port(DATA_PORT) == ACK


def test_a_card_that_never_acknowledges(card) -> None:
    c = card(acknowledge=False)
    c.write_port(STATUS_PORT, CMD_RESET)
    c.write_port(STATUS_PORT, CMD_UART_MODE)
    assert c.read_port(STATUS_PORT) & STATUS_INPUT_EMPTY


def test_transmit_fifo_fills_and_drains_at_the_wire_rate(card) -> None:
    clock = FakeClock()
    c = card(clock=clock, tx_fifo=4)
    _uart(c)
    for byte in range(4):
        assert not c.read_port(STATUS_PORT) & STATUS_OUTPUT_NOT_READY
        c.write_port(DATA_PORT, 0x90 + byte)
    assert c.read_port(STATUS_PORT) & STATUS_OUTPUT_NOT_READY
    c.write_port(DATA_PORT, 0x99)  # written while not ready: lost
    assert c.statistics()["tx_overruns"] == 1
    clock.now += 0.000319  # the first byte has not quite left
    assert c.read_port(STATUS_PORT) & STATUS_OUTPUT_NOT_READY
    clock.now += 0.000002
    assert not c.read_port(STATUS_PORT) & STATUS_OUTPUT_NOT_READY
    assert c.statistics()["tx_fifo"] == 3
    clock.now += 4 * 0.000320
    assert c.statistics()["tx_fifo"] == 0


def test_a_stuck_transmitter_stays_not_ready(card) -> None:
    c = card(transmit=False, tx_fifo=2)
    _uart(c)
    c.write_port(DATA_PORT, 0xF8)
    c.write_port(DATA_PORT, 0xF8)
    time.sleep(0.01)
    assert c.read_port(STATUS_PORT) & STATUS_OUTPUT_NOT_READY


def test_loopback_brings_every_byte_back_in_order_with_interrupts(card) -> None:
    cable = LoopbackCable()
    c = card(cable=cable, baud=FAST)
    _uart(c)
    got = bytearray()
    done = threading.Event()
    sent = bytes(i % 128 for i in range(1000))

    def isr() -> None:
        while not c.read_port(STATUS_PORT) & STATUS_INPUT_EMPTY:
            got.append(c.read_port(DATA_PORT))
        if len(got) >= len(sent):
            done.set()

    c.connect_interrupt(isr)
    for byte in sent:
        while c.read_port(STATUS_PORT) & STATUS_OUTPUT_NOT_READY:
            time.sleep(0.0001)
        c.write_port(DATA_PORT, byte)
    assert done.wait(10)
    assert bytes(got) == sent
    stats = c.statistics()
    assert stats["tx_bytes"] == stats["rx_bytes"] == len(sent)
    assert stats["interrupts"] >= len(sent) // 16 and not stats.get("rx_overflows")


def test_receive_fifo_overflows_when_nobody_reads(card) -> None:
    c = card(baud=FAST, rx_fifo=16)
    _uart(c)
    c.receive(bytes(range(40)))
    deadline = time.monotonic() + 10
    while c.statistics().get("rx_bytes", 0) < 40 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert c.statistics()["rx_overflows"] == 24
    assert bytes(c.read_port(DATA_PORT) for _ in range(16)) == bytes(range(16))
    assert c.read_port(STATUS_PORT) & STATUS_INPUT_EMPTY
    assert c.read_port(DATA_PORT) == 15  # an empty data register reads its last value


def test_input_before_uart_mode_is_not_heard(card) -> None:
    c = card(baud=FAST)
    c.receive(b"\x90\x40\x40")
    time.sleep(0.01)
    assert c.read_port(STATUS_PORT) & STATUS_INPUT_EMPTY


def test_io_space_decodes_addresses_and_floats_elsewhere(card) -> None:
    io = IoSpace()
    c = card()
    io.install(0x330, 2, c)
    with pytest.raises(ValueError, match="overlaps"):
        io.install(0x331, 2, c)
    assert io.read_port_uchar(0x331) == STATUS_INPUT_EMPTY
    assert io.read_port_uchar(0x300) == 0xFF
    io.write_port_uchar(0x331, CMD_RESET)
    assert io.read_port_uchar(0x330) == ACK
    io.remove(c)
    assert io.read_port_uchar(0x331) == 0xFF


def test_an_idle_card_sleeps(card) -> None:
    c = card(cable=LoopbackCable())
    _uart(c)
    me = psutil.Process()
    before = sum(me.cpu_times()[:2])
    time.sleep(0.5)
    assert sum(me.cpu_times()[:2]) - before < 0.1


def test_framer_cuts_a_byte_stream_into_messages() -> None:
    framer = MidiFramer()
    stream = bytes([0x90, 60, 0xF8, 100, 62, 101, 0xC0, 5, 6, 0xF0, 1, 2, 0xF7, 7, 0xF6])
    assert list(framer.feed(stream[:4])) == [b"\xf8", bytes([0x90, 60, 100])]
    assert list(framer.feed(stream[4:])) == [
        bytes([0x90, 62, 101]), bytes([0xC0, 5]), bytes([0xC0, 6]), bytes([0xF0, 1, 2, 0xF7]),
        b"\xf6",
    ]


def test_cables_by_name() -> None:
    assert isinstance(mpu401.open_cable("loopback"), LoopbackCable)
    assert isinstance(mpu401.open_cable("none"), mpu401.NullCable)
    with pytest.raises(mpu401.CableError, match="no cable"):
        mpu401.open_cable("serial")


# The miniport's factory and options (no hardware is touched before init).


def test_pc_new_miniport_knows_the_uart_class_ids() -> None:
    for clsid in (CLSID_MiniportDriverUart, "{" + CLSID_MiniportDriverUart.upper() + "}"):
        miniport = pc_new_miniport(clsid, baud=FAST)
        assert isinstance(miniport, UartMiniport) and miniport.baud == FAST
    # The DirectMusic ids give the DirectMusic UART, on the same hardware code.
    for clsid in (
        CLSID_MiniportDriverDMusUART,
        CLSID_MiniportDriverDMusUARTCapture,
        "CLSID_MiniportDriverDMusUART",
    ):
        dmus = pc_new_miniport(clsid, baud=FAST)
        assert isinstance(dmus, DMusUartMiniport) and dmus.hw.baud == FAST
    assert pc_new_miniport("CLSID_MiniportDriverDMusUARTCapture").clsid == (
        CLSID_MiniportDriverDMusUARTCapture
    )
    for unknown in ("b4c90ae0-5791-11d0-86f9-00a0c911b544", "CLSID_PortMidi", ""):
        with pytest.raises(StatusError) as err:
            pc_new_miniport(unknown)
        assert err.value.status == Status.INVALID_PARAMETER


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cable": "serial"}, "cable must be one of"),
        ({"baud": 0}, "baud must be an integer >= 1"),
        ({"baud": 31250.5}, "baud must be an integer"),
        ({"tx_fifo": True}, "tx_fifo must be an integer"),
        ({"tick": -1}, "tick must be a number >= 0"),
        ({"fault": "smoke"}, "fault must be one of"),
        ({"rtmidi_port": "x"}, "rtmidi_port is a string for cable rtmidi"),
        ({"capture_ring": 0}, "capture_ring must be an integer >= 1"),
        ({"clsid": "CLSID_PortMidi"}, "not an MPU-401 UART clsid"),
    ],
)
def test_bad_options_are_rejected_clearly(options: dict[str, object], message: str) -> None:
    with pytest.raises(StatusError, match=message) as err:
        UartMiniport(**options)  # type: ignore[arg-type]
    assert err.value.status == Status.INVALID_PARAMETER


def test_the_filter_descriptor_is_the_uart_filter() -> None:
    desc = UartMiniport().get_description()
    desc.validate()
    flows = [(p.dataflow.name, p.streaming) for p in desc.pins]
    assert flows == [("IN", True), ("IN", True), ("OUT", False), ("IN", False), ("OUT", True)]
    assert all(p.max_global_instances == 1 for p in desc.pins if p.streaming)
    edges = {(c.from_node, c.from_pin, c.to_node, c.to_pin) for c in desc.connections}
    assert edges == {(-1, 0, -1, 2), (-1, 1, 0, 1), (0, 0, -1, 2), (-1, 3, -1, 4)}
    assert len(desc.nodes) == 1 and len(desc.categories) == 3


# The miniport through a real kernel.

DEVICES = """
[[device]]
name = "good"
miniport = "mpu401"
resources = {{ io = [[0x330, 2]], irq = [9] }}
options = {{ baud = {baud} }}

[[device]]
name = "mute"
miniport = "mpu401"
resources = {{ io = [[0x330, 2]], irq = [9] }}
options = {{ fault = "no_ack" }}
restart = "never"

[[device]]
name = "empty-slot"
miniport = "mpu401"
resources = {{ io = [[0x300, 2]] }}
options = {{ fault = "no_card" }}
restart = "never"

[[device]]
name = "two-ranges"
miniport = "mpu401"
resources = {{ io = [[0x330, 2], [0x340, 2]], irq = [9] }}
restart = "never"

[[device]]
name = "short-range"
miniport = "mpu401"
resources = {{ io = [[0x330, 1]] }}
restart = "never"

[[device]]
name = "two-irqs"
miniport = "mpu401"
resources = {{ io = [[0x330, 2]], irq = [9, 10] }}
restart = "never"

[[device]]
name = "no-resources"
miniport = "mpu401"
restart = "never"
"""


def test_init_failures_fail_only_their_device(start_kernel) -> None:
    kernel = start_kernel(DEVICES.format(baud=FAST))
    with kernel.connect() as c:
        c.wait_for_filter("good")
        devices = c.stats()["devices"]
        assert [f.id for f in c.filters()] == ["good"]
        for name, status, words in (
            ("mute", "STATUS_IO_DEVICE_ERROR", "answers the reset"),
            ("empty-slot", "STATUS_IO_DEVICE_ERROR", "at 0x300 never became ready"),
            ("two-ranges", "STATUS_DEVICE_CONFIGURATION_ERROR", "2 I/O ranges"),
            ("short-range", "STATUS_DEVICE_CONFIGURATION_ERROR", "is 1 < 2"),
            ("two-irqs", "STATUS_DEVICE_CONFIGURATION_ERROR", "2 IRQs"),
            ("no-resources", "STATUS_DEVICE_CONFIGURATION_ERROR", "0 I/O ranges"),
        ):
            device = devices[name]
            assert device["state"] == "failed", (name, device)
            assert status in device["last_exit"] and words in device["last_exit"], device
        with c.open_render("good") as out, c.open_capture("good") as inp:
            inp.run()
            out.run()
            out.send(b"\x90\x3c\x40")
            assert inp.receive(timeout=10).data == b"\x90\x3c\x40"


STUCK = """
[[device]]
name = "stuck"
miniport = "mpu401"
resources = { io = [[0x330, 2]], irq = [9] }
options = { fault = "tx_stuck" }
"""


def test_a_transmitter_that_never_drains_is_a_device_error(start_kernel) -> None:
    kernel = start_kernel(STUCK)
    with kernel.connect() as c:
        c.wait_for_filter("stuck")
        with c.open_render("stuck") as out:
            out.run()
            out.send_many([b"\x90\x3c\x40"] * 20)  # 60 bytes for a 16-byte FIFO
            event = c.next_event(timeout=10)
            assert (event.kind, event.status) == ("pin_error", Status.IO_DEVICE_ERROR)
            assert "100 consecutive writes" in event.reason


def _stats_device(stats_file: Path, **options: object) -> str:
    extra = "".join(f", {k} = {v!r}" for k, v in options.items()).replace("'", '"')
    return f"""
[[device]]
name = "mpu"
miniport = "tests.mpu401_probe:StatsFileUart"
resources = {{ io = [[0x330, 2]], irq = [9] }}
options = {{ stats_file = "{stats_file}"{extra} }}
"""


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def test_a_burst_faster_than_the_wire_arrives_whole_at_the_wire_rate(
    start_kernel, tmp_path: Path
) -> None:
    stats_file = tmp_path / "stats.json"
    kernel = start_kernel(_stats_device(stats_file))
    with kernel.connect() as c:
        c.wait_for_filter("mpu")
        (miniport_pid,) = kernel.miniport_pids()
        out, inp = c.open_render("mpu"), c.open_capture("mpu")
        inp.run()
        out.run()
        messages = [bytes([0x90 | (i % 16), i % 128, (i // 128) % 128]) for i in range(600)]
        size = sum(map(len, messages))
        cpu_before = _cpu(kernel.proc.pid), _cpu(miniport_pid)
        start = time.monotonic()
        out.send_many(messages)  # all at once: about 190 times faster than the wire
        got = [inp.receive(timeout=20).data for _ in messages]
        elapsed = time.monotonic() - start
        cpu = _cpu(kernel.proc.pid) - cpu_before[0], _cpu(miniport_pid) - cpu_before[1]
        assert got == messages
        # The wire cannot go faster than 320 us a byte; the port waited for it.
        assert elapsed >= size * mpu401.byte_time(mpu401.WIRE_BAUD) * 0.99
        # Nobody spun while waiting: a busy loop would burn a whole core.
        assert cpu[0] < 0.7 * elapsed and cpu[1] < 0.7 * elapsed, (cpu, elapsed)
        out.pause()
        stats = json.loads(stats_file.read_text())
        assert stats["TxBytes"] == size and stats["ShortWrites"] > 0  # the retry path at work
        assert stats["CaptureOverflows"] == stats["RxFifoOverflows"] == 0
        out.close()
        inp.close()


def test_capture_overflow_is_counted_when_the_client_does_not_keep_up(
    start_kernel, tmp_path: Path
) -> None:
    stats_file = tmp_path / "stats.json"
    # Small rings all the way, so the back-pressure reaches the card within about 4 KiB;
    # a 100 us wire makes the 30 KB flood last at least 3 s, longer than the client naps.
    config = "[kernel]\nring_capacity = 4096\n" + _stats_device(
        stats_file, baud=100_000, tx_fifo=64, capture_ring=128
    )
    kernel = start_kernel(config)
    with kernel.connect() as c:
        c.wait_for_filter("mpu")
        out, inp = c.open_render("mpu"), c.open_capture("mpu", capacity=1 << 14)
        inp.run()
        out.run()
        messages = [bytes([0x90, (i >> 7) & 0x7F, i & 0x7F]) for i in range(10_000)]
        marker = b"\x80\x01\x02"
        out.send_many(messages)
        time.sleep(1.0)  # the client does not keep up
        out.send(marker)
        got = []
        while (data := inp.receive(timeout=20).data) != marker:
            got.append(data)
        out.pause()
        inp.pause()
        stats = json.loads(stats_file.read_text())
        assert stats["TxBytes"] == 30_003
        # Lost at the device, as on real hardware: the kernel held on (back-pressure).
        assert stats["CaptureOverflows"] > 0 and inp.dropped == 0
        assert 0 < len(got) < len(messages)
        assert got[0] == messages[0] and all(m[0] == 0x90 and len(m) == 3 for m in got)
        # The stream carries on normally once the client reads again.
        inp.run()
        out.run()
        out.send(marker)
        assert inp.receive(timeout=10).data == marker
        out.close()
        inp.close()


def test_the_conformance_suite_passes_on_the_mpu401() -> None:
    # A wire 32 times faster keeps the suite quick; a generous ring keeps a loaded
    # machine's scheduling stalls from counting as the device's data loss.
    report = assert_conformant(
        "mpu401",
        options={"baud": FAST, "capture_ring": 1 << 16},
        resources={"io": [[0x330, 2]], "irq": [9]},
    )
    assert all(r.outcome == "passed" for r in report.results), report.summary()


@pytest.mark.jack
def test_the_rtmidi_cable_through_a_real_jack_server(jack_server) -> None:
    config = toml_config([{
        "name": "mpu", "miniport": "mpu401", "restart": "never",
        "resources": {"io": [[0x330, 2]], "irq": [9]},
        # At the real wire rate: a real MIDI port is what this cable is for.
        "options": {"cable": "rtmidi", "rtmidi_api": "jack", "rtmidi_client": "mpu"},
    }])
    with running_kernel(config, env=jack_server.env()) as kernel, kernel.connect() as c:
        c.wait_for_filter("mpu")
        jack_server.wait_for_port("mpu-out:out")
        jack_server.wait_for_port("mpu-in:in")
        jack_server.connect("mpu-out:out", "mpu-in:in")  # a real MIDI cable, out to in
        with c.open_render("mpu") as out, c.open_capture("mpu") as inp:
            inp.run()
            out.run()
            messages = [bytes([0x90 | (i % 16), i % 128, 64]) for i in range(100)]
            sysex = bytes([0xF0, 0x7D, *range(50), 0xF7])
            out.send_many([*messages, sysex])
            assert [inp.receive(timeout=10).data for _ in messages] == messages
            assert inp.receive(timeout=10).data == sysex
