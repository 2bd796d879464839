"""A wake-up signal through a named FIFO, pollable beside ZeroMQ sockets.

One side rings (writes a byte), the other polls :meth:`Doorbell.fileno` for
readability (``select``, ``poll`` or ``zmq.Poller`` with ``zmq.POLLIN``) and then
drains. Rings coalesce: any number of rings before a drain wake the poller once.

Both sides open the FIFO read-write and non-blocking (Linux semantics): opening never
waits for the peer, ringing never raises SIGPIPE/EPIPE, and the descriptor stays valid
if the peer exits. Not thread-safe.

A doorbell can also be one end of an anonymous pipe (:meth:`Doorbell.pipe`), for
channels whose descriptors travel over a Unix socket: the ringer holds only the write
end, the waiter only the read end, so neither can drain or block the other's end.
Ringing a pipe whose reader is gone is silently ignored.

A process with one event loop can hold its rings back until the end of a turn
(:func:`defer_rings`, :func:`flush_deferred_rings`): a ring wakes a sleeping
peer, and the scheduler often lets the woken process pre-empt the one that rang
it on the spot. The kernel, which every round trip of every client passes
through, would otherwise be pre-empted in the middle of a turn, with the other
clients' and miniports' work of that turn still undone (measured with 32
clients: 0.44 involuntary context switches a round trip, and 93 % of the
kernel's busy samples inside the ring's write). Deferred, the same doorbell
rung twice in a turn is written once.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "Doorbell",
    "NotAFifoError",
    "defer_rings",
    "flush_deferred_rings",
    "write_deferred_rings",
]


class NotAFifoError(OSError):
    """The doorbell path exists but is not a FIFO."""


_OPEN_FLAGS = os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW


class Doorbell:
    """One handle on a FIFO doorbell; both the ringer and the waiter use this class."""

    path: Path

    def __init__(self, path: Path, fd: int, write_fd: int | None = None) -> None:
        """Internal; use :meth:`create`, :meth:`attach`, :meth:`pipe` or :meth:`from_fds`.

        ``fd`` is the end to poll and drain (-1: none), ``write_fd`` the end to ring
        (None: ``fd``, as for a FIFO opened read-write).
        """
        self.path = path
        self._fd = fd
        self._wfd = fd if write_fd is None else write_fd
        self.hung_up = False
        """The waiter's end read end-of-file: nobody can ring it any more (a pipe)."""

    @classmethod
    def pipe(cls) -> tuple[Doorbell, Doorbell]:
        """A new anonymous pipe as two doorbells: (waiter's end, ringer's end)."""
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        return cls(Path("pipe:r"), r, -1), cls(Path("pipe:w"), -1, w)

    @classmethod
    def from_fds(cls, read_fd: int, write_fd: int) -> Doorbell:
        """Wrap received pipe ends (-1 for the end this side lacks); the doorbell owns
        them. The descriptors are made non-blocking (only this process's file
        description is affected: the peer holds the other end)."""
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.set_blocking(fd, False)
        return cls(Path("pipe:r" if read_fd >= 0 else "pipe:w"), read_fd, write_fd)

    def write_fileno(self) -> int:
        """The descriptor :meth:`ring` writes to (-1 for a waiter's pipe end)."""
        return self._wfd

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> Doorbell:
        """Make a new FIFO (mode 0600) at ``path`` and open it.

        FileExistsError if ``path`` exists.
        """
        p = Path(path)
        os.mkfifo(p, 0o600)
        try:
            return cls._open(p)
        except BaseException:
            p.unlink(missing_ok=True)
            raise

    @classmethod
    def attach(cls, path: str | os.PathLike[str]) -> Doorbell:
        """Open an existing doorbell FIFO.

        FileNotFoundError if ``path`` does not exist; :class:`NotAFifoError` if it
        exists but is not a FIFO (a symbolic link is refused too).
        """
        p = Path(path)
        # Check before opening: opening some other kind of file (a device, say) can
        # have side effects or block.
        if not stat.S_ISFIFO(os.lstat(p).st_mode):
            raise _not_a_fifo(p)
        return cls._open(p)

    @classmethod
    def _open(cls, p: Path) -> Doorbell:
        fd = os.open(p, _OPEN_FLAGS)
        try:
            # The path may have been replaced between lstat and open.
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                raise _not_a_fifo(p)
        except BaseException:
            os.close(fd)
            raise
        return cls(p, fd)

    def fileno(self) -> int:
        """The descriptor to poll for readability; valid until :meth:`close`."""
        if self._fd < 0:
            raise ValueError(f"doorbell {self.path} is closed")
        return self._fd

    def ring(self) -> None:
        """Write one byte (or, between :func:`defer_rings` and
        :func:`flush_deferred_rings`, note that it is to be written then). A full pipe
        means it is already rung, which is fine; so is a pipe whose reader is gone.
        ValueError for the waiter's end of a pipe."""
        if self._wfd < 0:
            raise ValueError(f"doorbell {self.path} cannot be rung from this end")
        if _deferred is not None:
            _deferred[self] = None
            return
        self._write()

    def _write(self) -> None:
        if self._wfd < 0:
            return  # closed while its ring was deferred
        try:
            os.write(self._wfd, b"\x01")
        except (BlockingIOError, BrokenPipeError):
            return

    def drain(self) -> int:
        """Read everything pending without blocking; return how many bytes were read.

        A pipe whose every write end is closed reads as end-of-file, and stays
        readable for ever: :attr:`hung_up` becomes True, and whoever polls it must
        stop (or spin until it notices the peer is gone by other means)."""
        fd = self._fd
        if fd < 0:
            raise ValueError(f"doorbell {self.path} is closed")
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return 0
        if 0 < len(chunk) < 4096:
            # The common case, rung once: a short read means the pipe is empty now
            # (no EAGAIN read to find out).
            return len(chunk)
        total = 0
        while True:
            if not chunk:
                self.hung_up = True
                return total
            total += len(chunk)
            if len(chunk) < 4096:
                return total
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                return total

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._fd < 0 and self._wfd < 0

    def close(self) -> None:
        """Close the descriptor(s). Idempotent."""
        fd, wfd, self._fd, self._wfd = self._fd, self._wfd, -1, -1
        if fd >= 0:
            os.close(fd)
        if wfd >= 0 and wfd != fd:
            os.close(wfd)

    def unlink(self) -> None:
        """Remove the FIFO (the creator's job); open handles keep working. Idempotent.
        Nothing to remove for a pipe."""
        if not str(self.path).startswith("pipe:"):
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
        return f"<Doorbell {str(self.path)!r} fd={self._fd}>"


