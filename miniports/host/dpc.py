"""The miniport's half of each service group's DPC, run in the host before the kernel's.

Every request for service on a miniport's group starts in this process: the
ISR's `notify`, the miniport's own `group.request_service()`, and the timer of
a delayed service (held here, not in the kernel). The host knows each group's
members in insertion order, since it makes every group and sees every
membership change:

  the port's sink          (it joined in `register_service_group`, or the group
                            `init` returned) → the miniport's `service()`
  a stream's sink          (it joined the group `new_stream` returned) → `read`
                            until b"" for a capture stream
  a sink of the miniport's → its `request_service()`
  a nested group           → queued, to run after the current one

`ServiceGroups.run` runs the requested groups' members that live here in that
order, with the semantics of a DPC (a request while a group is queued
coalesces; one made during its run queues another run), and returns the ids of
the groups that ran. The host then raises one interrupt naming them, on which
the kernel runs the other half of the same groups (its port sink and stream
sinks parse what was read and deliver it; the miniport's sinks are no-ops
there). Data the miniport moves into its FIFO in `service()` is read in the
same DPC, without a round trip to the kernel.
"""

from __future__ import annotations

import collections
import functools
import threading
from collections.abc import Callable
from threading import get_ident
from typing import Final

from ipc import protocol as p
from ipc import trace
from ipc.runtime import now_100ns
from ipc.status import Status, StatusError
from miniports.contract import PortServiceGroup, ServiceSink
from miniports.host.calls import call_miniport_hook

__all__ = ["NOTIFY_ALL", "HostServiceGroup", "ServiceGroups"]

NOTIFY_ALL: Final = p.NOTIFY_ALL
"""The group id of Notify(NULL): the port's group and every stream's group."""
RUN_BUDGET: Final = 256
"""Group runs per loop turn: a miniport that keeps asking for service cannot starve
the kernel's requests (the rest runs on the next turn)."""
MAX_GROUPS: Final = p.MAX_INTERRUPT_GROUPS - 1
"""So that one interrupt record can name every group and NOTIFY_ALL."""
MAX_MEMBERS: Final = 1024
"""Members of one group, as the kernel's twin allows (kernel.servicegroup)."""

Action = Callable[[int], None]
"""A member's part of a run, called with the time of the request (the ISR's time)."""


class HostServiceGroup(PortServiceGroup):
    """A service group as the miniport holds it. Its members that live in this process
    run here; the kernel holds its twin under the same id for the members that live
    there, and learns of every change (`add_member`, `remove_member`)."""

    def __init__(self, groups: ServiceGroups, gid: int) -> None:
        self._groups = groups
        self.gid = gid
        self.members: list[tuple[object, Action]] = []
        """(member, what running it does), in insertion order."""
        self.actions: tuple[Action, ...] = ()
        """What running each member does, in insertion order: a snapshot replaced at each
        change, so that a run that started goes on with the members it started with."""
        self.queued_at: int | None = None
        """The time of the request a queued run serves; None when not queued."""
        self.supports_delayed = False
        self.due: int | None = None
        """When the delayed service is due (shared clock, 100 ns), if requested."""
        self.runs = 0

    def add(self, member: object, action: Action) -> None:
        self.members.append((member, action))
        self.actions = tuple(a for _, a in self.members)

    def remove(self, member: object) -> None:
        """Unlink `member`'s first occurrence; an unknown member is ignored, as in PortCls."""
        for i, (known, _) in enumerate(self.members):
            if known is member:
                del self.members[i]
                self.actions = tuple(a for _, a in self.members)
                return

    def _wire_member(self, sink: ServiceSink | PortServiceGroup) -> tuple[int | None, int | None]:
        if isinstance(sink, HostServiceGroup):
            return sink.gid, None
        if isinstance(sink, ServiceSink):
            return None, self._groups.sink_id(sink)
        raise StatusError(Status.INVALID_PARAMETER, "a member is a ServiceSink or a service group")

    def add_member(self, sink: ServiceSink | PortServiceGroup) -> None:
        if sink is self:
            raise StatusError(Status.INVALID_PARAMETER, "a service group cannot contain itself")
        if isinstance(sink, HostServiceGroup) and sink.reaches(self):
            raise StatusError(Status.INVALID_PARAMETER,
                              f"{sink!r} contains {self!r}: the membership would be a cycle")
        if len(self.members) >= MAX_MEMBERS:
            raise StatusError(Status.INSUFFICIENT_RESOURCES,
                              f"a service group holds at most {MAX_MEMBERS} members")
        wire = self._wire_member(sink)
        if isinstance(sink, HostServiceGroup):
            self.add(sink, functools.partial(self._groups.queue, sink))
        else:
            assert isinstance(sink, ServiceSink)
            self.add(sink, functools.partial(_service_sink, sink))
        self._groups.post(p.GroupAddMember(self.gid, *wire))

    def reaches(self, group: HostServiceGroup) -> bool:
        """True if a run of this group runs `group` (it is this one or nested in it)."""
        seen: set[int] = set()
        stack: list[HostServiceGroup] = [self]
        while stack:
            current = stack.pop()
            if current is group:
                return True
            if current.gid in seen:
                continue
            seen.add(current.gid)
            stack.extend(m for m, _ in current.members if isinstance(m, HostServiceGroup))
        return False

    def remove_member(self, sink: ServiceSink | PortServiceGroup) -> None:
        wire = self._wire_member(sink)
        self.remove(sink)
        self._groups.post(p.GroupRemoveMember(self.gid, *wire))

    def request_service(self) -> None:
        self._groups.request(self.gid)

    def support_delayed_service(self) -> None:
        self.supports_delayed = True

    def request_delayed_service(self, due_time: int) -> None:
        if not self.supports_delayed:
            raise StatusError(
                Status.INVALID_DEVICE_REQUEST,
                "request_delayed_service before support_delayed_service",
            )
        due = int(due_time)
        self._groups.set_timer(self, now_100ns() - due if due < 0 else due)

    def cancel_delayed_service(self) -> None:
        self._groups.cancel_timer(self)

    def __repr__(self) -> str:
        return f"<HostServiceGroup {self.gid} members={len(self.members)}>"


