"""The MIDI port driver (IPortMidi / IPortDMus): binding, service, and its streams.

`pc_new_port` makes a port; `PortMidi.init` binds it to a miniport (the
miniport's Init, then its filter description). The port is a service sink:
it joins the group the miniport registers and, when serviced, calls the
miniport's `Service()` and moves the captured data of streams that have no
group of their own. It owns its streams, as in PortCls: the data-range
intersection, NewStream, the KSSTATE walk one step at a time, and close, which
walks the stream back down to STOP first.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from ipc import protocol as p
from ipc.channel import create_sealed_channel, proc_fd_ref
from ipc.ks import (
    KSDATAFORMAT_TYPE_WILDCARD,
    DataFlow,
    DataFormat,
    DataRange,
    FilterDescriptor,
    KsState,
    PinDescriptor,
)
from ipc.ring import RingError
from ipc.status import Status, StatusError
from kernel.connection import MiniportConnection
from kernel.dmuspins import check_prefetch
from kernel.loop import KernelLoop
from kernel.pins import CapturePin, Pin
from kernel.renderpin import RenderPin
from kernel.servicegroup import ServiceGroup

CLSID_PortMidi: Final = "b4c90a43-5791-11d0-86f9-00a0c911b544"
CLSID_PortDMus: Final = "b7902fe9-fb0a-11d1-81b0-0060083316c1"
NOTIFY_ALL: Final = p.NOTIFY_ALL

Done = Callable[[StatusError | None], None]


class PortMidi:
    """One MIDI port driver instance (PcNewPort), bound to one miniport by `init`."""

    def __init__(
        self, loop: KernelLoop, clsid: str, runtime_dir: Path, ring_capacity: int
    ) -> None:
        self.loop = loop
        self.clsid = clsid
        self.runtime_dir = runtime_dir
        self.ring_capacity = ring_capacity
        """The least bytes in each stream's kernel-miniport ring (the "DMA buffer")."""
        self.conn: MiniportConnection | None = None
        self.group: ServiceGroup | None = None
        self.registered_group = False
        self.description: FilterDescriptor | None = None
        self.streams: dict[int, Pin] = {}
        self._captures: tuple[Pin, ...] | None = None
        """The capture streams, in the order they opened (None: work it out again);
        reset whenever `streams` changes."""
        self.initialised = False
        self.init_started = False
        self.services = 0
        self.kind = "midi"
        """The miniport's kind, from its Init reply: "dmus" (IMiniportDMus) or "midi"."""

    def init(self, conn: MiniportConnection, resources: dict[str, Any], done: Done) -> None:
        """IPort::Init: miniport.init, then get_description; `done(error or None)`.

        A second Init is a successful no-op, as in PortCls.
        """
        if self.init_started:
            done(None)
            return
        self.init_started = True
        self.conn = conn
        conn.on_interrupt = self.notify_groups

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
                kind = result.get("kind", "midi") if isinstance(result, dict) else "midi"
                if kind not in ("midi", "dmus"):
                    raise StatusError(Status.INVALID_PARAMETER, "init returned a bad kind")
                self.kind = kind
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

    def notify_groups(self, groups: list[int]) -> None:
        """An interrupt record: `notify` each group id (NOTIFY_ALL: Notify(NULL))."""
        conn = self.conn
        if conn is None:
            raise StatusError(Status.INVALID_DEVICE_STATE, "interrupt before init")
        known = conn.groups
        for gid in groups:
            if gid == NOTIFY_ALL:
                self.notify(None)
            else:
                # notify(group), inline: every interrupt comes this way.
                (known.get(gid) or conn.group(gid)).request_service()

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
        """The port as a service sink: move the captured data of streams that have no
        group of their own (the others are members of theirs). The miniport's
        `service()` and its streams' `read` ran in the host, in the group's insertion
        order, before it raised the interrupt (see miniports/host/dpc.py)."""
        self.services += 1
        captures = self._captures
        if captures is None:
            captures = self._captures = tuple(s for s in self.streams.values() if s.capture)
        for stream in captures:
            if stream.group is None and not stream.released:
                stream.request_service()

    # The streams.

    def open_stream(
        self,
        handle: int,
        filter_id: str,
        pin_id: int,
        desc: PinDescriptor,
        fmt: DataFormat,
        capacity: int,
        on_error: Callable[[Pin, StatusError], None],
        done: Callable[[Pin | StatusError], None],
    ) -> Pin:
        """Intersect `fmt` with the pin's data ranges (the miniport's own intersection
        first, if it has one), NewStream, attach the rings; `done(pin or error)`.

        Returns the pin at once (in KSSTATE_STOP, not yet usable) so the caller can
        account for it; on failure it is released before `done` is called.
        """
        conn = self.conn
        if conn is None or conn.closed:
            raise StatusError(Status.DEVICE_REMOVED, "the device is going away")
        ranges = [r for r in desc.data_ranges if r.matches(fmt)]
        if not ranges and not conn.custom_intersection:
            raise StatusError(Status.NO_MATCH, "the format matches none of the pin's data ranges")
        capture = desc.dataflow == DataFlow.OUT
        # Both rings are sealed memfds: the client receives its own over fds.sock, the
        # host opens its through /proc/<kernel pid>/fd (its parent's descriptors, kept
        # open until it answers NewStream). Neither can shrink a ring under the kernel's
        # mapping, and no other process can open one by name.
        try:
            client_end, client_fds = create_sealed_channel(
                capacity, owner_writes=capture, name=f"pin{handle}-client")
            try:
                # At least as big as the client's ring, so any record the client can write fits.
                mp_end, mp_fds = create_sealed_channel(
                    max(self.ring_capacity, capacity), owner_writes=not capture,
                    name=f"pin{handle}-miniport")
            except BaseException:
                client_end.close()
                for fd in client_fds:
                    os.close(fd)
                raise
        except (OSError, ValueError) as exc:
            raise StatusError(Status.INSUFFICIENT_RESOURCES,
                              f"cannot create the pin's rings: {exc}") from exc
        kind = CapturePin if capture else RenderPin
        pin = kind(
            self.loop, handle, filter_id, pin_id, fmt, client_end, client_fds, mp_end, mp_fds,
            on_error, lambda reason: conn.on_fault(conn, reason),
        )
        pin.miniport_kind = self.kind
        self.streams[handle] = pin
        self._captures = None
        pin.on_release.append(self._forget)

        def fail(exc: StatusError) -> None:
            pin.release()
            done(exc)

        def created(reply: p.Reply) -> None:
            pin.close_miniport_fds()  # the host has its own opens now, or never will
            try:
                result = reply.unwrap()
                if self.kind == "dmus":
                    pin.schedule_prefetch = check_prefetch(
                        result.get("prefetch", 0) if isinstance(result, dict) else None)
                pin.open_channels()
                gid = result.get("group") if isinstance(result, dict) else None
                if gid is not None:
                    pin.set_group(conn.group(gid))
            except (StatusError, OSError, ValueError, RingError) as exc:
                # Also a ring the miniport deleted or spoiled before the kernel attached it.
                fail(exc if isinstance(exc, StatusError)
                     else StatusError(Status.INSUFFICIENT_RESOURCES, f"cannot attach: {exc}"))
                if reply.ok:
                    conn.call(p.CloseStream(handle), lambda _: None)
                return
            if pin.removed is not None:
                fail(pin.removed)
                return
            done(pin)

        def intersected(reply: p.Reply) -> None:
            chosen = fmt
            if not reply.ok and reply.status != Status.NOT_IMPLEMENTED:
                fail(StatusError(reply.status, reply.message))
                return
            if reply.ok:
                try:
                    chosen = DataFormat.from_wire(reply.result)
                except StatusError as exc:
                    fail(exc)
                    return
            elif not ranges:
                fail(StatusError(Status.NO_MATCH, "no data range matches"))
                return
            pin.format = chosen
            conn.call(
                p.NewStream(handle, pin_id, pin.capture, chosen.to_wire(), proc_fd_ref(mp_fds)),
                created,
            )

        if conn.custom_intersection:
            target = ranges[0] if ranges else desc.data_ranges[0]
            conn.call(p.DataRangeIntersection(pin_id, fmt.to_wire(), target.to_wire()),
                      intersected)
        else:
            intersected(p.Reply(0, False, status=Status.NOT_IMPLEMENTED))
        return pin

    def data_intersection(
        self, pin_id: int, desc: PinDescriptor, client_ranges: list[DataRange],
        done: Callable[[DataFormat | StatusError], None],
    ) -> None:
        """KSPROPERTY_PIN_DATAINTERSECTION: for each of the client's ranges in order, each
        of the pin's ranges, ask the miniport's DataRangeIntersection; on
        STATUS_NOT_IMPLEMENTED (or a miniport without one) use the port's default.
        `done(the first format chosen, or StatusError(NO_MATCH))`."""
        conn = self.conn
        if conn is None or conn.closed:
            raise StatusError(Status.DEVICE_REMOVED, "the device is gone")
        pairs = [(c, ours) for c in client_ranges for ours in desc.data_ranges]

        def next_pair(_: p.Reply | None = None) -> None:
            while pairs:
                client_range, ours = pairs.pop(0)
                if conn.custom_intersection and not conn.closed:
                    ask = DataFormat(client_range.major_format, client_range.sub_format,
                                     client_range.specifier)
                    conn.call(p.DataRangeIntersection(pin_id, ask.to_wire(), ours.to_wire()),
                              functools.partial(answered, client_range=client_range, ours=ours))
                    return
                chosen = default_intersection(client_range, ours)
                if chosen is not None:
                    done(chosen)
                    return
            done(StatusError(Status.NO_MATCH, "no data range of the pin matches the client's"))

        def answered(reply: p.Reply, *, client_range: DataRange, ours: DataRange) -> None:
            if reply.ok:
                try:
                    done(DataFormat.from_wire(reply.result))
                except StatusError as exc:
                    done(exc)
                return
            if reply.status == Status.NOT_IMPLEMENTED:
                chosen = default_intersection(client_range, ours)
                if chosen is not None:
                    done(chosen)
                    return
            elif reply.status != Status.NO_MATCH:
                done(StatusError(reply.status, reply.message))
                return
            next_pair()

        next_pair()

    def set_stream_format(self, pin: Pin, fmt: DataFormat, desc: PinDescriptor,
                          done: Done) -> None:
        """KSPROPERTY_CONNECTION_DATAFORMAT set: the miniport stream's SetFormat; its
        failure goes back to the caller and the pin keeps its format."""
        if pin.removed is not None:
            raise pin.removed
        if not any(r.matches(fmt) for r in desc.data_ranges):
            raise StatusError(Status.NO_MATCH, "the format matches none of the pin's data ranges")
        conn = self.conn
        if conn is None or conn.closed:
            raise StatusError(Status.DEVICE_REMOVED, "the device is gone")

        def answered(reply: p.Reply) -> None:
            if not reply.ok:
                done(StatusError(reply.status, reply.message))
                return
            pin.format = fmt
            done(None)

        conn.call(p.StreamSetFormat(pin.handle, fmt.to_wire()), answered)

    def _forget(self, pin: Pin) -> None:
        self.streams.pop(pin.handle, None)
        self._captures = None

    def set_stream_state(self, pin: Pin, target: KsState, done: Done) -> None:
        """IMiniportMidiStream::SetState, one step of STOP-ACQUIRE-PAUSE-RUN at a time.

        The pin's stream clock follows the accepted state (`pin.clock`)."""
        if pin.removed is not None:
            raise pin.removed
        if pin.changing:
            raise StatusError(Status.INVALID_DEVICE_STATE, "a state change is in progress")
        if target == pin.state:
            done(None)
            return
        if abs(target - pin.state) != 1:
            raise StatusError(
                Status.INVALID_DEVICE_STATE,
                f"{pin.state.name} -> {target.name} skips a step; go one state at a time",
            )
        conn = self.conn
        if conn is None or conn.closed:
            raise StatusError(Status.DEVICE_REMOVED, "the device is gone")
        pin.changing = True

        def stepped(reply: p.Reply) -> None:
            pin.changing = False
            if not reply.ok:
                done(StatusError(reply.status, reply.message))
                return
            pin.state_changed(target)
            done(None)

        conn.call(p.StreamSetState(pin.handle, int(target)), stepped)

    def close_stream(self, pin: Pin, done: Callable[[], None]) -> None:
        """Walk the miniport stream down to STOP, close it, release everything, then `done`."""
        conn = self.conn

        def finish(_: p.Reply | None = None) -> None:
            pin.release()
            done()

        if conn is None or conn.closed:
            finish()
            return
        steps = [KsState(s) for s in range(int(pin.state) - 1, -1, -1)]

        def step(_: p.Reply | None = None) -> None:
            if steps:
                state = steps.pop(0)
                pin.state = state
                pin.clock.pause(self.loop.scheduler.clock())
                conn.call(p.StreamSetState(pin.handle, int(state)), step)
            else:
                conn.call(p.CloseStream(pin.handle), finish)

        step()

    def remove_streams(self, error: StatusError) -> None:
        """Surprise removal: every stream fails further I/O with `error`."""
        for pin in tuple(self.streams.values()):
            pin.remove(error)

    def release(self) -> None:
        for pin in tuple(self.streams.values()):
            pin.release()
        self.streams.clear()
        self.group = None


def default_intersection(client: DataRange, ours: DataRange) -> DataFormat | None:
    """The port's own intersection: major, sub-format and specifier agree or one side is
    a wildcard; the format takes the specific side of each."""
    fmt = DataFormat(client.major_format, client.sub_format, client.specifier)
    if not ours.matches(fmt):
        return None

    def pick(theirs: str, mine: str) -> str:
        return mine if theirs == KSDATAFORMAT_TYPE_WILDCARD else theirs

    return DataFormat(pick(client.major_format, ours.major_format),
                      pick(client.sub_format, ours.sub_format),
                      pick(client.specifier, ours.specifier))


def pc_new_port(
    loop: KernelLoop, clsid: str, runtime_dir: Path, ring_capacity: int
) -> PortMidi:
    """PcNewPort: CLSID_PortMidi and CLSID_PortDMus both give the one port, which
    drives a DirectMusic miniport or a MIDI one (its `kind`, learnt at Init)."""
    if clsid not in (CLSID_PortMidi, CLSID_PortDMus):
        raise StatusError(Status.NOT_SUPPORTED, f"no port class {clsid}")
    return PortMidi(loop, clsid, runtime_dir, ring_capacity)
