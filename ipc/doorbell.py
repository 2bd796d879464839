"""A wake-up signal through a named FIFO, pollable beside ZeroMQ sockets.

One side rings (writes a byte), the other polls :meth:`Doorbell.fileno` for
readability (``select``, ``poll`` or ``zmq.Poller`` with ``zmq.POLLIN``) and then
drains. Rings coalesce: any number of rings before a drain wake the poller once.

Both sides open the FIFO read-write and non-blocking (Linux semantics): opening never
waits for the peer, ringing never raises SIGPIPE/EPIPE, and the descriptor stays valid
if the peer exits. Not thread-safe.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["Doorbell", "NotAFifoError"]


class NotAFifoError(OSError):
    """The doorbell path exists but is not a FIFO."""


_OPEN_FLAGS = os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW


class Doorbell:
    """One handle on a FIFO doorbell; both the ringer and the waiter use this class."""

    path: Path

    def __init__(self, path: Path, fd: int) -> None:
        """Internal; use :meth:`create` or :meth:`attach`."""
        self.path = path
        self._fd = fd

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
        """Write one byte. A full pipe means it is already rung, which is fine."""
        try:
            os.write(self.fileno(), b"\x01")
        except BlockingIOError:
            return

    def drain(self) -> int:
        """Read everything pending without blocking; return how many bytes were read."""
        fd = self.fileno()
        total = 0
        while True:
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                return total
            if not chunk:
                return total
            total += len(chunk)
            if len(chunk) < 4096:
                # A short read means the pipe is empty now; saves an EAGAIN syscall.
                return total

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._fd < 0

    def close(self) -> None:
        """Close the descriptor. Idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def unlink(self) -> None:
        """Remove the FIFO (the creator's job); open handles keep working. Idempotent."""
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


def _not_a_fifo(p: Path) -> NotAFifoError:
    return NotAFifoError(errno.EINVAL, "doorbell path is not a FIFO", str(p))
