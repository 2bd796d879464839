"""The pin instances clients open on filters: one base, a render pin and a capture pin.

A pin is the port's half of one stream: the client's ring on one side, the
miniport stream's ring on the other, and in between the port's work: for
render the sequencer (release each event at its presentation time, in order),
for capture the parser (whole MIDI messages, stamped with the ISR time).

A pin holds the loop and two callables, never the kernel: `on_error` tells
the client that owns it, `on_miniport_fault` blames the device. A ring that
holds garbage is blamed on the side that writes it, known from which ring the
failing operation touched, not from an error message's text.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from ipc import protocol as p
from ipc.channel import ChannelReader, ChannelWriter, remove_channel_files
from ipc.ks import RENDER_FLAG_BUFFER_END, RENDER_FLAG_PHYSICAL_TIME, DataFormat, KsState
from ipc.ring import Record, RingError
from ipc.status import Status, StatusError
from kernel.dpc import Dpc, Timer
from kernel.loop import KernelLoop
from kernel.midiparse import MidiStreamParser
from kernel.pinevents import PinEvents
from kernel.servicegroup import ServiceGroup
from kernel.streamclock import StreamClock

SEQUENCER_LIMIT: Final = 4096
"""Render events the sequencer holds; beyond it the client's ring (and the client) waits."""

CAPTURE_BATCH: Final = 256
FLUSH_ROUNDS: Final = 1024
"""At most this many batches of 1024 records are dropped from a client's ring at STOP."""


class Pin:
    """One open pin instance and its miniport stream (the render/capture parts below)."""

    capture: bool = False

    def __init__(
        self,
        loop: KernelLoop,
        handle: int,
        filter_id: str,
        pin_id: int,
        fmt: DataFormat,
        client_base: Path,
        miniport_base: Path,
        on_error: Callable[[Pin, StatusError], None],
        on_miniport_fault: Callable[[str], None],
    ) -> None:
        self.loop = loop
        self.handle = handle
        self.filter_id = filter_id
        self.pin_id = pin_id
        self.format = fmt
        self.client_base = client_base
        self.miniport_base = miniport_base
        self.on_error = on_error
        self.on_miniport_fault = on_miniport_fault
        self.on_release: list[Callable[[Pin], None]] = []
        self.state = KsState.STOP
        self.changing = False
        self.removed: StatusError | None = None
        self.group: ServiceGroup | None = None
        self.released = False
        self.stats = collections.Counter[str]()
        self.parser = MidiStreamParser()
        self.clock = StreamClock(loop.scheduler.clock)
        self.notify_client: Callable[[Any], None] = lambda body: None
        """Sends an event (a protocol record) to the client that owns the pin."""
        self.events = PinEvents(
            loop, handle, self.clock, self.capture,
            lambda body: self.notify_client(body), self.queue_empty,
        )

    def open_channels(self) -> None:
        """Attach the kernel's ends of both rings (files made by the kernel beforehand)."""
        raise NotImplementedError

    def set_group(self, group: ServiceGroup | None) -> None:
        """Join the stream's service group (what NewStream handed back)."""
        self.group = group
        if group is not None:
            group.add_member(self)

    def request_service(self) -> None:
        """As a member of a service group: move data."""
        raise NotImplementedError

    def _client_ring_fault(self, exc: RingError) -> None:
        self.stats["ring_faults"] += 1
        self.remove(StatusError(Status.IO_DEVICE_ERROR, f"corrupt ring: {exc}"))

    def _miniport_ring_fault(self, exc: RingError) -> None:
        self.stats["ring_faults"] += 1
        self.on_miniport_fault(f"corrupt ring: {exc}")
        if not self.released:  # nobody removed the device: at least this pin goes
            self.remove(StatusError(Status.IO_DEVICE_ERROR, f"corrupt ring: {exc}"))

    def state_changed(self, state: KsState) -> dict[str, int]:
        """The miniport stream accepted `state`; STOP flushes and resets the stream
        time, RUN starts the clock and moves data. Returns the correlated time at
        the change (the client maps its capture stamps with it)."""
        now = self.loop.scheduler.clock()
        self.state = state
        if state == KsState.RUN:
            self.clock.run(now)
            self.events.started()
        else:
            self.clock.pause(now)
            if state == KsState.STOP:
                self.clock.reset()
            self.events.held()
        if state == KsState.STOP:
            self.flush()
        elif state == KsState.RUN:
            self.request_service()
        else:
            self.held()
        return self.clock.to_wire(now)

    def held(self) -> None:
        """The pin left RUN for PAUSE or ACQUIRE: its clock stands still."""

    def queue_empty(self) -> bool:
        """Nothing the client queued is waiting to be handed on."""
        return True

    def flush(self) -> None:
        self.parser.reset()

    def remove(self, error: StatusError) -> None:
        """The device went away: fail further I/O with `error` and let the client know."""
        if self.removed is None:
            self.removed = error
            self.stats["lost"] += self._count_lost()
            self.on_error(self, error)
        self.release()

    def _count_lost(self) -> int:
        return 0

    def _channels(self) -> tuple[list[ChannelReader | None], list[ChannelWriter | None]]:
        raise NotImplementedError

    def release(self) -> None:
        """Close both rings, leave the group, delete the ring files. Idempotent."""
        if self.released:
            return
        self.released = True
        self.events.close()
        if self.group is not None:
            self.group.remove_member(self)
        readers, writers = self._channels()
        for reader in readers:
            if reader is not None:
                self.loop.unwatch_fd(reader.data_fileno())
                reader.close()
        for writer in writers:
            if writer is not None:
                self.loop.unwatch_fd(writer.space_fileno())
                writer.close()
        for base in (self.client_base, self.miniport_base):
            with contextlib.suppress(OSError):
                remove_channel_files(base)
        for hook in self.on_release:
            hook(self)

    def info(self) -> dict[str, Any]:
        return {
            "handle": self.handle,
            "filter": self.filter_id,
            "pin": self.pin_id,
            "state": int(self.state),
            "capture": self.capture,
            "stats": dict(self.stats),
            "stray_bytes": self.parser.stray_bytes,
        }


