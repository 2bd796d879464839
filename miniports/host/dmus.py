"""The port's DirectMusic half in the host: the allocator, the master clock, the capture
sink and the DMus stream that moves records between the kernel's ring and an IMXF.

Render: the kernel releases each event once the master clock is within the
stream's schedule pre-fetch of its presentation time and writes it to the ring
as a record (payload `GROUP_PREFIX` + the event's bytes, timestamp = the
presentation time on the master clock). `DmusHostStream.pump_render` turns the
records into `DmusKernelEvent`s from the allocator and `put_message`s them:
records with the same timestamp as one chain; an event longer than the
allocator's buffer size as a DMUS_KEF_PACKAGE_EVENT whose `package` chain holds
the fragments (all but the last DMUS_KEF_EVENT_INCOMPLETE), in one call.

Capture: the miniport's capture MXF is connected to a `PortSink`; what it puts
there while the stream is in RUN or PAUSE waits for the group's DPC, which
writes each event to the ring (timestamp = its presentation time, record flag
RECORD_FLAG_INCOMPLETE for DMUS_KEF_EVENT_INCOMPLETE) and returns it to the
allocator. Events put in STOP or ACQUIRE are returned at once and counted.

The allocator counts its pool; the host publishes the counts (and the streams')
to the device's registry key "DMusAllocator" whenever a DMus stream stops or
closes, where a test or the conformance suite reads them with
`Client.device_registry`.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Final

from ipc import protocol as p
from ipc.dmusic import (
    DMUS_KEF_EVENT_INCOMPLETE,
    DMUS_KEF_PACKAGE_EVENT,
    DONT_HOLD_FOR_SEQUENCING,
    GROUP_PREFIX,
    MAX_CHANNEL_GROUP,
    RECORD_FLAG_INCOMPLETE,
    join_group,
    split_group,
)
from ipc.ks import KsState
from ipc.ring import Record
from ipc.runtime import now_100ns
from ipc.status import Status, StatusError
from miniports.contract import (
    MXF,
    AllocatorMXF,
    DmusKernelEvent,
    MasterClock,
    MiniportMidiStream,
    Port,
    link_events,
)
from miniports.host.calls import call_miniport
from miniports.host.streams import RETRY_SECONDS, HostStream, Report

__all__ = [
    "ALLOCATOR_KEY",
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_POOL_BUFFERS",
    "DEFAULT_POOL_EVENTS",
    "DmusHostStream",
    "DmusSupport",
    "HostAllocator",
    "HostMasterClock",
    "PortSink",
]

DEFAULT_POOL_EVENTS: Final = 8192
DEFAULT_POOL_BUFFERS: Final = 256
DEFAULT_BUFFER_SIZE: Final = 256
"""Bytes of one allocator buffer: longer render events go as packages of fragments."""
ALLOCATOR_KEY: Final = "DMusAllocator"
"""The subkey of the device's key (PLUGINPLAY_REGKEY_DEVICE) the counts go to."""
RENDER_BATCH: Final = 256
_MAX_TIME: Final = (1 << 63) - 1


class HostMasterClock(MasterClock):
    """The master clock: the shared monotonic clock, the kernel's. One per host."""

    def get_time(self) -> int:
        return now_100ns()


