"""The wire protocol: every control message between clients, kernel and miniports.

A frame is one msgpack array. Requests get exactly one reply:

    request  [0, rid, op, [field, ...]]
    ok       [1, rid, result]
    error    [2, rid, status, message]
    event    [3, 0,   op, [field, ...]]     one-way, never answered

Each `op` is a small typed record (a frozen dataclass registered with
`@message`); its fields travel positionally. `decode` checks the envelope and
every field's type and range before anyone sees the record: every int has
bounds (a bare `int` field gets `INT_BOUNDS`; pids, handles, group ids, states
and sizes are `Annotated` with a tighter `Range`), every string, list and
dict a length, and values of type `Any` a depth and a total size. A handler
only sees values it can use without overflow, and only checks what needs
kernel state (is this pin yours, is this state reachable).
MIDI data never travels here: it goes through the shared-memory rings.
"""

from __future__ import annotations

import dataclasses
import struct
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated, Any, ClassVar, Final, TypeVar, Union, get_args, get_origin

import msgpack

from ipc.status import Status, StatusError

PROTOCOL_VERSION: Final = 1
EXIT_MINIPORT_FAULT: Final = 70
"""A miniport host's exit status when its miniport raised out of a callback: the
kernel reports it as that, not as a crash."""
EXIT_CONFIG_ERROR: Final = 78
"""A miniport host's exit status when the miniport could not be loaded or constructed
(sysexits' EX_CONFIG): a configuration error of the device, not a crash to restart."""
NOTIFY_ALL: Final = -1
"""The group id of `Notify(NULL)`: the miniport's group and every stream's group."""
MAX_FRAME: Final = 4 << 20
MAX_STR: Final = 4096
MAX_ITEMS: Final = 4096
MAX_DEPTH: Final = 16
"""How deep a value of type `Any` (a data format, resources, a registry value) may nest."""
MAX_ANY_NODES: Final = 4 * MAX_ITEMS
"""How many items in all a value of type `Any` may hold."""


@dataclass(frozen=True, slots=True)
class Range:
    """The bounds of an int field, both inclusive: `Annotated[int, Range(lo, hi)]`."""

    lo: int
    hi: int


INT_BOUNDS: Final = Range(-(1 << 53), 1 << 53)
"""Any int field without a tighter range: what every peer's arithmetic keeps exact."""
MAX_PID: Final = (1 << 22) - 1
"""Linux's largest possible pid (PID_MAX_LIMIT - 1)."""
Pid = Annotated[int, Range(1, MAX_PID)]
Handle = Annotated[int, Range(0, (1 << 31) - 1)]
"""Pin handles, stream ids, pin ids, sink ids, group ids, property ids."""
GroupId = Annotated[int, Range(-1, (1 << 31) - 1)]
"""A group id or NOTIFY_ALL."""
StatusCode = Annotated[int, Range(-(1 << 31), (1 << 32) - 1)]
Version = Annotated[int, Range(0, 1 << 16)]
Size = Annotated[int, Range(0, 1 << 32)]


class Kind(IntEnum):
    REQUEST = 0
    OK = 1
    ERROR = 2
    EVENT = 3


class ProtocolError(StatusError):
    """A frame that does not decode. `rid` is set when the request id was readable."""

    def __init__(self, message: str, rid: int | None = None) -> None:
        super().__init__(Status.INVALID_PARAMETER, message)
        self.rid = rid


Checker = Callable[[Any], bool]
_REGISTRY: dict[str, tuple[type[Any], tuple[Checker, ...], tuple[str, ...]]] = {}
_REQUIRED: dict[str, int] = {}
"""Per op, how many leading fields have no default: a peer may leave out the others
(fields added later, with defaults, so older peers still speak the protocol)."""
M = TypeVar("M")


def _is_int(v: Any) -> bool:
    return type(v) is int and -(1 << 63) <= v < (1 << 64)


def _in_range(bounds: Range) -> Checker:
    lo, hi = bounds.lo, bounds.hi
    return lambda v: type(v) is int and lo <= v <= hi