class RenderPin(Pin):
    """A render pin: the sequencer between the client's ring and the miniport's."""

    capture = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client_reader: ChannelReader | None = None
        self.mp_writer: ChannelWriter | None = None
        self.queue: collections.deque[Record] = collections.deque()
        self.timer = Timer(Dpc(self.pump))
        self.waiting_miniport = False

    def open_channels(self) -> None:
        self.client_reader = ChannelReader.open(self.client_base)
        self.mp_writer = ChannelWriter.open(self.miniport_base)
        self.loop.watch_fd(self.client_reader.data_fileno(), self.on_client_data)

    def _channels(self) -> tuple[list[ChannelReader | None], list[ChannelWriter | None]]:
        return [self.client_reader], [self.mp_writer]

    def request_service(self) -> None:
        self.pump()

    def on_client_data(self) -> None:
        assert self.client_reader is not None
        self.client_reader.end_sleep()
        self.pump()

    def pump(self) -> None:
        """The sequencer: pull the client's events and release those that are due, in order."""
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
            return  # serviced for another reason: nothing to play
        while True:
            room = SEQUENCER_LIMIT - len(queue)
            try:
                if room > 0:
                    queue.extend(reader.receive_many(max_records=room))
            except RingError as exc:
                self._client_ring_fault(exc)
                return
            try:
                if queue and not self._release(queue, writer):
                    return  # the miniport's ring is full: on_miniport_space pumps again
            except RingError as exc:
                self._miniport_ring_fault(exc)
                return
            if len(queue) >= SEQUENCER_LIMIT:
                return  # the timer set by _release pumps again; the client's ring waits
            # Sleep only once the ring is seen empty after arming (else a record that
            # came meanwhile would wait for the safety sweep).
            try:
                if reader.prepare_to_sleep():
                    return
            except RingError as exc:
                self._client_ring_fault(exc)
                return

    def _release(self, queue: collections.deque[Record], writer: ChannelWriter) -> bool:
        """Hand the due events to the miniport in order and set the timer for the next
        one. False if the miniport's ring filled up (the rest waits for room).

        An event is due when the stream clock reaches its presentation time (or, with
        RENDER_FLAG_PHYSICAL_TIME, the shared clock its physical time). Only the head
        of the queue decides: a later event never overtakes an earlier one."""
        scheduler = self.loop.scheduler
        clock = scheduler.clock
        stream = self.clock
        while True:
            now = clock()
            stream_now = stream.time(now)
            batch: list[Record] = []
            for record in queue:
                due = now if record.flags & RENDER_FLAG_PHYSICAL_TIME else stream_now
                if record.timestamp > due:
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
                ends = sum(1 for r in batch[:sent] if r.flags & RENDER_FLAG_BUFFER_END)
                if ends:
                    self.stats["buffers_done"] += ends
                    self.notify_client(p.BuffersDone(self.handle, ends, 0))
                if not queue:
                    self.drained()
                if sent < len(batch):
                    if writer.prepare_to_wait_for_space(len(batch[sent].data)):
                        self.waiting_miniport = True
                        self.loop.watch_fd(writer.space_fileno(), self.on_miniport_space)
                        return False
                    continue  # room appeared meanwhile
            if queue:
                head = queue[0]
                deadline = (head.timestamp if head.flags & RENDER_FLAG_PHYSICAL_TIME
                            else stream.to_physical(head.timestamp))
                if deadline is not None and self.timer.due != deadline:
                    scheduler.set_timer(self.timer, deadline)
            return True

    def drained(self) -> None:
        """Everything the sequencer held was handed to the miniport."""
        if self.events.enabled:
            self.events.drained()

    def queue_empty(self) -> bool:
        if self.queue:
            return False
        reader = self.client_reader
        return reader is None or not reader.ring.readable()

    def held(self) -> None:
        # Nothing plays outside RUN; RUN re-arms the timer for the new deadlines.
        self.loop.scheduler.cancel_timer(self.timer)

    def on_miniport_space(self) -> None:
        assert self.mp_writer is not None
        self.loop.unwatch_fd(self.mp_writer.space_fileno())
        self.mp_writer.end_wait_for_space()
        self.waiting_miniport = False
        self.pump()

    def flush(self) -> None:
        super().flush()
        self.loop.scheduler.cancel_timer(self.timer)
        self.stats["flushed"] += len(self.queue)
        ends = sum(1 for r in self.queue if r.flags & RENDER_FLAG_BUFFER_END)
        self.queue.clear()
        if self.client_reader is not None:
            try:
                # Bounded: a client that keeps writing meanwhile cannot hold the kernel.
                for _ in range(FLUSH_ROUNDS):
                    records = self.client_reader.receive_many(max_records=1024)
                    if not records:
                        break
                    self.stats["flushed"] += len(records)
                    ends += sum(1 for r in records if r.flags & RENDER_FLAG_BUFFER_END)
            except RingError as exc:
                self._client_ring_fault(exc)
        if ends:
            # Pending buffers complete with STATUS_CANCELLED, in order, after the done ones.
            self.stats["buffers_cancelled"] += ends
            self.notify_client(p.BuffersDone(self.handle, ends, int(Status.CANCELLED)))

    def _count_lost(self) -> int:
        # What the client's ring still holds, the client works out from `released`
        # and `flushed`; the sequencer's queue dies here; and of what was released,
        # the miniport never took what is still in its ring ("undelivered").
        if self.mp_writer is not None and not self.released:
            with contextlib.suppress(RingError, ValueError):
                self.stats["undelivered"] += self.mp_writer.count_unread()
        return len(self.queue)

    def release(self) -> None:
        self.loop.scheduler.cancel_timer(self.timer)
        super().release()


