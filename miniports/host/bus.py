"""The host's end of the kernel's bus: calls both ways, posted events, interrupts.

Events the miniport causes (a new group, a member added, a stream error) are
posted from any thread and go out in call order, one frame per callback
(`flush`), before any reply or call, so the kernel sees them as the miniport
made them. An interrupt goes through the interrupt channel (a ring and a
doorbell) unless posted events are still unsent: then it follows them on the
bus, in order.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import zmq

from ipc import protocol as p
from ipc import trace
from ipc.channel import ChannelWriter, open_proc_fd_ref
from ipc.ring import RingError
from ipc.rpc import RpcEndpoint
from ipc.runtime import BUS_SOCKET, endpoint
from ipc.status import Status, StatusError

__all__ = ["MAX_CALLS", "KernelBus"]

MAX_CALLS: Final = p.MAX_ITEMS - 256
"""Port calls that post an event, per miniport callback; the rest of a batch is kept for
the host's own events."""


class KernelBus:
    """One DEALER to the kernel's bus ROUTER, under the identity of this launch."""

    def __init__(
        self, ctx: zmq.Context[Any], runtime_dir: Path, identity: bytes,
        wake: Callable[[], None],
    ) -> None:
        self.rpc = RpcEndpoint(ctx, endpoint(runtime_dir, BUS_SOCKET), identity)
        self._runtime_dir = runtime_dir
        self._wake = wake
        self._thread = threading.get_ident()
        self._lock = threading.Lock()
        self._outbox: collections.deque[Any] = collections.deque()
        self._events: list[bytes] = []
        self._interrupts: ChannelWriter | None = None
        self._beaten = False
        self._one_group: dict[int, bytes] = {}
        """The interrupt record that names one group, by group id."""

    @property
    def has_unsent(self) -> bool:
        """Events are posted and not flushed yet (the loop must not sleep)."""
        return bool(self._outbox or self._events)

    def post(self, body: Any) -> None:
        """Queue an event for the kernel from any thread; sent in call order, in one batch
        per callback (see `flush`). The host's own events (interrupts, heartbeats, stream
        errors) always go: past a batch's limit, what is queued is sent first."""
        if threading.get_ident() == self._thread:
            if len(self._events) >= p.MAX_ITEMS:
                self.flush()
            self._events.append(p.encode_event(body))
            return
        with self._lock:
            self._outbox.append(body)
        self._wake()

    def post_call(self, body: Any) -> None:
        """Post an event for a call the miniport made (a group made, a member added);
        StatusError(INSUFFICIENT_RESOURCES) past MAX_CALLS of them in one callback, since
        the kernel takes a callback's events as one batch of at most MAX_ITEMS."""
        with self._lock:
            queued = len(self._events) + len(self._outbox)
        if queued >= MAX_CALLS:
            raise StatusError(Status.INSUFFICIENT_RESOURCES,
                              f"more than {MAX_CALLS} calls to the port in one callback")
        self.post(body)

    def flush(self) -> None:
        """Send what the miniport posted as one frame, before any reply or call."""
        if self._outbox:
            with self._lock:
                bodies = list(self._outbox)
                self._outbox.clear()
            self._events += [p.encode_event(b) for b in bodies]
        events = self._events
        if not events:
            return
        self._events = []
        if len(events) == 1:
            self.rpc.send_frame(events[0])
        else:
            self.rpc.send_event(p.Batch(events))

    def call(self, body: Any, timeout: float = 5.0) -> Any:
        """A request to the kernel, after the events posted before it; its result."""
        self.flush()
        return self.rpc.call(body, timeout)

    def reply(self, rid: int, result: Any) -> None:
        self.flush()
        self.rpc.reply(rid, result)

    def reply_exception(self, rid: int, exc: BaseException) -> None:
        self.flush()
        self.rpc.reply_exception(rid, exc)

    def open_interrupt_channel(self, channel: Any, kernel_pid: Any) -> None:
        """Raise interrupts through the ring the kernel named (its own descriptors,
        /proc/<kernel pid>/fd/<n>), if it is one; without it (an older kernel) they go
        as bus messages."""
        if not isinstance(kernel_pid, int) or isinstance(kernel_pid, bool):
            return
        with contextlib.suppress(OSError, RingError, ValueError):
            fds = open_proc_fd_ref(channel, kernel_pid, reader=False)
            self._interrupts = ChannelWriter.from_fds(fds, "interrupts")

    def raise_interrupt(self, groups: list[int], isr_time: int = 0) -> None:
        """Tell the kernel to service `groups` (-1: Notify(NULL))."""
        if trace.ON:
            trace.instant("raise interrupt", "interrupt", {"groups": groups, "isr_time": isr_time})
        channel = self._interrupts
        if channel is not None and not self._outbox and not self._events:
            if len(groups) == 1:
                # One group (the usual interrupt): its record is encoded once.
                record = self._one_group.get(groups[0])
                if record is None:
                    record = p.encode_interrupt(groups)
                    if len(self._one_group) < p.MAX_INTERRUPT_GROUPS:
                        self._one_group[groups[0]] = record
            else:
                record = p.encode_interrupt(groups)
            if channel.send(record, isr_time):
                return
        self.post(p.Interrupt(groups))

    def heartbeat(self) -> None:
        """Tell the kernel this host is alive: a quiet record in the interrupt ring (see
        p.INTERRUPT_HEARTBEAT; no doorbell, so an idle kernel is not woken for it), or a
        bus message when there is no ring or it is full. The first goes on the bus all
        the same: a kernel reads the ring unasked only once the host has said something
        after registering (kernel.connection `settled`)."""
        channel = self._interrupts
        if channel is not None and self._beaten:
            with contextlib.suppress(RingError):
                if channel.ring.try_put(b"", 0, p.INTERRUPT_HEARTBEAT):
                    return
        self._beaten = True
        self.post(p.Heartbeat())

    def close(self) -> None:
        # The Unload reply must reach the kernel before the socket goes (libzmq#4660).
        self.rpc.socket.close(linger=1000)
        if self._interrupts is not None:
            self._interrupts.close()
