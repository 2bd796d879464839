"""The miniport contract: what a miniport author implements, and the port it talks to.

A miniport is a class derived from `MiniportMidi`, with streams derived from
`MiniportMidiStream`; or (DirectMusic) from `MiniportDMus`, whose streams are
`MXF`s exchanging `DmusKernelEvent` chains with an `AllocatorMXF` and a
`MasterClock` (see the DirectMusic part at the end of this module). It runs
in its own process (the miniport host), which stands in for the PortCls port
driver: it calls the miniport's methods when the kernel asks, and hands the
miniport a `Port` for the calls back
(`notify`, `register_service_group`, `new_service_group`, ...).

Every method reports failure by raising `StatusError` with an NTSTATUS code;
returning normally is STATUS_SUCCESS. Method names are the PortCls names in
snake_case, so the Windows documentation of IMiniportMidi and
IMiniportMidiStream applies almost word for word.
"""

from __future__ import annotations

import itertools
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar

from ipc.dmusic import DmusStreamType
from ipc.ks import DataFormat, DataRange, FilterDescriptor, KsState
from ipc.status import Status, StatusError

__all__ = [
    "MXF",
    "AllocatorMXF",
    "CaptureMXF",
    "DataFormat",
    "DataRange",
    "DmusKernelEvent",
    "DmusStreamType",
    "FifoCaptureStream",
    "FilterDescriptor",
    "InterruptSync",
    "InterruptSyncMode",
    "KsState",
    "MasterClock",
    "MiniportDMus",
    "MiniportMidi",
    "MiniportMidiStream",
    "Port",
    "PortDMus",
    "PortServiceGroup",
    "RegistryKey",
    "ResourceList",
    "ServiceSink",
    "Status",
    "StatusError",
    "link_events",
    "overrides",
]


@dataclass(frozen=True, slots=True)
class ResourceList:
    """The hardware resources PnP assigned to the device (CM_RESOURCE_LIST, simplified).

    `io_ranges` are (base, length) pairs; `interrupts` are IRQ numbers.
    `extra` carries anything else the configuration gave.
    """

    io_ranges: tuple[tuple[int, int], ...] = ()
    interrupts: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_wire(cls, obj: dict[str, Any]) -> ResourceList:
        def ints(seq: Any, n: int) -> tuple[Any, ...]:
            if not isinstance(seq, list):
                raise StatusError(Status.DEVICE_CONFIGURATION_ERROR, "resources must be lists")
            out = []
            for item in seq:
                parts = item if n > 1 else [item]
                if not (isinstance(parts, list) and len(parts) == n) or not all(
                    isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in parts
                ):
                    raise StatusError(Status.DEVICE_CONFIGURATION_ERROR, f"bad resource {item!r}")
                out.append(tuple(parts) if n > 1 else parts[0])
            return tuple(out)

        rest = {k: v for k, v in obj.items() if k not in ("io", "irq")}
        return cls(ints(obj.get("io", []), 2), ints(obj.get("irq", []), 1), rest)

    def to_wire(self) -> dict[str, Any]:
        return {"io": [list(r) for r in self.io_ranges], "irq": list(self.interrupts), **self.extra}


class ServiceSink(ABC):
    """An object a service group can call back (IServiceSink)."""

    @abstractmethod
    def request_service(self) -> None:
        """Called from the group's DPC when the group is serviced."""


class PortServiceGroup(ABC):
    """A service group, seen from the miniport (IServiceGroup).

    Its members run in insertion order in one DPC per request (requests made
    while it is queued coalesce). A group is also a sink, so groups can be
    members of groups.
    """

    @abstractmethod
    def add_member(self, sink: ServiceSink | PortServiceGroup) -> None:
        """Append `sink`; members are serviced in insertion order."""

    @abstractmethod
    def remove_member(self, sink: ServiceSink | PortServiceGroup) -> None:
        """Unlink `sink`."""

    @abstractmethod
    def request_service(self) -> None:
        """Queue the group's DPC; requests while it is queued coalesce into one run."""

    @abstractmethod
    def support_delayed_service(self) -> None:
        """Must be called once before `request_delayed_service`."""

    @abstractmethod
    def request_delayed_service(self, due_time: int) -> None:
        """Service later: 100 ns units, negative = relative, positive = absolute (shared clock).

        A new request replaces a pending one. StatusError(INVALID_DEVICE_REQUEST)
        before `support_delayed_service`.
        """

    @abstractmethod
    def cancel_delayed_service(self) -> None:
        """Cancel a pending delayed service."""


