"""Hostile miniports, loaded by spec (`tests.hostile_miniports:Class`).

`HostileLoopback` is a loopback (what a well-formed client sends comes back)
until a client writes an attack: the SysEx `F0 7D <attack> F7`. The miniport
then attacks the kernel from inside its own process and reports on the
capture pin, as a note-on `90 <attack> <outcome>`, what its host said to it.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from ipc import protocol as p
from miniports.contract import (
    DataFormat,
    MiniportMidiStream,
    Port,
    PortServiceGroup,
    ResourceList,
    ServiceSink,
    Status,
    StatusError,
)
from miniports.loopback import LoopbackMiniport

ATTACK = b"\xf0\x7d"
GROUP_CYCLE = 1
"""Make two groups members of each other."""
SERVICE_CYCLE = 2
"""Then request service on one of them."""
RING_DELETE = 3
"""In the next new_stream, wipe the header of the miniport ring the kernel just made
(reached through /proc/<kernel pid>/fd: a sealed memfd cannot be deleted)."""
RING_CORRUPT = 4
"""In the next new_stream, scribble over them."""
CALL_FLOOD = 5
"""6,000 port calls in one callback (more than a batch holds)."""
DOORBELL_FLOOD = 6
"""Ring the kernel's interrupt doorbell with nothing behind it, for up to 10 s."""
RING_TRUNCATE = 7
"""ftruncate() its stream rings and its interrupt ring (REFUSED: EPERM every time)."""
BAD_INTERRUPT_RECORDS = 8
"""Write records the kernel must refuse into its interrupt ring: an unknown flag, a
heartbeat with a payload, two flags at once (each dropped and counted; the note that
reports the outcome comes back through the same ring behind them)."""

REFUSED = 1
"""The outcome: the host refused the attack with STATUS_INVALID_PARAMETER."""
ALLOWED = 2


class _NullSink(ServiceSink):
    def request_service(self) -> None:
        pass


def _flood(fifo: Path, seconds: float) -> None:
    """Write wake-ups into a doorbell FIFO as fast as it takes them."""
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            try:
                os.write(fd, b"\x01" * 64)
            except BlockingIOError:
                time.sleep(0.0005)
            except OSError:
                return
    finally:
        os.close(fd)


def attack(code: int) -> bytes:
    """What a client writes to make `HostileLoopback` attack."""
    return ATTACK + bytes([code, 0xF7])


class HostileLoopback(LoopbackMiniport):
    def __init__(self, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self._sysex = bytearray()
        self._ring_attack: tuple[int, int] | None = None
        """An attack SysEx so far (the port may hand it over in pieces)."""

    def cable_send(self, data: bytes) -> int:
        if not self._sysex and not data.startswith(b"\xf0"):
            return super().cable_send(data)
        end = data.find(b"\xf7")
        if end < 0:
            self._sysex += data
            return len(data)
        self._sysex += data[: end + 1]
        message, self._sysex = bytes(self._sysex), bytearray()
        if message.startswith(ATTACK) and len(message) == 4:
            code = message[2]
            super().cable_send(bytes([0x90, code, self._attack(code)]))
        rest = data[end + 1:]
        return end + 1 + (self.cable_send(rest) if rest else 0)

    def new_stream(
        self, pin: int, capture: bool, fmt: DataFormat
    ) -> tuple[MiniportMidiStream, PortServiceGroup | None]:
        attack, self._ring_attack = self._ring_attack, None
        if attack is not None:
            # The client's rings are memfds it alone received; the miniport's are the
            # kernel's memfds its host opens through /proc/<kernel pid>/fd, so a miniport
            # can reach them there too (a sealed memfd cannot be deleted: "delete"
            # wipes it instead).
            kernel_fds = Path(f"/proc/{os.getppid()}/fd")
            for path in kernel_fds.iterdir():
                try:
                    target = os.readlink(path)
                    if "memfd:pin" not in target or "-miniport" not in target:
                        continue
                    if path.stat().st_mtime_ns < attack[1]:
                        continue  # another client's pin, opened before the attack
                    with open(path, "r+b") as f:
                        f.write(bytes(256) if attack[0] == RING_DELETE else os.urandom(256))
                except OSError:
                    continue  # closed meanwhile
        return super().new_stream(pin, capture, fmt)

    def init(self, resources: ResourceList, port: Port) -> PortServiceGroup | None:
        group = super().init(resources, port)
        # Made long before any attack: the kernel knows them when an interrupt names them.
        self._a, self._b = port.new_service_group(), port.new_service_group()
        return group

    def _attack(self, code: int) -> int:
        port = self._port
        assert port is not None
        if code == GROUP_CYCLE:
            # Two groups made members of each other. The host is asked first; the
            # kernel's twins are told directly, through the same ordered channel the
            # host uses, as a miniport that bypasses its host can.
            a, b = self._a, self._b
            a.add_member(b)
            try:
                b.add_member(a)
                outcome = ALLOWED
            except StatusError as exc:
                outcome = REFUSED if exc.status == Status.INVALID_PARAMETER else ALLOWED
            groups = port.groups  # type: ignore[attr-defined]
            groups.post(p.GroupAddMember(b.gid, a.gid, None))  # type: ignore[attr-defined]
            return outcome
        if code in (RING_DELETE, RING_CORRUPT):
            self._ring_attack = (code, time.time_ns())
            return REFUSED
        if code == CALL_FLOOD:
            group, sink = self._a, _NullSink()
            try:
                for _ in range(3000):
                    group.add_member(sink)
                    group.remove_member(sink)
            except StatusError as exc:
                return REFUSED if exc.status == Status.INSUFFICIENT_RESOURCES else ALLOWED
            return ALLOWED
        if code == DOORBELL_FLOOD:
            # The host's own write end of the interrupt channel's data doorbell.
            interrupts = self._port.bus._interrupts  # type: ignore[union-attr]
            bell = Path(f"/proc/self/fd/{interrupts._data_bell.write_fileno()}")
            threading.Thread(target=_flood, args=(bell, 10.0), daemon=True).start()
            return REFUSED
        if code == SERVICE_CYCLE:
            port.notify(self._a)
            return REFUSED
        if code == RING_TRUNCATE:
            return self._truncate_rings()
        if code == BAD_INTERRUPT_RECORDS:
            ring = self._port.bus._interrupts.ring  # type: ignore[union-attr]
            for flags, payload in ((0x40, b""), (p.INTERRUPT_HEARTBEAT, bytes(8)),
                                   (p.INTERRUPT_HEARTBEAT | 2, b"")):
                if not ring.try_put(payload, 0, flags):
                    return ALLOWED  # nothing written: the test must not pass vacuously
            return REFUSED
        return 0

    def _truncate_rings(self) -> int:
        """Shrink (and grow) every ring the kernel maps for this miniport, through the
        host's own descriptors: REFUSED if each attempt failed with EPERM."""
        streams = getattr(self._port, "streams", {})
        rings = [
            (hs.writer or hs.reader).ring for hs in dict(streams).values()
            if hs.writer or hs.reader
        ]
        interrupts = self._port.bus._interrupts  # type: ignore[union-attr]
        if interrupts is None or not rings:
            return ALLOWED  # nothing to attack: the test must not pass vacuously
        rings.append(interrupts.ring)
        for ring in rings:
            for size in (0, 8, 1 << 20):
                try:
                    os.ftruncate(ring.fileno(), size)
                except PermissionError:
                    continue
                return ALLOWED
        return REFUSED