_deferred: dict[Doorbell, None] | None = None
"""The doorbells rung since defer_rings(), in order (None: rings are written at once)."""


def defer_rings() -> None:
    """From now on, hold every ring in this process back until
    :func:`flush_deferred_rings`. For a process whose one thread runs an event loop
    that flushes at the end of every turn, and never blocks waiting for a peer it
    rang in between (that peer would not have been woken)."""
    global _deferred
    if _deferred is None:
        _deferred = {}


def flush_deferred_rings() -> int:
    """Write the rings held back since :func:`defer_rings`, in the order they were
    first rung, and write rings at once again; returns how many doorbells were rung."""
    global _deferred
    pending, _deferred = _deferred, None
    if not pending:
        return 0
    for bell in pending:
        # Doorbell._write, inline (every kernel turn that moved data comes here).
        if bell._wfd >= 0:  # else closed while its ring was deferred
            try:  # noqa: SIM105 (contextlib.suppress costs more than the write here)
                os.write(bell._wfd, b"\x01")
            except (BlockingIOError, BrokenPipeError):
                pass
    return len(pending)


def write_deferred_rings() -> None:
    """Write the rings held back so far and go on deferring. Call it before anything
    leaves by another path (a socket): a message must not overtake the doorbell of
    data written before it (a host told to STOP before it was woken for the data
    the kernel released first would throw that data away)."""
    global _deferred
    if _deferred:
        pending, _deferred = _deferred, {}
        for bell in pending:
            bell._write()


def _not_a_fifo(p: Path) -> NotAFifoError:
    return NotAFifoError(errno.EINVAL, "doorbell path is not a FIFO", str(p))
