"""The pin instances clients open on filters: the base and the capture pin (the render
pin, with its sequencer, is in `kernel.renderpin`).

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
import os
from collections.abc import Callable
from typing import Any, Final

from ipc import trace
from ipc.channel import ChannelReader, ChannelWriter
from ipc.dmusic import prefetch_to_wire
from ipc.ks import DataFormat, KsState
from ipc.ring import Record, RingError
from ipc.status import Status, StatusError
from kernel.dmuspins import DmusCapture, for_client, is_dmus_format
from kernel.loop import KernelLoop
from kernel.midiparse import MidiStreamParser, packed_count, unpacked
from kernel.monitor import MonitorTap, copy_to
from kernel.pinevents import PinEvents
from kernel.servicegroup import ServiceGroup
from kernel.streamclock import StreamClock

CAPTURE_BATCH: Final = 256
_RUN: Final = KsState.RUN


class Pin:
    """One open pin instance and its miniport stream (the render/capture parts below)."""

    capture: bool = False
    miniport_kind: str = "midi"
    """The kind of the port's miniport: "midi" or "dmus" (set by the port)."""
    schedule_prefetch: int = 0
    """A DMus stream's schedule pre-fetch (100 ns; possibly DONT_HOLD_FOR_SEQUENCING),
    from its NewStream reply; 0 for a MIDI stream."""

    def __init__(
        self,
        loop: KernelLoop,
        handle: int,
        filter_id: str,
        pin_id: int,
        fmt: DataFormat,
        client_end: ChannelReader | ChannelWriter,
        client_fds: list[int],
        miniport_end: ChannelReader | ChannelWriter,
        miniport_fds: list[int],
        on_error: Callable[[Pin, StatusError], None],
        on_miniport_fault: Callable[[str], None],
    ) -> None:
        self.loop = loop
        self.handle = handle
        self.filter_id = filter_id
        self.pin_id = pin_id
        self.format = fmt
        self.client_end = client_end
        """The kernel's end of the client's sealed channel (attached by open_channels)."""
        self.client_fds = client_fds
        """The client's descriptors of that channel until they are handed over."""
        self.fd_token: str | None = None
        """The token under which fds.sock offers them, once offered."""
        self.miniport_end = miniport_end
        """The kernel's end of the miniport's sealed channel (attached by open_channels)."""
        self.miniport_fds = miniport_fds
        """The host's descriptors of that channel, open until it answered NewStream."""
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
        self.taps: list[MonitorTap] = []
        """The monitors of this pin (shared with its filter): copies of what it passes."""
        self.clock = StreamClock(loop.scheduler.clock)
        self.notify_client: Callable[[Any], None] = lambda body: None
        """Sends an event (a protocol record) to the client that owns the pin."""
        self.events = PinEvents(
            loop, handle, self.clock, self.capture,
            lambda body: self.notify_client(body), self.queue_empty,
        )

    @property
    def format(self) -> DataFormat:
        """The pin's data format; setting it also sets `dmus_format`."""
        return self._format

    @format.setter
    def format(self, fmt: DataFormat) -> None:
        self._format = fmt
        self.dmus_format = is_dmus_format(fmt)
        """The format is KSDATAFORMAT_SUBTYPE_DIRECTMUSIC (derived once, not per batch)."""

    def open_channels(self) -> None:
        """Attach the kernel's ends of both rings (made by the kernel beforehand)."""
        raise NotImplementedError

    def take_client_fds(self) -> list[int]:
        """The client's descriptors, now the caller's to send and close (once)."""
        fds, self.client_fds = self.client_fds, []
        return fds

    def close_miniport_fds(self) -> None:
        """Close the kernel's copies of the host's descriptors (idempotent)."""
        fds, self.miniport_fds = self.miniport_fds, []
        for fd in fds:
            os.close(fd)

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
        """Close both rings and the host's descriptors, leave the group. Idempotent."""
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
        self.client_end.close()
        for fd in self.take_client_fds():
            os.close(fd)
        self.miniport_end.close()
        self.close_miniport_fds()
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
            "miniport_kind": self.miniport_kind,
            "schedule_prefetch": prefetch_to_wire(self.schedule_prefetch),
        }


