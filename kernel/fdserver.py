"""Hands a pin's ring and doorbell descriptors to the client that opened it.

The client's rings live in sealed memfds and pipes, not in files, so no other
process can open them by name. After OpenPin, the reply carries a one-time random
token; the client connects to ``fds.sock`` (SOCK_SEQPACKET, mode 0600) in the
runtime directory and sends the token; the kernel checks the peer's credentials
(SO_PEERCRED: its pid must be the session's) and the token, sends the descriptors
with SCM_RIGHTS in one message and closes the connection. Anything else -- an
unknown token, the wrong pid, a connection that says nothing within
:data:`FETCH_TIMEOUT` -- is refused (the connection is closed) and counted.

Nothing here blocks: the socket and its connections are non-blocking and
watched by the kernel's loop; an offer not fetched within :data:`FETCH_TIMEOUT`
is withdrawn (its descriptors closed) and its pin closed.
"""

from __future__ import annotations

import array
import contextlib
import functools
import logging
import os
import secrets
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ipc.fdpass import FD_SOCKET, OK
from kernel.loop import KernelLoop

log = logging.getLogger("portcls.kernel")

FETCH_TIMEOUT: Final = 5.0
"""Seconds a client has to fetch its descriptors, and a connection to send its token."""
MAX_CONNECTIONS: Final = 64
TOKEN_BYTES: Final = 16
_CRED: Final = struct.Struct("3i")


@dataclass(eq=False)
class _Offer:
    pid: int
    fds: list[int]
    deadline: float
    on_expire: Callable[[], None]


class FdServer:
    """The listening socket and the descriptors waiting to be fetched."""

    def __init__(self, loop: KernelLoop, runtime_dir: Path) -> None:
        self.loop = loop
        self.path = runtime_dir / FD_SOCKET
        self.sock = socket.socket(
            socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        )
        self.sock.bind(str(self.path))
        self.path.chmod(0o600)
        # A backlog as deep as the connections served at once: a client whose connect
        # finds the backlog full gets EAGAIN at once (AF_UNIX), and its open fails.
        self.sock.listen(MAX_CONNECTIONS)
        self._offers: dict[bytes, _Offer] = {}
        self._conns: dict[int, tuple[socket.socket, float]] = {}
        loop.watch_fd(self.sock.fileno(), self._accept)
        loop.idle_sweeps.append(self.expire)

    def offer(self, pid: int, fds: list[int], on_expire: Callable[[], None]) -> str:
        """Keep `fds` (now owned here) for process `pid`; returns the token it must send.
        `on_expire` runs if they are not fetched in time."""
        token = secrets.token_bytes(TOKEN_BYTES)
        self._offers[token] = _Offer(pid, fds, time.monotonic() + FETCH_TIMEOUT, on_expire)
        return token.hex()

    def withdraw(self, token: str) -> None:
        """Drop an offer (its pin went away); unknown tokens are ignored."""
        offer = self._offers.pop(bytes.fromhex(token), None)
        if offer is not None:
            _close_all(offer.fds)

    def _refuse(self, conn: socket.socket, why: str) -> None:
        self.loop.stats["fd_refused"] += 1
        log.info("fds.sock: refused a peer: %s", why)
        self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        if self._conns.pop(conn.fileno(), None) is not None:
            self.loop.unwatch_fd(conn.fileno())
        conn.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: the peer retries or gives up
                log.warning("fds.sock: accept failed: %s", exc)
                return
            if len(self._conns) >= MAX_CONNECTIONS:
                self._refuse(conn, "too many connections")
                continue
            conn.setblocking(False)
            fd = conn.fileno()
            self._conns[fd] = (conn, time.monotonic() + FETCH_TIMEOUT)
            self.loop.watch_fd(fd, functools.partial(self._on_token, conn))

    def _on_token(self, conn: socket.socket) -> None:
        try:
            token = conn.recv(64)
            pid = _CRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                               _CRED.size))[0]
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._refuse(conn, str(exc))
            return
        offer = self._offers.get(token)
        if offer is None:
            self._refuse(conn, "unknown token")
            return
        if offer.pid != pid:
            self._refuse(conn, f"pid {pid} is not the session's ({offer.pid})")
            return
        del self._offers[token]
        try:
            conn.sendmsg([OK], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                 array.array("i", offer.fds))])
            self.loop.stats["fd_handovers"] += 1
        except OSError as exc:  # a full or closed socket: the client's open fails
            self._refuse(conn, f"cannot send: {exc}")
        finally:
            _close_all(offer.fds)
        self._drop(conn)

    def expire(self) -> None:
        """Withdraw offers and drop connections that waited too long."""
        now = time.monotonic()
        for token, offer in tuple(self._offers.items()):
            if offer.deadline <= now:
                del self._offers[token]
                _close_all(offer.fds)
                self.loop.stats["fd_expired"] += 1
                offer.on_expire()
        for conn, deadline in tuple(self._conns.values()):
            if deadline <= now:
                self._refuse(conn, "no token in time")

    def close(self) -> None:
        for offer in self._offers.values():
            _close_all(offer.fds)
        self._offers.clear()
        for conn, _ in tuple(self._conns.values()):
            self._drop(conn)
        self.loop.unwatch_fd(self.sock.fileno())
        self.sock.close()
        self.path.unlink(missing_ok=True)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
