"""The host's streams: the render pump and the capture drain of each one.

A render stream's bytes come from the kernel's ring; `pump_render` offers them
to the miniport's `write`, keeping what a short write left for a retry after
`RETRY_SECONDS` (or the next notify). A capture stream's `drain_capture`
calls `read` until it returns b"" and puts the bytes in the ring to the
kernel (the DMA buffer); when that ring is full it keeps the bytes it holds
and waits for room on the ring's space doorbell.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipc import protocol as p
from ipc import trace
from ipc.channel import ChannelReader, ChannelWriter, open_proc_fd_ref, proc_fd_paths
from ipc.ks import KsState
from ipc.ring import RingError
from ipc.status import Status, StatusError
from ipc.waiter import Waiter
from miniports.contract import MiniportMidiStream
from miniports.host.calls import MiniportFault, call_miniport, call_miniport_hook

__all__ = ["READ_CHUNK", "RENDER_BATCH_BYTES", "RETRY_SECONDS", "HostStream", "StreamTable"]

RETRY_SECONDS = 0.001
_RUN = KsState.RUN
READ_CHUNK = 4096
RENDER_BATCH_BYTES = 1 << 16

Report = Callable[[Any], None]
"""Posts an event to the kernel (a StreamError)."""


@dataclass(eq=False)
class HostStream:
    """One miniport stream and the host's end of its ring."""

    sid: int
    pin: int
    capture: bool
    stream: MiniportMidiStream
    writer: ChannelWriter | None = None
    reader: ChannelReader | None = None
    state: KsState = KsState.STOP
    pending: bytes = b""
    """Render: what a short write left, offered again at `retry_at`."""
    retry_at: float | None = None
    held: bytes | None = None
    """Capture: bytes read that did not fit in the ring."""
    isr_time: int = 0
    """Capture: the stamp of what is read now (the time of the interrupt)."""
    waiting_space: bool = False
    traced_records: int = 0
    """Render: records read from the ring so far, while tracing (the flow ids' seq)."""
    read_chunk: int = READ_CHUNK
    """Capture: the most one `read` may return (what one ring record holds at most)."""
    moving: tuple[KsState, ...] = (KsState.RUN,)
    """The states in which a DPC reads a capture stream (a DirectMusic one: RUN, PAUSE)."""
    reading: bool = False
    """A DPC reads the stream: it is in one of `moving` and not closed (kept by
    `set_state` and `StreamTable.remove`, so that a DPC tests one flag)."""

    def set_state(self, state: KsState) -> None:
        """The miniport stream's `set_state`; STOP drops what the host holds for it."""
        call_miniport("set_state", self.stream.set_state, state)
        self.state = state
        self.reading = state in self.moving
        if state == KsState.STOP:
            self.pending = b""
            self.held = None
            self.retry_at = None
            if self.reader is not None:
                self.reader.discard_all()

    def pump_render(self, report: Report) -> None:
        """Offer rendered bytes to the stream's write until it is short or the ring is empty."""
        reader = self.reader
        if reader is None or self.state != _RUN:
            return
        write = self.stream.write
        while True:
            data = self.pending
            if data:
                self.pending = b""  # taken over; a short write leaves the rest again
            else:
                records = reader.receive_many(max_bytes=RENDER_BATCH_BYTES)
                if not records:
                    if reader.prepare_to_sleep():
                        return
                    continue
                # One record (the usual case) is passed as it is, without a join.
                data = records[0][2] if len(records) == 1 else b"".join(
                    [r[2] for r in records])  # Record.data
                if trace.ON:
                    self._trace_render(len(records))
                if not data:
                    continue
            # call_miniport, inline on this hot path: a StatusError is the miniport's
            # answer, anything else it raises a MiniportFault.
            try:
                taken = call_miniport("write", write, data) if trace.ON else write(data)
            except StatusError as exc:
                reader.discard_all()
                report(
                    p.StreamError(self.sid, exc.status, f"{exc.message} ({len(data)} bytes lost)")
                )
                return
            except MiniportFault:
                raise
            except Exception as exc:
                raise MiniportFault("write raised") from exc
            size = len(data)
            if type(taken) is not int or taken != size:
                if type(taken) is not int or not 0 <= taken <= size:
                    raise MiniportFault(f"write returned {taken!r} for {size} bytes")
                # Only a short write copies: the rest waits for the retry.
                self.pending = data[taken:]
                self.retry_at = time.monotonic() + RETRY_SECONDS
                return
            if reader.prepare_to_sleep():
                return

    def drain_capture(self, report: Report) -> bool:
        """Read the stream until it says "nothing now" or the ring is full; True if data
        moved. A full ring sets `waiting_space` (the owner then waits on its doorbell)."""
        writer = self.writer
        if writer is None or self.waiting_space:
            return False
        moved = False
        chunk = self.read_chunk
        read = self.stream.read
        send = writer.send
        data = self.held
        self.held = None
        while True:
            if data is None:
                # call_miniport, inline on this hot path (see pump_render).
                try:
                    got = call_miniport("read", read, chunk) if trace.ON else read(chunk)
                except StatusError as exc:
                    report(p.StreamError(self.sid, exc.status, exc.message))
                    return moved
                except MiniportFault:
                    raise
                except Exception as exc:
                    raise MiniportFault("read raised") from exc
                kind: type = type(got)  # a miniport may return anything
                if kind is bytes:
                    data = got
                elif kind is bytearray:
                    data = bytes(got)
                else:
                    raise MiniportFault(f"read returned {kind.__name__} of bad size")
                if not data:
                    return moved
                if len(data) > chunk:
                    raise MiniportFault(f"read returned {kind.__name__} of bad size")
            if trace.ON:
                start = trace.now()
                if send(data, self.isr_time, 0):
                    trace.complete("captured", "capture", start, {"bytes": len(data)},
                                   (trace.capture_flow_id(self.isr_time),), "s")
                    moved = True
                    data = None
                    continue
            elif send(data, self.isr_time, 0):
                moved = True
                data = None
                continue
            # The ring is full: keep the bytes, and wait for room unless it came meanwhile.
            if writer.prepare_to_wait_for_space(len(data)):
                self.held = data
                self.waiting_space = True
                return moved

    def _trace_render(self, count: int) -> None:
        """The records the kernel released reach the miniport: the end of their flows."""
        first = self.traced_records
        self.traced_records += count
        trace.complete(
            "to miniport", "render", trace.now(), {"stream": self.sid, "records": count},
            [trace.render_flow_id(self.sid, first + i) for i in range(count)], "f",
        )