class HostAllocator(AllocatorMXF):
    """The port's pool of events and buffers, bounded and counted; thread-safe.

    `outstanding_events` / `outstanding_buffers`: handed out and not yet returned.
    An event or buffer returned that the pool does not have out (twice, or one the
    miniport made itself) is counted in `foreign` and otherwise ignored.
    """

    def __init__(
        self,
        max_events: int = DEFAULT_POOL_EVENTS,
        max_buffers: int = DEFAULT_POOL_BUFFERS,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
    ) -> None:
        self.max_events = max_events
        self.max_buffers = max_buffers
        self.buffer_size = buffer_size
        self._lock = threading.Lock()
        self._events: set[int] = set()
        self._buffers: set[int] = set()
        self.stats = collections.Counter[str]()

    @property
    def outstanding_events(self) -> int:
        return len(self._events)

    @property
    def outstanding_buffers(self) -> int:
        return len(self._buffers)

    def get_message(self) -> DmusKernelEvent:
        with self._lock:
            if len(self._events) >= self.max_events:
                self.stats["exhausted"] += 1
                raise StatusError(Status.INSUFFICIENT_RESOURCES, "the event pool is exhausted")
            event = DmusKernelEvent()
            self._events.add(id(event))
            self.stats["events_allocated"] += 1
            return event

    def get_buffer_size(self) -> int:
        return self.buffer_size

    def get_buffer(self) -> bytearray:
        with self._lock:
            if len(self._buffers) >= self.max_buffers:
                self.stats["exhausted"] += 1
                raise StatusError(Status.INSUFFICIENT_RESOURCES, "the buffer pool is exhausted")
            buffer = bytearray(self.buffer_size)
            self._buffers.add(id(buffer))
            self.stats["buffers_allocated"] += 1
            return buffer

    def put_buffer(self, buffer: bytearray) -> None:
        with self._lock:
            if id(buffer) in self._buffers:
                self._buffers.discard(id(buffer))
                self.stats["buffers_returned"] += 1
            else:
                self.stats["foreign"] += 1

    def put_message(self, event: DmusKernelEvent) -> None:
        """Take back the chain `event` heads, packages included (a chain that loops is
        taken up to the loop)."""
        pending: list[Any] = [event]
        seen: set[int] = set()
        with self._lock:
            while pending:
                current = pending.pop()
                while isinstance(current, DmusKernelEvent) and id(current) not in seen:
                    seen.add(id(current))
                    if id(current) in self._events:
                        self._events.discard(id(current))
                        self.stats["events_returned"] += 1
                    else:
                        self.stats["foreign"] += 1
                    if current.package is not None:
                        pending.append(current.package)
                    nxt = current.next_event
                    current.next_event = current.package = None
                    current = nxt

    def set_state(self, state: KsState) -> None:
        """An allocator has no state."""

    def connect_output(self, sink: MXF) -> None:
        raise StatusError(Status.INVALID_DEVICE_REQUEST, "the allocator has no output")

    def disconnect_output(self, sink: MXF) -> None:
        raise StatusError(Status.INVALID_DEVICE_REQUEST, "the allocator has no output")

    def counts(self) -> dict[str, int]:
        """The counters as the registry holds them (see the module docstring)."""
        with self._lock:
            return {
                "OutstandingEvents": len(self._events),
                "OutstandingBuffers": len(self._buffers),
                "EventsAllocated": self.stats["events_allocated"],
                "EventsReturned": self.stats["events_returned"],
                "ForeignReturns": self.stats["foreign"],
                "PoolExhausted": self.stats["exhausted"],
            }


class PortSink(MXF):
    """The port's sink a capture MXF is connected to (`connect_output`): it keeps what
    the miniport puts while the stream is in RUN or PAUSE for the group's DPC and
    returns the rest to the allocator at once. `put_message` may come from any thread."""

    def __init__(self, allocator: HostAllocator) -> None:
        self.allocator = allocator
        self.state = KsState.STOP
        self._lock = threading.Lock()
        self._queue: collections.deque[DmusKernelEvent] = collections.deque()
        self.discarded = 0
        """Events put while the stream was in STOP or ACQUIRE."""
        self.bad = 0
        """Things put that were no event."""

    def put_message(self, event: DmusKernelEvent) -> None:
        if not isinstance(event, DmusKernelEvent):
            self.bad += 1
            return
        with self._lock:
            if self.state in (KsState.RUN, KsState.PAUSE):
                self._queue.append(event)
                return
            self.discarded += 1
        self.allocator.put_message(event)

    def take(self) -> list[DmusKernelEvent]:
        """The chains put since the last call, in order."""
        with self._lock:
            chains = list(self._queue)
            self._queue.clear()
        return chains

    def set_state(self, state: KsState) -> None:
        with self._lock:
            self.state = state
            dropped = list(self._queue) if state in (KsState.STOP, KsState.ACQUIRE) else []
            if dropped:
                self._queue.clear()
        self.discarded += len(dropped)
        for chain in dropped:
            self.allocator.put_message(chain)

    def connect_output(self, sink: MXF) -> None:
        raise StatusError(Status.INVALID_DEVICE_REQUEST, "the port's sink is the end")

    def disconnect_output(self, sink: MXF) -> None:
        raise StatusError(Status.INVALID_DEVICE_REQUEST, "the port's sink is the end")


class _MxfStream(MiniportMidiStream):
    """What the generic stream code calls (set_state, close), passed to the MXF."""

    def __init__(self, mxf: MXF) -> None:
        self.mxf = mxf

    def set_state(self, state: KsState) -> None:
        self.mxf.set_state(state)
        self.state = state

    def close(self) -> None:
        self.mxf.close()


