"""The MIDI port driver (IPortMidi / IPortDMus) and its link to a miniport process.

`MiniportConnection` is the kernel's end of one miniport host: it sends the
port's calls over the bus and matches replies, never blocking the loop.
`PortMidi` binds to a miniport (`init`), keeps the service groups the miniport
made, services them (it is itself a service sink), and owns the streams.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ipc import protocol as p
from ipc.channel import ChannelReader, create_channel_files, remove_channel_files
from ipc.ks import FilterDescriptor
from ipc.ring import MIN_CAPACITY, RingError
from ipc.status import Status, StatusError
from kernel.dpc import Dpc, Timer
from kernel.servicegroup import ServiceGroup

if TYPE_CHECKING:
    from kernel.kernel import Kernel
    from kernel.pins import KernelStream

CLSID_PortMidi: Final = "b4c90a43-5791-11d0-86f9-00a0c911b544"
CLSID_PortDMus: Final = "b7902fe9-fb0a-11d1-81b0-0060083316c1"
NOTIFY_ALL: Final = -1
INTERRUPT_BATCH: Final = 256

Continuation = Callable[[p.Reply], None]


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

    def __init__(self, kernel: Kernel, device: str, identity: bytes, pid: int, reg: p.Register):
        self.kernel = kernel
        self.device = device
        self.identity = identity
        self.pid = pid
        self.miniport = reg.miniport
        self.wants_service = reg.wants_service
        self.custom_intersection = reg.custom_intersection
        self.groups: dict[int, ServiceGroup] = {}
        self.sinks: dict[int, RemoteSink] = {}
        self.port: PortMidi | None = None
        self.last_seen = kernel.clock_seconds()
        self.malformed = 0
        self.recent_malformed: collections.deque[float] = collections.deque()
        self.closed = False
        self._ids = itertools.count(1)
        self._calls: dict[int, tuple[Continuation, Timer]] = {}
        self.interrupts: ChannelReader | None = None
        self._interrupt_base: Path | None = None

    def open_interrupt_channel(self, base: Path) -> None:
        """Make the ring the host raises interrupts through (a fifo doorbell, not a
        ZeroMQ message: a wake-up through a descriptor costs a fraction of one)."""
        create_channel_files(base, MIN_CAPACITY)
        self._interrupt_base = base
        try:
            self.interrupts = ChannelReader.open(base)
        except BaseException:
            remove_channel_files(base)
            raise
        self.interrupts.prepare_to_sleep()
        self.kernel.watch_interrupt_fd(self.interrupts.data_fileno(), self.take_interrupts)

    def take_interrupts(self) -> None:
        """Interrupt level: notify the port for every record in the interrupt ring."""
        reader = self.interrupts
        while reader is not None and not self.closed:
            try:
                records = reader.receive_many(INTERRUPT_BATCH)
            except RingError as exc:
                self.kernel.miniport_fault(self, f"corrupt interrupt ring: {exc}")
                return
            for record in records:
                try:
                    groups = p.decode_interrupt(record.data)
                    self.kernel.interrupt(self, groups)
                except (p.ProtocolError, StatusError):
                    self.kernel.stats["bus_rejected"] += 1
                    self.kernel.count_malformed(self)
                if self.closed:
                    return
            if len(records) < INTERRUPT_BATCH and reader.prepare_to_sleep():
                return

    def send_event(self, body: Any) -> None:
        if not self.closed:
            self.kernel.send_bus(self.identity, p.encode_event(body))

    def call(self, body: Any, then: Continuation, timeout: float | None = None) -> None:
        """Send a request; `then(reply)` runs exactly once: with the reply, or an error
        reply on timeout (IO_TIMEOUT) or removal (DEVICE_REMOVED)."""
        if self.closed:
            then(p.Reply(0, False, status=Status.DEVICE_REMOVED, message="device removed"))
            return
        rid = next(self._ids)
        timer = Timer(Dpc(lambda: self._expire(rid, body.OP)))
        self._calls[rid] = (then, timer)
        seconds = self.kernel.config.call_timeout if timeout is None else timeout
        self.kernel.scheduler.set_timer(timer, self.kernel.scheduler.clock() + int(seconds * 1e7))
        self.kernel.send_bus(self.identity, p.encode_request(rid, body))

    def _expire(self, rid: int, op: str) -> None:
        entry = self._calls.pop(rid, None)
        if entry is not None:
            entry[0](p.Reply(rid, False, status=Status.IO_TIMEOUT, message=f"{op} timed out"))
            self.kernel.miniport_fault(self, f"no reply to {op}")

    def on_reply(self, reply: p.Reply) -> None:
        entry = self._calls.pop(reply.rid, None)
        if entry is None:
            self.malformed += 1
            return
        then, timer = entry
        self.kernel.scheduler.cancel_timer(timer)
        then(reply)

    def close(self) -> None:
        """Fail every outstanding call with DEVICE_REMOVED and release the groups."""
        self.closed = True
        calls, self._calls = self._calls, {}
        for rid, (then, timer) in calls.items():
            self.kernel.scheduler.cancel_timer(timer)
            then(p.Reply(rid, False, status=Status.DEVICE_REMOVED, message="device removed"))
        for group in self.groups.values():
            group.release()
        self.groups.clear()
        self.sinks.clear()
        if self.interrupts is not None:
            self.kernel.unwatch_fd(self.interrupts.data_fileno())
            self.interrupts.close()
            self.interrupts = None
        if self._interrupt_base is not None:
            with contextlib.suppress(OSError):
                remove_channel_files(self._interrupt_base)

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


class PortMidi:
    """One MIDI port driver instance (PcNewPort), bound to one miniport by `init`."""

    def __init__(self, kernel: Kernel, clsid: str) -> None:
        self.kernel = kernel
        self.clsid = clsid
        self.conn: MiniportConnection | None = None
        self.group: ServiceGroup | None = None
        self.registered_group = False
        self.description: FilterDescriptor | None = None
        self.streams: dict[int, KernelStream] = {}
        self.initialised = False
        self.init_started = False
        self.services = 0

    def init(
        self,
        conn: MiniportConnection,
        resources: dict[str, Any],
        done: Callable[[StatusError | None], None],
    ) -> None:
        """IPort::Init: miniport.init, then get_description; `done(error or None)`.

        A second Init is a successful no-op, as in PortCls.
        """
        if self.init_started:
            done(None)
            return
        self.init_started = True
        self.conn = conn
        conn.port = self

        def after_description(reply: p.Reply) -> None:
            try:
                self.description = FilterDescriptor.from_wire(reply.unwrap())
            except StatusError as exc:
                done(exc)
                return
            self.initialised = True
            done(None)

        def after_init(reply: p.Reply) -> None:
            try:
                result = reply.unwrap()
                gid = result.get("group") if isinstance(result, dict) else None
                if gid is not None and not isinstance(gid, int):
                    raise StatusError(Status.INVALID_PARAMETER, "init returned a bad group")
                if gid is not None and not self.registered_group:
                    # The miniport did not RegisterServiceGroup: join the group it returned.
                    self.group = conn.group(gid)
                    self.group.add_member(self)
            except StatusError as exc:
                done(exc)
                return
            conn.call(p.GetDescription(), after_description)

        conn.call(p.Init(resources), after_init)

    def register_service_group(self, group: ServiceGroup) -> None:
        """IPortMidi::RegisterServiceGroup: the port's sink joins `group` now."""
        if self.group is group:
            return
        if self.group is not None:
            self.group.remove_member(self)
        self.group = group
        self.registered_group = True
        group.add_member(self)

    def notify(self, group: ServiceGroup | None) -> None:
        """IPortMidi::Notify: service `group`, or (None) the port's group and every stream's."""
        if group is not None:
            group.request_service()
            return
        if self.group is not None:
            self.group.request_service()
        for stream in self.streams.values():
            if stream.group is not None:
                stream.group.request_service()
        if self.group is None:
            self.request_service()

    def request_service(self) -> None:
        """The port as a service sink: move data both ways. The miniport's `service()` and
        its streams' `read` ran in the host before it raised the interrupt."""
        self.services += 1
        for stream in tuple(self.streams.values()):
            stream.request_service()

    def release(self) -> None:
        for stream in tuple(self.streams.values()):
            stream.release()
        self.streams.clear()
        self.group = None


def pc_new_port(kernel: Kernel, clsid: str) -> PortMidi:
    """PcNewPort: CLSID_PortMidi and CLSID_PortDMus both give the MIDI port."""
    if clsid not in (CLSID_PortMidi, CLSID_PortDMus):
        raise StatusError(Status.NOT_SUPPORTED, f"no port class {clsid}")
    return PortMidi(kernel, clsid)
