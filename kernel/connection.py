"""The kernel's end of one registered miniport host.

A `MiniportConnection` sends the port's calls over the bus and matches
replies without blocking the loop, keeps the service groups the miniport made
and the proxies of its sinks, reads its interrupt ring, and counts what it
sent wrong. It knows nothing of ports: interrupts go to `on_interrupt`, faults
to `on_fault`, both set by whoever binds it.
"""

from __future__ import annotations

import collections
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ipc import protocol as p
from ipc import trace
from ipc.channel import ChannelReader, create_sealed_channel, proc_fd_ref
from ipc.ring import MIN_CAPACITY, RingError
from ipc.status import Status, StatusError
from kernel.dpc import Dpc, Timer
from kernel.loop import KernelLoop
from kernel.servicegroup import ServiceGroup

INTERRUPT_BATCH: Final = 256
EARLY_INTERRUPT_SECONDS: Final = 1.0
MAX_EARLY_INTERRUPTS: Final = 1024
MAX_GROUPS: Final = 4096
NOTIFY_ALL: Final = p.NOTIFY_ALL

Continuation = Callable[[p.Reply], None]


@dataclass(frozen=True)
class ConnectionLimits:
    call_timeout: float
    malformed_limit: int
    malformed_window: float


class RemoteSink:
    """A sink object that lives in the miniport process, where the host services it
    (before it raises the interrupt for the group); here it only holds its place."""

    def __init__(self, conn: MiniportConnection, sink: int) -> None:
        self.conn = conn
        self.sink = sink

    def request_service(self) -> None:
        """Nothing to do: the host called the sink in its half of the group's run."""


