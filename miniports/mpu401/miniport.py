"""The built-in MPU-401 UART miniport (PcNewMiniport with the UART class ids).

Written against the public miniport contract like any third-party miniport,
it drives an MPU-401 through its two registers only: the data port at the
base of its I/O range and the status/command port after it. The card is the
emulated one of `miniports.mpu401`, installed at that address in the
process's I/O space when the device starts (the hardware options below
describe the card and its cable, not the driver).

init: reset, discard any input, reset again and expect the ACK (0xFE), else
STATUS_IO_DEVICE_ERROR; enter UART mode (0x3F, acknowledged too). Every wait
polls the status with short sleeps and gives up after about 50 ms.

ISR (under the interrupt-sync lock): read while input is available; keep the
bytes in a 128-byte ring (at the real wire rate) only while the capture stream
runs; drop and count what does not fit; `notify` if anything was kept; claim the interrupt only if
input was present. The port stamps the bytes with the time of the first
`notify` after its last drain, which is the ISR that stored the first of them.

write (under the same lock): drain input first, send while the transmit FIFO
accepts, finish a started message (waiting briefly for room), return the
count; 100 consecutive writes that take nothing raise STATUS_IO_DEVICE_ERROR.

Options (keyword arguments from the device's configuration):
  cable        "loopback" (default: MIDI OUT wired to MIDI IN), "rtmidi", "none"
  rtmidi_port  with cable = "rtmidi": connect to the MIDI port whose name
               contains this; unset: open virtual ports other programs connect to
  rtmidi_api   with cable = "rtmidi": "alsa", "jack" or unset (rtmidi's default)
  rtmidi_client  with cable = "rtmidi": the MIDI client name (default portcls-mpu401)
  baud         wire rate, default 31250 (320 us a byte); tests use a faster one
  tx_fifo      the card's transmit FIFO in bytes (default 16)
  rx_fifo      the card's receive FIFO in bytes (default 16)
  tick         seconds; how often the card's wire thread may wake (default 0.001,
               the 1 ms resolution of the port's sequencer)
  capture_ring bytes the ISR keeps for the port; default 128 at 31,250 baud, scaled
               with `baud` so that it always holds the same 41 ms of input
  fault        a broken card, to exercise failure paths: "no_ack" (never
               acknowledges), "no_card" (nothing at the I/O address), "tx_stuck"
               (the transmitter never drains)
  clsid        the class id it was made for (see `pc_new_miniport`)

Statistics: `statistics()` in the miniport process; the same counters are
written to the device's registry key (PLUGINPLAY_REGKEY_DEVICE, subkey
"Statistics") whenever a stream leaves RUN:
CaptureOverflows (bytes the ISR dropped because the 128-byte ring was full,
that is, the client did not keep up), RxFifoOverflows (bytes the card itself
lost), ShortWrites, ZeroWrites, TxBytes, RxBytes; and from the rtmidi cable,
which sends whole messages, what it could not send as one: CableDiscarded
(bytes), CableAbortedSysEx (SysEx cut short by a status byte),
CableUndefinedBytes (F4, F5, F9, FD). `statistics()` has those as cable_*.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Final

from ipc.ks import (
    DIRECTMUSIC_RANGE,
    KSCATEGORY_AUDIO,
    KSCATEGORY_CAPTURE,
    KSCATEGORY_RENDER,
    KSDATAFORMAT_SUBTYPE_MIDI_BUS,
    KSFILTER_NODE,
    KSNODETYPE_SYNTHESIZER,
    MIDI_RANGE,
    Communication,
    Connection,
    DataFlow,
    DataRange,
    FilterDescriptor,
    NodeDescriptor,
    PinDescriptor,
)
from ipc.midi import data_length, is_channel_status, is_realtime, is_status
from ipc.runtime import now_100ns
from miniports import mpu401
from miniports.contract import (
    DataFormat,
    InterruptSync,
    KsState,
    MiniportDMus,
    MiniportMidi,
    MiniportMidiStream,
    Port,
    PortServiceGroup,
    ResourceList,
    Status,
    StatusError,
)

CLSID_MiniportDriverUart: Final = "b4c90ae1-5791-11d0-86f9-00a0c911b544"
CLSID_MiniportDriverDMusUART: Final = "d3f0ce1c-fffc-11d1-81b0-0060083316c1"
CLSID_MiniportDriverDMusUARTCapture: Final = "d3f0ce1d-fffc-11d1-81b0-0060083316c1"

RENDER_PIN: Final = 0
DMUS_RENDER_PIN: Final = 1
BRIDGE_OUT_PIN: Final = 2
BRIDGE_IN_PIN: Final = 3
CAPTURE_PIN: Final = 4
SYNTH_NODE: Final = 0
NODE_PIN_OUT: Final = 0
NODE_PIN_IN: Final = 1

CAPTURE_RING_SIZE: Final = 128
"""The ISR's ring at the real wire rate."""
MAX_ZERO_WRITES: Final = 100
WAIT_LIMIT: Final = 0.05
"""How long init waits for the card at each step (about 50 ms)."""
MESSAGE_FINISH_LIMIT: Final = 0.01
"""How long a write waits for FIFO room to finish a started message."""
POLL_SLEEP: Final = 0.0001
ISR_READ_LIMIT: Final = 4096
"""Bytes one ISR call reads at most: a card that never reports "no input" must not hang it."""
DEVICE_KEY: Final = 1
"""PLUGINPLAY_REGKEY_DEVICE (RegistryKeyType.DEVICE)."""
FAULTS: Final = ("no_ack", "no_card", "tx_stuck")