@dataclass(eq=False)
class DmusHostStream(HostStream):
    """A stream of a DirectMusic miniport: an IMXF behind the ring (see the module
    docstring). `stream` wraps the MXF so set_state and close reach it."""

    mxf: MXF | None = None
    allocator: HostAllocator = field(default_factory=HostAllocator)
    sink: PortSink | None = None
    records: list[Record] = field(default_factory=list)
    """Render: records taken from the ring that waited for the pool."""
    unsent: list[tuple[bytes, int, int, DmusKernelEvent | None]] = field(default_factory=list)
    """Capture: (payload, timestamp, flags, event to return after it) that did not fit."""
    stats: collections.Counter[str] = field(default_factory=collections.Counter)
    byte_position: int = 0
    moving: tuple[KsState, ...] = (KsState.RUN, KsState.PAUSE)

    @classmethod
    def create(
        cls, sid: int, pin: int, capture: bool, mxf: MXF, allocator: HostAllocator
    ) -> DmusHostStream:
        hs = cls(sid, pin, capture, _MxfStream(mxf), mxf=mxf, allocator=allocator)
        if capture:
            hs.sink = PortSink(allocator)
        return hs

    def set_state(self, state: KsState) -> None:
        if self.sink is not None and state in (KsState.STOP, KsState.ACQUIRE):
            self.sink.set_state(state)  # discard first: nothing put now goes up
        super().set_state(state)
        if self.sink is not None:
            self.sink.set_state(state)
        if state == KsState.STOP:
            self.records.clear()
            self._drop_unsent()

    def _drop_unsent(self) -> None:
        unsent, self.unsent = self.unsent, []
        for _, _, _, event in unsent:
            if event is not None:
                self.allocator.put_message(event)

    def close_stream(self) -> None:
        """Give back what the host still holds for the stream."""
        self.records.clear()
        self._drop_unsent()
        if self.sink is not None:
            self.sink.set_state(KsState.STOP)

    def pump_render(self, report: Report) -> None:
        """Records from the ring as event chains into the MXF's `put_message`, in order."""
        reader, mxf = self.reader, self.mxf
        if reader is None or mxf is None or self.state != KsState.RUN:
            return
        while True:
            records, self.records = self.records, []
            if not records:
                records = reader.receive_many(max_records=RENDER_BATCH)
                if not records:
                    if reader.prepare_to_sleep():
                        return
                    continue
            start = 0
            while start < len(records):
                end = start + 1
                while end < len(records) and records[end].timestamp == records[start].timestamp:
                    end += 1
                try:
                    head = self._chain(records[start:end])
                except StatusError:
                    # The pool is empty: the miniport holds it all; offered again shortly.
                    self.records = records[start:]
                    self.retry_at = time.monotonic() + RETRY_SECONDS
                    return
                start = end
                if head is None:
                    continue
                try:
                    call_miniport("put_message", mxf.put_message, head)
                except StatusError as exc:
                    self.allocator.put_message(head)
                    report(p.StreamError(self.sid, exc.status, exc.message))

    def _chain(self, records: list[Record]) -> DmusKernelEvent | None:
        """One chain of events for records of one timestamp; StatusError if the pool ran
        out (what was taken goes back). A record that is not GROUP_PREFIX + bytes is
        dropped and counted ("malformed")."""
        events: list[DmusKernelEvent] = []
        try:
            for record in records:
                try:
                    group, data = split_group(record.data)
                except ValueError:
                    self.stats["malformed"] += 1
                    continue
                if not data:
                    self.stats["malformed"] += 1
                    continue
                events.append(self._event(group, record.timestamp, data))
        except StatusError:
            for event in events:
                event.next_event = None
                self.allocator.put_message(event)
            raise
        return link_events(events)

    def _event(self, group: int, when: int, data: bytes) -> DmusKernelEvent:
        """An event for `data`; a package of fragments if it is longer than a buffer."""
        allocator = self.allocator
        event = allocator.get_message()
        event.channel_group, event.pres_time_100ns = group, when
        event.byte_position = self.byte_position
        self.byte_position += len(data)
        size = allocator.get_buffer_size()
        if len(data) <= size:
            event.data = data
            return event
        event.flags = DMUS_KEF_PACKAGE_EVENT
        fragments: list[DmusKernelEvent] = []
        try:
            for offset in range(0, len(data), size):
                fragment = allocator.get_message()
                fragments.append(fragment)
                fragment.channel_group, fragment.pres_time_100ns = group, when
                fragment.byte_position = event.byte_position + offset
                fragment.data = data[offset:offset + size]
                if offset + size < len(data):
                    fragment.flags = DMUS_KEF_EVENT_INCOMPLETE
        except StatusError:
            event.package = link_events(fragments)
            allocator.put_message(event)
            raise
        event.package = link_events(fragments)
        return event

    def drain_capture(self, report: Report) -> bool:
        """Write what the miniport put into the sink to the ring; True if data moved.
        Only in RUN or PAUSE (the DPC's caller checks); a full ring keeps the rest."""
        writer, sink = self.writer, self.sink
        if writer is None or sink is None or self.waiting_space:
            return False
        for head in sink.take():
            for event in _events_of(head):
                if event.flags & DMUS_KEF_PACKAGE_EVENT:
                    self.allocator.put_message(event)  # its fragments were staged
                else:
                    self._stage(event, writer.ring.max_payload - GROUP_PREFIX.size)
        moved = False
        unsent = self.unsent
        sent = 0
        while sent < len(unsent):
            payload, when, flags, done = unsent[sent]
            if not writer.send(payload, when, flags):
                if writer.prepare_to_wait_for_space(len(payload)):
                    self.waiting_space = True
                    break
                continue
            sent += 1
            moved = True
            if done is not None:
                self.allocator.put_message(done)
        del unsent[:sent]
        return moved

    def _stage(self, event: DmusKernelEvent, room: int) -> None:
        """Queue the records of one event (detached from its chain), or drop a bad one."""
        data = event.data
        group, when = event.channel_group, event.pres_time_100ns
        ok = (
            isinstance(data, bytes | bytearray)
            and type(group) is int and 1 <= group <= MAX_CHANNEL_GROUP
            and type(when) is int and 0 <= when <= _MAX_TIME
            and type(event.flags) is int
        )
        if not ok or not data:
            self.stats["bad_events"] += 1
            self.allocator.put_message(event)
            return
        incomplete = bool(event.flags & DMUS_KEF_EVENT_INCOMPLETE)
        pieces = [bytes(data[i:i + room]) for i in range(0, len(data), room)]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            # A message too long for one record goes as fragments the port parses.
            flags = RECORD_FLAG_INCOMPLETE if incomplete or len(pieces) > 1 else 0
            self.unsent.append((join_group(group, piece), when, flags, event if last else None))