class MiniportConnection:
    """The kernel's end of one registered miniport host."""

    def __init__(
        self,
        loop: KernelLoop,
        send: Callable[[bytes, bytes], None],
        limits: ConnectionLimits,
        reg: p.Register,
        identity: bytes,
    ) -> None:
        self.loop = loop
        self._send = send
        self.limits = limits
        self.device = reg.device
        self.identity = identity
        self.pid = reg.pid
        self.miniport = reg.miniport
        self.custom_intersection = reg.custom_intersection
        self.groups: dict[int, ServiceGroup] = {}
        self.sinks: dict[int, RemoteSink] = {}
        self.last_seen = loop.clock_seconds()
        self.malformed = 0
        self.recent_malformed: collections.deque[float] = collections.deque()
        self.closed = False
        self.on_interrupt: Callable[[list[int]], None] = lambda groups: None
        """Set by the port that binds this miniport: notify these groups (-1: all)."""
        self.on_fault: Callable[[MiniportConnection, str], None] = lambda conn, why: None
        self._ids = itertools.count(1)
        self._calls: dict[int, tuple[Continuation, Timer]] = {}
        self.interrupts: ChannelReader | None = None
        self._early: list[list[int]] = []
        self._early_timer = Timer(Dpc(self._expire_early))
        self._interrupt_fds: list[int] = []
        self._hung_up = False

    def open_interrupt_channel(self) -> str:
        """Make the ring the host raises interrupts through (a pipe doorbell, not a
        ZeroMQ message: a wake-up through a descriptor costs a fraction of one). It is a
        sealed memfd the host opens through /proc/<kernel pid>/fd; returns that name.
        The kernel's copies of the host's descriptors stay open until the host sends
        anything after registering (see `peer_settled`)."""
        reader, self._interrupt_fds = create_sealed_channel(
            MIN_CAPACITY, owner_writes=False, name=f"irq-{self.pid}")
        assert isinstance(reader, ChannelReader)
        self.interrupts = reader
        reader.prepare_to_sleep()
        self.loop.watch_interrupt_fd(reader.data_fileno(), self.take_interrupts)
        return proc_fd_ref(self._interrupt_fds)

    @property
    def settled(self) -> bool:
        """The host has sent something since registering (see `peer_settled`): reading
        its interrupt ring unasked (sweeps, heartbeat checks) cannot close the kernel's
        descriptors before the host opened them."""
        return not self._interrupt_fds

    def peer_settled(self) -> None:
        """The host answered after registering: it opened the interrupt channel or never
        will; close the kernel's copies of its descriptors (idempotent)."""
        fds, self._interrupt_fds = self._interrupt_fds, []
        for fd in fds:
            os.close(fd)

    def take_interrupts(self) -> None:
        """Interrupt level: notify the port for every record in the interrupt ring."""
        if self._interrupt_fds:
            self.peer_settled()
        reader = self.interrupts
        while reader is not None and not self.closed:
            try:
                records = reader.receive_many(INTERRUPT_BATCH)
            except RingError as exc:
                self.on_fault(self, f"corrupt interrupt ring: {exc}")
                return
            if reader.peer_gone and not self._hung_up:
                self._hung_up = True
                # The host's end is closed (it exited or is exiting): its doorbell reads
                # end-of-file and would wake every turn until the process watch removes
                # the device. What it wrote before is still taken below.
                self.loop.unwatch_fd(reader.data_fileno())
                self.loop.stats["interrupt_hangups"] += 1
            for record in records:
                try:
                    if record.flags:
                        self._heartbeat_record(record.flags, len(record.data))
                    else:
                        self.interrupt(p.decode_interrupt(record.data))
                except (p.ProtocolError, StatusError):
                    self.loop.stats["bus_rejected"] += 1
                    self.count_malformed()
                if self.closed:
                    return
            if len(records) < INTERRUPT_BATCH and reader.prepare_to_sleep():
                return

    def _heartbeat_record(self, flags: int, size: int) -> None:
        """A record with flags on the interrupt ring: the host's heartbeat (see
        p.INTERRUPT_HEARTBEAT), else ProtocolError."""
        if flags != p.INTERRUPT_HEARTBEAT or size:
            raise p.ProtocolError(f"an interrupt record with flags {flags:#x}, {size} bytes")
        self.last_seen = self.loop.clock_seconds()
        self.loop.stats["heartbeat_records"] += 1

    def interrupt(self, groups: list[int]) -> None:
        """The miniport's ISR ran: notify each group (NOTIFY_ALL: every group)."""
        self.loop.interrupts += 1
        if trace.ON:
            trace.instant("interrupt", "interrupt", {"device": self.device, "groups": groups})
        known = self.groups
        if not self._early:  # else held behind a held one, in order
            for gid in groups:
                if gid not in known and gid != NOTIFY_ALL:
                    break
            else:
                self.on_interrupt(groups)
                return
        self._hold_early(groups, [g for g in groups if g != NOTIFY_ALL and g not in known])

    def _hold_early(self, groups: list[int], unknown: list[int]) -> None:
        """An interrupt through the ring can overtake the GroupNew the host sent on the
        bus just before it (ZeroMQ's I/O thread is slower than a doorbell): hold it until
        its groups exist, for EARLY_INTERRUPT_SECONDS at most; then it is the miniport's
        error (an interrupt for a group it never made), counted as malformed."""
        if len(self._early) >= MAX_EARLY_INTERRUPTS:
            raise StatusError(Status.INVALID_PARAMETER,
                              f"interrupt for group {(unknown or groups)[0]} held too long")
        self._early.append(groups)
        self.loop.stats["interrupts_held"] += 1
        if self._early_timer.due is None:
            scheduler = self.loop.scheduler
            scheduler.set_timer(
                self._early_timer, scheduler.clock() + int(EARLY_INTERRUPT_SECONDS * 1e7))

    def _release_early(self) -> None:
        """Deliver the held interrupts whose groups exist now, in the order they came."""
        early, self._early = self._early, []
        for i, groups in enumerate(early):
            if any(g != p.NOTIFY_ALL and g not in self.groups for g in groups):
                self._early = early[i:]
                return
            self.on_interrupt(groups)
        self.loop.scheduler.cancel_timer(self._early_timer)

    def _expire_early(self) -> None:
        """Time is up: an interrupt naming a group that still does not exist is the
        miniport's error; the ones held behind it go on, in order."""
        early, self._early = self._early, []
        for groups in early:
            if any(g != p.NOTIFY_ALL and g not in self.groups for g in groups):
                self.loop.stats["bus_rejected"] += 1
                self.count_malformed()
            elif not self.closed:
                self.on_interrupt(groups)

    def count_malformed(self) -> None:
        """Count a malformed or refused message; too many in the window is a fault."""
        self.malformed += 1
        limit, window = self.limits.malformed_limit, self.limits.malformed_window
        if not limit or self.closed:
            return
        now = self.loop.clock_seconds()
        recent = self.recent_malformed
        recent.append(now)
        while recent and now - recent[0] > window:
            recent.popleft()
        if len(recent) >= limit:
            self.on_fault(self, f"{len(recent)} malformed messages in {window:g} s")

    def send_event(self, body: Any) -> None:
        if not self.closed:
            self._send(self.identity, p.encode_event(body))

    def call(self, body: Any, then: Continuation, timeout: float | None = None) -> None:
        """Send a request; `then(reply)` runs exactly once: with the reply, or an error
        reply on timeout (IO_TIMEOUT) or removal (DEVICE_REMOVED)."""
        if self.closed:
            then(p.Reply(0, False, status=Status.DEVICE_REMOVED, message="device removed"))
            return
        rid = next(self._ids)
        timer = Timer(Dpc(lambda: self._expire(rid, body.OP)))
        self._calls[rid] = (then, timer)
        seconds = self.limits.call_timeout if timeout is None else timeout
        scheduler = self.loop.scheduler
        scheduler.set_timer(timer, scheduler.clock() + int(seconds * 1e7))
        self._send(self.identity, p.encode_request(rid, body))

    def _expire(self, rid: int, op: str) -> None:
        entry = self._calls.pop(rid, None)
        if entry is not None:
            entry[0](p.Reply(rid, False, status=Status.IO_TIMEOUT, message=f"{op} timed out"))
            self.on_fault(self, f"no reply to {op}")

    def on_reply(self, reply: p.Reply) -> None:
        entry = self._calls.pop(reply.rid, None)
        if entry is None:
            self.malformed += 1
            return
        then, timer = entry
        self.loop.scheduler.cancel_timer(timer)
        then(reply)

    def close(self) -> None:
        """Fail every outstanding call with DEVICE_REMOVED and release the groups."""
        self.closed = True
        self.loop.scheduler.cancel_timer(self._early_timer)
        self._early = []
        calls, self._calls = self._calls, {}
        for rid, (then, timer) in calls.items():
            self.loop.scheduler.cancel_timer(timer)
            then(p.Reply(rid, False, status=Status.DEVICE_REMOVED, message="device removed"))
        for group in self.groups.values():
            group.release()
        self.groups.clear()
        self.sinks.clear()
        if self.interrupts is not None:
            self.loop.unwatch_fd(self.interrupts.data_fileno())
            self.interrupts.close()
            self.interrupts = None
        self.peer_settled()

    def new_group(self, gid: int) -> None:
        if gid in self.groups:
            raise StatusError(Status.OBJECT_NAME_COLLISION, f"group {gid} exists")
        if len(self.groups) >= MAX_GROUPS:
            raise StatusError(Status.INSUFFICIENT_RESOURCES, "too many service groups")
        self.groups[gid] = ServiceGroup(self.loop.scheduler, f"{self.device}:{gid}")
        if self._early:
            self._release_early()

    def release_group(self, gid: int) -> None:
        self.group(gid).release()
        del self.groups[gid]

    def group(self, gid: int) -> ServiceGroup:
        group = self.groups.get(gid)
        if group is None:
            raise StatusError(Status.INVALID_PARAMETER, f"no service group {gid}")
        return group

    def member(self, member_group: int | None, sink: int | None) -> ServiceGroup | RemoteSink:
        if (member_group is None) == (sink is None):
            raise StatusError(Status.INVALID_PARAMETER, "name exactly one of group or sink")
        if member_group is not None:
            return self.group(member_group)
        assert sink is not None
        if sink not in self.sinks:
            self.sinks[sink] = RemoteSink(self, sink)
        return self.sinks[sink]
