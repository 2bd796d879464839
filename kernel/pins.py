"""KS filters and the pin instances clients open on them.

A `KernelStream` is one open pin: the client's ring on one side, the
miniport stream's ring on the other, and in between the port's work: for
render the sequencer (release each event at its presentation time, in order),
for capture the parser (whole MIDI messages, stamped with the ISR time).
"""

from __future__ import annotations

import collections
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ipc.channel import ChannelReader, ChannelWriter, remove_channel_files
from ipc.ks import (
    DataFlow,
    DataFormat,
    FilterDescriptor,
    KsState,
    PinDescriptor,
)
from ipc.ring import Record, RingError
from ipc.status import Status, StatusError
from kernel.dpc import Dpc, Timer
from kernel.midiparse import MidiStreamParser
from kernel.servicegroup import ServiceGroup

if TYPE_CHECKING:
    from kernel.kernel import ClientSession, Kernel
    from kernel.port import PortMidi

SEQUENCER_LIMIT: Final = 4096
"""Render events the sequencer holds; beyond it the client's ring (and the client) waits."""

CAPTURE_BATCH: Final = 256


class Filter:
    """A published subdevice (PcRegisterSubdevice): what clients see and open pins on."""

    def __init__(self, fid: str, device: str, name: str, port: PortMidi) -> None:
        assert port.description is not None
        self.fid = fid
        self.device = device
        self.name = name
        self.port = port
        self.descriptor: FilterDescriptor = port.description
        self.open_counts = [0] * len(self.descriptor.pins)

    def pin(self, pin_id: int) -> PinDescriptor:
        if not 0 <= pin_id < len(self.descriptor.pins):
            raise StatusError(Status.INVALID_PARAMETER, f"{self.fid} has no pin {pin_id}")
        return self.descriptor.pins[pin_id]

    def instance_limit(self, pin_id: int) -> int:
        desc = self.pin(pin_id)
        return min(desc.max_global_instances, desc.max_filter_instances)

    def pin_property(self, pin_id: int, prop: str) -> Any:
        """KSPROPERTY_PIN_xxx, by lower-case name."""
        if prop == "ctypes":
            return len(self.descriptor.pins)
        desc = self.pin(pin_id)
        if prop == "dataflow":
            return int(desc.dataflow)
        if prop == "communication":
            return int(desc.communication)
        if prop == "dataranges":
            return [r.to_wire() for r in desc.data_ranges]
        if prop == "cinstances":
            return {"possible": self.instance_limit(pin_id), "current": self.open_counts[pin_id]}
        if prop == "globalcinstances":
            return {"possible": desc.max_global_instances, "current": self.open_counts[pin_id]}
        if prop == "necessaryinstances":
            return desc.min_instances
        if prop == "name":
            return desc.name
        if prop == "category":
            return desc.category
        if prop == "physicalconnection":
            return None
        raise StatusError(Status.NOT_SUPPORTED, f"no pin property {prop!r}")

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.fid,
            "device": self.device,
            "name": self.name,
            "description": self.descriptor.to_wire(),
            "open": list(self.open_counts),
        }


