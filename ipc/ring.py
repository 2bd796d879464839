"""Single-producer/single-consumer record ring in a memory-mapped plain file.

One process writes records, one other process reads them; both map the same file.
Neither side trusts the other: everything read from the shared file is validated and
inconsistencies raise :class:`RingCorrupt` (never another exception, never an
unbounded loop or allocation).

File layout (the header prefix and record headers little-endian; the indices, flags
and counter, which the two sides access concurrently, in native byte order)::

    offset   0  magic b"PCLSRING", version u32, header size u32, capacity u64
    offset  64  write index u64      (written by the producer only)
    offset 128  read index u64       (written by the consumer only)
    offset 192  consumer-armed u32   (set by the consumer, cleared by either side)
    offset 256  producer-armed u32   (set by the producer, cleared by either side)
    offset 320  dropped u64          (written by the producer only)
    offset 384  data area, ``capacity`` bytes (a power of two, at least 4096)

The indices are byte counters that only ever grow; a byte at index ``i`` lives at
data position ``i & (capacity - 1)``. Both are always multiples of 8, and
``0 <= write - read <= capacity``.

A record is a 16-byte header ``<qIHH`` (timestamp, payload length, flags, kind)
followed by the payload, padded with unspecified bytes to a multiple of 8. A record
never crosses the end of the data area. When the next record does not fit before the
end, the producer skips the rest of the data area and writes the record at position
0 of the next lap:

* if 16 bytes or more remain, the skipped space starts with a padding record
  (kind :data:`KIND_PAD`) whose length field covers exactly the rest of the area;
* if fewer remain (always exactly 8, since positions are multiples of 8), nothing is
  written there and the reader skips those bytes implicitly.

Not thread-safe: one thread per side. A peer that truncates a ring *file* can make
this process die of SIGBUS; a plain file cannot be sealed against that. A ring made
with :meth:`Ring.create_sealed` lives in a memfd sealed against shrinking and growing,
and :meth:`Ring.from_fd` maps a received descriptor only if it carries those seals.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import stat
import struct
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Final, NamedTuple, Self

__all__ = [
    "DEFAULT_CAPACITY",
    "HEADER_SIZE",
    "KIND_DATA",
    "KIND_PAD",
    "MAX_CAPACITY",
    "MIN_CAPACITY",
    "RECORD_HEADER_SIZE",
    "SEALS_REQUIRED",
    "Buffer",
    "InvalidRecord",
    "Record",
    "Ring",
    "RingCorrupt",
    "RingError",
    "record_size",
]

Buffer = bytes | bytearray | memoryview
"""Payload types accepted by the producer methods (any C-contiguous buffer)."""

MAGIC: Final = b"PCLSRING"
VERSION: Final = 1
MIN_CAPACITY: Final = 4096
MAX_CAPACITY: Final = 1 << 30
DEFAULT_CAPACITY: Final = 1 << 16
RECORD_HEADER_SIZE: Final = 16
KIND_DATA: Final = 0xA55A
KIND_PAD: Final = 0x5AD0

# Python's fcntl has these on Linux; the raw values are the kernel's ABI.
F_ADD_SEALS: Final[int] = getattr(fcntl, "F_ADD_SEALS", 1033)
F_GET_SEALS: Final[int] = getattr(fcntl, "F_GET_SEALS", 1034)
F_SEAL_SEAL: Final[int] = getattr(fcntl, "F_SEAL_SEAL", 1)
F_SEAL_SHRINK: Final[int] = getattr(fcntl, "F_SEAL_SHRINK", 2)
F_SEAL_GROW: Final[int] = getattr(fcntl, "F_SEAL_GROW", 4)
SEALS_REQUIRED: Final = F_SEAL_SHRINK | F_SEAL_GROW
"""Seals a ring descriptor must carry before :meth:`Ring.from_fd` maps it: nobody can
then change its size, so touching the mapping can never raise SIGBUS."""

_PREFIX: Final = struct.Struct("<8sIIQ")
_OFF_WRITE: Final = 64
_OFF_READ: Final = 128
_OFF_CONSUMER_ARMED: Final = 192
_OFF_PRODUCER_ARMED: Final = 256
_OFF_DROPPED: Final = 320
HEADER_SIZE: Final = 384

# Fields the other process stores concurrently use native formats, which CPython
# always unpacks with one memcpy (one aligned load, so no torn values); "<" formats
# get that only where CPython swaps in its native routines (little-endian hosts).
_U32: Final = struct.Struct("@I")
_U64: Final = struct.Struct("@Q")
# Write and read index in one call; they sit on different cache lines 64 bytes apart.
_INDICES: Final = struct.Struct("@Q56xQ")
_REC: Final = struct.Struct("<qIHH")
_U64_MAX: Final = (1 << 64) - 1
# The shared fields as slices, for stores with one copy (a constant slice costs fewer
# steps per store than building it each time).
_WRITE_FIELD: Final = slice(_OFF_WRITE, _OFF_WRITE + 8)
_READ_FIELD: Final = slice(_OFF_READ, _OFF_READ + 8)
_CONSUMER_ARMED_FIELD: Final = slice(_OFF_CONSUMER_ARMED, _OFF_CONSUMER_ARMED + 4)
_PRODUCER_ARMED_FIELD: Final = slice(_OFF_PRODUCER_ARMED, _OFF_PRODUCER_ARMED + 4)
_ARMED: Final = struct.pack("@I", 1)
_DISARMED: Final = struct.pack("@I", 0)


def _store_u64(mm: mmap.mmap, offset: int, value: int) -> None:
    """Store a shared u64 with one copy. Struct.pack_into would zero the field first,
    and the other process could read that 0 (seen in practice: a write index of 0)."""
    mm[offset : offset + 8] = _U64.pack(value)


_PADS: Final = tuple(bytes(i) for i in range(8))


class RingError(Exception):
    """Base class of the errors this module raises about a ring's contents."""