class RegistryKey(ABC):
    """A key of the device's registry store (IRegistryKey)."""

    @abstractmethod
    def query_value(self, name: str) -> Any:
        """The value; StatusError(OBJECT_NAME_NOT_FOUND) if it is not set."""

    @abstractmethod
    def set_value(self, name: str, value: Any) -> None:
        """Set a value: int, str, bytes, or a list of str."""

    @abstractmethod
    def delete_value(self, name: str) -> None: ...

    @abstractmethod
    def enumerate_values(self) -> dict[str, Any]: ...

    @abstractmethod
    def new_sub_key(self, name: str) -> RegistryKey: ...

    @abstractmethod
    def delete_key(self) -> None: ...


class InterruptSyncMode(IntEnum):
    NORMAL = 0
    """Call routines in order until one claims the interrupt."""
    ALL = 1
    """Call every routine."""
    REPEAT = 2
    """Call every routine, again and again while any claims the interrupt."""


_NORMAL = InterruptSyncMode.NORMAL
_RUN = KsState.RUN
_STOP = KsState.STOP


class InterruptSync:
    """IInterruptSync: service routines run under the interrupt lock.

    Hardware (a thread in the miniport process) calls `interrupt()`; code that
    must not race the ISR (a stream's `write`, say) runs through
    `call_synchronized_routine`. The lock is re-entrant so a routine may call
    back into the miniport.
    """

    _REPEAT_LIMIT: ClassVar[int] = 64

    def __init__(self, mode: InterruptSyncMode = InterruptSyncMode.NORMAL) -> None:
        self.mode = mode
        self.lock = threading.RLock()
        # A tuple replaced on each registration: an interrupt runs the routines that were
        # registered when it came, without copying them.
        self._routines: tuple[Callable[[], bool], ...] = ()
        self.interrupts = 0
        self.unclaimed = 0

    def register_service_routine(self, routine: Callable[[], bool], first: bool = False) -> None:
        """Add an ISR; it returns True when it claimed (handled) the interrupt."""
        with self.lock:
            if first:
                self._routines = (routine, *self._routines)
            else:
                self._routines = (*self._routines, routine)

    def call_synchronized_routine(self, routine: Callable[..., Any], *args: Any) -> Any:
        """Run `routine(*args)` with the interrupt lock held; return its result."""
        with self.lock:
            return routine(*args)

    def interrupt(self) -> bool:
        """Deliver one interrupt to the routines according to the mode; True if claimed."""
        with self.lock:
            self.interrupts += 1
            if self.mode is _NORMAL:
                # The first routine that claims it ends the interrupt.
                for routine in self._routines:
                    if routine():
                        return True
                self.unclaimed += 1
                return False
            claimed_any = False
            for _ in range(self._REPEAT_LIMIT):
                claimed = False
                for routine in self._routines:
                    if routine():
                        claimed = True
                        if self.mode == InterruptSyncMode.NORMAL:
                            break
                claimed_any |= claimed
                if self.mode != InterruptSyncMode.REPEAT or not claimed:
                    break
            if not claimed_any:
                self.unclaimed += 1
            return claimed_any


class Port(ABC):
    """The port driver as a miniport sees it (IPortMidi), handed to `MiniportMidi.init`.

    `notify` may be called from any thread (it is how an ISR raises the
    interrupt); every other method must be called from the miniport's own
    calls (init, new_stream, service, set_state, read, write, sinks).
    """

    @abstractmethod
    def notify(self, group: PortServiceGroup | None = None) -> None:
        """The ISR saw input or room for output: request service on `group`.

        With None: service the miniport's group and every stream's group.
        The group's DPC runs its members in insertion order: where the port's
        sink is a member, `MiniportMidi.service()`; for each capture stream
        whose `new_stream` returned the group, `read` until it returns b""
        (the bytes stamped with the time of this call); the miniport's own
        sinks; nested groups after. So what `service()` moves into a FIFO is
        read in the same DPC. Only then is the kernel told.
        """

    @abstractmethod
    def register_service_group(self, group: PortServiceGroup) -> None:
        """Call inside `init`, before the hardware can interrupt: the port joins `group`."""

    @abstractmethod
    def new_service_group(self) -> PortServiceGroup:
        """A new, empty service group in the kernel (PcNewServiceGroup)."""

    @abstractmethod
    def get_device_property(self, prop: int, length: int) -> bytes:
        """A device property (DevicePropertyXxx id) as bytes, strings UTF-16LE + NUL.

        BufferTooSmall (STATUS_BUFFER_TOO_SMALL, with `.needed`) if `length` is too
        small; StatusError(UNSUCCESSFUL) before the port is initialised.
        """

    @abstractmethod
    def new_registry_key(self, key_type: int, path: str = "") -> RegistryKey:
        """Open (creating) a key of the device's store; `key_type` is a RegistryKeyType."""


