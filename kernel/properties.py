"""The KS property requests of user mode: pin properties (data intersection through the
miniport), connection and stream properties of an open pin, the synth clocks, buffer
cancellation, and a device's registry keys, read-only.

The synth clocks: the kernel has one master clock, the shared monotonic clock
in 100 ns (`ipc.runtime.now_100ns`, what `ksclient.now()` reads), and hands it
to every DirectMusic stream. KSPROPERTY_SYNTH_MASTERCLOCK (KSPROPSETID_SynthClock)
is a property of the filter, as KS has it: it comes on the filter-handle route
(a PinProperty request, the pin ignored, as for KSPROPERTY_PIN_CTYPES) under the
name "masterclock", on any filter, since IPortMidi and IPortDMus are one port.
KSPROPERTY_SYNTH_LATENCYCLOCK is a property of a pin instance: a connection
property "latencyclock" of an open pin, the master time plus the stream's
schedule pre-fetch (0 for a MIDI stream, and for DONT_HOLD_FOR_SEQUENCING).

A part of `UserMode`, kept in its own module for size: the methods it calls on
user mode are declared here and provided there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from ipc import protocol as p
from ipc.dmusic import DONT_HOLD_FOR_SEQUENCING
from ipc.ks import DataFormat, DataRange
from ipc.runtime import now_100ns
from ipc.status import Status, StatusError
from kernel.filters import KSDATAFORMAT_SIZE, Filter, FilterInstance, sized_format
from kernel.pins import Pin
from kernel.pnp import PnpManager
from kernel.renderpin import RenderPin
from kernel.sessions import ClientSession, PinInstance

MAX_CLIENT_RANGES: Final = 64
PENDING: Final = object()
"""A handler's result meaning "the reply will be sent later"."""
MAX_PREFETCH: Final = 1 << 40
"""A schedule pre-fetch beyond this (about 30 hours of 100 ns) is taken as no pre-fetch."""


def master_time() -> int:
    """The kernel's master clock (IMasterClock::GetTime): the shared monotonic clock, 100 ns."""
    return now_100ns()


def schedule_prefetch(pin: Pin) -> int:
    """A stream's schedule pre-fetch in 100 ns: 0 for a MIDI stream (no such attribute),
    for DONT_HOLD_FOR_SEQUENCING ("no hold": the miniport sequences itself), and for a
    value that is not a sane duration."""
    prefetch = getattr(pin, "schedule_prefetch", 0)
    if type(prefetch) is not int or prefetch == DONT_HOLD_FOR_SEQUENCING:
        return 0
    return prefetch if 0 <= prefetch <= MAX_PREFETCH else 0


