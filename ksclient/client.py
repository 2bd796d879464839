"""The client SDK: connect to a kernel, find filters, open pins, stream MIDI.

    import ksclient
    with ksclient.connect() as kernel:
        with kernel.open_render("loopback") as out, kernel.open_capture("loopback") as inp:
            inp.run(); out.run()
            out.send([0x90, 60, 100])
            print(inp.receive(timeout=1.0))

Control requests (open, set_state, close) go to the kernel over ZeroMQ and
get exactly one reply; MIDI travels through the pin's shared-memory ring.

Each pin has a KS stream clock (`pin.time()`, 100 ns units): 0 at open,
running only in RUN, standing still in PAUSE and ACQUIRE, back to 0 at STOP.
`send(msg, at=T)` with a plain int plays when that clock reaches T; with a
`PhysicalTime` (what `now()` returns) at that time on the shared clock.
`RenderPin.write` queues a KSMUSICFORMAT buffer (`ksclient.ksmusic`) and returns
a request that completes when the buffer was handed on; `CapturePin.read`
returns captured messages framed the same way. On a pin opened with the
DirectMusic format (`ksclient.dmusic.FORMAT`) both take DMUS_EVENTHEADER buffers
(`ksclient.dmusic`) instead, and every message carries its channel group
(`send(..., channel_group=g)`, `MidiMessage.channel_group`).

When a device goes away (surprise removal), I/O on its open pins raises
DeviceRemovedError. A pin opened with `auto_reopen=True` instead waits for the
device to come back under the same name (up to `reopen_timeout` seconds),
opens it again, walks it back to the KSSTATE it had, and carries on; what was
lost on the way is added to `pin.lost` and told in a "reopened" event.
A client object and its pins belong to one thread (as a ZeroMQ socket does);
`CapturePin.set_callback` runs its callback on a thread of its own.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import os
import re
import select
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Self

import zmq

from ipc import dmusic as dmus
from ipc import protocol as p
from ipc import trace
from ipc.channel import PEER_FDS, ChannelReader, ChannelWriter
from ipc.fdpass import fetch_fds
from ipc.ks import (
    BUFFER_MARKER,
    KSDATAFORMAT_SUBTYPE_DIRECTMUSIC,
    RENDER_FLAG_BUFFER_END,
    RENDER_FLAG_IN_BUFFER,
    RENDER_FLAG_PHYSICAL_TIME,
    Communication,
    DataFlow,
    DataFormat,
    DataRange,
    FilterDescriptor,
    KsState,
    PinDescriptor,
)
from ipc.midi import (
    FLAG_PACKED,
    MESSAGE_LENGTH,
    InvalidMessage,
    check_message,
    is_packed_run,
    packed_error,
    split_packed,
)
from ipc.midi import FLAG_SYSEX as FLAG_SYSEX
from ipc.midi import FLAG_SYSEX_ABORTED as FLAG_SYSEX_ABORTED
from ipc.midi import FLAG_SYSEX_MORE as FLAG_SYSEX_MORE
from ipc.procwatch import ProcessWatch
from ipc.ring import RingError
from ipc.rpc import RpcEndpoint, RpcTimeout
from ipc.runtime import (
    USER_SOCKET,
    RuntimeDirError,
    check_runtime_dir,
    default_runtime_dir,
    endpoint,
    kernel_alive,
    now_100ns,
)
from ipc.status import Status, StatusError
from ipc.waiter import Waiter
from ksclient import dmusic, errors, ksmusic, tracing

if TYPE_CHECKING:
    from ksclient.monitor import Monitor

DEFAULT_CAPACITY: Final = 1 << 16
CALL_TIMEOUT: Final = 10.0
REOPEN_TIMEOUT: Final = 10.0
RUN_HISTORY: Final = 64
"""RUN periods a pin remembers to give capture stamps their stream time."""
MAX_TIME: Final = (1 << 63) - 1
"""The latest presentation time a record can carry (an i64 of 100 ns)."""
EVENT_CHECK_SECONDS: Final = 0.01
"""How stale a render pin's view of kernel events may get on the fast path (a check
of the socket costs ~2 µs, too much for every send)."""

_CHANNEL_LENGTH: Final = tuple(MESSAGE_LENGTH[s] if 0x80 <= s < 0xF0 else 0 for s in range(256))
"""By byte value: the length of the channel message that status byte starts (2 or 3);
0 for every other byte."""


def _is_channel_message(message: bytes) -> bool:
    """`message` is exactly one whole channel message (80-EF with the data bytes it
    takes): what `send` passes on without the generic checks (which accept it too, and
    refuse everything else with the error they name). Indexing, not a regex: setting
    up a match costs more than the message."""
    n = len(message)
    if n == 3:
        return _CHANNEL_LENGTH[message[0]] == 3 and (message[1] | message[2]) < 0x80
    return n == 2 and _CHANNEL_LENGTH[message[0]] == 2 and message[1] < 0x80


_monotonic = time.monotonic
_new_tuple = tuple.__new__
_STOP: Final = KsState.STOP
_NEVER: Final = MAX_TIME + 1
"""Later than any capture time (an i64)."""


class PhysicalTime(int):
    """A time on the shared monotonic clock (100 ns units), as `now()` gives it.

    Adding or subtracting a plain int keeps it physical; the difference of two
    physical times is a plain duration. `send(at=...)` and `write(...)` take a
    plain int as a stream time and a PhysicalTime as a physical one.
    """

    __slots__ = ()

    def __add__(self, other: int) -> PhysicalTime:
        return PhysicalTime(int(self) + other)

    __radd__ = __add__

    def __sub__(self, other: int) -> Any:
        if isinstance(other, PhysicalTime):
            return int(self) - int(other)
        return PhysicalTime(int(self) - other)


def now() -> PhysicalTime:
    """The shared clock, in 100 ns units (physical time: the kernel's master clock)."""
    return PhysicalTime(now_100ns())


def physical(t: int) -> PhysicalTime:
    """Mark `t` (100 ns units on the shared clock) as a physical time for `send(at=...)`."""
    return PhysicalTime(t)


class MidiMessage(NamedTuple):
    """A message from a capture pin: whole MIDI bytes and its capture time.

    `timestamp` is the physical ISR time on the shared clock (`now()`'s clock),
    `stream_time` the pin's stream time at that moment (KSPROPERTY_CLOCK_TIME:
    0 at RUN after STOP, standing still in PAUSE), both in 100 ns units.
    A SysEx comes whole (F0 ... F7) unless it was cut short by another status
    byte, in which case `aborted` is True. `channel_group` is the DirectMusic
    channel group (1..65535) on a DirectMusic pin, 1 on a MIDI pin.
    """

    data: bytes
    timestamp: int
    flags: int = 0
    stream_time: int = 0
    channel_group: int = 1

    @property
    def physical_time(self) -> int:
        """The physical capture time (the same as `timestamp`)."""
        return self.timestamp

    @property
    def is_sysex(self) -> bool:
        return bool(self.flags & FLAG_SYSEX)

    @property
    def aborted(self) -> bool:
        return bool(self.flags & FLAG_SYSEX_ABORTED)

    def to_mido(self) -> Any:
        """This message as a `mido.Message` (needs mido installed)."""
        import mido

        return mido.Message.from_bytes(self.data)


class MidiBatch(NamedTuple):
    """Messages from a capture pin that share one capture time, kept as bytes
    (`CapturePin.receive_batch`): `data` is one or more whole messages back to back
    (channel messages, each with its status byte), or one whole SysEx when `flags`
    has FLAG_SYSEX. `timestamp` is the physical ISR time, as `MidiMessage.timestamp`."""

    data: bytes
    timestamp: int
    flags: int = 0


@dataclass(frozen=True, slots=True)
class KernelEvent:
    """Something the kernel told this client: kind is "arrival", "removal",
    "pin_error" or "kernel_shutdown"; or, from the SDK itself, "reopened" (a pin
    with auto_reopen came back: `handle` is its new handle, `lost` the messages
    lost while the device was away)."""

    kind: str
    filter: str = ""
    reason: str = ""
    handle: int = 0
    status: int = 0
    lost: int = 0


@dataclass(frozen=True, slots=True)
class PinEvent:
    """An event enabled on a pin fired: kind "position", "interval" or "end_of_stream",
    `cookie` the id `enable_event` returned, `time` the pin's stream time then."""

    kind: str
    cookie: int
    time: int


@dataclass(frozen=True, slots=True)
class PinInfo:
    """One pin of a filter, as its descriptor says."""

    id: int
    name: str
    dataflow: DataFlow
    communication: Communication
    data_ranges: tuple[DataRange, ...]
    max_instances: int
    category: str

    @property
    def is_render(self) -> bool:
        return self.streaming and self.dataflow == DataFlow.IN

    @property
    def is_capture(self) -> bool:
        return self.streaming and self.dataflow == DataFlow.OUT

    @property
    def streaming(self) -> bool:
        return self.communication in (Communication.SINK, Communication.BOTH)

    @classmethod
    def from_descriptor(cls, pin_id: int, d: PinDescriptor) -> PinInfo:
        return cls(
            pin_id,
            d.name,
            d.dataflow,
            d.communication,
            d.data_ranges,
            min(d.max_global_instances, d.max_filter_instances),
            d.category,
        )


@dataclass(frozen=True, slots=True)
class FilterInfo:
    id: str
    device: str
    name: str
    description: FilterDescriptor
    open_counts: tuple[int, ...]

    @property
    def pins(self) -> list[PinInfo]:
        return [PinInfo.from_descriptor(i, d) for i, d in enumerate(self.description.pins)]

    def find_pin(self, capture: bool) -> int:
        """The first streaming pin of the direction asked for."""
        for pin in self.pins:
            if pin.is_capture if capture else pin.is_render:
                return pin.id
        what = "capture" if capture else "render"
        raise errors.NotFoundError(Status.OBJECT_NAME_NOT_FOUND, f"{self.id} has no {what} pin")


def _stamp(at: int | None) -> tuple[int, int]:
    """A presentation time and the record flags that say which clock it is on."""
    if at is None:
        return 0, 0
    flags = RENDER_FLAG_PHYSICAL_TIME if isinstance(at, PhysicalTime) else 0
    stamp = int(at)
    if stamp < 0:
        raise ValueError("at is a stream time (pin.time() + delay) or now() + delay, "
                         "never negative")
    return stamp, flags


def _group_prefix(channel_group: int) -> bytes:
    """The record prefix of a DirectMusic channel group; ValueError outside 1..65535."""
    if type(channel_group) is not int or not 1 <= channel_group <= dmus.MAX_CHANNEL_GROUP:
        raise ValueError(f"channel group {channel_group!r} is not in 1..{dmus.MAX_CHANNEL_GROUP}")
    return dmus.GROUP_PREFIX.pack(channel_group)


def _to_bytes(message: Any) -> bytes:
    if isinstance(message, bytes):
        return message
    if isinstance(message, (bytearray, memoryview)):
        return bytes(message)
    to_bytes = getattr(message, "bytes", None)
    if callable(to_bytes):  # a mido.Message
        return bytes(to_bytes())
    try:
        return bytes(message)
    except (TypeError, ValueError) as exc:
        if isinstance(message, Iterable) and not isinstance(message, (str, dict)):
            for i, value in enumerate(message):
                if not isinstance(value, int) or not 0 <= value <= 255:
                    raise InvalidMessage(
                        f"byte {i} is {value!r}, not a byte (an int in 0..255)"
                    ) from None
        raise TypeError(f"cannot send {type(message).__name__} as MIDI bytes") from exc


class SysexJoiner:
    """Joins the chunks of a long SysEx (FLAG_SYSEX_MORE) back into one message, across
    reads; every other record passes as it is."""

    def __init__(self) -> None:
        self._sysex = bytearray()
        self._time = 0

    def join(self, records: Iterable[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
        """(timestamp, flags, data) of each whole message in `records`."""
        out = []
        for timestamp, flags, data in records:
            if flags & FLAG_SYSEX:
                if not self._sysex:
                    self._time = timestamp
                self._sysex += data
                if flags & FLAG_SYSEX_MORE:
                    continue
                data, timestamp = bytes(self._sysex), self._time
                self._sysex.clear()
            out.append((timestamp, flags & ~FLAG_SYSEX_MORE, data))
        return out

    def clear(self) -> None:
        self._sysex.clear()


class GroupJoiner:
    """What a DirectMusic capture pin does to its records (ipc.dmusic layout: the channel
    group, then the bytes): strips the group and joins each group's long SysEx, across
    reads. A record without a valid group, or with a group and no bytes, is dropped
    and counted in `malformed` (the kernel never writes one; nothing is raised)."""

    def __init__(self) -> None:
        self._joiners: dict[int, SysexJoiner] = {}
        self.malformed = 0

    def join(
        self, records: Iterable[tuple[int, int, Any]]
    ) -> list[tuple[int, int, bytes, int]]:
        """(timestamp, flags, data, channel group) of each whole message in `records`."""
        out = []
        joiners = self._joiners
        for timestamp, flags, payload in records:
            try:
                group, data = dmus.split_group(payload)
            except ValueError:
                self.malformed += 1
                continue
            if not data:
                self.malformed += 1
                continue
            if flags & FLAG_SYSEX:
                joiner = joiners.get(group)
                if joiner is None:
                    joiner = joiners[group] = SysexJoiner()
                whole = joiner.join([(timestamp, flags, data)])
                if not whole:
                    continue
                timestamp, flags, data = whole[0]
            out.append((timestamp, flags, data, group))
        return out

    def clear(self) -> None:
        """Forget the SysEx halves (STOP flushed them); `malformed` stays."""
        self._joiners.clear()


class _Resources:
    """What a client holds outside Python's heap. `close()` releases it in order; a client
    dropped without `close()` has it released by a finalizer, which must not refer back
    to the client (so the client can be collected at all)."""

    def __init__(self, ctx: zmq.Context[Any], rpc: RpcEndpoint) -> None:
        self.ctx = ctx
        self.rpc = rpc
        self.channels: dict[int, ChannelReader | ChannelWriter] = {}
        self.kernel_watch: ProcessWatch | None = None
        self.in_session = False


def _release_dropped(res: _Resources) -> None:
    """The client was dropped without `close()`: free its rings and say goodbye without
    waiting (the kernel closes its pins), never blocking the garbage collector."""
    for channel in res.channels.values():
        with contextlib.suppress(Exception):
            channel.close()
    res.channels.clear()
    with contextlib.suppress(Exception):
        if res.in_session:
            res.rpc.send_request(p.Goodbye())
            res.rpc.socket.close(linger=100)
        else:
            res.rpc.socket.close(linger=0)
    if res.kernel_watch is not None:
        with contextlib.suppress(Exception):
            res.kernel_watch.close()
    with contextlib.suppress(Exception):
        res.ctx.term()


class Client:
    """A connection to one kernel. Use `connect()` to make one."""

    def __init__(
        self, runtime_dir: Path, timeout: float, name: str, auto_reopen: bool = False,
        reopen_timeout: float = REOPEN_TIMEOUT,
    ) -> None:
        self.runtime_dir = runtime_dir
        self.name = name
        if trace.ON:
            trace.name_process_once(f"client {name}")
        self.auto_reopen = auto_reopen
        self.reopen_timeout = reopen_timeout
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._rpc = RpcEndpoint(self._ctx, endpoint(runtime_dir, USER_SOCKET))
        self._resources = _Resources(self._ctx, self._rpc)
        self._finalizer = weakref.finalize(self, _release_dropped, self._resources)
        self._pins: dict[int, Pin] = {}
        self._events: collections.deque[KernelEvent] = collections.deque()
        self._callbacks: list[Callable[[KernelEvent], None]] = []
        self._broken: errors.KsError | None = None
        self._closed = False
        deadline = time.monotonic() + timeout
        while not (runtime_dir / USER_SOCKET).exists():
            if time.monotonic() >= deadline:
                self.close()
                raise errors.KernelGoneError(f"no kernel is running in {runtime_dir}")
            time.sleep(0.01)
        try:
            check_runtime_dir(runtime_dir)
        except RuntimeDirError as exc:
            self.close()
            raise errors.AccessDeniedError(str(exc)) from None
        try:
            self.kernel_pid = int(
                self._call(p.Hello(os.getpid(), name), max(0.1, deadline - time.monotonic()))[
                    "kernel_pid"
                ]
            )
        except BaseException:
            self.close()
            raise
        self._resources.in_session = True
        self._kernel_watch: ProcessWatch | None = None
        self._kernel_fd: int | None = None
        with contextlib.suppress(OSError):
            self._kernel_watch = ProcessWatch(self.kernel_pid)
            self._kernel_fd = self._kernel_watch.fileno()
            self._resources.kernel_watch = self._kernel_watch
        # One place to wait for kernel messages or the kernel's death.
        self._event_poller = zmq.Poller()
        self._event_poller.register(self._rpc.socket, zmq.POLLIN)
        if self._kernel_fd is not None:
            self._event_poller.register(self._kernel_fd, zmq.POLLIN)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check(self) -> None:
        if self._closed:
            raise errors.ClosedError("the client is closed")
        if self._broken is not None:
            raise self._broken

    def check_kernel(self) -> None:
        """Raise KernelGoneError if the kernel process has exited (cheap: a pidfd poll)."""
        fd = getattr(self, "_kernel_fd", None)
        if fd is not None and select.select([fd], [], [], 0)[0]:
            self._broken = errors.KernelGoneError("the kernel is gone")
            for pin in self._pins.values():
                pin._on_error(self._broken)
        self._check()

    def _call(self, body: Any, timeout: float = CALL_TIMEOUT) -> Any:
        self._check()
        try:
            result = self._rpc.call(body, timeout)
        except RpcTimeout as exc:
            if not kernel_alive(self.runtime_dir):
                self._broken = errors.KernelGoneError("the kernel is gone")
                raise self._broken from exc
            raise errors.KsTimeoutError(str(exc)) from exc
        except StatusError as exc:
            raise errors.wrap(exc) from None
        finally:
            self._dispatch_events()
        return result

    def _dispatch_events(self) -> None:
        backlog = self._rpc.backlog
        while backlog:
            frame = backlog.popleft()
            if not isinstance(frame, p.Event):
                continue
            body = frame.body
            if isinstance(body, p.DeviceArrival):
                event = KernelEvent("arrival", body.filter)
            elif isinstance(body, p.DeviceRemoval):
                event = KernelEvent("removal", body.filter, body.reason)
                # Every pin on the filter is dead now, whichever pin error comes first.
                for on_filter in self._pins.values():
                    if on_filter.filter_id == body.filter:
                        on_filter._on_error(errors.DeviceRemovedError(
                            Status.DEVICE_REMOVED, f"device {body.filter}: {body.reason}"
                        ))
            elif isinstance(body, p.PinError):
                event = KernelEvent("pin_error", "", body.message, body.handle, body.status)
                pin = self._pins.get(body.handle)
                if pin is not None:
                    pin._on_error(errors.from_status(body.status, body.message))
            elif isinstance(body, p.PinEvent):
                owner = self._pins.get(body.handle)
                if owner is not None:
                    owner._on_pin_event(body)
                continue
            elif isinstance(body, p.BuffersDone):
                target = self._pins.get(body.handle)
                if isinstance(target, RenderPin):
                    target._buffers_done(body.first, body.count, body.status)
                continue
            elif isinstance(body, p.KernelShutdown):
                event = KernelEvent("kernel_shutdown")
                self._broken = errors.KernelGoneError("the kernel shut down")
                for pin in self._pins.values():
                    pin._on_error(self._broken)
            else:
                continue
            self._post_event(event)

    def pump_events(self) -> None:
        """Take in whatever the kernel sent (events) without blocking."""
        if not self._closed:
            self._rpc.receive_pending()
            self._dispatch_events()

    @property
    def events_fileno(self) -> int:
        """A descriptor that polls readable when kernel messages may be waiting."""
        return int(self._rpc.socket.getsockopt(zmq.FD))

    def next_event(self, timeout: float | None = None) -> KernelEvent:
        """The next device arrival/removal or pin event; KsTimeoutError if none in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.pump_events()
            if self._events:
                return self._events.popleft()
            self._check()
            wait = 1000 if deadline is None else int((deadline - time.monotonic()) * 1000)
            if wait <= 0:
                raise errors.KsTimeoutError("no kernel event")
            self._wait_events(min(wait, 1000) / 1000)

    def _wait_events(self, timeout: float) -> None:
        """Block until a kernel message may be waiting, the kernel dies, or `timeout`."""
        if not self._event_poller.poll(max(0, int(timeout * 1000))):
            return
        self.check_kernel()

    def _post_event(self, event: KernelEvent) -> None:
        self._events.append(event)
        for callback in tuple(self._callbacks):
            callback(event)

    def _await_filter(self, name: str, deadline: float) -> bool:
        """Wait until filter `name` is published (True) or `deadline` passes (False),
        leaving the events for `next_event`."""
        while True:
            self.pump_events()
            self.check_kernel()
            if any(f["id"] == name for f in self._call(p.ListFilters())):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._wait_events(min(remaining, 0.5))

    def on_event(self, callback: Callable[[KernelEvent], None]) -> None:
        """Call `callback(event)` for each kernel event, from this client's thread."""
        self._callbacks.append(callback)

    def filters(self) -> list[FilterInfo]:
        """Every published filter."""
        return [
            FilterInfo(
                f["id"],
                f["device"],
                f["name"],
                FilterDescriptor.from_wire(f["description"]),
                tuple(f["open"]),
            )
            for f in self._call(p.ListFilters())
        ]

    def filter(self, name: str) -> FilterInfo:
        for f in self.filters():
            if f.id == name:
                return f
        raise errors.NotFoundError(Status.OBJECT_NAME_NOT_FOUND, f"no filter {name!r}")

    def wait_for_filter(self, name: str, timeout: float = 10.0) -> FilterInfo:
        """The filter `name`, waiting up to `timeout` seconds for it to arrive."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(errors.NotFoundError):
                return self.filter(name)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.KsTimeoutError(f"filter {name!r} did not arrive in {timeout:g} s")
            with contextlib.suppress(errors.KsTimeoutError):
                self.next_event(min(remaining, 0.5))

    def pin_property(self, filter_id: str, pin: int, prop: str, value: Any = None) -> Any:
        """KSPROPERTY_PIN_xxx by name: ctypes, dataflow, communication, dataranges,
        constraineddataranges, cinstances, globalcinstances, necessaryinstances,
        interfaces, mediums, name, category, physicalconnection (None unless
        registered), proposedataformat (get; set with a format wire dict: True or
        NoMatchError), dataintersection (value {"ranges": [...], "size": n}; see
        `data_intersection`)."""
        return self._call(p.PinProperty(filter_id, pin, prop, value))

    def data_intersection(
        self, filter_id: str, pin: int, ranges: Iterable[DataRange], size: int | None = None
    ) -> Any:
        """KSPROPERTY_PIN_DATAINTERSECTION: the format the pin would take for the first of
        `ranges` (in order) it can satisfy; NoMatchError if none.

        `size` None: the format. `size=0`: the size query, answered
        `{"status": STATUS_BUFFER_OVERFLOW, "size": n}`; a size below n raises
        KsError(STATUS_BUFFER_TOO_SMALL); another size gives the whole answer dict.
        """
        value = {"ranges": [r.to_wire() for r in ranges], "size": 64 if size is None else size}
        answer = self._call(p.PinProperty(filter_id, pin, "dataintersection", value))
        if size is None:
            return DataFormat.from_wire(answer["format"])
        return answer

    def master_clock(self, filter_id: str) -> PhysicalTime:
        """KSPROPERTY_SYNTH_MASTERCLOCK of a filter: the kernel's master clock now (100 ns),
        the shared monotonic clock every DirectMusic stream is timed by (`now()`'s
        clock, read by the kernel). NotFoundError for an unknown filter."""
        return PhysicalTime(int(self._call(p.PinProperty(filter_id, 0, "masterclock"))))

    def open_filter(self, filter_id: str) -> FilterInstance:
        """Open an instance of a filter (a KS filter handle) to open pins on: a pin's
        per-filter instance limit counts the pins on one filter instance, its global
        limit those on all. Pins opened on the client directly go on a default
        instance per filter."""
        result = self._call(p.OpenFilter(filter_id))
        return FilterInstance(self, filter_id, int(result["instance"]))

    def open_pin(
        self,
        filter_id: str,
        pin: int,
        fmt: DataFormat | None = None,
        capacity: int = DEFAULT_CAPACITY,
        auto_reopen: bool | None = None,
        instance: int = 0,
    ) -> RenderPin | CapturePin:
        """Open pin `pin` of a filter with a data format (default: MIDI); it starts in STOP.

        `auto_reopen` (default: the client's setting) reopens the pin after a
        surprise removal (on the default filter instance: the old one went with the
        device); see the module docstring. `instance`: a filter instance from
        `open_filter` (`FilterInstance.open_pin` passes it); 0 the default one.
        """
        fmt = fmt or DataFormat()
        handle, capture, channel, fmt = self._open_channel(
            filter_id, pin, fmt, capacity, instance)
        pin_obj: RenderPin | CapturePin
        if capture:
            assert isinstance(channel, ChannelReader)
            pin_obj = CapturePin(self, handle, filter_id, pin, channel)
        else:
            assert isinstance(channel, ChannelWriter)
            pin_obj = RenderPin(self, handle, filter_id, pin, channel)
        pin_obj._fmt, pin_obj._capacity = fmt, capacity
        pin_obj.auto_reopen = self.auto_reopen if auto_reopen is None else auto_reopen
        pin_obj.reopen_timeout = self.reopen_timeout
        self._pins[handle] = pin_obj
        return pin_obj

    def _open_channel(
        self, filter_id: str, pin: int, fmt: DataFormat, capacity: int, instance: int = 0
    ) -> tuple[int, bool, ChannelReader | ChannelWriter, DataFormat]:
        """Open the pin: its handle, direction, channel and the format the pin took
        (what the kernel says; `fmt` where it says nothing usable)."""
        result = self._call(p.OpenPin(filter_id, pin, fmt.to_wire(), capacity, instance))
        handle = int(result["handle"])
        try:
            capture = bool(result["capture"])
            with contextlib.suppress(StatusError):
                fmt = DataFormat.from_wire(result.get("format"))
            try:
                fds = fetch_fds(self.runtime_dir, str(result["token"]), PEER_FDS, CALL_TIMEOUT)
            except OSError as exc:
                raise errors.KsError(Status.INSUFFICIENT_RESOURCES,
                                     f"cannot fetch the pin's rings: {exc}") from exc
            name = f"pin{handle}"
            opened = (ChannelReader.from_fds(fds, name) if capture
                      else ChannelWriter.from_fds(fds, name))
            self._resources.channels[id(opened)] = opened
            return handle, capture, opened, fmt
        except BaseException:
            with contextlib.suppress(errors.KsError):
                self._call(p.ClosePin(handle))
            raise

    def _open_streaming(
        self, filter_id: str, pin: int | None, fmt: DataFormat | None, capacity: int,
        capture: bool, auto_reopen: bool | None,
    ) -> RenderPin | CapturePin:
        if pin is None:
            pin = self.filter(filter_id).find_pin(capture)
        opened = self.open_pin(filter_id, pin, fmt, capacity, auto_reopen)
        if isinstance(opened, CapturePin) != capture:
            opened.close()
            what = "capture" if capture else "render"
            raise errors.KsError(Status.INVALID_PARAMETER, f"pin {pin} is not a {what} pin")
        return opened

    def open_render(
        self, filter_id: str, pin: int | None = None, fmt: DataFormat | None = None,
        capacity: int = DEFAULT_CAPACITY, auto_reopen: bool | None = None,
    ) -> RenderPin:
        """Open the filter's render pin (the first one unless `pin` is given).

        `auto_reopen=True`: after a surprise removal, reopen and carry on (see
        the module docstring); default: the client's setting.
        """
        opened = self._open_streaming(
            filter_id, pin, fmt, capacity, capture=False, auto_reopen=auto_reopen
        )
        assert isinstance(opened, RenderPin)
        return opened

    def open_capture(
        self, filter_id: str, pin: int | None = None, fmt: DataFormat | None = None,
        capacity: int = DEFAULT_CAPACITY, auto_reopen: bool | None = None,
    ) -> CapturePin:
        """Open the filter's capture pin (the first one unless `pin` is given).

        `auto_reopen=True`: after a surprise removal, reopen and carry on (see
        the module docstring); default: the client's setting.
        """
        opened = self._open_streaming(
            filter_id, pin, fmt, capacity, capture=True, auto_reopen=auto_reopen
        )
        assert isinstance(opened, CapturePin)
        return opened

    def open_monitor(
        self, filter_id: str, pin: int | None = None, capacity: int = DEFAULT_CAPACITY,
        *, capture: bool = False,
    ) -> Monitor:
        """Watch what every instance of a pin renders or captures, without taking an
        instance (see `ksclient.monitor`). `pin` None: the filter's first render pin
        (`capture=True`: its first capture pin)."""
        from ksclient.monitor import Monitor

        if pin is None:
            pin = self.filter(filter_id).find_pin(capture)
        result = self._call(p.OpenMonitor(filter_id, pin, capacity))
        try:
            try:
                fds = fetch_fds(self.runtime_dir, str(result["token"]), PEER_FDS, CALL_TIMEOUT)
            except OSError as exc:
                raise errors.KsError(Status.INSUFFICIENT_RESOURCES,
                                     f"cannot fetch the monitor's ring: {exc}") from exc
            channel = ChannelReader.from_fds(fds, f"monitor{result['handle']}")
            return Monitor(self, int(result["handle"]), filter_id, pin, channel)
        except BaseException:
            with contextlib.suppress(errors.KsError):
                self._call(p.CloseMonitor(int(result["handle"])))
            raise

    def device_registry(self, device: str) -> list[dict[str, Any]]:
        """The registry keys of `device` (its name or its filter's id), read-only: a list
        of {"type": "DEVICE", "path": "Statistics", "values": {name: value}}."""
        result: list[dict[str, Any]] = self._call(p.DeviceRegistry(device))
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call(p.Stats())
        return result

    def close(self) -> None:
        """Close every pin, say goodbye (acknowledged), release the connection. Idempotent."""
        if self._closed:
            return
        for pin in tuple(self._pins.values()):
            with contextlib.suppress(errors.KsError):
                pin.close()
        with contextlib.suppress(errors.KsError):
            self.check_kernel()
        if self._broken is None and hasattr(self, "kernel_pid"):
            with contextlib.suppress(StatusError):
                self._rpc.call(p.Goodbye(), 2.0)
        self._closed = True
        self._finalizer.detach()
        if getattr(self, "_kernel_watch", None) is not None:
            self._kernel_watch.close()  # type: ignore[union-attr]
            self._kernel_watch = None
            self._kernel_fd = None
        self._rpc.close()
        self._ctx.term()


class FilterInstance:
    """An open instance of a filter (`Client.open_filter`): open pins on it; closing it
    closes them."""

    def __init__(self, client: Client, filter_id: str, instance: int) -> None:
        self.client = client
        self.filter_id = filter_id
        self.instance = instance
        self.pins: list[Pin] = []
        self._closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open_pin(
        self, pin: int, fmt: DataFormat | None = None, capacity: int = DEFAULT_CAPACITY
    ) -> RenderPin | CapturePin:
        """Open pin `pin` on this filter instance (see `Client.open_pin`)."""
        if self._closed:
            raise errors.ClosedError("the filter instance is closed")
        opened = self.client.open_pin(self.filter_id, pin, fmt, capacity, False, self.instance)
        self.pins.append(opened)
        return opened

    def cinstances(self, pin: int) -> dict[str, int]:
        """KSPROPERTY_PIN_CINSTANCES on this instance: {"possible": ..., "current": ...}."""
        result: dict[str, int] = self.client.pin_property(
            self.filter_id, pin, "cinstances", self.instance)
        return result

    def close(self) -> None:
        """Close the pins opened on this instance, then the instance. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for pin in self.pins:
            with contextlib.suppress(errors.KsError):
                pin.close()
        with contextlib.suppress(errors.KernelGoneError, errors.ClosedError):
            if not self.client._closed:
                self.client._call(p.CloseFilter(self.instance))


class Pin:
    """An open pin. Walk its state one step at a time, or use run()/pause()/stop().

    `lost` counts messages lost to surprise removals of the device (render:
    sent but never taken by the miniport: still in the client's ring, the
    sequencer, or the miniport's ring; capture: read from the device but never
    delivered), `reopens` how often auto_reopen brought the pin back. Bytes a
    miniport took and held in its own buffers when it died are known to nobody
    and not in `lost`.
    """

    def __init__(self, client: Client, handle: int, filter_id: str, pin_id: int) -> None:
        self.client = client
        self.handle = handle
        self.filter_id = filter_id
        self.pin_id = pin_id
        self.state = KsState.STOP
        self.auto_reopen = False
        self.reopen_timeout = REOPEN_TIMEOUT
        self.lost = 0
        self.reopens = 0
        self._fmt = DataFormat()
        self._capacity = DEFAULT_CAPACITY
        self._closed = False
        self._error: errors.KsError | None = None
        self._removed_at: float | None = None
        self._target_state = KsState.STOP
        self._lost_now = 0
        self._tallied = False
        """The loss of this handle's removal is counted in `lost` already."""
        self._detached = False
        """The old handle is closed and the device not back yet: no channel to use."""
        self._pin_events: collections.deque[PinEvent] = collections.deque()
        self._event_callbacks: dict[int, Callable[[PinEvent], None] | None] = {}
        self._cookies = itertools.count(1)
        self._runs: list[list[int]] = []
        """The RUN periods since the last STOP, as the kernel's clock told them:
        [physical start, stream time at start, stream time at the end (-1: running)]."""
        self._running = (_NEVER, 0)
        """The RUN period going on, if any, for the capture path: (its physical start,
        its stream time minus that start); (_NEVER, 0) outside RUN."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _on_error(self, error: errors.KsError) -> None:
        if self._error is None or isinstance(error, errors.BrokenError):
            if isinstance(error, errors.DeviceRemovedError) and self._removed_at is None:
                self._removed_at = time.monotonic()
                if not self._detached:  # mid-reopen, the state to go back to is known
                    self._target_state = self.state
            self._error = error

    def _check(self, deadline: float | None = None) -> None:
        """Raise what broke the pin; with auto_reopen, reopen it after a removal instead,
        waiting for the device until `deadline` (KsTimeoutError) or the reopen window
        ends (the DeviceRemovedError)."""
        if self._closed:
            raise errors.ClosedError("the pin is closed")
        error = self._error
        if error is None:
            return
        if self.auto_reopen and isinstance(error, errors.DeviceRemovedError):
            self._reopen(error, deadline)
            return
        if isinstance(error, errors.DeviceRemovedError):
            self._tally_loss()
        raise error

    def _reopen(self, error: errors.DeviceRemovedError, deadline: float | None) -> None:
        removed_at = self._removed_at if self._removed_at is not None else time.monotonic()
        give_up = removed_at + self.reopen_timeout
        until = give_up if deadline is None else min(deadline, give_up)
        client = self.client
        self._release_old_handle()
        while True:
            if not client._await_filter(self.filter_id, until):
                if time.monotonic() >= give_up:
                    self.auto_reopen = False
                    raise error
                raise errors.KsTimeoutError(f"{self.filter_id} has not come back yet")
            try:
                handle, _, channel, self._fmt = client._open_channel(
                    self.filter_id, self.pin_id, self._fmt, self._capacity
                )
            except (errors.DeviceRemovedError, errors.NotFoundError):
                continue  # gone again between the listing and the open: wait once more
            break
        self.handle = handle
        self._attach(channel)
        self._detached = False
        self._tallied = False
        client._pins[handle] = self
        self._error = None
        self._removed_at = None
        self.state = KsState.STOP
        self._runs.clear()
        self._running = (_NEVER, 0)
        try:
            self.walk_to(self._target_state)
        except errors.DeviceRemovedError as exc:
            self._on_error(exc)
            self._check(deadline)
            return
        self.reopens += 1
        client._post_event(
            KernelEvent("reopened", self.filter_id, error.message, handle, lost=self._lost_now)
        )
        self._lost_now = 0

    def _tally_loss(self) -> None:
        """Add what the removal lost on this handle to `lost` (once per handle; the
        kernel keeps a removed pin's counts until the client closes it)."""
        if self._tallied:
            return
        self._tallied = True
        kernel_stats: dict[str, Any] = {}
        with contextlib.suppress(errors.KsError):
            kernel_stats = self.statistics().get("stats", {})
        self._lost_now = self._count_lost(kernel_stats)
        self.lost += self._lost_now

    def _release_old_handle(self) -> None:
        """Count what the removal lost on the old handle, then close it (once)."""
        if self._detached:
            return
        self._detached = True
        self._tally_loss()
        self.client._pins.pop(self.handle, None)
        with contextlib.suppress(errors.KsError):
            self.client._call(p.ClosePin(self.handle))
        self._close_channel()

    def _count_lost(self, kernel_stats: dict[str, Any]) -> int:
        return int(kernel_stats.get("lost", 0))

    def _attach(self, channel: ChannelReader | ChannelWriter) -> None:
        raise NotImplementedError

    @property
    def removed(self) -> bool:
        return isinstance(self._error, errors.BrokenError)

    def set_state(self, state: KsState) -> None:
        """Move to `state`, which must be one step from the current state.

        The stream clock follows: it runs in RUN, stands still in PAUSE and ACQUIRE
        and returns to 0 in STOP (which also flushes what is queued)."""
        self._check()
        clock = self.client._call(p.SetState(self.handle, int(state)))
        self.state = KsState(state)
        self._clock_changed(clock)
        if self.state == KsState.STOP:
            self._flushed()

    def _clock_changed(self, clock: Any) -> None:
        self._note_clock(clock)
        runs = self._runs
        running = runs[-1] if runs and runs[-1][2] < 0 else None
        self._running = (_NEVER, 0) if running is None else (running[0], running[1] - running[0])

    def _note_clock(self, clock: Any) -> None:
        runs = self._runs
        if self.state == KsState.STOP:
            runs.clear()
            return
        if not isinstance(clock, dict):
            return
        stream, phys = int(clock.get("time", 0)), int(clock.get("physical", 0))
        if self.state == KsState.RUN:
            if not runs or runs[-1][2] >= 0:
                runs.append([phys, stream, -1])
                del runs[:-RUN_HISTORY]
        elif runs and runs[-1][2] < 0:
            runs[-1][2] = stream

    def stream_time_at(self, physical_time: int) -> int:
        """The stream time this pin's clock showed at `physical_time` (since the last
        STOP; a time outside RUN maps to where the clock stood)."""
        runs = self._runs
        for start, stream, end in reversed(runs):
            if physical_time >= start:
                t = stream + (physical_time - start)
                return t if end < 0 else min(t, end)
        return runs[0][1] if runs else 0

    def enable_event(
        self, kind: str, time: int = 0, interval: int = 0,
        callback: Callable[[PinEvent], None] | None = None,
    ) -> int:
        """Enable a KS event on this pin and return its id (for `disable_event`).

        kind "position": KSEVENT_CLOCK_POSITION_MARK, once when the stream clock
        reaches `time`; "interval": KSEVENT_CLOCK_INTERVAL_MARK, each time it passes
        `time` + k * `interval` (at least 1 ms); "end_of_stream" (render):
        KSEVENT_CONNECTION_ENDOFSTREAM, once nothing queued is left to play (at once
        if nothing is queued: enable it after queueing). Events come through
        `next_pin_event`/`pin_events`, or `callback(event)` from this client's thread
        while it takes in kernel messages. Closing the pin cancels them.
        """
        self._check()
        cookie = next(self._cookies)
        self._event_callbacks[cookie] = callback
        try:
            self.client._call(p.EnableEvent(self.handle, kind, cookie, int(time), int(interval)))
        except BaseException:
            self._event_callbacks.pop(cookie, None)
            raise
        return cookie

    def disable_event(self, cookie: int) -> None:
        """Disable an enabled event; one that fired already (position, end of stream) or
        was never enabled raises KsError(STATUS_INVALID_PARAMETER)."""
        self._check()
        self._event_callbacks.pop(cookie, None)
        try:
            self.client._call(p.DisableEvent(self.handle, cookie))
        finally:
            # What fired before the kernel disabled it is not delivered any more.
            self._pin_events = collections.deque(
                e for e in self._pin_events if e.cookie != cookie)

    def _on_pin_event(self, body: p.PinEvent) -> None:
        if body.cookie not in self._event_callbacks:
            return  # disabled meanwhile
        event = PinEvent(body.kind, body.cookie, body.time)
        if body.kind != "interval":
            callback = self._event_callbacks.pop(body.cookie)
        else:
            callback = self._event_callbacks[body.cookie]
        if callback is not None:
            callback(event)
        else:
            self._pin_events.append(event)

    def next_pin_event(self, timeout: float | None = None) -> PinEvent:
        """The next event enabled without a callback that fired; KsTimeoutError if none."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.client.pump_events()
            if self._pin_events:
                return self._pin_events.popleft()
            self._check()
            remaining = 1.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise errors.KsTimeoutError("no pin event")
            self.client._wait_events(min(remaining, 0.1))

    def pin_events(self) -> Iterator[PinEvent]:
        """Events as they fire, until the pin is closed or broken."""
        while True:
            try:
                yield self.next_pin_event()
            except (errors.ClosedError, errors.BrokenError):
                return

    def connection_property(self, prop: str, value: Any = None) -> Any:
        """KSPROPSETID_Connection and stream properties of this pin by name: "state"
        (get; set walks one step, prefer `set_state`), "dataformat" (get; set: see
        `set_format`), "time" (the correlated clock), "position" (events moved and
        the stream time), "latencyclock" (get: see `latency_clock`)."""
        self._check()
        return self.client._call(p.ConnectionProperty(self.handle, prop, value))

    def latency_clock(self) -> PhysicalTime:
        """KSPROPERTY_SYNTH_LATENCYCLOCK: the master clock now plus the stream's schedule
        pre-fetch (100 ns, on `now()`'s clock): the earliest time an event sent now can
        still play on time. The master time itself on a stream without pre-fetch (MIDI
        streams, and DirectMusic miniports that sequence for themselves)."""
        return PhysicalTime(int(self.connection_property("latencyclock")))

    @property
    def _fmt(self) -> DataFormat:
        """The pin's data format as the kernel gave it at open (or `set_format` set it)."""
        return self._format

    @_fmt.setter
    def _fmt(self, fmt: DataFormat) -> None:
        self._format = fmt
        # Asked on every message: kept with the format (DataFormat is frozen).
        self._dmus = fmt.sub_format == KSDATAFORMAT_SUBTYPE_DIRECTMUSIC

    @property
    def is_directmusic(self) -> bool:
        """The pin exchanges DirectMusic data (KSDATAFORMAT_SUBTYPE_DIRECTMUSIC): buffers are
        DMUS_EVENTHEADER buffers and messages carry a channel group."""
        return self._dmus

    @property
    def format(self) -> DataFormat:
        """KSPROPERTY_CONNECTION_DATAFORMAT: the pin's data format."""
        return DataFormat.from_wire(self.connection_property("dataformat"))

    def set_format(self, fmt: DataFormat) -> None:
        """Set KSPROPERTY_CONNECTION_DATAFORMAT: the miniport stream's SetFormat decides;
        its failure is raised and the pin keeps its format."""
        self.connection_property("dataformat", fmt.to_wire())
        self._fmt = fmt

    def time(self) -> int:
        """KSPROPERTY_CLOCK_TIME: the pin's stream time now, from the kernel (100 ns)."""
        return self.correlated_time()[0]

    def correlated_time(self) -> tuple[int, PhysicalTime]:
        """KSPROPERTY_CLOCK_CORRELATEDTIME: (stream time, physical time), read together."""
        self._check()
        clock = self.client._call(p.ClockTime(self.handle))
        return int(clock["time"]), PhysicalTime(clock["physical"])

    def _flushed(self) -> None:
        pass

    def walk_to(self, target: KsState) -> None:
        """Step through every state between the current one and `target`."""
        while self.state != target:
            step = 1 if target > self.state else -1
            self.set_state(KsState(self.state + step))

    def run(self) -> None:
        self.walk_to(KsState.RUN)

    def pause(self) -> None:
        self.walk_to(KsState.PAUSE)

    def stop(self) -> None:
        self.walk_to(KsState.STOP)

    def close(self) -> None:
        """Close the pin (the kernel acknowledges); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._event_callbacks.clear()
        self._pin_events.clear()
        if self._detached:
            return  # the old handle is closed already, and so is its channel
        if isinstance(self._error, errors.DeviceRemovedError) and not self.client._closed:
            self._tally_loss()
        self.client._pins.pop(self.handle, None)
        with contextlib.suppress(errors.KernelGoneError, errors.ClosedError):
            if not self.client._closed:
                self.client._call(p.ClosePin(self.handle))
        self._close_channel()

    def _close_channel(self) -> None:
        pass

    def statistics(self) -> dict[str, Any]:
        for pin in self.client.stats()["pins"]:
            if pin["handle"] == self.handle:
                return dict(pin)
        return {}


class RenderPin(Pin):
    """A pin the client writes MIDI to (KSPIN_DATAFLOW_IN)."""

    def __init__(
        self, client: Client, handle: int, filter_id: str, pin_id: int, channel: ChannelWriter
    ) -> None:
        super().__init__(client, handle, filter_id, pin_id)
        self._channel = channel
        self._chunk = channel.ring.max_payload
        self._written = 0
        self._events_checked = time.monotonic()
        self._pending: dict[int, BufferRequest] = {}
        """Buffers written and not complete yet, by number."""
        self._buffers_written = 0

    def _attach(self, channel: ChannelReader | ChannelWriter) -> None:
        assert isinstance(channel, ChannelWriter)
        self._channel = channel
        self._written = 0
        self._buffers_written = 0

    def _count_lost(self, kernel_stats: dict[str, Any]) -> int:
        # Whatever this pin wrote that the kernel neither passed on nor flushed on STOP,
        # and what it passed on that the miniport never took from its ring.
        if not kernel_stats:
            return self._written
        passed = (int(kernel_stats.get("released", 0)) + int(kernel_stats.get("flushed", 0))
                  - int(kernel_stats.get("split_extra", 0)))  # packed records split
        return max(0, self._written - passed) + int(kernel_stats.get("undelivered", 0))

    def _records(
        self, message: Any, at: int | None, raw: bool = False, channel_group: int = 1
    ) -> list[tuple[int, int, bytes]]:
        data = _to_bytes(message)
        if not data:
            raise InvalidMessage("an empty message")
        if not raw:
            check_message(data)
        stamp, flags = _stamp(at)
        return self._chunked(stamp, flags, data, channel_group)

    def _chunked(
        self, stamp: int, flags: int, data: bytes, channel_group: int
    ) -> list[tuple[int, int, bytes]]:
        """The records of one message: a long one (SysEx) split to fit a record, each
        chunk with the channel group in front on a DirectMusic pin (ipc.dmusic)."""
        chunk = self._chunk
        if not self.is_directmusic:
            if channel_group != 1:
                raise ValueError(f"channel group {channel_group} on a MIDI pin, which "
                                 "carries channel group 1 only")
            return [(stamp, flags, data[i : i + chunk]) for i in range(0, len(data), chunk)]
        prefix = _group_prefix(channel_group)
        chunk -= dmus.GROUP_PREFIX.size
        return [(stamp, flags, prefix + data[i : i + chunk]) for i in range(0, len(data), chunk)]

    def _ready(self, deadline: float | None = None) -> None:
        # A removal must fail the next send even if nobody looked at the events, but
        # looking costs a system call: do it at most every EVENT_CHECK_SECONDS.
        now = time.monotonic()
        if now - self._events_checked >= EVENT_CHECK_SECONDS:
            self._events_checked = now
            self.client.pump_events()
        self._check(deadline)
        if self.state == KsState.STOP:
            raise errors.InvalidStateError(
                Status.INVALID_DEVICE_STATE, "the pin is in STOP; call run() first"
            )

    def send(
        self, message: Any, at: int | None = None, timeout: float | None = None,
        channel_group: int = 1,
    ) -> None:
        """Queue one message (bytes, a list of ints or a mido.Message).

        `at`: presentation time in 100 ns units. A plain int is a stream time: the
        event plays when this pin's clock (`time()`) reaches it, so PAUSE holds it
        and RUN resumes the count; `pin.time() + delay` plays `delay` from now. A
        PhysicalTime (`ksclient.now() + delay`, or `ksclient.physical(t)`) is a
        time on the shared clock, played once it passed and the pin is in RUN.
        None or a past time plays at once. Blocks while the ring is full, up to
        `timeout` seconds (None: no limit). Events play in the order sent.
        InvalidMessage (a ValueError), sending nothing, unless the message is exactly
        one valid MIDI 1.0 message; `send_raw` sends any bytes.
        `channel_group`: the DirectMusic channel group (1..65535) on a DirectMusic
        pin; a MIDI pin carries group 1 only (ValueError for another).
        """
        if at is None and channel_group == 1 and self._send_fast(message):
            return
        self.send_many([message], at, timeout, channel_group=channel_group)

    def _send_fast(self, message: Any) -> bool:
        """`send` of the common case, inline: one channel message (bytes, or a list of
        ints) at once in group 1 on a MIDI pin that is ready, with the checks `send`
        makes (a message this path does not take goes the generic way, which accepts
        or refuses it as it always did). False, having sent nothing, where the
        generic path must decide: another message, a pin not ready, kernel events
        due a look (EVENT_CHECK_SECONDS), a full ring."""
        if type(message) is not bytes:
            if type(message) is not list:
                return False
            try:
                message = bytes(message)
            except (TypeError, ValueError):
                return False
        if (self._error is not None or self._closed or self._dmus or self.state == _STOP
                or not _is_channel_message(message)
                or _monotonic() - self._events_checked >= EVENT_CHECK_SECONDS):
            return False
        start = trace.now() if trace.ON else 0
        try:
            if not self._channel.send(message):
                return False
        except RingError as exc:
            raise errors.BrokenError(Status.IO_DEVICE_ERROR, f"corrupt ring: {exc}") from exc
        if trace.ON:
            tracing.sent(start, self.handle, self._written, 1)
        self._written += 1
        return True

    def send_raw(
        self, data: Any, at: int | None = None, timeout: float | None = None,
        channel_group: int = 1,
    ) -> None:
        """Queue bytes as they are: a stream of MIDI bytes (running status, several
        messages, anything), unchecked. For those who mean it. (On a DirectMusic pin
        they still go as one record with the channel group in front.)"""
        self.send_many([data], at, timeout, raw=True, channel_group=channel_group)

    def send_nowait(self, message: Any, at: int | None = None, channel_group: int = 1) -> None:
        """Like send, but raise WouldBlock (sending nothing) if the ring has no room."""
        if at is None and channel_group == 1 and self._send_fast(message):
            return
        try:
            self._ready(time.monotonic())
        except errors.KsTimeoutError:
            raise errors.WouldBlock("the device is away; the pin will reopen") from None
        records = self._records(message, at, channel_group=channel_group)
        start = trace.now() if trace.ON else 0
        sent = self._channel.send_many(records)
        if trace.ON:
            tracing.sent(start, self.handle, self._written, sent)
        self._written += sent
        if sent == len(records):
            return
        if sent == 0:
            self.client.pump_events()
            with contextlib.suppress(errors.KsTimeoutError):
                self._check(time.monotonic())
            raise errors.WouldBlock("the render ring is full")
        # A message longer than one record is partly queued: finish it rather than cut it.
        self._send_records(records[sent:], None)

    def send_many(
        self, messages: Iterable[Any], at: int | None = None, timeout: float | None = None,
        raw: bool = False, channel_group: int = 1,
    ) -> None:
        """Queue several messages at once (one wake-up for the lot): the fast path.
        Every message is checked first (see `send`); one invalid message sends none.
        `raw`: queue the bytes unchecked (see `send_raw`); `channel_group`: see `send`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._ready(deadline)
        records: list[tuple[int, int, bytes]] = []
        # A channel message at once in group 1 on a MIDI pin is its own record, as
        # _records would make it, without the generic checks.
        plain = at is None and not raw and channel_group == 1 and not self._dmus
        for message in messages:
            if plain and type(message) is bytes and _is_channel_message(message):
                records.append((0, 0, message))
            else:
                records += self._records(message, at, raw, channel_group)
        self._send_records(records, deadline)

    def send_batch(
        self, data: bytes | bytearray | memoryview, at: int | None = None,
        timeout: float | None = None, channel_group: int = 1,
    ) -> None:
        """Queue whole channel messages (80-EF, each with its status byte, no running
        status) given back to back in one buffer, all with the presentation time `at`
        (see `send`): the throughput path. They travel as few ring records as fit
        (`ipc.midi.FLAG_PACKED`), checked with one pattern over the whole buffer and no
        Python object per message; the miniport's `write` gets the same bytes.

        InvalidMessage (a ValueError) naming the byte offset, sending nothing, if the
        buffer is empty or is not exactly such messages (SysEx and system messages go
        with `send`/`send_many`). Blocks while the ring is full, up to `timeout`
        seconds. On a DirectMusic pin each message goes as its own event in
        `channel_group`."""
        data = bytes(data)
        error = packed_error(data)
        if error is not None:
            raise InvalidMessage(error)
        deadline = None if timeout is None else time.monotonic() + timeout
        self._ready(deadline)
        stamp, flags = _stamp(at)
        if self.is_directmusic:
            records: list[tuple[int, int, bytes]] = []
            for message in split_packed(data) or ():
                records += self._chunked(stamp, flags, message, channel_group)
        else:
            if channel_group != 1:
                raise ValueError(f"channel group {channel_group} on a MIDI pin, which "
                                 "carries channel group 1 only")
            if len(data) <= self._chunk:
                records = [(stamp, flags | FLAG_PACKED, data)]
            else:
                flags |= FLAG_PACKED
                records = [(stamp, flags, part) for part in _pack_pattern(self._chunk)
                           .findall(data)]
        self._send_records(records, deadline)

    def write(
        self, buffer: bytes | bytearray | memoryview, presentation_time: int = 0,
        timeout: float | None = None,
    ) -> BufferRequest:
        """Queue a KSMUSICFORMAT buffer (see `ksclient.ksmusic`) as one stream request;
        on a DirectMusic pin, a DMUS_EVENTHEADER buffer (see `ksclient.dmusic`).

        KSMUSICFORMAT: the first event's TimeDeltaMs counts from `presentation_time`
        (a stream time, or a PhysicalTime as for `send`), each later one from the
        event before. DirectMusic: each event plays at `presentation_time` + its
        rtDelta (100 ns from the buffer's start, as DMUS_EVENTHEADER says), in time
        order (events of equal time in buffer order), in its channel group. A past
        time plays at once. Malformed framing raises ksmusic.FramingError or
        dmusic.FramingError (STATUS_INVALID_PARAMETER) and queues nothing.
        The returned request completes when every event has been handed to the
        miniport (`data_used` = the buffer's length), or with STATUS_CANCELLED
        when STOP flushes it or `cancel()` drops it first. Buffers and `send`
        calls play in the order made.
        """
        timed = self._dmus_timed(buffer) if self.is_directmusic else self._ksmusic_timed(buffer)
        deadline = None if timeout is None else time.monotonic() + timeout
        self._ready(deadline)
        number = self._buffers_written
        request = BufferRequest(self, len(buffer), number)
        if not timed:
            request._complete(Status.SUCCESS, 0)
            return request
        base, flags = _stamp(presentation_time)
        if base + max(offset for offset, _, _ in timed) > MAX_TIME:
            error = dmusic.FramingError if self.is_directmusic else ksmusic.FramingError
            raise error(f"an event of the buffer plays after 2**63-1 (100 ns), from {base}")
        flags |= RENDER_FLAG_IN_BUFFER
        records: list[tuple[int, int, bytes]] = []
        t = base
        for offset, channel_group, data in timed:
            t = base + offset
            records += self._chunked(t, flags, data, channel_group)
        # The end marker: never played, it carries the buffer's number back (and, being
        # no event, no channel group).
        records.append((t, RENDER_FLAG_BUFFER_END, BUFFER_MARKER.pack(number)))
        self._buffers_written += 1
        self._pending[number] = request
        try:
            self._send_records(records, deadline)
        except BaseException as exc:
            # The marker (last) never reached the kernel: the request cannot complete there.
            self._pending.pop(number, None)
            request._complete(getattr(exc, "status", Status.UNSUCCESSFUL), 0)
            raise
        self._written -= 1  # the marker is no message: `lost` counts only messages
        return request

    @staticmethod
    def _ksmusic_timed(buffer: bytes | bytearray | memoryview) -> list[tuple[int, int, bytes]]:
        """(100 ns from the start, channel group 1, bytes) of a KSMUSICFORMAT buffer's events."""
        timed = []
        ms = 0
        for delta, data in ksmusic.unpack(buffer):
            ms += delta
            timed.append((ms * 10_000, 1, data))
        return timed

    @staticmethod
    def _dmus_timed(buffer: bytes | bytearray | memoryview) -> list[tuple[int, int, bytes]]:
        """(rtDelta, channel group, bytes) of a DirectMusic buffer's events, in time order."""
        events = dmusic.unpack(buffer)
        # rtDelta counts from the buffer's start, so buffer order need not be time order;
        # the sequencer never reorders, so the records must be in time order (stable).
        events.sort(key=lambda e: e.rt_delta)
        return [(e.rt_delta, e.channel_group, e.data) for e in events]

    def _buffers_done(self, first: int, count: int, status: int) -> None:
        pending = self._pending
        last = first + count
        numbers = (range(first, last) if count <= len(pending)
                   else [n for n in pending if first <= n < last])
        for number in numbers:
            request = pending.pop(number, None)
            if request is not None:
                request._complete(status, request.size if status == Status.SUCCESS else 0)

    def _cancel(self, request: BufferRequest) -> bool:
        if request.done or self._detached:
            return False
        self._check()
        cancelled = bool(self.client._call(p.CancelBuffer(self.handle, request.number)))
        if cancelled and self._pending.pop(request.number, None) is not None:
            request._complete(Status.CANCELLED, 0)
        return cancelled

    def _fail_pending(self, status: int) -> None:
        pending, self._pending = self._pending, {}
        for request in pending.values():
            request._complete(status, 0)

    def _flushed(self) -> None:
        # STOP answered after the kernel's cancellations: anything left is cancelled.
        self.client.pump_events()
        self._fail_pending(Status.CANCELLED)

    def _send_records(self, records: list[tuple[int, int, bytes]], deadline: float | None) -> None:
        while records:
            # After an auto-reopen the pin has a new channel: look it up every time.
            channel = self._channel
            start = trace.now() if trace.ON else 0
            try:
                sent = channel.send_many(records)
            except RingError as exc:
                raise errors.BrokenError(Status.IO_DEVICE_ERROR, f"corrupt ring: {exc}") from exc
            if trace.ON:
                tracing.sent(start, self.handle, self._written, sent)
            self._written += sent
            del records[:sent]
            if not records:
                return
            self.client.pump_events()
            self.client.check_kernel()
            self._check(deadline)
            if channel is not self._channel:
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise errors.KsTimeoutError(f"{len(records)} records could not be queued")
            wait = 0.25 if remaining is None else min(0.25, remaining)
            channel.wait_for_space(len(records[0][2]), wait)

    def _close_channel(self) -> None:
        self._fail_pending(self._error.status if self._error is not None else Status.CANCELLED)
        self.client._resources.channels.pop(id(self._channel), None)
        self._channel.close()


@functools.cache
def _pack_pattern(max_payload: int) -> re.Pattern[bytes]:
    """Splits a valid batch into runs of whole messages of at most `max_payload` bytes."""
    most = max(1, max_payload // 3)
    return re.compile(rb"(?:[\x80-\xbf\xe0-\xef][\x00-\x7f][\x00-\x7f]|[\xc0-\xdf][\x00-\x7f])"
                      rb"{1,%d}" % most)


class BufferRequest:
    """A buffer written to a render pin, like a KS stream IRP: pending until the port
    handed every event in it to the miniport (or STOP cancelled it)."""

    def __init__(self, pin: RenderPin, size: int, number: int) -> None:
        self.pin = pin
        self.size = size
        self.number = number
        """The buffer's number on its pin (counted from 0 per handle)."""
        self.status: int | None = None
        """None while pending; then STATUS_SUCCESS, STATUS_CANCELLED, or the error."""
        self.data_used = 0

    @property
    def done(self) -> bool:
        return self.status is not None

    def _complete(self, status: int, data_used: int) -> None:
        self.status = int(status)
        self.data_used = data_used

    def wait(self, timeout: float | None = None) -> int:
        """Wait until the request completes and return its status; KsTimeoutError if it
        is still pending after `timeout` seconds. The pin's errors are raised."""
        deadline = None if timeout is None else time.monotonic() + timeout
        client = self.pin.client
        while True:
            client.pump_events()
            if self.status is not None:
                return self.status
            self.pin._check(deadline)
            remaining = 1.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise errors.KsTimeoutError("the buffer is still pending")
            client._wait_events(min(remaining, 0.1))

    def cancel(self) -> bool:
        """Cancel the request (IoCancelIrp): its events not yet handed to the miniport
        are dropped and it completes with STATUS_CANCELLED, data_used 0; the other
        buffers and messages carry on in order. True if it was still pending; False
        if it had completed (or completes on its own meanwhile)."""
        return self.pin._cancel(self)


class CapturePin(Pin):
    """A pin the client reads MIDI from (KSPIN_DATAFLOW_OUT)."""

    def __init__(
        self, client: Client, handle: int, filter_id: str, pin_id: int, channel: ChannelReader
    ) -> None:
        super().__init__(client, handle, filter_id, pin_id)
        self._channel = channel
        self._ready: collections.deque[MidiMessage] = collections.deque()
        self._sysex = SysexJoiner()
        self._grouped = GroupJoiner()
        """On a DirectMusic pin: the records' groups stripped, SysEx joined per group."""
        self._unframed = 0
        self._bad_packed = 0
        """Packed records from the kernel that were not whole channel messages."""
        self._raw: list[tuple[int, int, bytes]] = []
        """Records `receive_batch` read (SysEx joined, packed checked), not yet taken."""
        self._partial: tuple[int, bytes, int] | None = None
        """What `read` could not fit of a message: its stream time, the rest, its group."""
        # Waking for data costs one epoll_wait; the kernel's messages and death are
        # looked at only when their descriptors say so.
        self._waiter = Waiter()
        self._data_fd = channel.data_fileno()
        self._waiter.watch(self._data_fd)
        rpc = client._rpc
        self._waiter.add_socket(rpc.socket, lambda: rpc.activity)
        if client._kernel_fd is not None:
            self._waiter.watch(client._kernel_fd)
        self._callback_thread: threading.Thread | None = None
        self._callback_stop = threading.Event()

    @property
    def dropped(self) -> int:
        """Messages the kernel had to drop because this pin's ring was full."""
        return self._channel.ring.dropped

    @property
    def malformed(self) -> int:
        """Records this pin dropped instead of delivering: on a DirectMusic pin, those
        without a valid channel group in front (the kernel never writes one), and
        messages `read` could not frame as a DirectMusic event; on a MIDI pin, packed
        records (`ipc.midi.FLAG_PACKED`) that were not whole channel messages."""
        return self._grouped.malformed + self._unframed + self._bad_packed

    def _attach(self, channel: ChannelReader | ChannelWriter) -> None:
        assert isinstance(channel, ChannelReader)
        self._waiter.unwatch(self._data_fd)
        self._channel = channel
        self._data_fd = channel.data_fileno()
        self._waiter.watch(self._data_fd)

    def _release_old_handle(self) -> None:
        # What reached the old ring was delivered, not lost: keep it for receive().
        with contextlib.suppress(errors.KsError):
            self._fill()
        super()._release_old_handle()

    def _flushed(self) -> None:
        self._partial = None
        self._ready.clear()
        self._raw.clear()
        self._sysex.clear()
        self._grouped.clear()
        self._channel.discard_all()

    def _read_records(self) -> list[Any]:
        """What the kernel wrote to the ring (up to 1024 records); ClosedError, BrokenError."""
        if self._closed:
            raise errors.ClosedError("the pin is closed")
        try:
            records = self._channel.receive_many(1024)
        except RingError as exc:
            raise errors.BrokenError(Status.IO_DEVICE_ERROR, f"corrupt ring: {exc}") from exc
        if trace.ON:
            tracing.received(self.handle, records)
        return records

    def _joined(self, records: list[Any]) -> list[tuple[int, int, bytes]]:
        """A MIDI pin's records with SysEx joined and each packed one checked (one that
        is not whole channel messages is dropped and counted in `malformed`)."""
        joined = self._sysex.join(records)
        if not any(r[1] & FLAG_PACKED for r in joined):
            return joined
        out = []
        for record in joined:
            if record[1] & FLAG_PACKED and not is_packed_run(record[2]):
                self._bad_packed += 1
            else:
                out.append(record)
        return out

    def _fill(self) -> bool:
        if self._raw:
            # What receive_batch read comes first: the order is the ring's.
            raw, self._raw = self._raw, []
            self._queue(raw)
        if self._detached or self._closed:
            if self._closed:
                raise errors.ClosedError("the pin is closed")
            return bool(self._ready)
        # _read_records, inline (every receive's path).
        try:
            records = self._channel.receive_many(1024)
        except RingError as exc:
            raise errors.BrokenError(Status.IO_DEVICE_ERROR, f"corrupt ring: {exc}") from exc
        if not records:
            return bool(self._ready)
        if trace.ON:
            tracing.received(self.handle, records)
        if self._dmus:
            stream_time = self.stream_time_at
            self._ready.extend(
                MidiMessage(data, timestamp, flags, stream_time(timestamp), group)
                for timestamp, flags, data, group in self._grouped.join(records))
        else:
            # A record without flags is one whole message the kernel checked, which the
            # SysEx joiner passes as it is: records that are all such (the usual read)
            # need neither the joiner nor the packed-run check.
            plain: Sequence[tuple[int, int, bytes]] = records
            for record in records:
                if record[1]:
                    plain = self._joined(records)
                    break
            self._queue(plain)
        return bool(self._ready)

    def _queue(self, records: Sequence[tuple[int, int, bytes]]) -> None:
        """Checked, joined records of a MIDI pin into `_ready`, one MidiMessage a message."""
        stream_time = self.stream_time_at
        ready = self._ready
        # The stream time of a capture in the RUN period going on is stream_time_at's
        # answer, inline; any other time asks stream_time_at.
        start, offset = self._running
        for timestamp, flags, data in records:
            if not flags:
                ready.append(_new_tuple(MidiMessage, (
                    data, timestamp, 0,
                    offset + timestamp if timestamp >= start else stream_time(timestamp), 1)))
            elif flags & FLAG_PACKED:
                st = stream_time(timestamp)
                flags &= ~FLAG_PACKED
                # A run of channel messages: a MidiMessage each, without the NamedTuple's
                # Python constructor (the fields are the same, the group 1).
                ready.extend([_new_tuple(MidiMessage, (m, timestamp, flags, st, 1))
                              for m in split_packed(data) or ()])
            else:
                ready.append(MidiMessage(data, timestamp, flags, stream_time(timestamp)))

    def _fill_raw(self) -> bool:
        if self._detached or self._closed:
            if self._closed:
                raise errors.ClosedError("the pin is closed")
            return bool(self._raw)
        self._raw += self._joined(self._read_records())
        return bool(self._raw)

    def receive_batch(self, max_records: int = 1024,
                      timeout: float | None = None) -> list[MidiBatch]:
        """What is waiting now, up to `max_records` batches, in order, as bytes: the
        throughput path of capture, with no Python object per message. Each MidiBatch
        holds one or more whole messages captured at one time (the kernel keeps a run
        of whole channel messages from one miniport read as one record) or one whole
        SysEx. Waits up to `timeout` seconds (None: forever) for the first; an empty
        list when none came in time. KsTimeoutError is not raised; DeviceRemovedError,
        ClosedError and BrokenError are, as for `receive`. On a DirectMusic pin, use
        `receive_many` (ValueError)."""
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        if self.is_directmusic:
            raise ValueError("receive_batch is for MIDI pins; use receive_many")
        if self._ready:
            # Messages an earlier receive read from the ring come first.
            ready = self._ready
            n = min(max_records, len(ready))
            return [MidiBatch(m.data, m.timestamp, m.flags)
                    for m in (ready.popleft() for _ in range(n))]
        if not self._raw and not self._fill_raw() and not self._poll(timeout, self._fill_raw):
            return []
        raw = self._raw
        if len(raw) <= max_records:
            self._raw = []
        else:
            raw, self._raw = raw[:max_records], raw[max_records:]
        return [MidiBatch(data, timestamp, flags & ~FLAG_PACKED)
                for timestamp, flags, data in raw]

    def receive_nowait(self) -> MidiMessage:
        """The next message, or WouldBlock if none is waiting."""
        if self._ready or self._fill():
            return self._ready.popleft()
        if self._error is not None or self._closed:
            with contextlib.suppress(errors.KsTimeoutError):  # a reopen waiting for the device
                self._check(time.monotonic())
            if self._fill():
                return self._ready.popleft()
        raise errors.WouldBlock("no message waiting")

    def poll(self, timeout: float | None = 0.0) -> bool:
        """True when a message can be received without blocking (waits up to `timeout`)."""
        if self._ready or self._raw:
            return True
        # A MIDI pin reads into the records `receive_batch` hands out as they are and
        # `receive` makes messages of first: a poll makes no Python object per message.
        fill = self._fill if self._dmus else self._fill_raw
        return fill() or self._poll(timeout, fill)

    def _poll(self, timeout: float | None, fill: Callable[[], bool]) -> bool:
        """Wait up to `timeout` until `fill()` finds something (True) or not (False)."""
        return self._poll_until(None if timeout is None else _monotonic() + timeout, fill)

    def _poll_until(self, deadline: float | None, fill: Callable[[], bool]) -> bool:
        """`_poll` until `deadline` (time.monotonic(); None: no limit)."""
        if self._error is not None or self._closed:
            self._check_or_timeout(deadline)
        while True:
            if deadline is None:
                ms = 1000
            else:
                remaining = deadline - _monotonic()
                if remaining >= 1.0:
                    ms = 1000
                elif remaining > 0:
                    ms = int(remaining * 1000) or 1
                else:
                    ms = 0
            if self._detached:
                pass
            elif not ms:
                # Out of time (or asked not to wait): one look at the kernel's messages
                # and death, and no arming, which would have the kernel ring this pin's
                # doorbell for data a later call takes without sleeping.
                self.client.check_kernel()
                self.client.pump_events()
            elif self._channel.prepare_to_sleep():
                sockets, fds = self._waiter.wait(ms)
                # Only the data doorbell rang: no kernel message or death to look at.
                if sockets or fds != [self._data_fd]:
                    self.client.check_kernel()
                    self.client.pump_events()
            if fill():
                return True
            if not self._check_or_timeout(deadline):
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def _check_or_timeout(self, deadline: float | None) -> bool:
        """`_check`, but False where a reopen is still waiting for the device at `deadline`."""
        try:
            self._check(deadline)
        except errors.KsTimeoutError:
            return False
        return True

    def receive(self, timeout: float | None = None) -> MidiMessage:
        """The next message, waiting up to `timeout` seconds (None: forever).

        KsTimeoutError when nothing came; DeviceRemovedError if the device went away.
        """
        ready = self._ready
        if ready:
            return ready.popleft()
        if ((timeout is None or timeout > 0) and self._error is None and not self._closed
                and not self._raw):
            # The usual case, the message still on its way: straight to the wait, whose
            # arming looks at the ring (so an empty one is not read twice).
            if self._poll_until(None if timeout is None else _monotonic() + timeout,
                                self._fill):
                return ready.popleft()
        elif self._fill() or self._poll(timeout, self._fill):
            return ready.popleft()
        raise errors.KsTimeoutError("no MIDI message")

    def receive_many(
        self, max_messages: int = 1024, timeout: float | None = None
    ) -> list[MidiMessage]:
        """Every message waiting now, up to `max_messages`, in order: the batch path (one
        ring read and no wait per message). Waits up to `timeout` seconds (None:
        forever) for the first; an empty list when none came in time."""
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        if not self.poll(timeout):
            return []
        ready = self._ready
        while len(ready) < max_messages and self._fill_more():
            pass
        n = min(max_messages, len(ready))
        return [ready.popleft() for _ in range(n)]

    def _fill_more(self) -> bool:
        before = len(self._ready)
        self._fill()
        return len(self._ready) > before

    def read(
        self, size: int = 4096, timeout: float | None = None
    ) -> tuple[int, bytes]:
        """A KSMUSICFORMAT buffer of at most `size` bytes with the messages waiting, as a
        KS capture request returns it: (presentation time, buffer).

        The presentation time is the stream time of the first event; each
        TimeDeltaMs counts (in whole ms of stream time) from the event before.
        Waits up to `timeout` seconds for the first message (KsTimeoutError). A
        message longer than what is left of the buffer goes in as far as it fits
        and continues at the start of the next read (delta 0).

        On a DirectMusic pin the buffer is a DMUS_EVENTHEADER one (`ksclient.dmusic`,
        at least 24 bytes): each rtDelta counts (100 ns of stream time) from the
        presentation time, the first event's; every event carries its channel
        group; MIDI messages are structured events, SysEx unstructured, and a SysEx
        that does not fit goes on as unstructured pieces in the next read.
        """
        if self.is_directmusic:
            return self._read_dmus(size, timeout)
        if size < ksmusic.padded_size(1):
            raise ValueError(f"a buffer needs at least {ksmusic.padded_size(1)} bytes")
        if self._partial is None and not self.poll(timeout):
            raise errors.KsTimeoutError("no MIDI message")
        out = bytearray()
        first: int | None = None
        last_ms = 0
        while len(out) + ksmusic.padded_size(1) <= size:
            if self._partial is not None:
                stamp, data, _ = self._partial
                self._partial = None
            elif self._ready or self._fill():
                msg = self._ready.popleft()
                stamp, data = msg.stream_time, msg.data
            else:
                break
            if first is None:
                first, last_ms = stamp, 0
            ms = (stamp - first) // 10_000
            room = (size - len(out) - ksmusic.HEADER.size) & ~3
            if len(data) > room:
                data, rest = data[:room], data[room:]
                self._partial = (stamp, rest, 1)
            out += ksmusic.pack([(max(0, ms - last_ms), data)])
            last_ms = max(ms, last_ms)
        assert first is not None
        return first, bytes(out)

    def _read_dmus(self, size: int, timeout: float | None) -> tuple[int, bytes]:
        """`read` on a DirectMusic pin."""
        smallest = dmus.event_size(1)
        if size < smallest:
            raise ValueError(f"a DirectMusic buffer needs at least {smallest} bytes")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._partial is None and not self.poll(
                    None if deadline is None else max(0.0, deadline - time.monotonic())):
                raise errors.KsTimeoutError("no MIDI message")
            first, out, self._partial, dropped = dmusic.frame_captured(size, self._take)
            self._unframed += dropped
            if first is not None:
                return first, out
            # Nothing waiting could be framed (each counted in `malformed`): wait on.

    def _take(self) -> dmusic.Captured | None:
        """The next message for `read`: what did not fit last time, else the next one."""
        if self._partial is not None:
            partial, self._partial = self._partial, None
            return partial
        if self._ready or self._fill():
            msg = self._ready.popleft()
            return msg.stream_time, msg.data, msg.channel_group
        return None

    def __iter__(self) -> Iterator[MidiMessage]:
        """Messages as they come, until the pin is closed or broken."""
        while True:
            try:
                yield self.receive()
            except (errors.ClosedError, errors.BrokenError):
                return

    def set_callback(self, callback: Callable[[MidiMessage], None] | None) -> None:
        """Call `callback(message)` on a background thread for each message; None stops it.

        The thread only reads the ring; do not call this pin's other methods meanwhile.
        """
        if self._callback_thread is not None:
            self._callback_stop.set()
            self._callback_thread.join()
            self._callback_thread = None
        if callback is None:
            return
        self._callback_stop.clear()

        def deliver() -> None:
            while not self._callback_stop.is_set():
                if self._ready or self._fill():
                    while self._ready:
                        callback(self._ready.popleft())
                    continue
                if self._channel.prepare_to_sleep():
                    self._channel.wait(0.1)

        self._callback_thread = threading.Thread(target=deliver, daemon=True)
        self._callback_thread.start()

    def close(self) -> None:
        self.set_callback(None)
        super().close()
        self._waiter.close()

    def _close_channel(self) -> None:
        self.client._resources.channels.pop(id(self._channel), None)
        self._channel.close()


def connect(
    runtime_dir: str | os.PathLike[str] | None = None,
    *,
    timeout: float = 5.0,
    name: str | None = None,
    auto_reopen: bool = False,
    reopen_timeout: float = REOPEN_TIMEOUT,
) -> Client:
    """Connect to the kernel in `runtime_dir` (default: $PORTCLS_RUNTIME_DIR, else the
    per-user default), waiting up to `timeout` seconds for it to answer.

    `auto_reopen`: the default for this client's pins (see the module docstring);
    `reopen_timeout`: how long such a pin waits for its device to come back.
    """
    if reopen_timeout < 0:
        raise ValueError("reopen_timeout must not be negative")
    directory = Path(runtime_dir) if runtime_dir is not None else default_runtime_dir()
    return Client(directory, timeout, name or f"pid{os.getpid()}", auto_reopen, reopen_timeout)