class MiniportMidiStream:
    """IMiniportMidiStream: one open stream, render or capture. Created in KSSTATE_STOP.

    The defaults of `read` and `write` reject the call with
    STATUS_INVALID_DEVICE_REQUEST, which is right for a stream of the other
    direction: a capture stream overrides `read`, a render stream `write`.
    """

    state: KsState = KsState.STOP

    def set_format(self, fmt: DataFormat) -> None:
        """Accept a new data format; normally success."""

    def set_state(self, state: KsState) -> None:
        """Move to `state`. The port only asks for one step at a time.

        STOP: nothing moves and buffered data is discarded. RUN: data moves.
        """
        self.state = state

    def read(self, max_bytes: int) -> bytes:
        """Capture: up to `max_bytes` bytes from the device; b"" means "nothing now".

        The port calls it again and again until it returns b"".
        """
        raise StatusError(Status.INVALID_DEVICE_REQUEST, "read on a render stream")

    def write(self, data: bytes) -> int:
        """Render: send bytes; return how many were taken: all, some, or 0 (busy, retry later).

        The port offers the rest again when the miniport notifies or after about
        1 ms. A device fault raises StatusError(IO_DEVICE_ERROR); never return 0
        forever.
        """
        raise StatusError(Status.INVALID_DEVICE_REQUEST, "write on a capture stream")

    def close(self) -> None:
        """The stream's pin was closed; release what it holds."""


class FifoCaptureStream(MiniportMidiStream):
    """A capture stream whose hardware (an ISR, a device callback) appends bytes to a FIFO.

    Input is kept only in RUN, as a UART keeps it. `read` and the STOP flush take
    `sync`'s lock, so they never interleave with the service routine (a `read` that
    finds the FIFO empty returns b"" without it: the routine only appends).
    """

    def __init__(self, sync: InterruptSync, fifo_size: int) -> None:
        self.sync = sync
        self.fifo_size = fifo_size
        self.overflowed = 0
        """Bytes of input dropped because the FIFO was full."""
        self._fifo = bytearray()

    def room(self) -> int:
        """Bytes `hardware_input` takes now (a stream not running takes and drops all)."""
        return self.fifo_size - len(self._fifo) if self.state == _RUN else 1 << 62

    def hardware_input(self, data: bytes) -> bool:
        """The hardware delivered `data`: keep it if running and it fits; True if kept."""
        if self.state != _RUN:
            return False
        if len(data) > self.fifo_size - len(self._fifo):
            self.overflowed += len(data)
            return False
        self._fifo += data
        return True

    def has_input(self) -> bool:
        return bool(self._fifo)

    def set_state(self, state: KsState) -> None:
        with self.sync.lock:
            self.state = state
            if state == _STOP:
                self._fifo.clear()

    def read(self, max_bytes: int) -> bytes:
        fifo = self._fifo
        if not fifo:
            # Empty: what the lock would give a moment later (the ISR only appends).
            return b""
        with self.sync.lock:
            if len(fifo) <= max_bytes:
                data = bytes(fifo)
                fifo.clear()
            else:
                data = bytes(fifo[:max_bytes])
                del fifo[:max_bytes]
            return data


class MiniportMidi(ABC):
    """IMiniportMidi. Subclasses are plugins, registered in the `portcls.miniports` group.

    The constructor takes the device's options from the configuration as
    keyword arguments and must not touch the hardware: that happens in `init`.
    """

    @abstractmethod
    def get_description(self) -> FilterDescriptor:
        """The static filter descriptor: pins, nodes, connections, categories."""

    def data_range_intersection(
        self, pin: int, client_format: DataFormat, miniport_range: DataRange
    ) -> DataFormat:
        """Choose the format for a pin; StatusError(NO_MATCH) if none fits.

        The default raises STATUS_NOT_IMPLEMENTED, which tells the port to use
        its own intersection (major, sub-format and specifier must agree).
        """
        raise StatusError(Status.NOT_IMPLEMENTED)

    @abstractmethod
    def init(self, resources: ResourceList, port: Port) -> PortServiceGroup | None:
        """Bind to the port and the hardware; return the group the port should join.

        Raise StatusError to fail the device (e.g. IO_DEVICE_ERROR if the
        hardware does not answer, DEVICE_CONFIGURATION_ERROR for bad resources).
        """

    @abstractmethod
    def new_stream(
        self, pin: int, capture: bool, fmt: DataFormat
    ) -> tuple[MiniportMidiStream, PortServiceGroup | None]:
        """A new stream for `pin`, in KSSTATE_STOP, and (capture) the group its ISR notifies.

        StatusError(INSUFFICIENT_RESOURCES) if the hardware has no stream left.
        """

    def service(self) -> None:  # noqa: B027 - an optional hook; the default does nothing
        """Called when the port's sink is serviced (a notify of its group), before that
        group's capture streams are read. Optional."""

    def close(self) -> None:  # noqa: B027 - an optional hook; the default does nothing
        """The device is being unloaded; release the hardware."""