class KsPropertyRequests:
    """Property requests of a client session; mixed into UserMode."""

    pnp: PnpManager

    def send(self, identity: bytes, frame: bytes) -> None:
        raise NotImplementedError

    def _filter(self, fid: str) -> Filter:
        raise NotImplementedError

    def _pin(self, session: ClientSession, handle: int) -> PinInstance:
        raise NotImplementedError

    def _filter_instance(self, session: ClientSession, filter_: Filter, instance_id: int,
                         create: bool = True) -> FilterInstance | None:
        raise NotImplementedError

    def _set_state(self, session: ClientSession, rid: int, body: p.SetState) -> Any:
        raise NotImplementedError

    def _reply_later(self, session: ClientSession, rid: int,
                     result: Callable[[], Any]) -> Callable[[StatusError | None], None]:
        """A `done` callback that answers `rid` with `result()` or the error."""

        def done(error: StatusError | None) -> None:
            try:
                if error is not None:
                    raise error
                frame = p.encode_ok(rid, result())
            except StatusError as exc:
                frame = p.encode_exception(rid, exc)
            self.send(session.identity, frame)

        return done

    def _pin_property(self, session: ClientSession, rid: int, body: p.PinProperty) -> Any:
        """KSPROPERTY_PIN_xxx of a filter's pins, and the filter's own properties that come
        the same way: "masterclock" (KSPROPERTY_SYNTH_MASTERCLOCK, get only)."""
        filter_ = self._filter(body.filter)
        if body.property == "masterclock":
            if body.value is not None:
                raise StatusError(Status.NOT_SUPPORTED, "the master clock is read-only")
            return master_time()
        if body.property == "cinstances":
            # Per filter instance: `value` names one; None asks about the default one.
            instance_id = body.value if type(body.value) is int else 0
            instance = self._filter_instance(session, filter_, instance_id, create=False)
            if instance is None:
                return filter_.pin_property(body.pin, body.property)
            return instance.cinstances(body.pin)
        if body.property != "dataintersection":
            return filter_.pin_property(body.pin, body.property, body.value)
        desc = filter_.pin(body.pin)
        value = body.value
        if not isinstance(value, dict) or not isinstance(value.get("ranges"), list):
            raise StatusError(Status.INVALID_PARAMETER,
                              "dataintersection takes {'ranges': [...], 'size': n}")
        size = value.get("size", KSDATAFORMAT_SIZE)
        if type(size) is not int or size < 0:
            raise StatusError(Status.INVALID_PARAMETER, "size must be a byte count")
        ranges = [DataRange.from_wire(r) for r in value["ranges"][:MAX_CLIENT_RANGES]]

        def intersected(result: DataFormat | StatusError) -> None:
            try:
                if isinstance(result, StatusError):
                    raise result
                frame = p.encode_ok(rid, sized_format(result, size))
            except StatusError as exc:
                frame = p.encode_exception(rid, exc)
            self.send(session.identity, frame)

        filter_.port.data_intersection(body.pin, desc, ranges, intersected)
        return PENDING

    def _cancel_buffer(self, session: ClientSession, rid: int, body: p.CancelBuffer) -> Any:
        pin = self._pin(session, body.handle).pin
        if not isinstance(pin, RenderPin):
            raise StatusError(Status.INVALID_DEVICE_REQUEST, "buffers are written to render pins")
        return pin.cancel_buffer(body.buffer)

    def _connection_property(self, session: ClientSession, rid: int,
                             body: p.ConnectionProperty) -> Any:
        """KSPROPSETID_Connection STATE and DATAFORMAT (get and set), the stream's clock
        TIME and POSITION and KSPROPERTY_SYNTH_LATENCYCLOCK (get) of an open pin."""
        instance = self._pin(session, body.handle)
        pin = instance.pin
        match body.property, body.value is None:
            case "state", True:
                return int(pin.state)
            case "state", False:
                return self._set_state(session, rid, p.SetState(body.handle, body.value))
            case "dataformat", True:
                return pin.format.to_wire()
            case "dataformat", False:
                fmt = DataFormat.from_wire(body.value)
                desc = instance.filter.pin(pin.pin_id)
                instance.filter.port.set_stream_format(
                    pin, fmt, desc, self._reply_later(session, rid, pin.format.to_wire))
                return PENDING
            case "time", True:
                return pin.clock.to_wire()
            case "position", True:
                moved = "delivered" if pin.capture else "released"
                return {"events": pin.stats[moved], "time": pin.clock.time()}
            case "latencyclock", True:
                return master_time() + schedule_prefetch(pin)
        raise StatusError(Status.NOT_SUPPORTED,
                          f"no connection property {body.property!r} to "
                          f"{'get' if body.value is None else 'set'}")

    def _device_registry(self, name: str) -> Any:
        device = self.pnp.devices.get(name)
        if device is None and name in self.pnp.filters:
            device = self.pnp.devices.get(self.pnp.filters[name].device)
        if device is None:
            raise StatusError(Status.OBJECT_NAME_NOT_FOUND, f"no device {name!r}")
        return device.store.registry_snapshot()