def check_any(value: Any) -> bool:
    """A value of type `Any` is plain data of bounded depth and size: None, bool, an
    int within INT_BOUNDS, a float, a str of MAX_STR, bytes, lists and str-keyed
    dicts, at most MAX_DEPTH deep and MAX_ANY_NODES items in all."""
    budget = MAX_ANY_NODES
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        budget -= 1
        if budget < 0 or depth > MAX_DEPTH:
            return False
        t = type(v)
        if v is None or t is bool or t is float:
            continue
        if t is int:
            if not INT_BOUNDS.lo <= v <= INT_BOUNDS.hi:
                return False
        elif t is str:
            if len(v) > MAX_STR:
                return False
        elif t is bytes:
            if len(v) > MAX_FRAME:
                return False
        elif t is list:
            if len(v) > MAX_ITEMS:
                return False
            stack.extend((x, depth + 1) for x in v)
        elif t is dict:
            if len(v) > MAX_ITEMS:
                return False
            for k, x in v.items():
                if type(k) is not str or len(k) > MAX_STR:
                    return False
                stack.append((x, depth + 1))
        else:
            return False
    return True


def _checker(tp: Any) -> Checker:
    if tp is Any:
        return check_any
    origin = get_origin(tp)
    if origin is Annotated:
        base, *extras = get_args(tp)
        bounds = next((e for e in extras if isinstance(e, Range)), None)
        if base is not int or bounds is None:
            raise TypeError(f"unsupported annotation {tp!r}")
        return _in_range(bounds)
    if tp is int:
        return _in_range(INT_BOUNDS)
    if tp is bool:
        return lambda v: type(v) is bool
    if tp is float:
        return lambda v: type(v) in (float, int)
    if tp is str:
        return lambda v: type(v) is str and len(v) <= MAX_STR
    if tp is bytes:
        return lambda v: type(v) is bytes and len(v) <= MAX_FRAME
    if origin in (Union, types.UnionType):
        options = tuple(_checker(a) for a in get_args(tp))
        return lambda v: any(c(v) for c in options)
    if origin is list:
        (item_tp,) = get_args(tp)
        item = _checker(item_tp)
        return lambda v: type(v) is list and len(v) <= MAX_ITEMS and all(item(x) for x in v)
    if origin is dict:
        key_tp, value_tp = get_args(tp)
        key, value = _checker(key_tp), _checker(value_tp)
        return lambda v: (
            type(v) is dict
            and len(v) <= MAX_ITEMS
            and all(key(k) and value(x) for k, x in v.items())
        )
    if tp is type(None):
        return lambda v: v is None
    raise TypeError(f"unsupported field type {tp!r}")