def _events_of(head: DmusKernelEvent) -> list[DmusKernelEvent]:
    """The events of a captured chain in order, each detached; a package's fragments in
    its place, then the emptied package event itself."""
    out: list[DmusKernelEvent] = []
    try:
        chain = head.chain()
    except ValueError:
        return out
    for event in chain:
        event.next_event = None
    for event in chain:
        if event.flags & DMUS_KEF_PACKAGE_EVENT and isinstance(event.package, DmusKernelEvent):
            package, event.package = event.package, None
            try:
                fragments = package.chain()
            except ValueError:
                fragments = []
            for fragment in fragments:
                fragment.next_event = None
            out.extend(fragments)
        out.append(event)
    return out


DEVICE_KEY: Final = 1
"""PLUGINPLAY_REGKEY_DEVICE (RegistryKeyType.DEVICE)."""


class DmusSupport:
    """What a host of a DirectMusic miniport holds beside its streams: the one allocator
    and master clock every stream gets, and the counts of streams already closed."""

    def __init__(self) -> None:
        self.allocator = HostAllocator()
        self.master_clock = HostMasterClock()
        self.closed = collections.Counter[str]()
        self._published: dict[str, int] = {}

    def check_new_stream(self, result: Any) -> tuple[MXF, Any, int]:
        """What `new_stream` returned, checked: (mxf, group, schedule_prefetch). Anything
        else is the miniport's fault (a TypeError, which the host turns into one)."""
        mxf, group, prefetch = result
        if not isinstance(mxf, MXF):
            raise TypeError(f"new_stream returned {type(mxf).__name__}, not an MXF")
        if type(prefetch) is not int or not (
            0 <= prefetch <= _MAX_TIME or prefetch == DONT_HOLD_FOR_SEQUENCING
        ):
            raise TypeError(f"new_stream returned the schedule pre-fetch {prefetch!r}")
        return mxf, group, prefetch

    def stream_closed(self, hs: DmusHostStream) -> None:
        self.closed.update(self._stream_counts(hs))

    @staticmethod
    def _stream_counts(hs: DmusHostStream) -> dict[str, int]:
        return {
            "MalformedRecords": hs.stats["malformed"],
            "BadEvents": hs.stats["bad_events"] + (hs.sink.bad if hs.sink else 0),
            "CaptureDiscarded": hs.sink.discarded if hs.sink else 0,
        }

    def counts(self, streams: list[DmusHostStream]) -> dict[str, int]:
        """The allocator's counts and the streams' (see the module docstring)."""
        totals = collections.Counter[str](self.closed)
        for hs in streams:
            totals.update(self._stream_counts(hs))
        values = self.allocator.counts()
        for name in ("MalformedRecords", "BadEvents", "CaptureDiscarded"):
            values[name] = totals[name]
        return values

    def publish(self, port: Port, streams: list[DmusHostStream]) -> None:
        """Write the counts to the device's key ALLOCATOR_KEY if they changed; best effort."""
        values = self.counts(streams)
        if values == self._published:
            return
        try:
            key = port.new_registry_key(DEVICE_KEY, ALLOCATOR_KEY)
            for name, value in values.items():
                key.set_value(name, value)
        except StatusError:
            return
        self._published = values
