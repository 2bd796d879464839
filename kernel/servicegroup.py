"""Service groups (IServiceGroup / IServiceSink), as PortCls defines them.

`request_service()` queues the group's DPC once; requests made while it is
queued coalesce into that one run. The DPC calls `request_service()` on every
member in insertion order. A group is itself a sink, so groups nest, but never
into a cycle (a group that services itself, directly or not, would queue DPCs
for ever): `add_member` refuses that, and a group holds at most MAX_MEMBERS.
"""

from __future__ import annotations

from typing import Final, Protocol

from ipc import trace
from ipc.runtime import now_100ns
from ipc.status import Status, StatusError
from kernel.dpc import Dpc, Scheduler, Timer

MAX_MEMBERS: Final = 1024


class ServiceSink(Protocol):
    """Anything a service group can call: the port, a stream, another group."""

    def request_service(self) -> None: ...


class ServiceGroup:
    """A list of sinks serviced together from one DPC."""

    def __init__(self, scheduler: Scheduler, name: str = "") -> None:
        self.name = name
        self._scheduler = scheduler
        self._dpc_queue = scheduler.dpc_queue
        self._members: tuple[ServiceSink, ...] = ()
        """Replaced, never changed in place: a run iterates it without a copy, and
        members added or removed during the run take effect next time."""
        self._dpc = Dpc(self._service_members)
        self._timer: Timer | None = None
        self.requests = 0
        self.runs = 0

    @property
    def members(self) -> tuple[ServiceSink, ...]:
        return self._members

    def add_member(self, sink: ServiceSink) -> None:
        """Append `sink`; it is serviced after the members added before it."""
        if sink is self:
            raise StatusError(Status.INVALID_PARAMETER, "a service group cannot contain itself")
        if isinstance(sink, ServiceGroup) and sink.reaches(self):
            raise StatusError(Status.INVALID_PARAMETER,
                              f"{sink!r} contains {self!r}: the membership would be a cycle")
        if len(self._members) >= MAX_MEMBERS:
            raise StatusError(Status.INSUFFICIENT_RESOURCES,
                              f"a service group holds at most {MAX_MEMBERS} members")
        self._members += (sink,)

    def reaches(self, group: ServiceGroup) -> bool:
        """True if servicing this group services `group` (it is this one or nested in it)."""
        seen: set[int] = set()
        stack: list[ServiceGroup] = [self]
        while stack:
            current = stack.pop()
            if current is group:
                return True
            if id(current) in seen:
                continue
            seen.add(id(current))
            stack.extend(m for m in current._members if isinstance(m, ServiceGroup))
        return False

    def remove_member(self, sink: ServiceSink) -> None:
        """Unlink `sink` (its first occurrence); unknown sinks are ignored, as in PortCls."""
        for i, member in enumerate(self._members):
            if member is sink:
                self._members = self._members[:i] + self._members[i + 1 :]
                return

    def request_service(self) -> None:
        """Queue the group's DPC (coalesces with a run already queued)."""
        self.requests += 1
        dpc = self._dpc
        if not dpc.queued:  # Scheduler.queue_dpc, inline: every interrupt comes here
            dpc.queued = True
            self._dpc_queue.append(dpc)

    def _service_members(self) -> None:
        self.runs += 1
        if trace.ON:
            trace_run(self, self._members)
            return
        for member in self._members:
            member.request_service()

    def support_delayed_service(self) -> None:
        """Allocate the group's timer; required before `request_delayed_service`."""
        if self._timer is None:
            self._timer = Timer(Dpc(self.request_service))

    def request_delayed_service(self, due_time: int) -> None:
        """Service the group later: `due_time` in 100 ns, negative relative, positive absolute.

        A new request replaces a pending one. Zero means "now".
        """
        if self._timer is None:
            raise StatusError(
                Status.INVALID_DEVICE_REQUEST,
                "request_delayed_service before support_delayed_service",
            )
        due = now_100ns() - due_time if due_time < 0 else due_time
        self._scheduler.set_timer(self._timer, due)

    def cancel_delayed_service(self) -> bool:
        """Cancel the pending delayed service; True if one was pending."""
        return self._timer is not None and self._scheduler.cancel_timer(self._timer)

    def release(self) -> None:
        """Drop members, cancel the timer and any queued run (the group's owner went away)."""
        self.cancel_delayed_service()
        self._scheduler.remove_dpc(self._dpc)
        self._members = ()

    def __repr__(self) -> str:
        return f"<ServiceGroup {self.name or id(self):} members={len(self._members)}>"


def trace_run(group: ServiceGroup, members: tuple[ServiceSink, ...]) -> None:
    """A group's run as a trace slice, with its members in the order they ran."""
    start = trace.now()
    try:
        for member in members:
            member.request_service()
    finally:
        trace.complete("service group run", "dpc", start, {
            "group": group.name,
            "members": [_member_name(m) for m in members],
        })


def _member_name(member: ServiceSink) -> str:
    """A member as a trace names it: a group by its name, a pin by its handle."""
    if isinstance(member, ServiceGroup):
        return f"group {member.name}"
    handle = getattr(member, "handle", None)
    kind = type(member).__name__
    return kind if handle is None else f"{kind} {handle}"