class CapturePin(Pin):
    """A capture pin: the parser between the miniport's ring and the client's."""

    capture = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client_writer: ChannelWriter | None = None
        self.mp_reader: ChannelReader | None = None
        self.backlog: list[tuple[int, int, bytes]] = []
        self.waiting_client = False
        self.dmus: DmusCapture | None = None
        """A DMus miniport's parser per channel group (made when the channels open)."""

    def open_channels(self) -> None:
        assert isinstance(self.client_end, ChannelWriter)
        self.client_writer = self.client_end
        assert isinstance(self.miniport_end, ChannelReader)
        self.mp_reader = self.miniport_end
        if self.miniport_kind == "dmus":
            self.dmus = DmusCapture(self.stats)

    def _channels(self) -> tuple[list[ChannelReader | None], list[ChannelWriter | None]]:
        return [self.mp_reader], [self.client_writer]

    def drain(self) -> None:
        """The port's capture service: parse what the miniport read, deliver to the client."""
        reader, writer, parser = self.mp_reader, self.client_writer, self.parser
        if reader is None or writer is None or self.removed is not None or self.waiting_client:
            return
        if self.backlog and not self._flush_backlog():
            return
        while True:
            try:
                records = reader.receive_many(CAPTURE_BATCH)
            except RingError as exc:
                self._miniport_ring_fault(exc)
                return
            if not records:
                return
            messages: list[tuple[int, int, bytes]]
            taps: list[tuple[int, int, bytes]]
            count = -1
            if self.dmus is not None:
                grouped = self.dmus.feed(records)
                messages = for_client(grouped, self.dmus_format, self.stats)
                taps = [(t, f, m) for t, f, _, m in grouped]
            elif not self.dmus_format:
                # A run of whole channel messages stays one (FLAG_PACKED) record.
                limit = writer.ring.max_payload
                feed = parser.feed_packed
                if len(records) == 1:
                    timestamp, _, data = records[0]
                    messages, count = feed(data, timestamp, limit)
                else:
                    messages, count = [], 0
                    for timestamp, _, data in records:
                        out, n = feed(data, timestamp, limit)
                        messages += out
                        count += n
                taps = unpacked(messages) if self.taps else messages
            else:
                messages = []
                for record in records:
                    messages += parser.feed(record.data, record.timestamp)
                taps = messages
                messages = for_client([(t, f, 1, m) for t, f, m in messages], True, self.stats)
            if trace.ON:
                trace_captured(self.handle, records)
            # DirectMusic capture passes events up in PAUSE too (PortCls).
            if self.state != _RUN and not (
                    self.dmus is not None and self.state == KsState.PAUSE):
                self.stats["dropped"] += len(messages) if count < 0 else count
            else:
                if self.taps:
                    copy_to(self.taps, taps)
                try:
                    sent = writer.send_many(messages)
                except RingError as exc:
                    self._client_ring_fault(exc)
                    return
                if sent == len(messages):
                    self.stats["delivered"] += (
                        count if count >= 0 else sum(map(packed_count, messages)))
                else:
                    # The client's ring is full: the rest waits in the backlog.
                    self.stats["delivered"] += sum(map(packed_count, messages[:sent]))
                    self.backlog = messages[sent:]
                    if not self._flush_backlog():
                        return
            if len(records) < CAPTURE_BATCH:
                # The ring was empty after these; what the miniport reads next comes
                # with its own interrupt.
                return

    request_service = drain
    """As a member of a service group: drain (the same method, no forwarding call)."""

    def info(self) -> dict[str, Any]:
        out = super().info()
        if self.dmus is not None:
            out["stray_bytes"] += self.dmus.stray_bytes
        return out

    def _flush_backlog(self) -> bool:
        """Send the backlog to the client; False if its ring filled up (the rest waits
        for room)."""
        writer = self.client_writer
        assert writer is not None
        backlog = self.backlog
        try:
            while backlog:
                sent = writer.send_many(backlog)
                self.stats["delivered"] += sum(map(packed_count, backlog[:sent]))
                del backlog[:sent]
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
        if self.dmus is not None:
            self.dmus.reset()
        self.stats["flushed"] += sum(map(packed_count, self.backlog))
        self.backlog.clear()
        if self.mp_reader is not None:
            try:
                self.mp_reader.discard_all()
            except RingError as exc:
                self._miniport_ring_fault(exc)

    def _count_lost(self) -> int:
        """What the kernel read from the miniport but never delivered (records still in
        the miniport's ring count one each)."""
        lost = sum(map(packed_count, self.backlog))
        if self.mp_reader is not None and not self.released:
            with contextlib.suppress(RingError, ValueError):
                lost += self.mp_reader.discard_all()
        return lost


def trace_released(start: int, handle: int, first: int, count: int) -> None:
    """The sequencer released records `first`.. of render pin `handle` to the miniport
    (the ring write began at `start`)."""
    trace.complete(
        "sequencer release", "render", start, {"pin": handle, "records": count},
        [trace.render_flow_id(handle, first + i) for i in range(count)],
    )


def trace_captured(handle: int, records: list[Record]) -> None:
    """The port parsed what the miniport captured, for capture pin `handle`."""
    stamps = dict.fromkeys(r.timestamp for r in records)
    trace.complete(
        "parse capture", "capture", trace.now(), {"pin": handle, "records": len(records)},
        [trace.capture_flow_id(t) for t in stamps],
    )
