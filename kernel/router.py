"""One ZeroMQ ROUTER of the kernel (the bus, user mode): bound in the runtime directory,
drained with a budget per turn, sending without ever blocking on a peer."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import zmq

from ipc import protocol as p
from ipc.doorbell import write_deferred_rings
from ipc.runtime import endpoint
from kernel.loop import KernelLoop

log = logging.getLogger("portcls.kernel")

SEND_HWM: Final = 1000
"""A peer that never reads its replies costs at most this many frames; more are dropped
and counted (ROUTER_MANDATORY makes the drop visible as EAGAIN)."""


class Router:
    """A bound ROUTER; `on_frame(identity, frame)` runs for each two-part message.

    Counters go to the loop's stats under `<name>_...`: malformed, handler_errors,
    send_dropped, send_unroutable."""

    def __init__(
        self, loop: KernelLoop, ctx: zmq.Context[Any], runtime_dir: Path, socket_name: str,
        name: str, budget: int, on_frame: Callable[[bytes, bytes], None], *, interrupt: bool,
    ) -> None:
        self.loop = loop
        self.name = name
        self.budget = budget
        self.on_frame = on_frame
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_FRAME)
        self.sock.bind(endpoint(runtime_dir, socket_name))
        (runtime_dir / socket_name).chmod(0o600)
        loop.add_socket(self.sock, self.drain, interrupt=interrupt)

    def send(self, identity: bytes, frame: bytes) -> None:
        write_deferred_rings()  # nothing sent may overtake a doorbell rung before it
        try:
            self.sock.send_multipart([identity, frame], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.loop.stats[f"{self.name}_send_dropped"] += 1
        except zmq.ZMQError:  # the peer is gone (EHOSTUNREACH)
            self.loop.stats[f"{self.name}_send_unroutable"] += 1
        self.loop.waiter.touched(self.sock)

    def drain(self) -> None:
        for _ in range(self.budget):
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            if len(parts) != 2:
                self.loop.stats[f"{self.name}_malformed"] += 1
                continue
            try:
                self.on_frame(parts[0], parts[1])
            except Exception:  # a bug must cost one frame, not the kernel or the drain
                self.loop.stats[f"{self.name}_handler_errors"] += 1
                log.exception("%s frame handler raised", self.name)
        self.loop.waiter.touched(self.sock)  # the budget ran out: more may wait

    def close(self) -> None:
        self.sock.close(linger=0)