MIDI_BUS_RANGE: Final = DataRange(sub_format=KSDATAFORMAT_SUBTYPE_MIDI_BUS)

DESCRIPTION: Final = FilterDescriptor(
    pins=(
        PinDescriptor("MIDI Render", DataFlow.IN, data_ranges=(MIDI_RANGE,)),
        # The emulated port carries raw MIDI bytes on both render pins, so the
        # DirectMusic pin takes the plain MIDI format as well as its own.
        PinDescriptor(
            "DirectMusic Render", DataFlow.IN, data_ranges=(DIRECTMUSIC_RANGE, MIDI_RANGE)
        ),
        PinDescriptor("MIDI Out (bridge)", DataFlow.OUT, Communication.NONE, (MIDI_BUS_RANGE,)),
        PinDescriptor("MIDI In (bridge)", DataFlow.IN, Communication.NONE, (MIDI_BUS_RANGE,)),
        PinDescriptor("MIDI Capture", DataFlow.OUT, data_ranges=(MIDI_RANGE, DIRECTMUSIC_RANGE)),
    ),
    nodes=(NodeDescriptor(KSNODETYPE_SYNTHESIZER, "UART Synth"),),
    connections=(
        Connection(KSFILTER_NODE, RENDER_PIN, KSFILTER_NODE, BRIDGE_OUT_PIN),
        Connection(KSFILTER_NODE, DMUS_RENDER_PIN, SYNTH_NODE, NODE_PIN_IN),
        Connection(SYNTH_NODE, NODE_PIN_OUT, KSFILTER_NODE, BRIDGE_OUT_PIN),
        Connection(KSFILTER_NODE, BRIDGE_IN_PIN, KSFILTER_NODE, CAPTURE_PIN),
    ),
    categories=(KSCATEGORY_AUDIO, KSCATEGORY_RENDER, KSCATEGORY_CAPTURE),
)


class MessageTracker:
    """Where a render stream is in the MIDI byte stream it sends: inside a message or not.

    The rules are `ipc.midi`'s. Running status counts: data bytes after a
    complete channel message start a new one. Real-time bytes do not disturb
    the message they interrupt. SysEx is never "inside" in this sense, because
    it may be split anywhere; nor is anything after an undefined status byte
    (F4, F5), which starts no message and cancels running status.
    """

    def __init__(self) -> None:
        self.needed = 0
        self._running = 0

    def feed(self, byte: int) -> None:
        if is_realtime(byte):
            return
        if is_status(byte):
            self._running = byte if is_channel_status(byte) else 0
            self.needed = data_length(byte)
        elif self.needed:
            self.needed -= 1
        elif self._running:
            self.needed = data_length(self._running) - 1

    @property
    def inside_message(self) -> bool:
        return self.needed > 0

    def reset(self) -> None:
        self.needed = 0
        self._running = 0


