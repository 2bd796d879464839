"""The calling side of the control plane: a DEALER that makes requests to a ROUTER.

Used by client processes and miniport hosts. `call` sends a request and waits
for its one reply; anything else that arrives meanwhile (events, requests from
the kernel) is kept in `backlog` for the owner's loop, never handled re-entrantly.
"""

from __future__ import annotations

import collections
import itertools
import time
from typing import Any

import zmq

from ipc import protocol
from ipc.status import Status, StatusError
from ipc.waiter import has_message


class RpcTimeout(StatusError):
    def __init__(self, op: str, timeout: float) -> None:
        super().__init__(Status.IO_TIMEOUT, f"no reply to {op!r} within {timeout:g} s")


class RpcEndpoint:
    """One DEALER socket, connected; requests get increasing ids starting at 1."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, identity: bytes | None = None) -> None:
        self.socket: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if identity is not None:
            self.socket.setsockopt(zmq.IDENTITY, identity)
        self.socket.connect(endpoint)
        self.backlog: collections.deque[protocol.Frame] = collections.deque()
        self.malformed = 0
        self._ids = itertools.count(1)
        self._replies: dict[int, protocol.Reply] = {}
        self.activity = 0
        """Counts uses of the socket: an owner waiting on its ZMQ_FD (ipc.waiter) that sees
        it change re-reads the socket's state before sleeping."""

    def send_request(self, body: Any) -> int:
        rid = next(self._ids)
        self.activity += 1
        self.socket.send(protocol.encode_request(rid, body), copy=False)
        return rid

    def send_event(self, body: Any) -> None:
        self.send_frame(protocol.encode_event(body))

    def send_frame(self, frame: bytes) -> None:
        """Send an encoded frame as it is (counted in `activity`, as every use is)."""
        self.activity += 1
        self.socket.send(frame, copy=False)

    def reply(self, rid: int, result: Any = None) -> None:
        self.activity += 1
        self.socket.send(protocol.encode_ok(rid, result), copy=False)

    def reply_exception(self, rid: int, exc: BaseException) -> None:
        self.activity += 1
        self.socket.send(protocol.encode_exception(rid, exc), copy=False)

    def receive_pending(self) -> None:
        """Move every frame waiting on the socket into `backlog` (replies into their slot)."""
        self.activity += 1
        sock = self.socket
        # Asking for the socket's state first: on an empty socket (the usual case) a
        # failed recv costs half again as much, for building its zmq.Again.
        while has_message(sock):
            try:
                frame = sock.recv(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            self._take(frame)

    def _take(self, frame: bytes) -> None:
        try:
            decoded = protocol.decode(frame)
        except protocol.ProtocolError:
            self.malformed += 1
            return
        if isinstance(decoded, protocol.Reply):
            self._replies[decoded.rid] = decoded
        else:
            self.backlog.append(decoded)

    def wait_reply(self, rid: int, timeout: float, op: str = "request") -> protocol.Reply:
        deadline = time.monotonic() + timeout
        self.activity += 1
        while rid not in self._replies:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.socket.poll(max(1, int(remaining * 1000))):
                self.receive_pending()
                if rid in self._replies:
                    break
                raise RpcTimeout(op, timeout)
            self.receive_pending()
        return self._replies.pop(rid)

    def call(self, body: Any, timeout: float = 5.0) -> Any:
        """Send `body` as a request and return its result; raise StatusError on an error reply."""
        rid = self.send_request(body)
        return self.wait_reply(rid, timeout, body.OP).unwrap()

    def take_reply(self, rid: int) -> protocol.Reply | None:
        return self._replies.pop(rid, None)

    def close(self) -> None:
        self.socket.close(linger=0)
