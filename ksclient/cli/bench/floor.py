"""The floor: four hops (A -> B -> C -> B -> A) that share no code with the project.

Plain mmap'd single-producer/single-consumer rings, one FIFO doorbell each, the
same "armed" coalescing the project uses (the consumer says it is about to
sleep, re-checks, then blocks; the producer rings only if it said so), and as
little Python as it can be. This file imports only the standard library and B
and C run it as a script (`python -P floor.py middle|end ...`), so nothing of
the project is on their path: when the project's ring code moves, the floor
does not. Every ratio the benchmark reports is taken against it.

A ring file: write index (u64), read index (u64), armed flag (u32), then the
data area. A record: u32 length, u32 flags, payload, padded to 8 bytes; a
length of 0xFFFFFFFF means "wrap to the start".
"""

from __future__ import annotations

import mmap
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

HEADER = 64
CAPACITY = 1 << 20
WRAP = 0xFFFFFFFF
STOP = 1
SAFETY_MS = 1000
_U64 = struct.Struct("=Q")
_U32 = struct.Struct("=I")
_REC = struct.Struct("=II")
_OFF_WR, _OFF_RD, _OFF_ARMED = 0, 8, 16


class Ring:
    """One end of a ring and its doorbell; `producer` says which end."""

    def __init__(self, base: str, producer: bool) -> None:
        fd = os.open(base + ".ring", os.O_RDWR)
        self.mm = mmap.mmap(fd, HEADER + CAPACITY)
        os.close(fd)
        # Both ends open the FIFO read-write: neither open blocks, and a write never
        # meets a closed reader.
        self.bell = os.open(base + ".bell", os.O_RDWR | os.O_NONBLOCK)
        self.producer = producer
        self.pos = _U64.unpack_from(self.mm, _OFF_RD if not producer else _OFF_WR)[0]

    @staticmethod
    def create(base: str) -> None:
        with open(base + ".ring", "wb") as f:
            f.truncate(HEADER + CAPACITY)
        os.mkfifo(base + ".bell", 0o600)

    def put(self, data: bytes, flags: int = 0) -> None:
        """Append one record (the caller keeps the ring from filling), ring if armed."""
        mm, wr = self.mm, self.pos
        size = (8 + len(data) + 7) & ~7
        at = wr & (CAPACITY - 1)
        if at + size > CAPACITY:
            _U32.pack_into(mm, HEADER + at, WRAP)
            wr += CAPACITY - at
            at = 0
        _REC.pack_into(mm, HEADER + at, len(data), flags)
        mm[HEADER + at + 8 : HEADER + at + 8 + len(data)] = data
        wr += size
        self.pos = wr
        # One copy, never Struct.pack_into: that zero-fills the field before packing,
        # and the reader can see the 0 (it then walked stale records for ever: the
        # "floor chain stalled" and its processes had to be killed).
        mm[_OFF_WR : _OFF_WR + 8] = _U64.pack(wr)
        if mm[_OFF_ARMED]:
            mm[_OFF_ARMED] = 0
            os.write(self.bell, b"\x01")

    def take(self) -> list[tuple[int, bytes]]:
        """Every record readable now, as (flags, payload)."""
        mm, rd = self.mm, self.pos
        wr = _U64.unpack_from(mm, _OFF_WR)[0]
        if not 0 <= wr - rd <= CAPACITY:
            return []  # not a value the writer ever stored: read it again later
        out = []
        while rd != wr:
            at = rd & (CAPACITY - 1)
            length, flags = _REC.unpack_from(mm, HEADER + at)
            if length == WRAP:
                rd += CAPACITY - at
                continue
            out.append((flags, mm[HEADER + at + 8 : HEADER + at + 8 + length]))
            rd += (8 + length + 7) & ~7
        if out:
            self.pos = rd
            mm[_OFF_RD : _OFF_RD + 8] = _U64.pack(rd)
        return out

    def readable(self) -> bool:
        return bool(_U64.unpack_from(self.mm, _OFF_WR)[0] != self.pos)

    def arm(self) -> bool:
        """About to sleep: True if the ring is still empty once the flag is set."""
        self.mm[_OFF_ARMED] = 1
        if _U64.unpack_from(self.mm, _OFF_WR)[0] != self.pos:
            self.mm[_OFF_ARMED] = 0
            return False
        return True

    def woken(self) -> None:
        try:  # noqa: SIM105 (contextlib.suppress costs more than the read, per wake-up)
            os.read(self.bell, 4096)
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.mm.close()
        os.close(self.bell)


def _wait(rings: list[Ring], poller: select.poll, timeout_ms: int) -> bool:
    """Sleep until a ring is rung or `timeout_ms` passes, unless one has data already;
    True if woken by a doorbell (or not asleep at all)."""
    if all(r.arm() for r in rings):
        events = poller.poll(timeout_ms)
        for r in rings:
            r.woken()
        return bool(events)
    return True