class KernelStream:
    """One open pin instance and its miniport stream."""

    def __init__(
        self,
        kernel: Kernel,
        handle: int,
        filter_: Filter,
        pin_id: int,
        session: ClientSession,
        fmt: DataFormat,
        client_base: Path,
        miniport_base: Path,
    ) -> None:
        self.kernel = kernel
        self.handle = handle
        self.filter = filter_
        self.pin_id = pin_id
        self.session = session
        self.format = fmt
        self.capture = filter_.pin(pin_id).dataflow == DataFlow.OUT
        self.client_base = client_base
        self.miniport_base = miniport_base
        self.state = KsState.STOP
        self.changing = False
        self.removed: StatusError | None = None
        self.group: ServiceGroup | None = None
        self.released = False
        self.stats = collections.Counter[str]()
        # Render.
        self.client_reader: ChannelReader | None = None
        self.mp_writer: ChannelWriter | None = None
        self.queue: collections.deque[Record] = collections.deque()
        self.timer = Timer(Dpc(self.pump))
        self.waiting_miniport = False
        # Capture.
        self.client_writer: ChannelWriter | None = None
        self.mp_reader: ChannelReader | None = None
        self.parser = MidiStreamParser()
        self.backlog: list[tuple[int, int, bytes]] = []
        self.waiting_client = False

    def open_channels(self) -> None:
        """Attach the kernel's ends of both rings (files made by the kernel beforehand)."""
        if self.capture:
            self.client_writer = ChannelWriter.open(self.client_base)
            self.mp_reader = ChannelReader.open(self.miniport_base)
        else:
            self.client_reader = ChannelReader.open(self.client_base)
            self.mp_writer = ChannelWriter.open(self.miniport_base)
            self.kernel.watch_fd(self.client_reader.data_fileno(), self.on_client_data)

    def set_group(self, group: ServiceGroup | None) -> None:
        self.group = group
        if group is not None:
            group.add_member(self)

    def request_service(self) -> None:
        """As a member of its stream's group: move data."""
        if self.capture:
            self.drain_capture()
        else:
            self.pump()

    def on_client_data(self) -> None:
        assert self.client_reader is not None
        self.client_reader.end_sleep()
        self.pump()

    def _ring_fault(self, exc: RingError) -> None:
        """A ring holds garbage: the side that wrote it is at fault, never the kernel."""
        self.stats["ring_faults"] += 1
        reason = f"corrupt ring: {exc}"
        conn = self.filter.port.conn
        if str(self.miniport_base) in str(exc) and conn is not None:
            self.kernel.miniport_fault(conn, reason)
        else:
            self.remove(StatusError(Status.IO_DEVICE_ERROR, reason))

    def pump(self) -> None:
        """The sequencer: pull the client's events and release those that are due, in order."""
        try:
            self._pump()
        except RingError as exc:
            self._ring_fault(exc)

    def _pump(self) -> None:
        reader, writer = self.client_reader, self.mp_writer
        if (
            self.state != KsState.RUN
            or self.removed is not None
            or self.waiting_miniport
            or reader is None
            or writer is None
        ):
            return
        queue = self.queue
        if not queue and reader.asleep():
            return  # serviced for another reason (an interrupt): nothing to play
        while True:
            room = SEQUENCER_LIMIT - len(queue)
            if room > 0:
                queue.extend(reader.receive_many(max_records=room))
            if queue and not self._release(queue, writer):
                return  # the miniport's ring is full: on_miniport_space pumps again
            if len(queue) >= SEQUENCER_LIMIT:
                return  # the timer set by _release pumps again; the client's ring waits
            # Sleep only once the ring is seen empty after arming (else a record that
            # came meanwhile would wait for the safety sweep).
            if reader.prepare_to_sleep():
                return

    def _release(self, queue: collections.deque[Record], writer: ChannelWriter) -> bool:
        """Hand the due events to the miniport in order and set the timer for the next
        one. False if the miniport's ring filled up (the rest waits for room)."""
        clock = self.kernel.scheduler.clock
        while True:
            now = clock()
            if queue[-1].timestamp <= now:
                batch = list(queue)  # the usual case: everything is due
            else:
                batch = []
                for record in queue:
                    if record.timestamp > now:
                        break
                    batch.append(record)
            if batch:
                sent = writer.send_many(batch)
                if sent == len(queue):
                    queue.clear()
                else:
                    for _ in range(sent):
                        queue.popleft()
                self.stats["released"] += sent
                if sent < len(batch):
                    if writer.prepare_to_wait_for_space(len(batch[sent].data)):
                        self.waiting_miniport = True
                        self.kernel.watch_fd(writer.space_fileno(), self.on_miniport_space)
                        return False
                    continue  # room appeared meanwhile
            if queue and self.timer.due != queue[0].timestamp:
                self.kernel.scheduler.set_timer(self.timer, queue[0].timestamp)
            return True

    def on_miniport_space(self) -> None:
        assert self.mp_writer is not None
        self.kernel.unwatch_fd(self.mp_writer.space_fileno())
        self.mp_writer.end_wait_for_space()
        self.waiting_miniport = False
        self.pump()

    def drain_capture(self) -> None:
        """The port's capture service: parse what the miniport read, deliver to the client."""
        try:
            self._drain_capture()
        except RingError as exc:
            self._ring_fault(exc)

    def _drain_capture(self) -> None:
        reader, parser = self.mp_reader, self.parser
        if reader is None or self.removed is not None or self.waiting_client:
            return
        if self.backlog and not self._flush_backlog():
            return
        while True:
            records = reader.receive_many(max_records=CAPTURE_BATCH)
            if not records:
                return
            messages: list[tuple[int, int, bytes]] = []
            for record in records:
                messages += parser.feed(record.data, record.timestamp)
            if self.state != KsState.RUN:
                self.stats["dropped"] += len(messages)
            else:
                self.backlog = messages
                if not self._flush_backlog():
                    return
            if len(records) < CAPTURE_BATCH:
                # The ring was empty after these; what the miniport reads next comes
                # with its own interrupt.
                return

    def _flush_backlog(self) -> bool:
        writer = self.client_writer
        assert writer is not None
        backlog = self.backlog
        while backlog:
            sent = writer.send_many(backlog)
            del backlog[:sent]
            self.stats["delivered"] += sent
            if backlog and writer.prepare_to_wait_for_space(len(backlog[0][2])):
                self.waiting_client = True
                self.kernel.watch_fd(writer.space_fileno(), self.on_client_space)
                return False
        return True

    def on_client_space(self) -> None:
        assert self.client_writer is not None
        self.kernel.unwatch_fd(self.client_writer.space_fileno())
        self.client_writer.end_wait_for_space()
        self.waiting_client = False
        self.drain_capture()

    def state_changed(self, state: KsState) -> None:
        """The miniport stream accepted `state`; STOP flushes, RUN starts moving data."""
        self.state = state
        if state == KsState.STOP:
            self.flush()
        elif state == KsState.RUN:
            self.request_service()

    def flush(self) -> None:
        self.kernel.scheduler.cancel_timer(self.timer)
        self.stats["flushed"] += len(self.queue) + len(self.backlog)
        self.queue.clear()
        self.backlog.clear()
        self.parser.reset()
        if self.client_reader is not None:
            self.stats["flushed"] += self.client_reader.discard_all()
        if self.mp_reader is not None:
            self.mp_reader.discard_all()

    def remove(self, error: StatusError) -> None:
        """The device went away: fail further I/O with `error` and let the client know."""
        if self.removed is None:
            self.removed = error
            self.stats["lost"] += self._count_lost()
            self.kernel.notify_pin_error(self, error)
        self.release()

    def _count_lost(self) -> int:
        """Messages that die with this stream: for capture what the kernel read from the
        miniport but never delivered (records still in the miniport's ring count one
        each); render losses the client works out from `released` and `flushed`."""
        if not self.capture:
            return len(self.queue)
        lost = len(self.backlog)
        if self.mp_reader is not None and not self.released:
            with contextlib.suppress(RingError, ValueError):
                lost += self.mp_reader.discard_all()
        return lost

    def release(self) -> None:
        """Close both rings, leave the group, delete the ring files. Idempotent."""
        if self.released:
            return
        self.released = True
        self.kernel.scheduler.cancel_timer(self.timer)
        if self.group is not None:
            self.group.remove_member(self)
        for channel in (self.client_reader, self.mp_reader):
            if channel is not None:
                self.kernel.unwatch_fd(channel.data_fileno())
                channel.close()
        for writer in (self.client_writer, self.mp_writer):
            if writer is not None:
                self.kernel.unwatch_fd(writer.space_fileno())
                writer.close()
        for base in (self.client_base, self.miniport_base):
            with contextlib.suppress(OSError):
                remove_channel_files(base)
        self.filter.port.streams.pop(self.handle, None)

    def info(self) -> dict[str, Any]:
        return {
            "handle": self.handle,
            "filter": self.filter.fid,
            "pin": self.pin_id,
            "state": int(self.state),
            "capture": self.capture,
            "stats": dict(self.stats),
            "stray_bytes": self.parser.stray_bytes,
        }