class UartCaptureStream(MiniportMidiStream):
    """The capture stream: what the ISR kept, handed to the port by `read`."""

    def __init__(self, owner: UartMiniport) -> None:
        self._owner = owner

    def set_state(self, state: KsState) -> None:
        owner = self._owner
        with owner.sync.lock:
            leaving_run = self.state == KsState.RUN and state != KsState.RUN
            self.state = state
            if state == KsState.STOP:
                owner.ring.clear()
        if leaving_run:
            owner.publish_statistics()

    def read(self, max_bytes: int) -> bytes:
        ring = self._owner.ring
        with self._owner.sync.lock:
            data = bytes(ring[:max_bytes])
            del ring[: len(data)]
        return data

    def close(self) -> None:
        owner = self._owner
        with owner.sync.lock:
            owner.capture = None
            owner.ring.clear()


class UartRenderStream(MiniportMidiStream):
    """A render stream (pin 0 or 1): bytes go out through the card's data port."""

    def __init__(self, owner: UartMiniport, pin: int) -> None:
        self._owner = owner
        self.pin = pin
        self.tracker = MessageTracker()
        self._zero_writes = 0

    def write(self, data: bytes) -> int:
        owner = self._owner
        if not data:
            return 0
        taken: int = owner.sync.call_synchronized_routine(owner.send_bytes, data, self.tracker)
        if taken:
            self._zero_writes = 0
            if taken < len(data):
                owner.stats["short_writes"] += 1
            return taken
        owner.stats["zero_writes"] += 1
        self._zero_writes += 1
        if self._zero_writes >= MAX_ZERO_WRITES:
            self._zero_writes = 0
            raise StatusError(
                Status.IO_DEVICE_ERROR,
                f"the MPU-401 took nothing in {MAX_ZERO_WRITES} consecutive writes",
            )
        return 0

    def set_state(self, state: KsState) -> None:
        leaving_run = self.state == KsState.RUN and state != KsState.RUN
        self.state = state
        if state == KsState.STOP:
            # A stopped stream starts again at a message boundary.
            self.tracker.reset()
            self._zero_writes = 0
        if leaving_run:
            self._owner.publish_statistics()

    def close(self) -> None:
        self._owner.renders.pop(self.pin, None)


def _option(name: str, value: object, integer: bool, low: float) -> float:
    """A numeric option, validated: StatusError(INVALID_PARAMETER) naming it if wrong."""
    number = isinstance(value, int) or (isinstance(value, float) and not integer)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not number or value < low:
        what = "an integer" if integer else "a number"
        raise StatusError(Status.INVALID_PARAMETER, f"{name} must be {what} >= {low:g}")
    return float(value)