def _service_sink(sink: ServiceSink, when: int) -> None:
    call_miniport_hook("request_service", sink.request_service)


class ServiceGroups:
    """The miniport's groups, the port's and the streams' memberships, the requests for
    service, the delayed-service timers and the queue of runs.

    `request` and the timers may be used from any thread (an ISR); everything else
    runs on the host's thread.
    """

    def __init__(
        self,
        post: Callable[[object], None],
        wake: Callable[[], None],
        port_sink: Action,
    ) -> None:
        self.post = post
        self._wake = wake
        self._port_sink = port_sink
        self.by_id: dict[int, HostServiceGroup] = {}
        self.port_group: HostServiceGroup | None = None
        self._port_registered = False
        self._stream_groups: dict[int, tuple[HostServiceGroup, object]] = {}
        self._ids = iter(range(1, 1 << 62))
        self._sinks: dict[int, tuple[int, ServiceSink]] = {}
        self._thread = threading.get_ident()
        self._lock = threading.Lock()
        self._requests: dict[int, int] = {}
        self._queue: collections.deque[HostServiceGroup] = collections.deque()
        self.armed: set[HostServiceGroup] = set()
        """The groups with a delayed service set (changed under the lock; the loop reads
        it without, as a hint, before it takes the lock)."""
        self._running = False
        self._ran: dict[int, int] = {}
        # Notify(NULL) without a port group services the port's sink alone: a run of a
        # group of its own (id 0, unknown to the kernel), so that it too runs as a DPC.
        self._port_alone = HostServiceGroup(self, 0)
        self._port_alone.add(port_sink, port_sink)

    def new_group(self) -> HostServiceGroup:
        """PcNewServiceGroup; StatusError(INSUFFICIENT_RESOURCES) past MAX_GROUPS."""
        if len(self.by_id) >= MAX_GROUPS:
            raise StatusError(Status.INSUFFICIENT_RESOURCES, "too many service groups")
        group = HostServiceGroup(self, next(self._ids))
        self.by_id[group.gid] = group
        self.post(p.GroupNew(group.gid))
        return group

    def sink_id(self, sink: ServiceSink) -> int:
        """The id a miniport's sink travels under (the same sink, the same id; the sink is
        kept, so that its id() is never another's)."""
        key = id(sink)
        if key not in self._sinks:
            self._sinks[key] = (next(self._ids), sink)
        return self._sinks[key][0]

    def register_port(self, group: HostServiceGroup) -> None:
        """RegisterServiceGroup: the port's sink leaves its group and joins `group`."""
        self._port_registered = True
        if self.port_group is group:
            return
        if self.port_group is not None:
            self.port_group.remove(self._port_sink)
        self.port_group = group
        group.add(self._port_sink, self._port_sink)

    def port_init_returned(self, group: HostServiceGroup | None) -> None:
        """The group `init` returned: the port joins it unless it registered in one."""
        if group is not None and not self._port_registered:
            self.port_group = group
            group.add(self._port_sink, self._port_sink)

    def add_stream(self, sid: int, group: HostServiceGroup, sink: Action) -> None:
        """The stream's sink joins the group its `new_stream` returned, as the last member."""
        member = object()
        self._stream_groups[sid] = (group, member)
        group.add(member, sink)

    def remove_stream(self, sid: int) -> None:
        entry = self._stream_groups.pop(sid, None)
        if entry is not None:
            entry[0].remove(entry[1])

    def stream_group(self, sid: int) -> HostServiceGroup | None:
        entry = self._stream_groups.get(sid)
        return entry[0] if entry is not None else None

    def request(self, gid: int, when: int | None = None) -> None:
        """Request service on group `gid` (NOTIFY_ALL: Notify(NULL)); from any thread.
        Requests coalesce until `run`; `when` (default now) stamps what the run reads.
        A request made by a member during a run queues at once, as a DPC would."""
        if when is None:
            when = now_100ns()
        if trace.ON:
            trace.instant("notify", "interrupt", {"group": gid, "when": when})
        if get_ident() == self._thread:
            if self._running or (gid != NOTIFY_ALL and not self._requests):
                # Queued at once: during a run, as a DPC would; else no request from
                # another thread waits before it, so the order of requests is kept.
                self._take(gid, when)
            else:
                # Behind other threads' requests, in order, or Notify(NULL), which `run`
                # expands. No lock on the loop's thread: only it swaps the dict, and one
                # setdefault is atomic against other threads'.
                self._requests.setdefault(gid, when)
            return
        with self._lock:
            self._requests.setdefault(gid, when)
        self._wake()

    @property
    def pending(self) -> bool:
        """Service was requested and has not run yet."""
        return bool(self._requests or self._queue)

    def set_timer(self, group: HostServiceGroup, due: int) -> None:
        with self._lock:
            group.due = due
            self.armed.add(group)
        if threading.get_ident() != self._thread:
            self._wake()

    def cancel_timer(self, group: HostServiceGroup) -> None:
        with self._lock:
            group.due = None
            self.armed.discard(group)

    def next_due(self) -> int | None:
        """When the earliest delayed service is due (shared clock, 100 ns), if any."""
        if not self.armed:
            return None
        with self._lock:
            dues = [g.due for g in self.armed if g.due is not None]
        return min(dues) if dues else None

    def fire_due_timers(self, now: int) -> None:
        if not self.armed:
            return
        with self._lock:
            fired = [g for g in self.armed if g.due is not None and g.due <= now]
            for group in fired:
                group.due = None
                self.armed.discard(group)
        for group in fired:
            self.request(group.gid, now)

    def queue(self, group: HostServiceGroup, when: int) -> None:
        """Queue `group`'s run (a nested group's, from its parent's run); coalesces."""
        if group.queued_at is None:
            group.queued_at = when
            self._queue.append(group)

    def run(self) -> dict[int, int]:
        """Run the requested groups' members that live here, nested groups after; return
        what to name in the interrupt: every group that ran (and NOTIFY_ALL if it was
        requested), each with the time of the request its run served.

        At most RUN_BUDGET runs: what is still queued then runs (and is named) on the
        next call, never named before it ran.
        """
        queue = self._queue
        if not self._requests and not queue:
            return {}
        ran: dict[int, int] = {}
        self._ran = ran
        port_alone = self._port_alone
        self._running = True
        try:
            budget = RUN_BUDGET
            while True:
                if self._requests:
                    with self._lock:
                        requests, self._requests = self._requests, {}
                    for gid, when in requests.items():
                        self._take(gid, when)
                while queue:
                    group = queue.popleft()
                    when = group.queued_at or 0
                    group.queued_at = None
                    group.runs += 1
                    if group is not port_alone:
                        ran.setdefault(group.gid, when)
                    if trace.ON:
                        self._traced_run(group, when)
                    else:
                        # A snapshot: members added or removed during the run count
                        # from the next.
                        for action in group.actions:
                            action(when)
                    budget -= 1
                    if not budget:
                        return ran
                if not self._requests:
                    return ran
        finally:
            self._running = False

    def _traced_run(self, group: HostServiceGroup, when: int) -> None:
        start = trace.now()
        members = tuple(group.members)
        actions = group.actions
        try:
            for action in actions:
                action(when)
        finally:
            trace.complete("service group run", "dpc", start, {
                "group": group.gid, "when": when,
                "members": [self._member_name(m) for m, _ in members],
            })

    def _member_name(self, member: object) -> str:
        """A group member as a trace names it."""
        if member is self._port_sink:
            return "port"
        if isinstance(member, HostServiceGroup):
            return f"group {member.gid}"
        for sid, (_, stream_member) in self._stream_groups.items():
            if stream_member is member:
                return f"stream {sid}"
        return type(member).__name__

    def _take(self, gid: int, when: int) -> None:
        if gid != NOTIFY_ALL:
            group = self.by_id.get(gid)
            if group is not None and group.queued_at is None:  # as `queue`, inline
                group.queued_at = when
                self._queue.append(group)
            return
        # Notify(NULL): the port's group and every stream's group, as the kernel's port
        # expands it when the interrupt names NOTIFY_ALL.
        self._ran.setdefault(NOTIFY_ALL, when)
        self.queue(self.port_group or self._port_alone, when)
        for group, _ in tuple(self._stream_groups.values()):
            self.queue(group, when)

