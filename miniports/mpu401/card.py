"""An emulated MPU-401 MIDI interface (the UART subset), seen only through its two I/O ports.

The card knows nothing of PortCls: a driver reads and writes its registers
through an `IoSpace` exactly as a Windows driver uses READ_PORT_UCHAR and
WRITE_PORT_UCHAR.

    base+0  data      read: the next input byte (or an ACK); write: a byte to transmit
    base+1  status    read: 0x40 set = output not ready (transmit FIFO full),
                            0x80 set = no input available
            command   write: 0xFF reset (answered with 0xFE in the data register, except
                            when the card was in UART mode), 0x3F enter UART mode (ACK)

What the card transmits leaves through a transmit FIFO at the MIDI wire rate
(31,250 baud, 10 bits a byte: 320 us a byte) onto a `Cable` (see
`miniports.mpu401.cables`): looped back to its own MIDI IN, a real MIDI port
through python-rtmidi, or nothing. Input
goes into a small receive FIFO; a byte that finds it full is lost and counted,
as on real hardware. Input raises the card's interrupt.

One timer thread per card moves bytes along the wire. It sleeps until the next
byte completes (no sooner than one `tick` after its last wake-up, so a busy
wire costs at most one wake-up per tick), and blocks when the wire is idle.
Bytes that complete within one tick reach the receive FIFO one at a time, and
the interrupt is raised whenever the FIFO fills and after the last of them, so
a driver whose ISR keeps up loses nothing, as it would on a real bus.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from typing import Final, Protocol

from miniports.mpu401.cables import Cable, NullCable

__all__ = [
    "ACK",
    "BITS_PER_BYTE",
    "CMD_RESET",
    "CMD_UART_MODE",
    "COMMAND_PORT",
    "DATA_PORT",
    "FLOATING_BUS",
    "STATUS_INPUT_EMPTY",
    "STATUS_OUTPUT_NOT_READY",
    "STATUS_PORT",
    "WIRE_BAUD",
    "IoDevice",
    "IoSpace",
    "Mpu401",
    "byte_time",
]

DATA_PORT: Final = 0
STATUS_PORT: Final = 1
COMMAND_PORT: Final = 1

STATUS_OUTPUT_NOT_READY: Final = 0x40
STATUS_INPUT_EMPTY: Final = 0x80

CMD_RESET: Final = 0xFF
CMD_UART_MODE: Final = 0x3F
ACK: Final = 0xFE

WIRE_BAUD: Final = 31_250
BITS_PER_BYTE: Final = 10
"""One start bit, eight data bits, one stop bit."""

FLOATING_BUS: Final = 0xFF
"""What a read of an address no device decodes returns."""


def byte_time(baud: int) -> float:
    """Seconds one byte takes on a wire of `baud` bits a second (320 us at 31,250)."""
    return BITS_PER_BYTE / baud


class IoDevice(Protocol):
    """A device on the I/O bus: it decodes `offset` from its base address."""

    def read_port(self, offset: int) -> int: ...

    def write_port(self, offset: int, value: int) -> None: ...


class IoSpace:
    """Port-mapped I/O of the emulated machine (READ_PORT_UCHAR / WRITE_PORT_UCHAR).

    An address no installed device decodes reads as 0xFF and ignores writes,
    as an empty ISA slot does.
    """

    def __init__(self) -> None:
        self._devices: list[tuple[int, int, IoDevice]] = []

    def install(self, base: int, length: int, device: IoDevice) -> None:
        """Decode [base, base+length) to `device`; ValueError if it overlaps another."""
        if base < 0 or length < 1:
            raise ValueError("an I/O range needs a base >= 0 and a length >= 1")
        for other_base, other_length, _ in self._devices:
            if base < other_base + other_length and other_base < base + length:
                raise ValueError(f"I/O range 0x{base:x} overlaps 0x{other_base:x}")
        self._devices.append((base, length, device))

    def remove(self, device: IoDevice) -> None:
        self._devices = [d for d in self._devices if d[2] is not device]

    def _decode(self, address: int) -> tuple[IoDevice, int] | None:
        for base, length, device in self._devices:
            if base <= address < base + length:
                return device, address - base
        return None

    def read_port_uchar(self, address: int) -> int:
        found = self._decode(address)
        return FLOATING_BUS if found is None else found[0].read_port(found[1]) & 0xFF

    def write_port_uchar(self, address: int, value: int) -> None:
        found = self._decode(address)
        if found is not None:
            found[0].write_port(found[1], value & 0xFF)


class Mpu401:
    """One emulated MPU-401 card. See the module docstring for its registers.

    `baud` sets the wire rate (a faster one makes tests quick); `tx_fifo` and
    `rx_fifo` are the FIFO depths in bytes; `tick` bounds how often the card's
    thread wakes while the wire is busy. `acknowledge=False` models a broken
    card that never answers a command; `transmit=False` one whose transmitter
    is stuck (its FIFO fills and never drains).

    Register access is thread-safe. `connect_interrupt(handler)` wires the
    card's IRQ line: the handler runs on the card's thread, never with the
    card's lock held, so it may read the registers.
    """

    def __init__(
        self,
        cable: Cable | None = None,
        *,
        baud: int = WIRE_BAUD,
        tx_fifo: int = 16,
        rx_fifo: int = 16,
        tick: float = 0.001,
        acknowledge: bool = True,
        transmit: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if baud < 1 or tx_fifo < 1 or rx_fifo < 1 or tick < 0:
            raise ValueError("baud, tx_fifo and rx_fifo must be >= 1 and tick >= 0")
        self.byte_time = byte_time(baud)
        self.tx_fifo_size = tx_fifo
        self.rx_fifo_size = rx_fifo
        self.tick = tick
        self.acknowledge = acknowledge
        self.transmitter_works = transmit
        self._clock = clock
        self._lock = threading.Lock()
        self._wire_changed = threading.Condition(self._lock)
        self._uart = False
        self._rx: collections.deque[int] = collections.deque()
        self._last_read = FLOATING_BUS
        self._tx_wire: collections.deque[tuple[float, int]] = collections.deque()
        self._tx_done = 0.0
        self._stuck = 0
        self._rx_wire: collections.deque[tuple[float, int]] = collections.deque()
        self._rx_wire_done = 0.0
        self._interrupt: Callable[[], object] | None = None
        self._closed = False
        self.stats: collections.Counter[str] = collections.Counter()
        self.cable: Cable = cable if cable is not None else NullCable()
        self.cable.plug(self)
        self._thread = threading.Thread(target=self._run_wire, name="mpu401-wire", daemon=True)
        self._thread.start()

    @property
    def uart_mode(self) -> bool:
        return self._uart

    def connect_interrupt(self, handler: Callable[[], object] | None) -> None:
        """Wire the IRQ line to `handler` (None disconnects it)."""
        self._interrupt = handler

    def statistics(self) -> dict[str, int]:
        """Counters: tx_bytes, rx_bytes, rx_overflows, tx_overruns, interrupts, tx_fifo,
        and the cable's with a "cable_" prefix (the rtmidi cable's: what it could not send
        as a message, see `MidiFramer.statistics`)."""
        cable = {f"cable_{name}": value for name, value in self.cable.statistics().items()}
        with self._lock:
            stats = dict(self.stats)
            stats["tx_fifo"] = self._tx_occupancy(self._clock())
        stats.update(cable)
        return stats

    def _tx_occupancy(self, now: float) -> int:
        if not self.transmitter_works:
            return self._stuck
        if self._tx_done <= now:
            return 0
        # Queued bytes leave back to back, so those not yet sent follow from the last one's time.
        return min(len(self._tx_wire), math.ceil((self._tx_done - now) / self.byte_time - 1e-9))

    def read_port(self, offset: int) -> int:
        """Read the data register (offset 0) or the status register (offset 1)."""
        with self._lock:
            if offset == DATA_PORT:
                if self._rx:
                    self._last_read = self._rx.popleft()
                return self._last_read
            if offset == STATUS_PORT:
                status = 0
                if self._tx_occupancy(self._clock()) >= self.tx_fifo_size:
                    status |= STATUS_OUTPUT_NOT_READY
                if not self._rx:
                    status |= STATUS_INPUT_EMPTY
                return status
        return FLOATING_BUS

    def write_port(self, offset: int, value: int) -> None:
        """Write the data register (offset 0: transmit) or the command register (offset 1)."""
        with self._lock:
            if offset == DATA_PORT:
                self._write_data(value & 0xFF)
            elif offset == COMMAND_PORT:
                self._command(value & 0xFF)

    def _write_data(self, value: int) -> None:
        if not self._uart:
            return  # intelligent-mode data is not emulated
        now = self._clock()
        if self._tx_occupancy(now) >= self.tx_fifo_size:
            self.stats["tx_overruns"] += 1  # written while not ready: the byte is lost
            return
        if not self.transmitter_works:
            self._stuck += 1
            return
        self._tx_done = max(now, self._tx_done) + self.byte_time
        self._tx_wire.append((self._tx_done, value))
        if len(self._tx_wire) == 1:
            self._wire_changed.notify()

    def _command(self, value: int) -> None:
        if value == CMD_RESET:
            was_uart = self._uart
            self._uart = False
            self._rx.clear()
            self._rx_wire.clear()
            self._tx_wire.clear()
            self._tx_done = 0.0
            self._stuck = 0
            if not was_uart:
                self._ack()
        elif self._uart:
            return  # in UART mode only a reset is understood
        elif value == CMD_UART_MODE:
            self._ack()
            self._uart = True
        else:
            self._ack()  # intelligent-mode commands are acknowledged but not emulated

    def _ack(self) -> None:
        if self.acknowledge:
            self._rx.append(ACK)

    def receive(self, data: bytes) -> None:
        """Bytes sent to MIDI IN from outside (any thread): they arrive at the wire rate."""
        with self._lock:
            start = max(self._clock(), self._rx_wire_done)
            for i, byte in enumerate(data):
                self._rx_wire.append((start + (i + 1) * self.byte_time, byte))
            if data:
                self._rx_wire_done = start + len(data) * self.byte_time
                self._wire_changed.notify()

    def arrive(self, data: bytes) -> None:
        """Bytes reaching the receiver now (the wire thread, or a loopback cable)."""
        pending = 0
        for byte in data:
            with self._lock:
                if not self._uart:
                    continue  # only a UART listens to MIDI IN
                self.stats["rx_bytes"] += 1
                if len(self._rx) >= self.rx_fifo_size:
                    self.stats["rx_overflows"] += 1
                    continue
                self._rx.append(byte)
                pending += 1
                full = len(self._rx) >= self.rx_fifo_size
            if full:
                self._raise_interrupt()
                pending = 0
        if pending:
            self._raise_interrupt()

    def _raise_interrupt(self) -> None:
        handler = self._interrupt
        if handler is not None:
            with self._lock:
                self.stats["interrupts"] += 1
            handler()

    def _run_wire(self) -> None:
        last_wake = -math.inf
        while True:
            with self._lock:
                while True:
                    if self._closed:
                        return
                    heads = [q[0][0] for q in (self._tx_wire, self._rx_wire) if q]
                    if not heads:
                        self._wire_changed.wait()
                        continue
                    now = self._clock()
                    wake_at = max(min(heads), last_wake + self.tick)
                    if wake_at > now:
                        self._wire_changed.wait(wake_at - now)
                        continue
                    break
                last_wake = now
                sent = self._take_due(self._tx_wire, now)
                received = self._take_due(self._rx_wire, now)
                self.stats["tx_bytes"] += len(sent)
            if sent:
                self.cable.transmit(sent)
            if received:
                self.arrive(received)

    @staticmethod
    def _take_due(wire: collections.deque[tuple[float, int]], now: float) -> bytes:
        due = bytearray()
        while wire and wire[0][0] <= now:
            due.append(wire.popleft()[1])
        return bytes(due)

    def close(self) -> None:
        """Stop the wire thread and release the cable. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wire_changed.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(5)
        self.cable.close()
