"""The KS property requests of user mode: pin properties (data intersection through the
miniport), connection and stream properties of an open pin, buffer cancellation, and a
device's registry keys, read-only.

A part of `UserMode`, kept in its own module for size: the methods it calls on
user mode are declared here and provided there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from ipc import protocol as p
from ipc.ks import DataFormat, DataRange
from ipc.status import Status, StatusError
from kernel.filters import KSDATAFORMAT_SIZE, Filter, FilterInstance, sized_format
from kernel.pnp import PnpManager
from kernel.renderpin import RenderPin
from kernel.sessions import ClientSession, PinInstance

MAX_CLIENT_RANGES: Final = 64
PENDING: Final = object()
"""A handler's result meaning "the reply will be sent later"."""


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
        filter_ = self._filter(body.filter)
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
        """KSPROPSETID_Connection STATE and DATAFORMAT (get and set) and the stream's
        clock TIME and POSITION (get) of an open pin."""
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