class RingCorrupt(RingError):
    """The shared file holds something the protocol does not allow.

    The peer crashed mid-way through something impossible or is misbehaving; the ring
    cannot be used any more. The message names what was wrong (index, length, kind).
    """


class InvalidRecord(ValueError):
    """A record given to :meth:`Ring.put_many` was invalid.

    ``written`` records before it were written and published.
    """

    def __init__(self, message: str, written: int) -> None:
        super().__init__(message)
        self.written = written


class Record(NamedTuple):
    """One record read from a ring."""

    timestamp: int
    flags: int
    data: bytes


def record_size(length: int) -> int:
    """Bytes a record with a ``length``-byte payload occupies in the data area."""
    return (length + RECORD_HEADER_SIZE + 7) & ~7


def _check_capacity(capacity: int) -> None:
    if not MIN_CAPACITY <= capacity <= MAX_CAPACITY or capacity & (capacity - 1):
        raise ValueError(
            f"capacity must be a power of two in [{MIN_CAPACITY}, {MAX_CAPACITY}], got {capacity}"
        )


class Ring:
    """One end (or both ends) of a single-producer/single-consumer record ring.

    Producer-side methods: :meth:`try_put`, :meth:`put_many`, :meth:`free_bytes`,
    :meth:`arm_producer`, :meth:`take_consumer_wakeup`, :meth:`add_dropped`.
    Consumer-side methods: :meth:`get`, :meth:`get_many`, :meth:`discard_all`,
    :meth:`readable`, :meth:`arm_consumer`, :meth:`disarm_consumer`,
    :meth:`take_producer_wakeup`. Any of them may raise :class:`RingCorrupt`.
    """

    path: Path
    capacity: int
    max_payload: int
    consumer_wakeup: bool
    """Set by ``put_many(..., take_wakeup=True)`` when it took the consumer's wake-up
    (as :meth:`take_consumer_wakeup` would have); the caller clears it once it woke the
    consumer."""
    producer_wakeup: bool
    """Set by ``get_many(..., take_wakeup=True)`` when it took the producer's wake-up
    (as :meth:`take_producer_wakeup` would have); the caller clears it once it woke the
    producer."""

    def __init__(self, path: Path, fd: int, mm: mmap.mmap, capacity: int) -> None:
        """Internal; use :meth:`create` or :meth:`attach`."""
        self.path = path
        self.capacity = capacity
        # A quarter of the capacity: a maximal record (plus wrap padding) always fits
        # into an empty ring, so a producer waiting for room can always make progress.
        self.max_payload = capacity // 4
        self._fd = fd
        self._mm: mmap.mmap | None = mm
        self._mask = capacity - 1
        self.consumer_wakeup = False
        self.producer_wakeup = False

    @classmethod
    def create(cls, path: str | os.PathLike[str], capacity: int = DEFAULT_CAPACITY) -> Ring:
        """Create a new, empty ring file (mode 0600) at ``path`` and map it.

        Raises ValueError if ``capacity`` is not a power of two in
        [MIN_CAPACITY, MAX_CAPACITY] and FileExistsError if ``path`` exists.
        """
        _check_capacity(capacity)
        p = Path(path)
        fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.ftruncate(fd, HEADER_SIZE + capacity)
            mm = mmap.mmap(fd, HEADER_SIZE + capacity)
        except BaseException:
            os.close(fd)
            p.unlink(missing_ok=True)
            raise
        # The file is zero-filled, so the indices, flags and counter start at 0; the
        # magic goes in last so that a half-made file never validates.
        _PREFIX.pack_into(mm, 0, b"\0" * 8, VERSION, HEADER_SIZE, capacity)
        mm[0:8] = MAGIC
        return cls(p, fd, mm, capacity)

    @classmethod
    def create_sealed(cls, capacity: int = DEFAULT_CAPACITY, name: str = "ring") -> Ring:
        """Create a new, empty ring in an anonymous memfd sealed against shrinking,
        growing and further sealing, and map it. Pass :meth:`fileno` to the peer.

        Raises ValueError for a bad ``capacity``, OSError if the memfd cannot be made.
        """
        _check_capacity(capacity)
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, HEADER_SIZE + capacity)
            fcntl.fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)
            mm = mmap.mmap(fd, HEADER_SIZE + capacity)
        except BaseException:
            os.close(fd)
            raise
        _PREFIX.pack_into(mm, 0, b"\0" * 8, VERSION, HEADER_SIZE, capacity)
        mm[0:8] = MAGIC
        return cls(Path(f"memfd:{name}"), fd, mm, capacity)

    @classmethod
    def from_fd(cls, fd: int, name: str = "ring") -> Ring:
        """Map a ring descriptor received from a peer; the Ring owns ``fd`` from now on
        (it is closed on failure too).

        Raises RingCorrupt if the descriptor lacks the seals :data:`SEALS_REQUIRED`
        (a peer could shrink it under the mapping) or its header is wrong.
        """
        try:
            try:
                seals = fcntl.fcntl(fd, F_GET_SEALS)
            except OSError as exc:
                raise RingCorrupt(f"{name}: not a sealable memfd ({exc})") from None
            if seals & SEALS_REQUIRED != SEALS_REQUIRED:
                raise RingCorrupt(f"{name}: not sealed against resizing (seals {seals:#x})")
        except BaseException:
            os.close(fd)
            raise
        return cls._map_fd(Path(f"memfd:{name}"), fd)

    @classmethod
    def attach(cls, path: str | os.PathLike[str]) -> Ring:
        """Map an existing ring file made by :meth:`create`.

        Raises RingCorrupt if the header is wrong (magic, version, header size,
        capacity) or the file size does not match it; OSError if it cannot be opened.
        """
        p = Path(path)
        return cls._map_fd(p, os.open(p, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW))

    @classmethod
    def _map_fd(cls, p: Path, fd: int) -> Ring:
        """Validate the ring behind ``fd`` and map it; ``fd`` is closed on failure."""
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise RingCorrupt(f"{p}: not a regular file")
            if st.st_size < HEADER_SIZE + MIN_CAPACITY:
                raise RingCorrupt(f"{p}: file too short ({st.st_size} bytes)")
            head = os.pread(fd, _PREFIX.size, 0)
            if len(head) != _PREFIX.size:
                raise RingCorrupt(f"{p}: short read of the header")
            magic, version, header_size, capacity = _PREFIX.unpack(head)
            if magic != MAGIC:
                raise RingCorrupt(f"{p}: bad magic {magic!r}")
            if version != VERSION:
                raise RingCorrupt(f"{p}: unsupported version {version}")
            if header_size != HEADER_SIZE:
                raise RingCorrupt(f"{p}: bad header size {header_size}")
            try:
                _check_capacity(capacity)
            except ValueError:
                raise RingCorrupt(f"{p}: bad capacity {capacity}") from None
            if st.st_size != HEADER_SIZE + capacity:
                raise RingCorrupt(f"{p}: file size {st.st_size} does not match capacity {capacity}")
            mm = mmap.mmap(fd, HEADER_SIZE + capacity)
        except BaseException:
            os.close(fd)
            raise
        return cls(p, fd, mm, capacity)

    def fileno(self) -> int:
        """The ring's descriptor (to pass to the peer); valid until :meth:`close`."""
        if self._mm is None:
            raise ValueError(f"ring {self.path} is closed")
        return self._fd

    def _map(self) -> mmap.mmap:
        mm = self._mm
        if mm is None:
            raise ValueError(f"ring {self.path} is closed")
        return mm

    def _indices(self, mm: mmap.mmap) -> tuple[int, int]:
        wr: int
        rd: int
        # Safe against tearing: each u64 is aligned, native-format unpacking copies it
        # with one memcpy, and writers store it with one copy too (_store_u64).
        wr, rd = _INDICES.unpack_from(mm, _OFF_WRITE)
        if (wr | rd) & 7 or not 0 <= wr - rd <= self.capacity:
            raise RingCorrupt(
                f"{self.path}: inconsistent indices: write {wr}, read {rd}, "
                f"capacity {self.capacity}"
            )
        return wr, rd

    def _span_for(self, wr: int, size: int) -> int:
        """Bytes from ``wr`` up to the end of a ``size``-byte record written there."""
        tail = self.capacity - (wr & self._mask)
        return size if size <= tail else tail + size

    def try_put(self, data: Buffer, timestamp: int = 0, flags: int = 0) -> bool:
        """Producer: append one record and publish it.

        Returns False, writing nothing, when the ring lacks room for it. ``data``
        must be a C-contiguous buffer of at most :attr:`max_payload` bytes, ``flags``
        a u16 and ``timestamp`` an i64, else ValueError.
        """
        # _map and _indices inline: this is every message-at-a-time send's path.
        mm = self._mm
        if mm is None:
            raise ValueError(f"ring {self.path} is closed")
        if type(data) is not bytes:
            data = memoryview(data).cast("B")
        length = len(data)
        if length > self.max_payload:
            raise ValueError(f"payload of {length} bytes exceeds max_payload {self.max_payload}")
        if not 0 <= flags <= 0xFFFF:
            raise ValueError(f"flags {flags} out of u16 range")
        wr, rd = _INDICES.unpack_from(mm, _OFF_WRITE)
        capacity = self.capacity
        if (wr | rd) & 7 or not 0 <= wr - rd <= capacity:
            self._indices(mm)  # raises RingCorrupt, naming the indices
        size = (length + 23) & ~7
        pos = wr & self._mask
        tail = capacity - pos
        span = size
        if size > tail:
            span += tail
        if span > capacity - (wr - rd):
            return False
        if size > tail:
            if tail >= RECORD_HEADER_SIZE:
                _REC.pack_into(mm, HEADER_SIZE + pos, 0, tail - RECORD_HEADER_SIZE, 0, KIND_PAD)
            pos = 0
        start = HEADER_SIZE + pos
        mm[start + 16 : start + 16 + length] = data
        try:
            _REC.pack_into(mm, start, timestamp, length, flags, KIND_DATA)
        except struct.error:
            raise ValueError(f"timestamp {timestamp} out of i64 range") from None
        # Python cannot issue a memory fence. Payload, then record header, then index:
        # we rely on the CPU keeping stores in program order (x86 does; elsewhere the
        # system calls around wake-ups order them in practice). The reader validates
        # everything it reads regardless. One copy (see _store_u64).
        mm[_WRITE_FIELD] = _U64.pack(wr + span)
        return True

    def put_many(
        self, records: Iterable[tuple[int, int, Buffer]], *, take_wakeup: bool = False
    ) -> int:
        """Producer: append ``(timestamp, flags, data)`` records in order.

        Writes records until one does not fit, then publishes the write index once and
        returns how many were written. With an iterator, the record that did not fit
        has been consumed from it; pass a sequence and slice it to retry the rest.
        An invalid record raises :class:`InvalidRecord` (a ValueError) after the
        records before it have been published.

        ``take_wakeup``: once records were written (and no exception raised), also do
        what :meth:`take_consumer_wakeup` does, setting :attr:`consumer_wakeup` if it
        took one: one call for the producer's hot path.
        """
        mm = self._mm
        if mm is None:
            raise ValueError(f"ring {self.path} is closed")
        # _indices, inline (every producer's hot path).
        wr, rd = _INDICES.unpack_from(mm, _OFF_WRITE)
        cap = self.capacity
        if (wr | rd) & 7 or not 0 <= wr - rd <= cap:
            raise RingCorrupt(
                f"{self.path}: inconsistent indices: write {wr}, read {rd}, capacity {cap}"
            )
        max_payload = self.max_payload
        free = start_free = cap - (wr - rd)
        pos = wr & self._mask
        if (type(records) is list or type(records) is deque) and len(records) == 1:
            # One record (a message at a time) that needs no wrap: written in place and
            # published without the loop's buffers. Anything else takes the loop.
            timestamp, flags, data = records[0]
            if type(data) is not bytes:
                data = memoryview(data).cast("B")
            length = len(data)
            size = (length + 23) & ~7
            if length <= max_payload and size <= cap - pos:
                if size > free:
                    return 0
                start = HEADER_SIZE + pos
                try:
                    # Header before payload here: neither is visible before the index.
                    _REC.pack_into(mm, start, timestamp, length, flags, KIND_DATA)
                except struct.error:
                    raise InvalidRecord(
                        f"record 0: timestamp {timestamp} or flags {flags} out of range", 0
                    ) from None
                mm[start + 16 : start + 16 + length] = data
                mm[_WRITE_FIELD] = _U64.pack(wr + size)
                if take_wakeup and _U32.unpack_from(mm, _OFF_CONSUMER_ARMED)[0]:
                    mm[_CONSUMER_ARMED_FIELD] = _DISARMED
                    self.consumer_wakeup = True
                return 1
        pack = _REC.pack
        pads = _PADS
        # Records are packed into one buffer per contiguous run of the data area and
        # copied in with a single slice assignment, then the index is published once.
        parts: list[Buffer] = []
        append = parts.append
        run_start = HEADER_SIZE + pos
        n = 0
        try:
            for timestamp, flags, data in records:
                if type(data) is not bytes:
                    data = memoryview(data).cast("B")
                length = len(data)
                if length > max_payload:
                    raise InvalidRecord(
                        f"record {n}: payload of {length} bytes exceeds max_payload {max_payload}",
                        n,
                    )
                size = (length + 23) & ~7
                if size > free:
                    break
                try:
                    header = pack(timestamp, length, flags, KIND_DATA)
                except struct.error:
                    raise InvalidRecord(
                        f"record {n}: timestamp {timestamp} or flags {flags} out of range", n
                    ) from None
                if size > cap - pos:
                    tail = cap - pos
                    if tail + size > free:
                        break
                    if tail >= RECORD_HEADER_SIZE:
                        append(pack(0, tail - RECORD_HEADER_SIZE, 0, KIND_PAD))
                    if parts:
                        run = b"".join(parts)
                        mm[run_start : run_start + len(run)] = run
                        parts.clear()
                    run_start = HEADER_SIZE
                    pos = 0
                    free -= tail
                append(header)
                append(data)
                append(pads[-length & 7])
                pos += size
                free -= size
                n += 1
        finally:
            if parts:
                run = b"".join(parts)
                mm[run_start : run_start + len(run)] = run
            if free != start_free:
                # See try_put for why this store order is all the ordering we get;
                # one copy, as _store_u64 does.
                mm[_WRITE_FIELD] = _U64.pack(wr + start_free - free)
        if take_wakeup and n and _U32.unpack_from(mm, _OFF_CONSUMER_ARMED)[0]:
            mm[_CONSUMER_ARMED_FIELD] = _DISARMED
            self.consumer_wakeup = True
        return n

    def get(self) -> Record | None:
        """Consumer: take the oldest record, or None if the ring is empty."""
        records = self.get_many(1)
        return records[0] if records else None

    def get_many(
        self, max_records: int = 1024, max_bytes: int | None = None, *, take_wakeup: bool = False
    ) -> list[Record]:
        """Consumer: take up to ``max_records`` records in order, publishing once.

        ``max_bytes`` bounds the total payload returned, except that one record is
        always returned when any is readable. Returns an empty list when the ring is
        empty. Raises ValueError if ``max_records < 1`` or ``max_bytes < 0``.

        ``take_wakeup``: once records were taken, also do what
        :meth:`take_producer_wakeup` does, setting :attr:`producer_wakeup` if it took
        one: one call for the consumer's hot path.
        """
        mm = self._mm
        if mm is None:
            raise ValueError(f"ring {self.path} is closed")
        # The indices, validated as _indices does, inline: this is every consumer's
        # hot path, and an empty ring (a foreign wake-up) returns here.
        wr, rd = _INDICES.unpack_from(mm, _OFF_WRITE)
        avail = wr - rd
        pos = rd & self._mask
        if (
            16 <= avail <= self.capacity - pos
            and not (wr | rd) & 7
            and max_records >= 1
            and (max_bytes is None or max_bytes >= 0)
        ):
            # Records readable up to the end of the area at most, and the indices and
            # arguments valid: if that is exactly one data record (the common case of a
            # message at a time), it is taken without the loop, validated as there (a
            # record that is not exactly that takes the loop, which raises).
            timestamp, length, flags, kind = _REC.unpack_from(mm, HEADER_SIZE + pos)
            if (length + 23) & ~7 == avail and kind == KIND_DATA and length <= self.max_payload:
                start = HEADER_SIZE + 16 + pos
                record = tuple.__new__(Record, (timestamp, flags, mm[start : start + length]))
                mm[_READ_FIELD] = _U64.pack(wr)
                if take_wakeup and _U32.unpack_from(mm, _OFF_PRODUCER_ARMED)[0]:
                    mm[_PRODUCER_ARMED_FIELD] = _DISARMED
                    self.producer_wakeup = True
                return [record]
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        # No limit: a budget no ring can exhaust (payloads total at most MAX_CAPACITY).
        budget = 1 << 62
        if max_bytes is not None:
            if max_bytes < 0:
                raise ValueError("max_bytes must not be negative")
            budget = max_bytes
        cap = self.capacity
        if (wr | rd) & 7 or not 0 <= avail <= cap:
            raise RingCorrupt(
                f"{self.path}: inconsistent indices: write {wr}, read {rd}, capacity {cap}"
            )
        if not avail:
            return []
        max_payload = self.max_payload
        unpack = _REC.unpack_from
        new = tuple.__new__
        out: list[Record] = []
        append = out.append
        # Read bytes still unread just after the last record handed out: padding is
        # only consumed together with the record after it.
        left = avail
        remaining = max_records
        # Each pass consumes at least 8 bytes of avail (<= capacity) or raises, so the
        # loop is bounded whatever the peer wrote.
        while avail:
            tail = cap - pos
            if tail < RECORD_HEADER_SIZE:
                # Implicit skip of the last 8 bytes (or pos == cap after a record
                # that ended exactly at the end).
                avail -= tail
                pos = 0
                continue
            start = HEADER_SIZE + pos
            timestamp, length, flags, kind = unpack(mm, start)
            if kind == KIND_DATA:
                size = (length + 23) & ~7
                if length > max_payload or size > tail or size > avail:
                    raise RingCorrupt(
                        f"{self.path}: bad record at index {wr - avail}: length {length}, "
                        f"{avail} bytes readable, {tail} bytes to the end"
                    )
                if length > budget and out:
                    break
                budget -= length
                start += 16
                append(new(Record, (timestamp, flags, mm[start : start + length])))
                pos += size
                avail -= size
                left = avail
                remaining -= 1
                if not remaining:
                    break
            elif kind == KIND_PAD:
                if length + RECORD_HEADER_SIZE != tail or tail > avail:
                    raise RingCorrupt(
                        f"{self.path}: bad padding at index {wr - avail}: length {length}, "
                        f"{tail} bytes to the end, {avail} bytes readable"
                    )
                avail -= tail
                pos = 0
            else:
                raise RingCorrupt(
                    f"{self.path}: bad record kind {kind:#06x} at index {wr - avail} "
                    f"(length {length})"
                )
        else:
            # Reached the write index: also consume trailing padding (which a correct
            # producer never leaves) so that readable() cannot stay true forever.
            left = 0
        if left != wr - rd:
            mm[_READ_FIELD] = _U64.pack(wr - left)
        if take_wakeup and out and _U32.unpack_from(mm, _OFF_PRODUCER_ARMED)[0]:
            mm[_PRODUCER_ARMED_FIELD] = _DISARMED
            self.producer_wakeup = True
        return out

    def discard_all(self) -> int:
        """Consumer: drop everything readable (a flush); returns the records dropped.

        The records are validated as by :meth:`get_many` but their payloads are not
        copied.
        """
        return self._walk_readable(consume=True)

    def count_unread(self) -> int:
        """Either side: how many records are written and not yet read (validated as by
        :meth:`get_many`); the ring is not changed. What a producer asks when its
        consumer died: how much it never took."""
        return self._walk_readable(consume=False)

    def _walk_readable(self, consume: bool) -> int:
        mm = self._map()
        wr, rd = self._indices(mm)
        if wr == rd:
            return 0
        start_rd = rd
        cap = self.capacity
        mask = self._mask
        n = 0
        while rd != wr:
            pos = rd & mask
            tail = cap - pos
            if tail < RECORD_HEADER_SIZE:
                rd += tail
                continue
            _, length, _, kind = _REC.unpack_from(mm, HEADER_SIZE + pos)
            if kind == KIND_DATA:
                size = (length + 23) & ~7
                if length > self.max_payload or size > tail or size > wr - rd:
                    raise RingCorrupt(
                        f"{self.path}: bad record at index {rd}: length {length}, "
                        f"{wr - rd} bytes readable, {tail} bytes to the end"
                    )
                rd += size
                n += 1
            elif kind == KIND_PAD:
                if length + RECORD_HEADER_SIZE != tail or tail > wr - rd:
                    raise RingCorrupt(
                        f"{self.path}: bad padding at index {rd}: length {length}, "
                        f"{tail} bytes to the end, {wr - rd} bytes readable"
                    )
                rd += tail
            else:
                raise RingCorrupt(
                    f"{self.path}: bad record kind {kind:#06x} at index {rd} (length {length})"
                )
        if consume and rd != start_rd:
            _store_u64(mm, _OFF_READ, rd)
        return n

    def readable(self) -> bool:
        """Consumer: True if the write index is not the read index (data to read).

        Does not validate; a corrupt ring reads as readable and get_many raises.
        """
        mm = self._mm
        if mm is None:
            raise ValueError(f"ring {self.path} is closed")
        wr, rd = _INDICES.unpack_from(mm, _OFF_WRITE)
        return bool(wr != rd)

    def free_bytes(self) -> int:
        """Bytes of the data area not holding unread records.

        Not every free byte is usable: a record needs :func:`record_size` bytes and
        cannot cross the end of the data area.
        """
        wr, rd = self._indices(self._map())
        return self.capacity - (wr - rd)

    def has_room(self, length: int) -> bool:
        """Producer: True if a record with a ``length``-byte payload fits now."""
        if not 0 <= length <= self.max_payload:
            raise ValueError(f"length {length} out of range [0, {self.max_payload}]")
        wr, rd = self._indices(self._map())
        return self._span_for(wr, record_size(length)) <= self.capacity - (wr - rd)

    def arm_consumer(self) -> bool:
        """Consumer about to sleep: set the consumer-armed flag, then re-check.

        Returns True if the ring is still empty: the producer will see the flag after
        its next publish (:meth:`take_consumer_wakeup`), so the caller may sleep. Returns
        False, with the flag cleared, if data arrived meanwhile.

        Python cannot fence between the flag store and the index load, so a wake-up
        can in principle be missed; sleepers must use a (long) safety timeout.
        """
        mm = self._mm
        if mm is None:
            raise ValueError(f"ring {self.path} is closed")
        mm[_CONSUMER_ARMED_FIELD] = _ARMED
        wr, rd = _INDICES.unpack_from(mm, _OFF_WRITE)
        if wr != rd:
            mm[_CONSUMER_ARMED_FIELD] = _DISARMED
            return False
        return True

    def disarm_consumer(self) -> None:
        """Consumer: clear the consumer-armed flag (woke up for another reason)."""
        mm = self._mm
        if mm is None:
            raise ValueError(f"ring {self.path} is closed")
        mm[_CONSUMER_ARMED_FIELD] = _DISARMED

    def take_consumer_wakeup(self) -> bool:
        """Producer, after publishing: True (and the flag cleared) if the consumer armed.

        The caller must then wake the consumer. At most one True per arming.
        """
        mm = self._mm
        if mm is None:
            raise ValueError(f"ring {self.path} is closed")
        if _U32.unpack_from(mm, _OFF_CONSUMER_ARMED)[0]:
            mm[_CONSUMER_ARMED_FIELD] = _DISARMED
            return True
        return False

    def arm_producer(self, need: int) -> bool:
        """Producer waiting for room for a ``need``-byte payload: set the flag, re-check.

        Returns True if there is still not enough room (the consumer will see the flag
        after its next publish, :meth:`take_producer_wakeup`); False, with the flag
        cleared, if the record fits now. ValueError if ``need`` exceeds max_payload.
        """
        if not 0 <= need <= self.max_payload:
            raise ValueError(f"need {need} out of range [0, {self.max_payload}]")
        mm = self._map()
        mm[_PRODUCER_ARMED_FIELD] = _ARMED
        wr, rd = self._indices(mm)
        if self._span_for(wr, record_size(need)) <= self.capacity - (wr - rd):
            mm[_PRODUCER_ARMED_FIELD] = _DISARMED
            return False
        return True

    def disarm_producer(self) -> None:
        """Producer: clear the producer-armed flag (stopped waiting for room)."""
        self._map()[_OFF_PRODUCER_ARMED : _OFF_PRODUCER_ARMED + 4] = _DISARMED

    def take_producer_wakeup(self) -> bool:
        """Consumer, after publishing the read index: True (flag cleared) if the producer
        armed; the caller must then wake it. At most one True per arming."""
        mm = self._mm
        if mm is None:
            raise ValueError(f"ring {self.path} is closed")
        if _U32.unpack_from(mm, _OFF_PRODUCER_ARMED)[0]:
            mm[_PRODUCER_ARMED_FIELD] = _DISARMED
            return True
        return False

    def add_dropped(self, n: int) -> None:
        """Producer: add ``n`` (>= 0) to the count of records it had to drop.

        The count wraps at 2**64.
        """
        if n < 0:
            raise ValueError("n must not be negative")
        mm = self._map()
        _store_u64(mm, _OFF_DROPPED, (_U64.unpack_from(mm, _OFF_DROPPED)[0] + n) & _U64_MAX)

    @property
    def dropped(self) -> int:
        """Records the producer reported as dropped (as written by the producer)."""
        value: int = _U64.unpack_from(self._map(), _OFF_DROPPED)[0]
        return value

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._mm is None

    def close(self) -> None:
        """Unmap and close the file. Idempotent; other methods then raise ValueError."""
        mm, self._mm = self._mm, None
        if mm is not None:
            mm.close()
            os.close(self._fd)

    def unlink(self) -> None:
        """Remove the file (the creator's job). Peers keep their mappings; idempotent.
        Nothing to remove for a memfd ring."""
        if not str(self.path).startswith("memfd:"):
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._mm is None else "open"
        return f"<Ring {str(self.path)!r} capacity={self.capacity} {state}>"