def _middle(d: str) -> None:
    """B: A's records on to C, C's back to A."""
    from_a, to_c, from_c, to_a = (Ring(f"{d}/{n}", p) for n, p in
                                  (("ab", False), ("bc", True), ("cb", False), ("ba", True)))
    poller = select.poll()
    for r in (from_a, from_c):
        poller.register(r.bell, select.POLLIN)
    stop = 0
    while stop < 2:
        moved = False
        for src, dst in ((from_a, to_c), (from_c, to_a)):
            for flags, data in src.take():
                dst.put(data, flags)
                moved = True
                if flags & STOP:
                    stop += 1
        if not moved:
            _wait([from_a, from_c], poller, SAFETY_MS)


def _end(d: str) -> None:
    """C: echo every record back to B."""
    reader, writer = Ring(f"{d}/bc", False), Ring(f"{d}/cb", True)
    poller = select.poll()
    poller.register(reader.bell, select.POLLIN)
    while True:
        records = reader.take()
        for flags, data in records:
            writer.put(data, flags)
            if flags & STOP:
                return
        if not records:
            _wait([reader], poller, SAFETY_MS)


class FloorChain:
    """A (this process) -> B -> C -> B -> A over the minimal rings; B and C are scripts."""

    def __init__(self, scratch: Path | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="portcls-floor-", dir=scratch))
        for name in ("ab", "bc", "cb", "ba"):
            Ring.create(str(self.dir / name))
        self.out, self.back = Ring(str(self.dir / "ab"), True), Ring(str(self.dir / "ba"), False)
        self.poller = select.poll()
        self.poller.register(self.back.bell, select.POLLIN)
        self.missed_wakeups = 0
        script = [sys.executable, "-P", "-S", str(Path(__file__).resolve())]
        self.procs = [subprocess.Popen([*script, role, str(self.dir)], stdin=subprocess.DEVNULL)
                      for role in ("end", "middle")]
        self.out.put(b"\x01")
        if not self._receive(30.0):
            self.close()
            raise RuntimeError("the floor chain did not answer within 30 s")

    def _receive(self, timeout: float) -> list[tuple[int, bytes]]:
        """What B sent back, waiting up to `timeout` seconds for it.

        Each sleep lasts at most SAFETY_MS, as B's and C's do: the armed flag is a
        store followed by a load on each side, which the CPU may reorder (Python
        cannot fence), so a wake-up can be lost; the next slice rescues it and
        counts it in `missed_wakeups`. A whole `timeout` in one sleep turned one
        such loss into a 10 s stall of the throughput run.
        """
        deadline = time.monotonic() + timeout
        while True:
            got = self.back.take()
            if got:
                return got
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            slice_ms = max(1, int(min(remaining * 1000, SAFETY_MS)))
            woken = _wait([self.back], self.poller, slice_ms)
            if not woken and slice_ms == SAFETY_MS and self.back.readable():
                self.missed_wakeups += 1

    def roundtrip(self, n: int, samples: array[int], message: bytes) -> None:
        put, receive, clock = self.out.put, self._receive, time.perf_counter_ns
        for _ in range(n):
            t0 = clock()
            put(message)
            got = receive(5.0)
            t1 = clock()
            if len(got) != 1 or got[0][1] != message:
                raise RuntimeError(f"floor round trip: sent {message.hex()}, got {got!r}")
            samples.append(t1 - t0)

    def throughput(
        self, payloads: list[bytes], per_payload: int, window: int,
        take: Callable[[bytes], Any], done: Callable[[], bool], timeout: float,
    ) -> float:
        """Send `payloads` (each `per_payload` messages), at most `window` messages in
        flight, handing what comes back to `take` until `done()`; the seconds it took."""
        put, back = self.out.put, self.back
        in_flight = 0
        t0 = time.perf_counter()
        for payload in payloads:
            while in_flight + per_payload > window:
                got = self._receive(timeout)
                if not got:
                    raise RuntimeError("the floor chain stalled")
                for _, data in got:
                    take(data)
                    in_flight -= per_payload
            put(payload)
            in_flight += per_payload
            for _, data in back.take():
                take(data)
                in_flight -= per_payload
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            for _, data in self._receive(deadline - time.monotonic()):
                take(data)
        return time.perf_counter() - t0

    def close(self) -> list[str]:
        problems = []
        try:
            self.out.put(b"", STOP)  # C echoes it and ends; B ends once it passed it back
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
                self._receive(0.1)
        except (OSError, ValueError) as exc:
            problems.append(f"stopping the floor chain: {exc!r}")
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                problems.append(f"floor process {p.pid} had to be killed")
            p.wait()
        self.out.close()
        self.back.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return problems


if __name__ == "__main__":
    {"middle": _middle, "end": _end}[sys.argv[1]](sys.argv[2])
