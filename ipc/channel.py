"""One direction of a data stream between two processes: a ring plus two doorbells.

A channel named by a base path consists of three files next to each other:

* ``<base>.ring``  -- the :class:`~ipc.ring.Ring` carrying the records;
* ``<base>.data``  -- doorbell the producer rings when the consumer sleeps armed;
* ``<base>.space`` -- doorbell the consumer rings when the producer waits for room.

Whoever owns the channel makes the files with :func:`create_channel_files` and removes
them with :func:`remove_channel_files`; the two ends open them with
:meth:`ChannelWriter.open` and :meth:`ChannelReader.open`.

A channel can also live in no file at all (:func:`create_sealed_channel`): the ring
in a memfd sealed against resizing, the doorbells as pipes. Its owner keeps one end
and hands the peer three descriptors (:data:`PEER_FDS`: ring, data-doorbell end,
space-doorbell end), which the peer wraps with :meth:`ChannelWriter.from_fds` or
:meth:`ChannelReader.from_fds`. A peer cannot shrink the ring under the owner's
mapping, and a third process cannot open it by name.

Wake-ups are coalesced with the ring's armed flags: a side rings the other's doorbell
only if that side announced it is about to sleep, so there is at most one wake-up per
sleep however many records pass. The flag handshake cannot be fenced from Python, so a
wake-up can in principle be lost; every wait therefore also times out after
:attr:`safety_timeout` seconds at the latest and counts such rescues in
``missed_wakeups`` (expected to stay 0). Event loops that poll the descriptors
themselves should likewise never block longer than that without re-checking.
"""

from __future__ import annotations

import math
import os
import select
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from ipc.doorbell import Doorbell
from ipc.ring import DEFAULT_CAPACITY, Buffer, InvalidRecord, Record, Ring

__all__ = [
    "CHANNEL_SUFFIXES",
    "PEER_FDS",
    "SAFETY_TIMEOUT",
    "ChannelReader",
    "ChannelWriter",
    "channel_paths",
    "create_channel_files",
    "create_sealed_channel",
    "open_proc_fd_ref",
    "proc_fd_paths",
    "proc_fd_ref",
    "remove_channel_files",
]

SAFETY_TIMEOUT: Final = 1.0
"""Default longest single block (seconds) in the waiting helpers."""


CHANNEL_SUFFIXES: Final = (".ring", ".data", ".space")
"""What :func:`channel_paths` appends to the base name: ring, data and space doorbells."""