# DirectMusic (dmusicks.h): IMiniportDMus, IMXF, IAllocatorMXF, IMasterClock.

PortDMus = Port
"""IPortDMus: the same port as IPortMidi (one implementation since Windows XP). A
DirectMusic miniport gets it in `MiniportDMus.init` and calls `notify(group)` after
its capture MXF put events into the port's sink."""


@dataclass(slots=True, eq=False)
class DmusKernelEvent:
    """DMUS_KERNEL_EVENT: one event, or the head of a chain linked by `next_event`.

    `data` holds the event's bytes (cbEvent is `len(data)`): a whole MIDI message,
    or (`DMUS_KEF_EVENT_INCOMPLETE` in `flags`) a SysEx fragment or raw capture
    bytes. A `DMUS_KEF_PACKAGE_EVENT` has no data of its own: its `package` chain
    (uData.pPackageEvt) is handled atomically. `pres_time_100ns` is on the master
    clock; `channel_group` is 1..65535. Events come from an `AllocatorMXF` and go
    back to it (whole chains) when the miniport is done with them.
    """

    channel_group: int = 1
    flags: int = 0
    pres_time_100ns: int = 0
    byte_position: int = 0
    data: bytes = b""
    next_event: DmusKernelEvent | None = None
    package: DmusKernelEvent | None = None

    @property
    def cb_event(self) -> int:
        """cbEvent: the unrounded length of the event's data."""
        return len(self.data)

    def chain(self) -> list[DmusKernelEvent]:
        """The events of the chain this one heads, in order (bounded against cycles:
        a chain longer than 1 << 20 events or that loops raises ValueError)."""
        out: list[DmusKernelEvent] = []
        seen: set[int] = set()
        event: DmusKernelEvent | None = self
        while event is not None:
            if id(event) in seen or len(out) >= 1 << 20:
                raise ValueError("an event chain that loops")
            seen.add(id(event))
            out.append(event)
            event = event.next_event
        return out


def link_events(events: list[DmusKernelEvent]) -> DmusKernelEvent | None:
    """Link `events` into one chain through `next_event`; its head (None if empty)."""
    for first, second in itertools.pairwise(events):
        first.next_event = second
    if events:
        events[-1].next_event = None
        return events[0]
    return None


class MXF(ABC):
    """IMXF: a DirectMusic stream (or filter, or sink) that takes event chains.

    Every method may raise StatusError; a render stream's `put_message` owns the
    events it was given from then on and returns them to the allocator when done.
    """

    @abstractmethod
    def set_state(self, state: KsState) -> None:
        """Move to `state` (one step at a time). Render: hold events outside RUN,
        return them to the allocator at STOP. Capture: events put in RUN or PAUSE go
        up, in STOP/ACQUIRE they are discarded."""

    @abstractmethod
    def put_message(self, event: DmusKernelEvent) -> None:
        """Take the chain `event` heads (DMUS_KEF_PACKAGE_EVENT events whole)."""

    @abstractmethod
    def connect_output(self, sink: MXF) -> None:
        """Capture: send events to `sink` from now on; StatusError(INVALID_DEVICE_REQUEST)
        on a stream that has no output."""

    @abstractmethod
    def disconnect_output(self, sink: MXF) -> None:
        """Stop sending events to `sink` (which must be the connected one)."""

    def close(self) -> None:  # noqa: B027 - an optional hook; the default does nothing
        """The stream's pin was closed (the last Release): give back what it holds."""