class UartMiniport(MiniportMidi):
    """IMiniportMidi for an MPU-401 in UART mode. See the module docstring."""

    def __init__(
        self,
        cable: str = "loopback",
        rtmidi_port: str | None = None,
        rtmidi_api: str | None = None,
        rtmidi_client: str = "portcls-mpu401",
        baud: int = mpu401.WIRE_BAUD,
        tx_fifo: int = 16,
        rx_fifo: int = 16,
        tick: float = 0.001,
        fault: str | None = None,
        capture_ring: int | None = None,
        clsid: str = CLSID_MiniportDriverUart,
    ) -> None:
        if cable not in mpu401.CABLES:
            raise StatusError(
                Status.INVALID_PARAMETER, f"cable must be one of {', '.join(mpu401.CABLES)}"
            )
        if rtmidi_port is not None and (not isinstance(rtmidi_port, str) or cable != "rtmidi"):
            raise StatusError(Status.INVALID_PARAMETER, "rtmidi_port is a string for cable rtmidi")
        if rtmidi_api not in (None, "alsa", "jack"):
            raise StatusError(Status.INVALID_PARAMETER, "rtmidi_api must be alsa or jack")
        if not isinstance(rtmidi_client, str) or not rtmidi_client:
            raise StatusError(Status.INVALID_PARAMETER, "rtmidi_client must be a name")
        if fault is not None and fault not in FAULTS:
            raise StatusError(Status.INVALID_PARAMETER, f"fault must be one of {', '.join(FAULTS)}")
        if _normal_clsid(clsid) not in UART_CLSIDS:
            raise StatusError(Status.INVALID_PARAMETER, f"{clsid!r} is not an MPU-401 UART clsid")
        self.cable_kind = cable
        self.rtmidi_port = rtmidi_port
        self.rtmidi_api = rtmidi_api
        self.rtmidi_client = rtmidi_client
        self.baud = int(_option("baud", baud, True, 1))
        self.tx_fifo = int(_option("tx_fifo", tx_fifo, True, 1))
        self.rx_fifo = int(_option("rx_fifo", rx_fifo, True, 1))
        self.tick = _option("tick", tick, False, 0)
        self.capture_ring = (
            max(CAPTURE_RING_SIZE, CAPTURE_RING_SIZE * self.baud // mpu401.WIRE_BAUD)
            if capture_ring is None
            else int(_option("capture_ring", capture_ring, True, 1))
        )
        self.fault = fault
        self.clsid = _normal_clsid(clsid)
        self.sync = InterruptSync()
        self.io = mpu401.IoSpace()
        self.card: mpu401.Mpu401 | None = None
        self.base = 0
        self.use_irq = False
        self.ring = bytearray()
        self.ring_time = 0
        """When the ISR stored the first byte `ring` holds (shared clock, 100 ns)."""
        self.capture: UartCaptureStream | None = None
        self.renders: dict[int, UartRenderStream] = {}
        self.stats: collections.Counter[str] = collections.Counter()
        self._port: Port | None = None
        self._group: PortServiceGroup | None = None
        self._published: dict[str, int] = {}

    def get_description(self) -> FilterDescriptor:
        return DESCRIPTION

    # Hardware access: only through the two registers.

    def _status(self) -> int:
        return self.io.read_port_uchar(self.base + mpu401.STATUS_PORT)

    def _read_data(self) -> int:
        return self.io.read_port_uchar(self.base + mpu401.DATA_PORT)

    def _wait_status(self, bit: int, limit: float) -> bool:
        """Poll until status `bit` is clear, sleeping briefly between polls; False on timeout."""
        deadline = time.monotonic() + limit
        while self._status() & bit:
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SLEEP)
        return True

    def _command(self, command: int, expect_ack: bool) -> bool:
        """Send a command when the card is ready; with `expect_ack`, True if 0xFE came back."""
        if not self._wait_status(mpu401.STATUS_OUTPUT_NOT_READY, WAIT_LIMIT):
            raise StatusError(
                Status.IO_DEVICE_ERROR, f"the MPU-401 at 0x{self.base:x} never became ready"
            )
        self.io.write_port_uchar(self.base + mpu401.COMMAND_PORT, command)
        if not expect_ack:
            return True
        if not self._wait_status(mpu401.STATUS_INPUT_EMPTY, WAIT_LIMIT):
            return False
        return self._read_data() == mpu401.ACK

    def _discard_input(self) -> None:
        deadline = time.monotonic() + WAIT_LIMIT
        while not self._status() & mpu401.STATUS_INPUT_EMPTY and time.monotonic() < deadline:
            self._read_data()

    def _install_card(self, base: int) -> None:
        if self.fault == "no_card":
            return
        try:
            cable = mpu401.open_cable(
                self.cable_kind, self.rtmidi_port, self.rtmidi_client, self.rtmidi_api
            )
        except mpu401.CableError as exc:
            raise StatusError(Status.DEVICE_CONFIGURATION_ERROR, str(exc)) from exc
        self.card = mpu401.Mpu401(
            cable,
            baud=self.baud,
            tx_fifo=self.tx_fifo,
            rx_fifo=self.rx_fifo,
            tick=self.tick,
            acknowledge=self.fault != "no_ack",
            transmit=self.fault != "tx_stuck",
        )
        self.io.install(base, 2, self.card)

    def init(self, resources: ResourceList, port: Port) -> PortServiceGroup | None:
        if len(resources.io_ranges) != 1 or len(resources.interrupts) > 1:
            raise StatusError(
                Status.DEVICE_CONFIGURATION_ERROR,
                "an MPU-401 needs exactly one I/O range and at most one IRQ, got "
                f"{len(resources.io_ranges)} I/O ranges and {len(resources.interrupts)} IRQs",
            )
        base, length = resources.io_ranges[0]
        if length < 2:
            raise StatusError(
                Status.DEVICE_CONFIGURATION_ERROR, f"the I/O range at 0x{base:x} is {length} < 2"
            )
        self.base = base
        self.use_irq = bool(resources.interrupts)
        self._install_card(base)
        try:
            self._reset_hardware()
        except StatusError:
            self.close()
            raise
        self._port = port
        self._group = port.new_service_group()
        port.register_service_group(self._group)
        if self.use_irq:
            # Connected only now: the ISR must not eat the ACKs init waits for.
            self.sync.register_service_routine(self._isr)
            if self.card is not None:
                self.card.connect_interrupt(self.sync.interrupt)
        return self._group

    def _reset_hardware(self) -> None:
        # A card already in UART mode does not answer the first reset: no ACK expected.
        self._command(mpu401.CMD_RESET, expect_ack=False)
        time.sleep(POLL_SLEEP)
        self._discard_input()
        if not self._command(mpu401.CMD_RESET, expect_ack=True):
            raise StatusError(
                Status.IO_DEVICE_ERROR, f"no MPU-401 answers the reset at 0x{self.base:x}"
            )
        if not self._command(mpu401.CMD_UART_MODE, expect_ack=True):
            raise StatusError(Status.IO_DEVICE_ERROR, "the MPU-401 did not enter UART mode")

    def new_stream(
        self, pin: int, capture: bool, fmt: DataFormat
    ) -> tuple[MiniportMidiStream, PortServiceGroup | None]:
        if capture and pin == CAPTURE_PIN:
            if self.capture is not None:
                raise StatusError(Status.INSUFFICIENT_RESOURCES, "the capture stream is in use")
            with self.sync.lock:
                self.ring.clear()
                self.capture = UartCaptureStream(self)
            return self.capture, self._group
        if not capture and pin in (RENDER_PIN, DMUS_RENDER_PIN):
            if pin in self.renders:
                raise StatusError(Status.INSUFFICIENT_RESOURCES, f"render pin {pin} is in use")
            stream = UartRenderStream(self, pin)
            self.renders[pin] = stream
            return stream, None
        raise StatusError(Status.INVALID_PARAMETER, f"pin {pin} cannot stream that way")

    def _isr(self) -> bool:
        """The interrupt service routine; runs with the interrupt-sync lock held."""
        present = stored = False
        keep = self.keeping_input()
        for _ in range(ISR_READ_LIMIT):
            if self._status() & mpu401.STATUS_INPUT_EMPTY:
                break
            present = True
            byte = self._read_data()
            if not keep:
                continue
            if len(self.ring) < self.capture_ring:
                if not self.ring:
                    self.ring_time = now_100ns()
                self.ring.append(byte)
                stored = True
            else:
                self.stats["capture_overflows"] += 1
        if stored and self._port is not None:
            self._port.notify(self._group)
        return present

    def keeping_input(self) -> bool:
        """Whether the ISR keeps what it reads: while the capture stream runs."""
        capture = self.capture
        return capture is not None and capture.state == KsState.RUN

    def send_bytes(self, data: bytes, tracker: MessageTracker) -> int:
        """The body of a write, run under the interrupt-sync lock; the count sent."""
        self._isr()  # input first, so a busy output never delays it
        sent = 0
        deadline: float | None = None
        status_port = self.base + mpu401.STATUS_PORT
        data_port = self.base + mpu401.DATA_PORT
        io = self.io
        while sent < len(data):
            if not io.read_port_uchar(status_port) & mpu401.STATUS_OUTPUT_NOT_READY:
                io.write_port_uchar(data_port, data[sent])
                tracker.feed(data[sent])
                sent += 1
                continue
            if not tracker.inside_message:
                break
            # Leave no half message on the wire: another stream's bytes would corrupt it.
            now = time.monotonic()
            if deadline is None:
                deadline = now + MESSAGE_FINISH_LIMIT
            elif now >= deadline:
                break
            time.sleep(POLL_SLEEP)
        return sent

    def statistics(self) -> dict[str, int]:
        """The miniport's counters and its card's (see the module docstring)."""
        stats = dict(self.stats)
        if self.card is not None:
            card = self.card.statistics()
            stats["rx_fifo_overflows"] = card.get("rx_overflows", 0)
            stats["tx_bytes"] = card.get("tx_bytes", 0)
            stats["rx_bytes"] = card.get("rx_bytes", 0)
            stats.update((name, value) for name, value in card.items() if name.startswith("cable_"))
        return stats

    def publish_statistics(self) -> None:
        """Write the counters to the device's registry key "Statistics" if they changed."""
        if self._port is None:
            return
        stats = self.statistics()
        values = {
            "CaptureOverflows": stats.get("capture_overflows", 0),
            "RxFifoOverflows": stats.get("rx_fifo_overflows", 0),
            "ShortWrites": stats.get("short_writes", 0),
            "ZeroWrites": stats.get("zero_writes", 0),
            "TxBytes": stats.get("tx_bytes", 0),
            "RxBytes": stats.get("rx_bytes", 0),
            "CableDiscarded": stats.get("cable_discarded", 0),
            "CableAbortedSysEx": stats.get("cable_aborted_sysex", 0),
            "CableUndefinedBytes": stats.get("cable_undefined_bytes", 0),
        }
        if values == self._published:
            return
        try:
            key = self._port.new_registry_key(DEVICE_KEY, "Statistics")
            for name, value in values.items():
                key.set_value(name, value)
        except StatusError:
            return  # statistics are best effort: never fail a state change for them
        self._published = values

    def close(self) -> None:
        if self.card is not None:
            self.card.connect_interrupt(None)
            self.io.remove(self.card)
            self.card.close()
            self.card = None


