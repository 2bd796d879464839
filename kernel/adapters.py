"""The kernel's half of an adapter's StartDevice, one port (one miniport host) at a time.

In the device's process the adapter calls `pc_new_port`, `port.init`,
`pc_register_subdevice` and `pc_register_physical_connection`; each port's
miniport host carries them here over its own bus connection:

  Register                      PcNewPort (the class id it names) for that host
  (the kernel, at once)         IPort::Init: the miniport's init, its description;
                                then InitComplete(status) back to the host, which
                                returns or raises it from the adapter's port.init
  RegisterSubdevice(name)       PcRegisterSubdevice: the port's filter is published
  RegisterPhysicalConnection    PcRegisterPhysicalConnection[To|From]External
  DeviceStarted(status)         start_device returned (the launch's own identity)

Filter ids: the first subdevice a device registers is published under the
device's own name, so a device configured with only a miniport (whose default
adapter registers one subdevice) keeps the filter id it always had; every
further one under "<device>/<subdevice>". A subdevice name is letters, digits,
_ . - (at most 64) and unique per device (else OBJECT_NAME_COLLISION); neither
a device nor a subdevice name can hold "/", so no two ids collide.

A physical connection is answered by KSPROPERTY_PIN_PHYSICALCONNECTION on both of
its pins, each naming the other end (filter id and pin id) *(inferred: the
documentation shows the source pin's answer; the sink's is its mirror)*.
An external end names a filter outside the device, which need not exist yet.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from ipc import protocol as p
from ipc.runtime import now_100ns
from ipc.status import Status, StatusError
from kernel.config import KernelConfig
from kernel.connection import MiniportConnection
from kernel.device import Device, Subdevice
from kernel.dpc import Dpc, Timer
from kernel.filters import Filter
from kernel.loop import KernelLoop
from kernel.port import CLSID_PortDMus, CLSID_PortMidi, pc_new_port

log = logging.getLogger("portcls.kernel")

_NAME: Final = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}"
SUBDEVICE_NAME: Final = re.compile(rf"^{_NAME}$")
FILTER_ID: Final = re.compile(rf"^{_NAME}(/{_NAME})?$")
"""What names a filter: "<device>" or "<device>/<subdevice>"."""


def port_clsid(clsid: str) -> str:
    """PcNewPort's class id as the kernel keeps it ("" is CLSID_PortMidi, braces and case
    do not matter); StatusError(NOT_SUPPORTED) for an id it has no port driver for."""
    normal = (clsid or CLSID_PortMidi).strip().strip("{}").lower()
    if normal not in (CLSID_PortMidi, CLSID_PortDMus):
        raise StatusError(Status.NOT_SUPPORTED, f"no port driver for class id {clsid!r}")
    return normal


def filter_id(device: Device, name: str) -> str:
    """The id `name` is published under: the device's name for its first subdevice,
    "<device>/<name>" for every further one."""
    return device.config.name if not device.filters else f"{device.config.name}/{name}"


class AdapterCalls:
    """The PnP manager's side of the adapter's calls (a mixin of `PnpManager`)."""

    loop: KernelLoop
    runtime_dir: Path
    config: KernelConfig
    devices: dict[str, Device]
    filters: dict[str, Filter]
    on_event: Callable[[Any], None]

    def subdevice(self, conn: MiniportConnection) -> Subdevice:
        raise NotImplementedError

    def check_ready(self) -> None:
        raise NotImplementedError

    def _fail_device(self, device: Device, reason: str, restart: bool) -> None:
        raise NotImplementedError

    def _is_launch(self, device: Device | None, identity: bytes, pid: int, secret: bytes) -> bool:
        raise NotImplementedError

    def _arm_start_timer(self, device: Device) -> None:
        """A start_device that has not returned within `start_timeout` of the process's
        start is the device's fault (a hung adapter, or a port.init that never ends):
        the device is removed and restarted, so the kernel's readiness never waits on it
        for longer."""
        process = device.process

        def overdue() -> None:
            if device.process is process and not device.started and device.state in (
                    "starting", "running"):
                timeout = self.config.start_timeout
                self._fail_device(device, f"start_device did not return in {timeout:g} s",
                                  restart=True)
                self.check_ready()

        if device.start_timer is not None:
            self.loop.scheduler.cancel_timer(device.start_timer)
        device.start_timer = Timer(Dpc(overdue))
        self.loop.scheduler.set_timer(
            device.start_timer, now_100ns() + int(self.config.start_timeout * 1e7))

    def bind(self, conn: MiniportConnection) -> None:
        """PcNewPort and IPort::Init (miniport.init, then its description) for a host that
        just registered; the outcome goes back to it as InitComplete. A failed Init
        leaves the port unbound and the device to its adapter, which may try another
        miniport or fail its start_device."""
        device = self.devices[conn.device]
        sub = device.subdevices[conn.identity]
        port = pc_new_port(self.loop, sub.clsid, self.runtime_dir, self.config.ring_capacity)
        sub.port = port
        resources = device.config.resources if sub.resources is None else sub.resources
        if not isinstance(resources, dict):
            resources = {}  # the miniport's init says what it lacks

        def bound(error: StatusError | None) -> None:
            if device.subdevices.get(conn.identity) is not sub or conn.closed:
                return
            if error is not None:
                log.error("device %s: port init failed: %s", conn.device, error)
                device.last_exit = f"init failed: {error}"
                conn.call(p.InitComplete(error.status, error.message[:p.MAX_STR]),
                          lambda _: None)
                return
            conn.call(p.InitComplete(Status.SUCCESS), lambda _: None)

        port.init(conn, resources, bound)

    def register_subdevice(self, conn: MiniportConnection, name: str) -> dict[str, Any]:
        """PcRegisterSubdevice for `conn`'s port: publish its filter; every client hears
        of its arrival. INVALID_PARAMETER for a bad name, OBJECT_NAME_COLLISION for a
        name the device used already, INVALID_DEVICE_STATE before a successful Init or
        for a port registered already. Reply: {"filter": id}."""
        sub = self.subdevice(conn)
        device = self.devices[conn.device]
        if not SUBDEVICE_NAME.match(name):
            raise StatusError(Status.INVALID_PARAMETER,
                              f"subdevice name {name[:80]!r}: letters, digits, _ . - (max 64)")
        if any(f.name == name for f in device.filters):
            raise StatusError(Status.OBJECT_NAME_COLLISION,
                              f"device {device.config.name} has a subdevice {name!r}")
        port = sub.port
        if port is None or not port.initialised:
            raise StatusError(Status.INVALID_DEVICE_STATE, "the port is not initialised")
        if sub.filter is not None:
            raise StatusError(Status.INVALID_DEVICE_STATE,
                              f"the port is registered as {sub.filter.name!r}")
        fid = filter_id(device, name)
        if fid in self.filters:
            raise StatusError(Status.OBJECT_NAME_COLLISION, f"filter {fid} exists")
        filter_ = Filter(fid, device.config.name, name, port)
        if fid == device.config.name:
            for pin, to, to_pin in device.config.physical_connections:
                # The configuration's wires (PcRegisterPhysicalConnectionToExternal).
                filter_.physical_connections[pin] = {"filter": to, "pin": to_pin}
        self.filters[fid] = filter_
        sub.filter = filter_
        device.state = "running"
        log.info("device %s: filter published", fid)
        self.on_event(p.DeviceArrival(fid))
        self.check_ready()
        return {"filter": fid}

    def register_physical_connection(
        self, conn: MiniportConnection, wire: p.RegisterPhysicalConnection
    ) -> None:
        """PcRegisterPhysicalConnection between two registered subdevices of `conn`'s
        device (by name), or one of them and an external filter (by id). Each pin of
        the device's must exist (INVALID_PARAMETER) and have no connection yet
        (OBJECT_NAME_COLLISION); INVALID_PARAMETER for an unknown subdevice or a bad id,
        or for two external ends."""
        self.subdevice(conn)
        device = self.devices[conn.device]

        def end(name: str, external: bool, pin: int) -> tuple[str, Filter | None]:
            if external:
                if not FILTER_ID.match(name):
                    raise StatusError(Status.INVALID_PARAMETER, f"{name[:80]!r} is no filter id")
                return name, None
            filter_ = next((f for f in device.filters if f.name == name), None)
            if filter_ is None:
                raise StatusError(Status.INVALID_PARAMETER,
                                  f"device {device.config.name} has no subdevice {name[:80]!r}")
            filter_.pin(pin)  # INVALID_PARAMETER if there is no such pin
            if pin in filter_.physical_connections:
                raise StatusError(Status.OBJECT_NAME_COLLISION,
                                  f"pin {pin} of {filter_.fid} has a physical connection")
            return filter_.fid, filter_

        if wire.from_external and wire.to_external:
            raise StatusError(Status.INVALID_PARAMETER, "one end must be this device's")
        from_id, from_filter = end(wire.from_name, wire.from_external, wire.from_pin)
        to_id, to_filter = end(wire.to_name, wire.to_external, wire.to_pin)
        if from_filter is to_filter and wire.from_pin == wire.to_pin:
            raise StatusError(Status.INVALID_PARAMETER, "a pin cannot be wired to itself")
        if from_filter is not None:
            from_filter.physical_connections[wire.from_pin] = {"filter": to_id,
                                                               "pin": wire.to_pin}
        if to_filter is not None:
            to_filter.physical_connections[wire.to_pin] = {"filter": from_id,
                                                           "pin": wire.from_pin}
        log.info("device %s: physical connection %s:%d -> %s:%d", device.config.name,
                 from_id, wire.from_pin, to_id, wire.to_pin)

    def device_started(self, identity: bytes, report: p.DeviceStarted) -> None:
        """The adapter's start_device returned: a device still starting is running now
        (with whatever it registered, maybe nothing); a failure fails the device, which
        is not restarted. INVALID_DEVICE_REQUEST from anyone but the device's process."""
        device = self.devices.get(report.device)
        if (
            not self._is_launch(device, identity, report.pid, report.secret)
            or device is None or device.state not in ("starting", "running") or device.started
        ):
            raise StatusError(Status.INVALID_DEVICE_REQUEST, "not a device that is starting")
        device.started = True
        if device.start_timer is not None:
            self.loop.scheduler.cancel_timer(device.start_timer)
        if report.status == Status.SUCCESS:
            device.state = "running"
            self.check_ready()
            return
        reason = f"start_device failed: {StatusError(report.status, report.reason)}"
        log.error("device %s: %s", report.device, reason)
        self._fail_device(device, reason, restart=False)