class AllocatorMXF(MXF):
    """IAllocatorMXF: the port's bounded pool of events and buffers.

    `put_message` takes whole chains (packages included) back into the pool.
    Exhausted pool: StatusError(INSUFFICIENT_RESOURCES).
    """

    @abstractmethod
    def get_message(self) -> DmusKernelEvent:
        """A fresh, zeroed event from the pool."""

    @abstractmethod
    def get_buffer_size(self) -> int:
        """The size of the buffers `get_buffer` hands out; longer data goes as a package."""

    @abstractmethod
    def get_buffer(self) -> bytearray:
        """A buffer of `get_buffer_size()` bytes from the pool."""

    @abstractmethod
    def put_buffer(self, buffer: bytearray) -> None:
        """Give back a buffer from `get_buffer`."""


class CaptureMXF(MXF):
    """A capture stream's usual wiring (the DirectMusic counterpart of FifoCaptureStream):
    `connect_output` keeps the port's sink, `put_message` passes the miniport's stamped
    events to it, and hands them back to `allocator` while no sink is connected (so
    none leak). Subclasses override `set_state`/`close` for their hardware."""

    def __init__(self, allocator: AllocatorMXF) -> None:
        self.allocator = allocator
        self.state = KsState.STOP
        self.sink: MXF | None = None

    def set_state(self, state: KsState) -> None:
        self.state = state

    def put_message(self, event: DmusKernelEvent) -> None:
        if self.sink is None:
            self.allocator.put_message(event)
        else:
            self.sink.put_message(event)

    def connect_output(self, sink: MXF) -> None:
        self.sink = sink

    def disconnect_output(self, sink: MXF) -> None:
        if sink is self.sink:
            self.sink = None


class MasterClock(ABC):
    """IMasterClock: the one reference clock of the kernel's DirectMusic streams."""

    @abstractmethod
    def get_time(self) -> int:
        """Now, in 100 ns on the shared monotonic clock (ipc.runtime.now_100ns)."""


class MiniportDMus(ABC):
    """IMiniportDMus. A plugin like `MiniportMidi`; the port asks for this interface
    first, so a class that is both is driven as a DirectMusic miniport.

    The constructor takes the device's options as keyword arguments and must not
    touch the hardware: that happens in `init`.
    """

    @abstractmethod
    def get_description(self) -> FilterDescriptor:
        """The static filter descriptor: pins, nodes, connections, categories."""

    def data_range_intersection(
        self, pin: int, client_format: DataFormat, miniport_range: DataRange
    ) -> DataFormat:
        """As `MiniportMidi.data_range_intersection`: the default raises
        STATUS_NOT_IMPLEMENTED (the port's own intersection)."""
        raise StatusError(Status.NOT_IMPLEMENTED)

    @abstractmethod
    def init(self, resources: ResourceList, port: Port) -> PortServiceGroup | None:
        """Bind to the port (IPortDMus) and the hardware; the group the port should join.

        StatusError fails the device (IO_DEVICE_ERROR, DEVICE_CONFIGURATION_ERROR).
        """

    @abstractmethod
    def new_stream(
        self,
        pin: int,
        stream_type: DmusStreamType,
        fmt: DataFormat,
        allocator: AllocatorMXF,
        master_clock: MasterClock,
    ) -> tuple[MXF, PortServiceGroup | None, int]:
        """A new stream, in KSSTATE_STOP: `(mxf, group, schedule_prefetch)`.

        MIDI_RENDER: the port `put_message`s each event once the master clock is within
        `schedule_prefetch` (100 ns, >= 0, or DONT_HOLD_FOR_SEQUENCING: at once) of its
        presentation time; the miniport plays it at that time. MIDI_CAPTURE: the port
        connects its sink with `connect_output`; the miniport puts stamped events in it
        and calls `port.notify(group)`. StatusError(INSUFFICIENT_RESOURCES) if no stream
        is left, INVALID_DEVICE_REQUEST for a type the pin does not stream.
        """

    def service(self) -> None:  # noqa: B027 - an optional hook; the default does nothing
        """Called when the port's sink is serviced, before the group's streams move."""

    def close(self) -> None:  # noqa: B027 - an optional hook; the default does nothing
        """The device is being unloaded; release the hardware."""


def overrides(miniport: MiniportMidi | MiniportDMus, hook: str) -> bool:
    """True if `miniport`'s class overrides the optional `hook` ("service",
    "data_range_intersection") of the contract it implements."""
    method = getattr(type(miniport), hook)
    return all(method is not getattr(base, hook)
               for base in (MiniportMidi, MiniportDMus) if isinstance(miniport, base))