def _normal_clsid(clsid: Any) -> str:
    if not isinstance(clsid, str):
        return ""
    return clsid.strip().strip("{}").lower()


UART_CLSIDS: Final = frozenset(
    {CLSID_MiniportDriverUart, CLSID_MiniportDriverDMusUART, CLSID_MiniportDriverDMusUARTCapture}
)

_BY_NAME: Final = {
    "CLSID_MiniportDriverUart": CLSID_MiniportDriverUart,
    "CLSID_MiniportDriverDMusUART": CLSID_MiniportDriverDMusUART,
    "CLSID_MiniportDriverDMusUARTCapture": CLSID_MiniportDriverDMusUARTCapture,
}


def pc_new_miniport(clsid: str, **options: Any) -> MiniportMidi | MiniportDMus:
    """PcNewMiniport: a new built-in miniport for a class id (a GUID string or its name).

    The three MPU-401 UART ids drive one card with one hardware implementation:
    CLSID_MiniportDriverUart gives the MIDI miniport `UartMiniport`,
    CLSID_MiniportDriverDMusUART and ...DMusUARTCapture the DirectMusic one
    (`miniports.mpu401.dmusuart.DMusUartMiniport`). Anything else raises
    StatusError(INVALID_PARAMETER), as PortCls does.
    """
    normal = _BY_NAME.get(clsid.strip() if isinstance(clsid, str) else "", _normal_clsid(clsid))
    if normal not in UART_CLSIDS:
        raise StatusError(Status.INVALID_PARAMETER, f"no built-in miniport for {clsid!r}")
    if normal == CLSID_MiniportDriverUart:
        return UartMiniport(clsid=normal, **options)
    from miniports.mpu401.dmusuart import DMusUartMiniport  # it builds on this module

    return DMusUartMiniport(clsid=normal, **options)
