"""The render pin: the port's sequencer between the client's ring and the miniport's.

It releases each event when the pin's stream clock reaches its presentation time
(only in RUN), in order, never reordering; it completes the KSMUSICFORMAT buffers
the client wrote as their end markers come up, cancels them on request or at
STOP, and tells the pin's events when everything queued was handed on.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
from collections.abc import Iterable
from typing import Any, Final

from ipc import protocol as p
from ipc import trace
from ipc.channel import ChannelReader, ChannelWriter
from ipc.dmusic import GROUP_PREFIX
from ipc.ks import (
    BUFFER_MARKER,
    RENDER_FLAG_BUFFER_END,
    RENDER_FLAG_IN_BUFFER,
    RENDER_FLAG_PHYSICAL_TIME,
    KsState,
)
from ipc.midi import FLAG_PACKED
from ipc.ring import Record, RingError
from ipc.status import Status
from kernel.dmuspins import convert_render, release_ahead
from kernel.dpc import Dpc, Timer
from kernel.midiparse import check_render, unpacked
from kernel.monitor import copy_to
from kernel.pins import Pin, trace_released

SEQUENCER_LIMIT: Final = 4096
"""Render events the sequencer holds; beyond it the client's ring (and the client) waits."""
_RUN: Final = KsState.RUN
_NOT_AT_ONCE: Final = RENDER_FLAG_BUFFER_END | RENDER_FLAG_PHYSICAL_TIME
"""Render flags that keep a record from the sequencer's straight path (see `pump`)."""
FLUSH_ROUNDS: Final = 1024
"""At most this many batches of 1024 records are taken from a client's ring at once
(STOP, cancel): a client that keeps writing meanwhile cannot hold the kernel."""


