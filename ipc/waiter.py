"""The one place a process blocks: ZeroMQ sockets and plain descriptors in one epoll.

`zmq.Poller` rebuilds its item array and asks every socket for its state on
each call, and libzmq's `zmq_poll` makes a zero-timeout pass first: on this
machine a kernel turn cost about five `poll` system calls (and a `getpid` per
socket). Here the sockets take part through their `ZMQ_FD`, which becomes
readable when a socket's state may have changed, so a turn that only moves
data through rings costs a single `epoll_wait`.

The price is ZeroMQ's edge rule: sending or receiving on a socket can consume
the signal for a message that is already waiting. The owner therefore calls
:meth:`Waiter.touched` for a socket after using it (or receives until
`zmq.Again`, or hands `add_socket` a count of its uses), and the socket's real
state is read once before the next sleep.
"""

from __future__ import annotations

import contextlib
import select
from collections.abc import Callable
from typing import Any

import zmq

__all__ = ["Waiter", "has_message"]


_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
"""Plain ints: `&` on pyzmq's IntFlag runs enum code in Python (3.7 µs a call against 1.6)."""


def has_message(sock: zmq.Socket[Any]) -> bool:
    """A message waits on `sock` now (its real state, whatever its signal said)."""
    return bool(int(sock.getsockopt(_EVENTS)) & _POLLIN)


class _Activity:
    """A socket whose owner counts its uses (`Waiter.add_socket`): the count last seen."""

    __slots__ = ("count", "seen", "sock")

    def __init__(self, sock: zmq.Socket[Any], count: Callable[[], int]) -> None:
        self.sock = sock
        self.count = count
        self.seen = count()


class Waiter:
    """An epoll set of ZeroMQ sockets and descriptors; not thread-safe."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._sockets: dict[int, zmq.Socket[Any]] = {}
        self._touched: set[zmq.Socket[Any]] = set()
        self._activity: list[_Activity] = []

    def add_socket(
        self, sock: zmq.Socket[Any], activity: Callable[[], int] | None = None
    ) -> None:
        """Wait for messages on `sock` too. `activity`, if given, returns a count that
        changes whenever `sock` is used (`RpcEndpoint.activity`): a change counts as
        :meth:`touched`, so the owner need not call it."""
        fd = int(sock.getsockopt(zmq.FD))
        self._epoll.register(fd, select.EPOLLIN)
        self._sockets[fd] = sock
        self._touched.add(sock)
        if activity is not None:
            self._activity.append(_Activity(sock, activity))

    def watch(self, fd: int) -> None:
        """Wait for `fd` to become readable too."""
        self._epoll.register(fd, select.EPOLLIN)

    def unwatch(self, fd: int) -> None:
        """Stop waiting for `fd` (it may be closed already: then nothing happens)."""
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(fd)

    def touched(self, sock: zmq.Socket[Any]) -> None:
        """`sock` was used (sent on, or received from without reaching zmq.Again):
        read its real state before the next sleep."""
        self._touched.add(sock)

    def wait(self, timeout_ms: int) -> tuple[list[zmq.Socket[Any]], list[int]]:
        """Block up to `timeout_ms` (negative: no limit) until a socket has a message or
        a descriptor is readable; returns (sockets with a message, readable fds)."""
        readable: list[zmq.Socket[Any]] = []
        touched = self._touched
        for used in self._activity:
            now = used.count()
            if now != used.seen:
                used.seen = now
                touched.add(used.sock)
        if touched:
            for sock in touched:
                if has_message(sock):
                    readable.append(sock)
            touched.clear()
            if readable:
                timeout_ms = 0
        events = self._epoll.poll(timeout_ms / 1000 if timeout_ms >= 0 else -1)
        if not events:
            return readable, []
        sockets = self._sockets
        if len(events) == 1:
            # The usual wake-up: one descriptor (a doorbell) rang.
            fd = events[0][0]
            if fd not in sockets:
                return readable, [fd]
        elif not sockets:
            return readable, [fd for fd, _ in events]
        fds: list[int] = []
        for fd, _ in events:
            ready = sockets.get(fd)
            if ready is None:
                fds.append(fd)
            elif ready not in readable and has_message(ready):
                readable.append(ready)
        return readable, fds

    def close(self) -> None:
        self._epoll.close()
        self._sockets.clear()
        self._touched.clear()
        self._activity.clear()