class CapturePin(Pin):
    """A capture pin: the parser between the miniport's ring and the client's."""

    capture = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client_writer: ChannelWriter | None = None
        self.mp_reader: ChannelReader | None = None
        self.backlog: list[tuple[int, int, bytes]] = []
        self.waiting_client = False

    def open_channels(self) -> None:
        self.client_writer = ChannelWriter.open(self.client_base)
        self.mp_reader = ChannelReader.open(self.miniport_base)

    def _channels(self) -> tuple[list[ChannelReader | None], list[ChannelWriter | None]]:
        return [self.mp_reader], [self.client_writer]

    def request_service(self) -> None:
        self.drain()

    def drain(self) -> None:
        """The port's capture service: parse what the miniport read, deliver to the client."""
        reader, parser = self.mp_reader, self.parser
        if reader is None or self.removed is not None or self.waiting_client:
            return
        if self.backlog and not self._flush_backlog():
            return
        while True:
            try:
                records = reader.receive_many(max_records=CAPTURE_BATCH)
            except RingError as exc:
                self._miniport_ring_fault(exc)
                return
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
        try:
            while backlog:
                sent = writer.send_many(backlog)
                del backlog[:sent]
                self.stats["delivered"] += sent
                if backlog and writer.prepare_to_wait_for_space(len(backlog[0][2])):
                    self.waiting_client = True
                    self.loop.watch_fd(writer.space_fileno(), self.on_client_space)
                    return False
        except RingError as exc:
            self._client_ring_fault(exc)
            return False
        return True

    def on_client_space(self) -> None:
        assert self.client_writer is not None
        self.loop.unwatch_fd(self.client_writer.space_fileno())
        self.client_writer.end_wait_for_space()
        self.waiting_client = False
        self.drain()

    def flush(self) -> None:
        super().flush()
        self.stats["flushed"] += len(self.backlog)
        self.backlog.clear()
        if self.mp_reader is not None:
            try:
                self.mp_reader.discard_all()
            except RingError as exc:
                self._miniport_ring_fault(exc)

    def _count_lost(self) -> int:
        """What the kernel read from the miniport but never delivered (records still in
        the miniport's ring count one each)."""
        lost = len(self.backlog)
        if self.mp_reader is not None and not self.released:
            with contextlib.suppress(RingError, ValueError):
                lost += self.mp_reader.discard_all()
        return lost