def buffer_number(marker: Record) -> int:
    """The buffer number a client's end marker carries; -1 if it is malformed."""
    if len(marker.data) != BUFFER_MARKER.size:
        return -1
    return int(BUFFER_MARKER.unpack(marker.data)[0])


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
        assert isinstance(self.client_end, ChannelReader)
        self.client_reader = self.client_end
        assert isinstance(self.miniport_end, ChannelWriter)
        self.mp_writer = self.miniport_end
        self.loop.watch_fd(self.client_reader.data_fileno(), self.on_client_data)

    def _channels(self) -> tuple[list[ChannelReader | None], list[ChannelWriter | None]]:
        return [self.client_reader], [self.mp_writer]

    def request_service(self) -> None:
        self.pump()

    def on_client_data(self) -> None:
        reader = self.client_reader
        assert reader is not None
        reader.end_sleep()
        self.pump(True)

    def pump(self, woken: bool = False) -> None:
        """The sequencer: pull the client's events and release those that are due, in
        order. `woken`: the client's doorbell woke the pin (its ring is worth a look)."""
        reader, writer = self.client_reader, self.mp_writer
        if (
            self.state != _RUN
            or self.removed is not None
            or self.waiting_miniport
            or reader is None
            or writer is None
        ):
            return
        queue = self.queue
        if not (queue or woken) and reader.asleep():
            return  # serviced for another reason: nothing to play
        mp_dmus = self.miniport_kind == "dmus"
        while True:
            room = SEQUENCER_LIMIT - len(queue)
            records: list[Record] = []
            try:
                if room > 0:
                    records = reader.receive_many(room)
                    if records:
                        pin_dmus = self.dmus_format
                        if pin_dmus or mp_dmus:
                            records = check_render(records, self.stats, True)
                            if records:
                                records = convert_render(records, pin_dmus, mp_dmus, self.stats)
                        else:
                            for record in records:
                                if record[1] & FLAG_PACKED:
                                    # Only packed records need a look (the common
                                    # case, none, costs no call).
                                    records = check_render(records, self.stats, False)
                                    break
            except RingError as exc:
                self._client_ring_fault(exc)
                return
            try:
                if records:
                    if queue or mp_dmus or self.taps or trace.ON:
                        queue.extend(records)
                    else:
                        # Nothing held, and the records due at once: none waits for a
                        # later time or ends a buffer, and each is stamped no later than
                        # the stream time stood at when it last stopped (in RUN it only
                        # grows from there). They go to the miniport as they are, in
                        # order, without the queue or a clock read (what _release would
                        # do for them); anything else goes through the queue.
                        frozen = self.clock.frozen
                        for record in records:
                            if record[1] & _NOT_AT_ONCE or record[0] > frozen:
                                queue.extend(records)
                                break
                        else:
                            sent = writer.send_many(records)
                            self.stats["released"] += sent
                            if sent < len(records):
                                queue.extend(records[sent:])  # _release waits for room
                            elif self.events.enabled:
                                self.drained()
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
        of the queue decides: a later event never overtakes an earlier one. A buffer's
        end marker at the head completes the buffer.

        For a DMus miniport an event is due `schedule_prefetch` earlier (at once for
        DONT_HOLD_FOR_SEQUENCING) and goes with its presentation time on the master
        clock (the shared clock) as its timestamp."""
        scheduler = self.loop.scheduler
        clock = scheduler.clock
        stream = self.clock
        dmus = self.miniport_kind == "dmus"
        ahead = release_ahead(self.schedule_prefetch) if dmus else 0
        while True:
            now = clock()
            # stream.time(now), inline (in RUN, run_since is set).
            run_since = stream.run_since
            stream_now = stream.frozen
            if run_since is not None and now > run_since:
                stream_now += now - run_since
            due = 0
            for record in queue:
                flags = record[1]
                if flags & RENDER_FLAG_BUFFER_END or record[0] - ahead > (
                    now if flags & RENDER_FLAG_PHYSICAL_TIME else stream_now
                ):
                    break
                due += 1
            if due:
                # The whole queue (the common case) goes as it is, without a copy.
                batch: collections.deque[Record] | list[Record] = (
                    queue if due == len(queue) else list(itertools.islice(queue, due)))
                start = trace.now() if trace.ON else 0
                sent = writer.send_many(self._master_times(batch, now) if dmus else batch)
                if trace.ON:
                    trace_released(start, self.handle, self.stats["released"], sent)
                self.stats["released"] += sent
                if self.taps and sent:
                    # As played: the shared-clock time it went to the miniport.
                    skip = GROUP_PREFIX.size if dmus else 0
                    copy_to(self.taps, unpacked([(now, r.flags & FLAG_PACKED, r.data[skip:])
                                                 for r in itertools.islice(batch, sent)]))
                if sent == len(queue):
                    queue.clear()
                else:
                    for _ in range(sent):
                        queue.popleft()
                if sent < due:
                    if writer.prepare_to_wait_for_space(len(queue[0].data)):
                        self.waiting_miniport = True
                        self.loop.watch_fd(writer.space_fileno(), self.on_miniport_space)
                        return False
                    continue  # room appeared meanwhile
            if not queue:
                if self.events.enabled:
                    self.drained()
                return True
            if queue[0].flags & RENDER_FLAG_BUFFER_END:
                done: list[int] = []
                while queue and queue[0].flags & RENDER_FLAG_BUFFER_END:
                    done.append(buffer_number(queue.popleft()))
                self.stats["buffers_done"] += len(done)
                self._report_buffers(done, Status.SUCCESS)
                continue
            head = queue[0]
            deadline = (head.timestamp if head.flags & RENDER_FLAG_PHYSICAL_TIME
                        else stream.to_physical(head.timestamp))
            if deadline is not None:
                deadline = max(0, deadline - ahead)
            if deadline is not None and self.timer.due != deadline:
                scheduler.set_timer(self.timer, deadline)
            return True

    def _master_times(self, batch: Iterable[Record], now: int) -> list[Record]:
        """The records as a DMus miniport gets them: timestamp = presentation time on
        the master clock (a stream time mapped by the running clock), flags 0."""
        stream = self.clock
        out = []
        for record in batch:
            when = (record.timestamp if record.flags & RENDER_FLAG_PHYSICAL_TIME
                    else stream.to_physical(record.timestamp))
            out.append(Record(max(0, now if when is None else when), 0, record.data))
        return out

    def _report_buffers(self, numbers: list[int], status: int) -> None:
        """Tell the client these buffers completed, as runs of consecutive numbers."""
        first, count = -1, 0
        for n in numbers:
            if n < 0:
                continue  # a marker the client garbled: only that client is hurt
            if count and n == first + count:
                count += 1
                continue
            if count:
                self.notify_client(p.BuffersDone(self.handle, first, count, int(status)))
            first, count = n, 1
        if count:
            self.notify_client(p.BuffersDone(self.handle, first, count, int(status)))

    def cancel_buffer(self, number: int) -> bool:
        """Drop what is left of buffer `number` (KS IRP cancellation): True if it was
        still pending, False if it had completed (or was never written)."""
        queue, reader = self.queue, self.client_reader
        index = self._find_marker(number)
        if index is None and reader is not None:
            # Its marker may still be in the client's ring: take the ring in (bounded).
            try:
                for _ in range(FLUSH_ROUNDS):
                    records = reader.receive_many(max_records=1024)
                    if not records:
                        break
                    start = len(queue)
                    queue.extend(records)
                    index = self._find_marker(number, start)
                    if index is not None:
                        break
            except RingError as exc:
                self._client_ring_fault(exc)
                return False
        if index is None:
            self.pump()  # records taken from the ring rang no doorbell
            return False
        first = index
        while first > 0 and queue[first - 1].flags & RENDER_FLAG_IN_BUFFER and not (
            queue[first - 1].flags & RENDER_FLAG_BUFFER_END
        ):
            first -= 1
        kept = list(queue)
        self.stats["flushed"] += index - first
        self.stats["buffers_cancelled"] += 1
        del kept[first : index + 1]
        queue.clear()
        queue.extend(kept)
        # The head may have changed, and records taken from the ring here rang no
        # doorbell: release what is due now and set the timer for the next.
        self.loop.scheduler.cancel_timer(self.timer)
        self.pump()
        return True

    def _find_marker(self, number: int, start: int = 0) -> int | None:
        queue = self.queue
        for i in range(start, len(queue)):
            record = queue[i]
            if record.flags & RENDER_FLAG_BUFFER_END and buffer_number(record) == number:
                return i
        return None

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
        cancelled = [buffer_number(r) for r in self.queue if r.flags & RENDER_FLAG_BUFFER_END]
        self.stats["flushed"] += len(self.queue) - len(cancelled)
        self.queue.clear()
        if self.client_reader is not None:
            try:
                # Bounded: a client that keeps writing meanwhile cannot hold the kernel.
                for _ in range(FLUSH_ROUNDS):
                    records = self.client_reader.receive_many(max_records=1024)
                    if not records:
                        break
                    ends = [buffer_number(r) for r in records
                            if r.flags & RENDER_FLAG_BUFFER_END]
                    self.stats["flushed"] += len(records) - len(ends)
                    cancelled += ends
            except RingError as exc:
                self._client_ring_fault(exc)
        if cancelled:
            # Pending buffers complete with STATUS_CANCELLED, after the done ones.
            self.stats["buffers_cancelled"] += len(cancelled)
            self._report_buffers(cancelled, Status.CANCELLED)

    def _count_lost(self) -> int:
        # What the client's ring still holds, the client works out from `released`
        # and `flushed`; the sequencer's queue dies here; and of what was released,
        # the miniport never took what is still in its ring ("undelivered").
        if self.mp_writer is not None and not self.released:
            with contextlib.suppress(RingError, ValueError):
                self.stats["undelivered"] += self.mp_writer.count_unread()
        return sum(1 for r in self.queue if not r.flags & RENDER_FLAG_BUFFER_END)

    def release(self) -> None:
        self.loop.scheduler.cancel_timer(self.timer)
        super().release()