class StreamTable:
    """The streams by id (`by_id`), and the ring descriptors the loop waits on for them."""

    def __init__(self, waiter: Waiter, runtime_dir: Path, report: Report) -> None:
        self.by_id: dict[int, HostStream] = {}
        self._waiter = waiter
        self._runtime_dir = runtime_dir
        self.report = report
        """Posts an event to the kernel (a StreamError of a stream's pump or drain)."""
        self._fds: dict[int, HostStream] = {}
        self.retrying: set[HostStream] = set()
        """The streams a pump left something to offer again (a short write's rest, a
        `retry_at`): only these are looked at for retries."""
        self.kernel_pid: int | None = None
        """The kernel's pid (from the Register reply): whose /proc/<pid>/fd rings are."""

    def __iter__(self) -> Iterator[HostStream]:
        """The streams, as they are now (a stream may close while the caller iterates)."""
        return iter(tuple(self.by_id.values()))

    def get(self, sid: int) -> HostStream:
        hs = self.by_id.get(sid)
        if hs is None:
            raise StatusError(Status.INVALID_PARAMETER, f"no stream {sid}")
        return hs

    def check_new(self, sid: int, channel: str) -> str:
        """Refuse a NewStream before the miniport is asked: a taken id, a ring that is
        not one of the kernel's descriptors (/proc/<kernel pid>/fd/<n>)."""
        if sid in self.by_id:
            raise StatusError(Status.OBJECT_NAME_COLLISION, f"stream {sid} exists")
        if self.kernel_pid is None:
            raise StatusError(Status.INVALID_DEVICE_STATE, "the kernel's pid is unknown")
        try:
            proc_fd_paths(channel, self.kernel_pid)
        except ValueError as exc:
            raise StatusError(Status.INVALID_PARAMETER, f"bad channel: {exc}") from None
        return channel

    def add(self, hs: HostStream, channel: str) -> None:
        """Attach `hs` to its ring; on failure the miniport's stream is closed again."""
        assert self.kernel_pid is not None
        name = f"stream{hs.sid}"
        try:
            fds = open_proc_fd_ref(channel, self.kernel_pid, reader=not hs.capture)
            if hs.capture:
                hs.writer = ChannelWriter.from_fds(fds, name)
                hs.read_chunk = min(READ_CHUNK, hs.writer.ring.max_payload)
            else:
                hs.reader = ChannelReader.from_fds(fds, name)
                self._watch(hs.reader.data_fileno(), hs)
        except Exception as exc:
            with contextlib.suppress(Exception):
                hs.stream.close()
            if isinstance(exc, OSError | RingError | ValueError):  # spoiled before attached
                raise StatusError(Status.INSUFFICIENT_RESOURCES,
                                  f"cannot attach the stream's ring: {exc}") from exc
            raise
        self.by_id[hs.sid] = hs

    def remove(self, sid: int) -> HostStream | None:
        """Close stream `sid` (the miniport's and the host's ends); None if unknown."""
        hs = self.by_id.pop(sid, None)
        if hs is not None:
            hs.reading = False
            self.retrying.discard(hs)
            self._close(hs)
        return hs

    def close_all(self) -> None:
        for hs in tuple(self.by_id.values()):
            with contextlib.suppress(Exception):
                self.remove(hs.sid)
        self.by_id.clear()

    def _close(self, hs: HostStream) -> None:
        for channel, fd in (
            (hs.reader, hs.reader.data_fileno() if hs.reader else None),
            (hs.writer, hs.writer.space_fileno() if hs.writer else None),
        ):
            if fd is not None and fd in self._fds:
                self._unwatch(fd)
            if channel is not None:
                channel.close()
        call_miniport_hook("close", hs.stream.close)

    def _watch(self, fd: int, hs: HostStream) -> None:
        self._fds[fd] = hs
        self._waiter.watch(fd)

    def _unwatch(self, fd: int) -> None:
        self._waiter.unwatch(fd)
        del self._fds[fd]

    def pump_render(self, hs: HostStream) -> None:
        hs.pump_render(self.report)
        if hs.retry_at is not None or hs.pending:
            self.retrying.add(hs)

    def drain_capture(self, hs: HostStream) -> bool:
        """`hs.drain_capture`, then wait on the ring's space doorbell if it filled up."""
        moved = hs.drain_capture(self.report)
        if hs.waiting_space and hs.writer is not None:
            fd = hs.writer.space_fileno()
            if fd not in self._fds:
                self._watch(fd, hs)
        return moved

    def on_ready(self, fd: int) -> HostStream | None:
        """A stream's doorbell rang: render data came, or a full capture ring has room.
        Returns the capture stream whose waiting data moved on, if any."""
        hs = self._fds.get(fd)
        if hs is None:
            return None
        reader = hs.reader
        if reader is not None:  # a render stream's data doorbell
            reader.end_sleep()
            self.pump_render(hs)
            return None
        assert hs.writer is not None
        hs.waiting_space = False
        self._unwatch(fd)
        hs.writer.end_wait_for_space()
        return hs if self.drain_capture(hs) else None

    def next_retry(self) -> float | None:
        """When the earliest short write is offered again (time.monotonic), if any."""
        times = [hs.retry_at for hs in self.retrying if hs.retry_at is not None]
        return min(times) if times else None

    def retry_due(self, now: float) -> None:
        for hs in tuple(self.retrying):
            retry_at = hs.retry_at
            if retry_at is None:
                if not hs.pending:
                    self.retrying.discard(hs)
            elif now >= retry_at:
                hs.retry_at = None
                self.retrying.discard(hs)
                self.pump_render(hs)

    def pump_all(self) -> None:
        """Rescue a wake-up lost to store reordering (Python cannot fence)."""
        for hs in self:
            self.pump_render(hs)