def message(op: str) -> Callable[[type[M]], type[M]]:
    """Register a dataclass as the record for `op`; its field types drive validation."""

    def register(cls: type[M]) -> type[M]:
        if op in _REGISTRY:
            raise ValueError(f"duplicate op {op!r}")
        hints = typing.get_type_hints(cls, include_extras=True)
        names = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        _REGISTRY[op] = (cls, tuple(_checker(hints[n]) for n in names), names)
        _REQUIRED[op] = sum(
            1 for f in dataclasses.fields(cls)  # type: ignore[arg-type, misc]
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        cls.OP = op  # type: ignore[attr-defined]
        return cls

    return register


@dataclass(frozen=True, slots=True)
class Request:
    rid: int
    body: Any

    @property
    def op(self) -> str:
        return str(self.body.OP)


@dataclass(frozen=True, slots=True)
class Event:
    body: Any

    @property
    def op(self) -> str:
        return str(self.body.OP)


@dataclass(frozen=True, slots=True)
class Reply:
    rid: int
    ok: bool
    result: Any = None
    status: int = Status.SUCCESS
    message: str = ""

    def unwrap(self) -> Any:
        """The result, or raise the StatusError the peer replied with."""
        if not self.ok:
            raise StatusError(self.status, self.message)
        return self.result


Frame = Request | Event | Reply


def _fields(body: Any) -> list[Any]:
    return [getattr(body, n) for n in _REGISTRY[body.OP][2]]


def encode_request(rid: int, body: Any) -> bytes:
    return msgpack.packb([Kind.REQUEST, rid, body.OP, _fields(body)])


def encode_event(body: Any) -> bytes:
    return msgpack.packb([Kind.EVENT, 0, body.OP, _fields(body)])


def encode_ok(rid: int, result: Any = None) -> bytes:
    return msgpack.packb([Kind.OK, rid, result])


def encode_error(rid: int, status: int, message: str) -> bytes:
    return msgpack.packb([Kind.ERROR, rid, int(status), message[:MAX_STR]])


def encode_exception(rid: int, exc: BaseException) -> bytes:
    """The one place that maps an exception to an error reply."""
    if isinstance(exc, StatusError):
        return encode_error(rid, exc.status, exc.message)
    return encode_error(rid, Status.UNSUCCESSFUL, f"{type(exc).__name__}: {exc}")


def decode(frame: bytes) -> Frame:
    """Decode and validate one frame; raise ProtocolError for anything malformed."""
    if len(frame) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(frame)} bytes is larger than {MAX_FRAME}")
    try:
        obj = msgpack.unpackb(frame, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise ProtocolError(f"not msgpack: {type(exc).__name__}") from exc
    if type(obj) is not list or len(obj) < 3 or type(obj[0]) is not int:
        raise ProtocolError("a frame is an array [kind, rid, ...]")
    kind, rid = obj[0], obj[1]
    if type(rid) is not int or not 0 <= rid < (1 << 63):
        raise ProtocolError("request id must be a non-negative integer")
    if kind == Kind.OK and len(obj) == 3:
        if not check_any(obj[2]):
            raise ProtocolError("a reply's result is too large or too deep", rid or None)
        return Reply(rid, True, obj[2])
    if (
        kind == Kind.ERROR and len(obj) == 4 and _is_int(obj[2])
        and type(obj[3]) is str and len(obj[3]) <= MAX_STR
    ):
        return Reply(rid, False, None, obj[2] & 0xFFFFFFFF, obj[3])
    if kind not in (Kind.REQUEST, Kind.EVENT) or len(obj) != 4:
        raise ProtocolError(f"bad frame of kind {kind}", rid or None)
    op, values = obj[2], obj[3]
    entry = _REGISTRY.get(op) if type(op) is str else None
    if entry is None:
        raise ProtocolError(f"unknown operation {str(op)[:64]!r}", rid or None)
    cls, checkers, names = entry
    if type(values) is not list or not _REQUIRED[op] <= len(values) <= len(names):
        raise ProtocolError(f"{op}: expected {len(names)} fields", rid or None)
    n = len(values)
    for name, check, value in zip(names[:n], checkers[:n], values, strict=True):
        if not check(value):
            raise ProtocolError(f"{op}: field {name!r} has a bad type or size", rid or None)
    body = cls(*values)
    return Request(rid, body) if kind == Kind.REQUEST else Event(body)


# Client -> kernel ("user mode").


@message("hello")
@dataclass(frozen=True, slots=True)
class Hello:
    pid: Annotated[int, Range(0, MAX_PID)]
    """0: no process to watch (the session then ends only by goodbye)."""
    name: str
    version: Version = PROTOCOL_VERSION
    OP: ClassVar[str]


@message("list_filters")
@dataclass(frozen=True, slots=True)
class ListFilters:
    OP: ClassVar[str]


@message("pin_property")
@dataclass(frozen=True, slots=True)
class PinProperty:
    filter: str
    pin: Handle
    property: str
    value: Any = None
    """What a set (or DATAINTERSECTION) carries; None for a plain get."""
    OP: ClassVar[str]


@message("open_pin")
@dataclass(frozen=True, slots=True)
class OpenPin:
    filter: str
    pin: Handle
    format: dict[str, Any]
    capacity: Size
    instance: int = 0
    """The filter instance (OpenFilter) to open the pin on; 0: the client's default one."""
    OP: ClassVar[str]


@message("open_filter")
@dataclass(frozen=True, slots=True)
class OpenFilter:
    """Open an instance of a filter (a KS filter handle); answers {"instance": id}."""

    filter: str
    OP: ClassVar[str]


@message("close_filter")
@dataclass(frozen=True, slots=True)
class CloseFilter:
    """Close a filter instance, and the pins still open on it."""

    instance: int
    OP: ClassVar[str]


@message("set_state")
@dataclass(frozen=True, slots=True)
class SetState:
    handle: Handle
    state: Handle
    OP: ClassVar[str]


@message("get_state")
@dataclass(frozen=True, slots=True)
class GetState:
    handle: Handle
    OP: ClassVar[str]


@message("close_pin")
@dataclass(frozen=True, slots=True)
class ClosePin:
    handle: Handle
    OP: ClassVar[str]


@message("open_monitor")
@dataclass(frozen=True, slots=True)
class OpenMonitor:
    """Watch what every instance of a pin renders or captures, without taking one:
    the reply names a ring the kernel copies each message into (dropped, and counted,
    when the monitor falls behind)."""

    filter: str
    pin: int
    capacity: int
    OP: ClassVar[str]


@message("close_monitor")
@dataclass(frozen=True, slots=True)
class CloseMonitor:
    handle: int
    OP: ClassVar[str]


@message("stats")
@dataclass(frozen=True, slots=True)
class Stats:
    OP: ClassVar[str]


@message("device_registry")
@dataclass(frozen=True, slots=True)
class DeviceRegistry:
    """Read a device's registry keys and their values (read-only); the device by its
    name or its filter's id. Reply: [{"type": name, "path": str, "values": {...}}]."""

    device: str
    OP: ClassVar[str]


@message("goodbye")
@dataclass(frozen=True, slots=True)
class Goodbye:
    """A client leaves: the kernel closes its pins and acknowledges."""

    OP: ClassVar[str]


@message("clock_time")
@dataclass(frozen=True, slots=True)
class ClockTime:
    """KSPROPERTY_CLOCK_CORRELATEDTIME of a pin: its stream time and the physical time."""

    handle: int
    OP: ClassVar[str]


@message("enable_event")
@dataclass(frozen=True, slots=True)
class EnableEvent:
    """Enable a KS event on pin `handle` under the client's `cookie`: kind "position"
    (once at stream `time`), "interval" (at `time` + k * `interval`), "end_of_stream"."""

    handle: int
    kind: str
    cookie: int
    time: int = 0
    interval: int = 0
    OP: ClassVar[str]


@message("disable_event")
@dataclass(frozen=True, slots=True)
class DisableEvent:
    handle: int
    cookie: int
    OP: ClassVar[str]


@message("cancel_buffer")
@dataclass(frozen=True, slots=True)
class CancelBuffer:
    """Cancel buffer number `buffer` of pin `handle`: True if it was still pending (its
    events not yet handed on are dropped), False if it completed already."""

    handle: int
    buffer: int
    OP: ClassVar[str]


@message("connection_property")
@dataclass(frozen=True, slots=True)
class ConnectionProperty:
    """KSPROPSETID_Connection / stream properties of an open pin: get (value None) or set."""

    handle: int
    property: str
    value: Any = None
    OP: ClassVar[str]


# Kernel -> client events.


@message("device_arrival")
@dataclass(frozen=True, slots=True)
class DeviceArrival:
    filter: str
    OP: ClassVar[str]


@message("device_removal")
@dataclass(frozen=True, slots=True)
class DeviceRemoval:
    filter: str
    reason: str
    OP: ClassVar[str]


@message("pin_error")
@dataclass(frozen=True, slots=True)
class PinError:
    handle: Handle
    status: StatusCode
    message: str
    OP: ClassVar[str]


@message("buffers_done")
@dataclass(frozen=True, slots=True)
class BuffersDone:
    """Buffers `first` .. `first + count - 1` the client wrote on pin `handle` completed
    with `status` (SUCCESS: every event handed to the miniport; CANCELLED: flushed by
    STOP)."""

    handle: int
    first: int
    count: int
    status: int
    OP: ClassVar[str]


@message("pin_event")
@dataclass(frozen=True, slots=True)
class PinEvent:
    """An enabled KS event fired on pin `handle`: kind "position", "interval" or
    "end_of_stream", `cookie` the client's id for it, `time` the stream time."""

    handle: int
    kind: str
    cookie: int
    time: int
    OP: ClassVar[str]


@message("kernel_shutdown")
@dataclass(frozen=True, slots=True)
class KernelShutdown:
    OP: ClassVar[str]


# Miniport host -> kernel ("the bus").


@message("register")
@dataclass(frozen=True, slots=True)
class Register:
    device: str
    pid: Pid
    miniport: str
    wants_service: bool
    """Kept for the wire's sake: the host now runs `service()` itself (Service before
    Read, in the group's DPC), so the kernel no longer reads it."""
    custom_intersection: bool
    version: Version = PROTOCOL_VERSION
    secret: bytes = b""
    """The launch's secret (ipc.credentials): proof that this is the process the kernel
    started for `device`."""
    port_clsid: str = ""
    """The port the adapter made for this miniport (PcNewPort's class id); "" is
    CLSID_PortMidi. Unknown ids are refused with NOT_SUPPORTED."""
    resources: Any = None
    """What the adapter passed to `port.init`; None: the device's configured resources."""
    OP: ClassVar[str]


@message("load_failed")
@dataclass(frozen=True, slots=True)
class LoadFailed:
    """Instead of Register: the host could not load or construct its miniport. The
    device is failed as a configuration error, with `reason`, and not restarted."""

    device: str
    pid: Pid
    reason: str
    secret: bytes = b""
    OP: ClassVar[str]


@message("device_started")
@dataclass(frozen=True, slots=True)
class DeviceStarted:
    """The adapter's `start_device` returned (sent under the launch's own identity, not a
    subdevice's): `status` SUCCESS, or the failure it returned with `reason`. A failed
    start fails the device (its filters withdrawn) and it is not restarted, as an
    IPort::Init failure was before adapters."""

    device: str
    pid: Pid
    secret: bytes
    status: StatusCode
    reason: str = ""
    OP: ClassVar[str]


MAX_SUBDEVICE_NAME: Final = 64


@message("register_subdevice")
@dataclass(frozen=True, slots=True)
class RegisterSubdevice:
    """PcRegisterSubdevice for the port of the sending connection: publish its filter
    under `name` (unique per device). Reply: {"filter": the published filter's id}."""

    name: str
    OP: ClassVar[str]


@message("register_physical_connection")
@dataclass(frozen=True, slots=True)
class RegisterPhysicalConnection:
    """PcRegisterPhysicalConnection[ToExternal|FromExternal] between subdevices of the
    sender's device, by subdevice name; with `from_external` (`to_external`) the
    `from_name` (`to_name`) is instead another filter's id, outside this device."""

    from_name: str
    from_pin: Handle
    to_name: str
    to_pin: Handle
    from_external: bool = False
    to_external: bool = False
    OP: ClassVar[str]


@message("heartbeat")
@dataclass(frozen=True, slots=True)
class Heartbeat:
    OP: ClassVar[str]


@message("interrupt")
@dataclass(frozen=True, slots=True)
class Interrupt:
    """The miniport's ISR called notify: service these groups (NOTIFY_ALL = Notify(NULL)).

    The host has run the miniport's half of their DPCs already (the miniport's
    `service()`, its streams' `read`, its own sinks, in insertion order): the
    kernel runs its half. Every request for service on a miniport's group,
    delayed ones included, starts in the host and reaches the kernel this way.

    Usually raised through the interrupt channel instead (see `encode_interrupt`);
    the bus message keeps an interrupt in order behind events posted before it.
    """

    groups: list[GroupId]
    OP: ClassVar[str]


MAX_INTERRUPT_GROUPS: Final = 4096
_GROUP_ID: Final = struct.Struct("<q")
INTERRUPT_HEARTBEAT: Final = 1
"""Record flag on the interrupt channel: not an interrupt but the host's heartbeat, with no
payload. The host writes it without ringing the doorbell, and the kernel takes it when it
next reads the ring (an interrupt, its safety sweep, its heartbeat check), so an idle
host proves it is alive without waking the kernel or either side's ZeroMQ I/O thread.
Interrupt records carry flags 0; any other flag is malformed."""


def encode_interrupt(groups: list[int]) -> bytes:
    """One interrupt-channel record: the groups to notify as little-endian i64s.

    The record's timestamp carries the ISR time; no msgpack on this path."""
    return struct.pack(f"<{len(groups)}q", *groups)


def decode_interrupt(payload: bytes) -> list[int]:
    """The groups of one interrupt-channel record; ProtocolError if malformed."""
    n, rest = divmod(len(payload), _GROUP_ID.size)
    if rest or not 0 < n <= MAX_INTERRUPT_GROUPS:
        raise ProtocolError(f"an interrupt record of {len(payload)} bytes")
    groups = list(struct.unpack(f"<{n}q", payload))
    if min(groups) < NOTIFY_ALL:
        raise ProtocolError(f"interrupt for group {min(groups)}")
    return groups


@message("group_new")
@dataclass(frozen=True, slots=True)
class GroupNew:
    group: Handle
    OP: ClassVar[str]


@message("group_add_member")
@dataclass(frozen=True, slots=True)
class GroupAddMember:
    """Add a member to a group: another group (`member_group`) or a miniport sink."""

    group: Handle
    member_group: Handle | None
    sink: Handle | None
    OP: ClassVar[str]


@message("group_remove_member")
@dataclass(frozen=True, slots=True)
class GroupRemoveMember:
    group: Handle
    member_group: Handle | None
    sink: Handle | None
    OP: ClassVar[str]


@message("group_release")
@dataclass(frozen=True, slots=True)
class GroupRelease:
    group: Handle
    OP: ClassVar[str]


@message("register_service_group")
@dataclass(frozen=True, slots=True)
class RegisterServiceGroup:
    group: Handle
    OP: ClassVar[str]


@message("stream_error")
@dataclass(frozen=True, slots=True)
class StreamError:
    """A stream's write failed with a device error; its pending data is lost."""

    stream: Handle
    status: StatusCode
    message: str
    OP: ClassVar[str]


@message("device_property")
@dataclass(frozen=True, slots=True)
class DeviceProperty:
    property: Handle
    length: Size
    OP: ClassVar[str]


@message("registry")
@dataclass(frozen=True, slots=True)
class Registry:
    """One registry operation on a key of the device's store (see kernel.devicestore)."""

    key_type: Handle
    path: str
    action: str
    name: str
    value: Any
    OP: ClassVar[str]


@message("batch")
@dataclass(frozen=True, slots=True)
class Batch:
    """Events a miniport made in one callback, delivered together (encoded event frames).

    The kernel handles them all before it runs a DPC, as the miniport's calls
    all happen before a DPC can run on Windows.
    """

    events: list[bytes]
    OP: ClassVar[str]


# Kernel -> miniport host.


@message("init")
@dataclass(frozen=True, slots=True)
class Init:
    resources: dict[str, Any]
    OP: ClassVar[str]


@message("get_description")
@dataclass(frozen=True, slots=True)
class GetDescription:
    OP: ClassVar[str]


@message("data_range_intersection")
@dataclass(frozen=True, slots=True)
class DataRangeIntersection:
    pin: Handle
    client_format: dict[str, Any]
    miniport_range: dict[str, Any]
    OP: ClassVar[str]


@message("new_stream")
@dataclass(frozen=True, slots=True)
class NewStream:
    stream: Handle
    pin: Handle
    capture: bool
    format: dict[str, Any]
    channel: str
    OP: ClassVar[str]


@message("stream_set_state")
@dataclass(frozen=True, slots=True)
class StreamSetState:
    stream: Handle
    state: Handle
    OP: ClassVar[str]


@message("stream_set_format")
@dataclass(frozen=True, slots=True)
class StreamSetFormat:
    stream: Handle
    format: dict[str, Any]
    OP: ClassVar[str]


@message("close_stream")
@dataclass(frozen=True, slots=True)
class CloseStream:
    stream: Handle
    OP: ClassVar[str]


@message("unload")
@dataclass(frozen=True, slots=True)
class Unload:
    OP: ClassVar[str]


@message("init_complete")
@dataclass(frozen=True, slots=True)
class InitComplete:
    """IPort::Init ran in the kernel for this host's port (the miniport's init, then its
    description): `status` SUCCESS or why it failed. The adapter's `port.init` returns,
    or raises, with it."""

    status: StatusCode
    message: str = ""
    OP: ClassVar[str]