def channel_paths(base: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """The ring, data-doorbell and space-doorbell paths of the channel at ``base``."""
    b = Path(base)
    ring, data, space = (b.with_name(b.name + suffix) for suffix in CHANNEL_SUFFIXES)
    return ring, data, space


def create_channel_files(base: str | os.PathLike[str], capacity: int = DEFAULT_CAPACITY) -> None:
    """Create the three files of a channel (mode 0600).

    All or nothing: on failure (FileExistsError, ValueError for a bad capacity, ...)
    the files this call made are removed again; files that existed are left alone.
    """
    ring_path, data_path, space_path = channel_paths(base)
    made: list[Path] = []
    try:
        Ring.create(ring_path, capacity).close()
        made.append(ring_path)
        for path in (data_path, space_path):
            Doorbell.create(path).close()
            made.append(path)
    except BaseException:
        for path in made:
            path.unlink(missing_ok=True)
        raise


def remove_channel_files(base: str | os.PathLike[str]) -> None:
    """Remove the channel's files; missing ones are ignored. Open ends keep working."""
    for path in channel_paths(base):
        path.unlink(missing_ok=True)


def _attach(base: str | os.PathLike[str]) -> tuple[Ring, Doorbell, Doorbell]:
    """Open the ring and both doorbells of the channel at ``base``; all or nothing."""
    ring_path, data_path, space_path = channel_paths(base)
    ring = Ring.attach(ring_path)
    try:
        data_bell = Doorbell.attach(data_path)
        try:
            return ring, data_bell, Doorbell.attach(space_path)
        except BaseException:
            data_bell.close()
            raise
    except BaseException:
        ring.close()
        raise


PEER_FDS: Final = 3
"""Descriptors a peer receives for a sealed channel: ring, data bell end, space bell end."""


def create_sealed_channel(
    capacity: int, owner_writes: bool, name: str = "channel"
) -> tuple[ChannelWriter | ChannelReader, list[int]]:
    """Make a channel in a sealed memfd and two pipes.

    Returns the owner's end (the writer if ``owner_writes``, else the reader) and the
    peer's :data:`PEER_FDS` descriptors, which the caller sends and then closes.
    ValueError for a bad capacity, OSError if descriptors run out.
    """
    ring = Ring.create_sealed(capacity, name)
    made: list[Doorbell] = []
    try:
        data_wait, data_ring = Doorbell.pipe()
        made += (data_wait, data_ring)
        space_wait, space_ring = Doorbell.pipe()
        made += (space_wait, space_ring)
        peer_ring = os.dup(ring.fileno())
    except BaseException:
        ring.close()
        for bell in made:
            bell.close()
        raise
    owner: ChannelWriter | ChannelReader
    if owner_writes:
        owner = ChannelWriter(ring, data_ring, space_wait)
        peer = [peer_ring, data_wait.fileno(), space_ring.write_fileno()]
        # The peer's ends change hands: forget them here without closing them.
        data_wait._fd = space_ring._wfd = -1
        data_wait._wfd = space_ring._fd = -1
    else:
        owner = ChannelReader(ring, data_wait, space_ring)
        peer = [peer_ring, data_ring.write_fileno(), space_wait.fileno()]
        data_ring._fd = space_wait._fd = -1
        data_ring._wfd = space_wait._wfd = -1
    return owner, peer


def proc_fd_ref(fds: list[int]) -> str:
    """Name a sealed channel's peer descriptors, which this process keeps open, for a
    peer that may open ``/proc/<our pid>/fd/<n>`` (its own child, same user):
    ``"fd:<pid>:<ring>:<data>:<space>"``. See :func:`open_proc_fd_ref`."""
    if len(fds) != PEER_FDS:
        raise ValueError(f"a channel needs {PEER_FDS} descriptors, got {len(fds)}")
    return "fd:" + ":".join(str(n) for n in (os.getpid(), *fds))


def proc_fd_paths(ref: object, pid: int) -> list[str]:
    """The ``/proc/<pid>/fd/<n>`` paths of ring, data and space doorbell named by a
    :func:`proc_fd_ref` name; ValueError if ``ref`` is not such a name of process ``pid``."""
    parts = ref.split(":") if isinstance(ref, str) else []
    if len(parts) != 2 + PEER_FDS or parts[0] != "fd" or not all(
        n.isascii() and n.isdigit() for n in parts[1:]
    ):
        raise ValueError(f"not a descriptor reference: {ref!r}")
    if int(parts[1]) != pid:
        raise ValueError(f"descriptors of process {parts[1]}, not {pid}")
    return [f"/proc/{pid}/fd/{int(n)}" for n in parts[2:]]


def open_proc_fd_ref(ref: object, pid: int, reader: bool) -> list[int]:
    """Open the descriptors :func:`proc_fd_ref` named, as the peer's own opens of the
    same memfd and pipes (the seals stay with the memfd): the ring read-write, the
    doorbell ends for reading or writing as the ``reader`` (else writer) end needs them.
    Returns :data:`PEER_FDS` descriptors for ``from_fds``. ValueError as
    :func:`proc_fd_paths`; OSError if a path cannot be opened (nothing stays open)."""
    ring, data, space = proc_fd_paths(ref, pid)
    rd, wr = os.O_RDONLY | os.O_NONBLOCK, os.O_WRONLY | os.O_NONBLOCK
    modes = [(ring, os.O_RDWR), (data, rd if reader else wr), (space, wr if reader else rd)]
    fds: list[int] = []
    try:
        for path, mode in modes:
            fds.append(os.open(path, mode | os.O_CLOEXEC))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def _from_fds(fds: list[int], reader: bool, name: str) -> tuple[Ring, Doorbell, Doorbell]:
    """Wrap a peer's :data:`PEER_FDS` descriptors; they are owned (closed on failure)."""
    if len(fds) != PEER_FDS:
        for fd in fds:
            os.close(fd)
        raise ValueError(f"a channel needs {PEER_FDS} descriptors, got {len(fds)}")
    ring_fd, data_fd, space_fd = fds
    try:
        ring = Ring.from_fd(ring_fd, name)
    except BaseException:
        os.close(data_fd)
        os.close(space_fd)
        raise
    if reader:
        return ring, Doorbell.from_fds(data_fd, -1), Doorbell.from_fds(-1, space_fd)
    return ring, Doorbell.from_fds(-1, data_fd), Doorbell.from_fds(space_fd, -1)


def _poll_ms(seconds: float) -> int:
    return max(0, math.ceil(seconds * 1000))


class ChannelWriter:
    """The producer end of a channel."""

    ring: Ring
    safety_timeout: float
    wakeups_sent: int
    """Times this end rang the data doorbell."""
    space_wakeups_received: int
    """Times a wait for room found the space doorbell rung."""
    space_waits: int
    """Times :meth:`wait_for_space` had to block."""
    missed_wakeups: int
    """Times the safety timeout found room that no wake-up announced."""
    idle_wakeups: int
    """Rings of the space doorbell with no wait behind them (a flooding consumer)."""

    def __init__(self, ring: Ring, data_bell: Doorbell, space_bell: Doorbell) -> None:
        """Internal; use :meth:`open`."""
        self.ring = ring
        self._data_bell = data_bell
        self._space_bell = space_bell
        self._waiting = False
        self._poller = select.poll()
        self._poller.register(space_bell.fileno(), select.POLLIN)
        self.safety_timeout = SAFETY_TIMEOUT
        self.wakeups_sent = 0
        self.space_wakeups_received = 0
        self.space_waits = 0
        self.missed_wakeups = 0
        self.idle_wakeups = 0

    @classmethod
    def open(cls, base: str | os.PathLike[str]) -> ChannelWriter:
        """Open the producer end of the channel at ``base`` (files must exist).

        Raises what :meth:`Ring.attach` and :meth:`Doorbell.attach` raise.
        """
        return cls(*_attach(base))

    @classmethod
    def from_fds(cls, fds: list[int], name: str = "channel") -> ChannelWriter:
        """The producer end from a sealed channel's :data:`PEER_FDS` descriptors, which
        it owns from now on. RingCorrupt if the ring is not sealed against resizing."""
        return cls(*_from_fds(fds, False, name))

    def send(self, data: Buffer, timestamp: int = 0, flags: int = 0) -> bool:
        """Append one record and wake the consumer if it sleeps armed.

        False (nothing written) if the ring lacks room; ValueError as
        :meth:`Ring.try_put`.
        """
        if self._waiting:
            self.end_wait_for_space()
        ring = self.ring
        if not ring.try_put(data, timestamp, flags):
            return False
        if ring.take_consumer_wakeup():  # _wake_consumer, inline (every send's path)
            self._data_bell.ring()
            self.wakeups_sent += 1
        return True

    def _wake_consumer(self) -> None:
        if self.ring.take_consumer_wakeup():
            self._data_bell.ring()
            self.wakeups_sent += 1

    def send_many(self, records: Iterable[tuple[int, int, Buffer]]) -> int:
        """Append ``(timestamp, flags, data)`` records as :meth:`Ring.put_many` does and
        return how many were written; at most one wake-up for the whole batch."""
        if self._waiting:
            self.end_wait_for_space()
        ring = self.ring
        try:
            n = ring.put_many(records, take_wakeup=True)
        except InvalidRecord as e:
            # The records before the bad one were published.
            if e.written:
                self._wake_consumer()
            raise
        # _wake_consumer, inline: put_many took the wake-up (every producer's hot path).
        if ring.consumer_wakeup:
            ring.consumer_wakeup = False
            self._data_bell.ring()
            self.wakeups_sent += 1
        return n

    def count_unread(self) -> int:
        """Records sent and not yet taken by the consumer (RingError if it scribbled)."""
        return self.ring.count_unread()

    def space_fileno(self) -> int:
        """Descriptor that becomes readable when the consumer made room after
        :meth:`prepare_to_wait_for_space` returned True."""
        return self._space_bell.fileno()

    def prepare_to_wait_for_space(self, need: int) -> bool:
        """Non-blocking half of :meth:`wait_for_space`, for event loops.

        Arms the producer flag for a record of ``need`` payload bytes. True: room is
        still missing, poll :meth:`space_fileno` (with a timeout of at most
        :attr:`safety_timeout`), then retry the send. False: the record fits now.
        The next send (or :meth:`end_wait_for_space`) drains the doorbell and disarms.
        """
        self._waiting = self.ring.arm_producer(need)
        return self._waiting

    def end_wait_for_space(self) -> None:
        """Stop waiting for room: drain the space doorbell and clear the armed flag."""
        self._waiting = False
        rung = self._space_bell.drain()
        if rung:
            self.space_wakeups_received += 1
            # A consumer rings once per wait; more is a peer ringing for nothing.
            self.idle_wakeups += rung - 1
        self.ring.disarm_producer()

    def wait_for_space(self, need: int, timeout: float | None) -> bool:
        """Block until a record of ``need`` payload bytes fits, or ``timeout`` seconds
        (None: no limit) pass. True if it fits now."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if not self.prepare_to_wait_for_space(need):
                return True
            wait = self.safety_timeout
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    self.end_wait_for_space()
                    return self.ring.has_room(need)
            self.space_waits += 1
            events = self._poller.poll(_poll_ms(wait))
            self.end_wait_for_space()
            if self.ring.has_room(need):
                if not events and wait >= self.safety_timeout:
                    self.missed_wakeups += 1
                return True

    def close(self) -> None:
        """Close the ring mapping and both doorbells. Idempotent; the files stay."""
        self.ring.close()
        self._data_bell.close()
        self._space_bell.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ChannelReader:
    """The consumer end of a channel."""

    ring: Ring
    safety_timeout: float
    wakeups_received: int
    """Times this end found its data doorbell rung."""
    space_wakeups_sent: int
    """Times this end rang the space doorbell for a waiting producer."""
    missed_wakeups: int
    """Times the safety timeout in :meth:`wait` found data that no wake-up announced."""
    idle_wakeups: int
    """Rings of the data doorbell with no records behind them (a flooding producer):
    a producer rings once per sleep, after publishing."""

    def __init__(self, ring: Ring, data_bell: Doorbell, space_bell: Doorbell) -> None:
        """Internal; use :meth:`open`."""
        self.ring = ring
        self._data_bell = data_bell
        self._space_bell = space_bell
        self._armed = False
        self._poller = select.poll()
        self._poller.register(data_bell.fileno(), select.POLLIN)
        self.safety_timeout = SAFETY_TIMEOUT
        self.wakeups_received = 0
        self.space_wakeups_sent = 0
        self.missed_wakeups = 0
        self.idle_wakeups = 0

    @classmethod
    def open(cls, base: str | os.PathLike[str]) -> ChannelReader:
        """Open the consumer end of the channel at ``base`` (files must exist).

        Raises what :meth:`Ring.attach` and :meth:`Doorbell.attach` raise.
        """
        return cls(*_attach(base))

    @classmethod
    def from_fds(cls, fds: list[int], name: str = "channel") -> ChannelReader:
        """The consumer end from a sealed channel's :data:`PEER_FDS` descriptors, which
        it owns from now on. RingCorrupt if the ring is not sealed against resizing."""
        return cls(*_from_fds(fds, True, name))

    def _end_sleep(self) -> bool:
        self._armed = False
        rung = self._data_bell.drain()
        if rung:
            self.wakeups_received += 1
            self.idle_wakeups += rung - 1
        self.ring.disarm_consumer()
        return rung > 0

    def end_sleep(self) -> None:
        """Stop sleeping: drain the data doorbell and disarm, without reading records
        (for an event loop woken while it does not want the data yet)."""
        self._end_sleep()

    def _wake_producer(self) -> None:
        if self.ring.take_producer_wakeup():
            self._space_bell.ring()
            self.space_wakeups_sent += 1

    def receive_many(self, max_records: int = 1024, max_bytes: int | None = None) -> list[Record]:
        """Take records as :meth:`Ring.get_many` does and wake the producer if it waits
        for room. After :meth:`prepare_to_sleep` returned True, this also drains the data
        doorbell and disarms, so call it after every wake-up (even a foreign one)."""
        ring = self.ring
        rung = 0
        if self._armed:
            # _end_sleep, inline.
            self._armed = False
            rung = self._data_bell.drain()
            if rung:
                self.wakeups_received += 1
                self.idle_wakeups += rung - 1
            ring.disarm_consumer()
        records = ring.get_many(max_records, max_bytes, take_wakeup=True)
        if records:
            # _wake_producer, inline: get_many took the wake-up (every consumer's hot path).
            if ring.producer_wakeup:
                ring.producer_wakeup = False
                self._space_bell.ring()
                self.space_wakeups_sent += 1
        elif rung:
            self.idle_wakeups += 1
        return records

    def discard_all(self) -> int:
        """Drop everything readable (flush) and wake a waiting producer; returns the
        number of records dropped."""
        if self._armed:
            self._end_sleep()
        n = self.ring.discard_all()
        if n:
            self._wake_producer()
        return n

    def prepare_to_sleep(self) -> bool:
        """Arm the consumer flag before blocking.

        True: the ring is still empty; poll :meth:`data_fileno` (with a timeout of at
        most :attr:`safety_timeout`), then call :meth:`receive_many`. False: data
        arrived meanwhile, do not sleep.
        """
        self._armed = self.ring.arm_consumer()
        return self._armed

    def asleep(self) -> bool:
        """True while armed (after :meth:`prepare_to_sleep` returned True) and nothing
        has been published since: a poll of the ring that costs no system call."""
        return self._armed and not self.ring.readable()

    @property
    def peer_gone(self) -> bool:
        """True once a drain of the data doorbell read end-of-file: every write end is
        closed, the producer cannot ring again, and the descriptor stays readable (a
        poller must stop watching it, or it spins)."""
        return self._data_bell.hung_up

    def data_fileno(self) -> int:
        """Descriptor that becomes readable when the producer published records after
        :meth:`prepare_to_sleep` returned True."""
        return self._data_bell.fileno()

    def wait(self, timeout: float | None) -> bool:
        """Block until records are readable or ``timeout`` seconds (None: no limit)
        pass. True if records are readable now."""
        if self.ring.readable():
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if not self.prepare_to_sleep():
                return True
            wait = self.safety_timeout
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    self._end_sleep()
                    return self.ring.readable()
            events = self._poller.poll(_poll_ms(wait))
            self._end_sleep()
            if self.ring.readable():
                if not events and wait >= self.safety_timeout:
                    self.missed_wakeups += 1
                return True

    def close(self) -> None:
        """Close the ring mapping and both doorbells. Idempotent; the files stay."""
        self.ring.close()
        self._data_bell.close()
        self._space_bell.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
