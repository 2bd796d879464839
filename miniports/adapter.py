"""The adapter contract: what an adapter driver author implements, and the PortCls calls
it makes from `start_device`.

An adapter is a class derived from `Adapter`, constructed with the device's
`options` from the configuration. Its `start_device(device, resources)` runs
once each time the device starts (again after a restart), in the device's own
process, and does what a PortCls adapter's StartDevice does:

    port = pc_new_port(CLSID_PortMidi)                   # PcNewPort
    miniport = pc_new_miniport(CLSID_MiniportDriverUart)  # PcNewMiniport, or its own
    port.init(device, miniport, resources)               # IPort::Init
    pc_register_subdevice(device, "uart", port)          # PcRegisterSubdevice
    pc_register_physical_connection(device, port, 2, other_port, 3)

Each port it binds runs its miniport in a miniport host of its own (its own bus
connection to the kernel, its own loop thread) inside the device's process, so
the kernel keeps one connection, one port, one miniport; the device is still
one driver: a miniport or adapter that raises out of a callback ends the whole
process, every filter of the device is withdrawn, and the device is restarted
with back-off like any miniport.

Filter ids: the first subdevice registered is published under the device's
name, every further one as "<device>/<subdevice>".

Every call reports failure by raising `StatusError`; returning is
STATUS_SUCCESS. A `StatusError` out of `start_device` fails the device's start
(it is not restarted: the reason is in `portcls ls`); anything else raised is
the adapter's fault (the device is restarted with back-off).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Final

from ipc.status import Status, StatusError
from miniports import contract
from miniports.contract import MiniportMidi, ResourceList

__all__ = [
    "SUBDEVICE_MIDI",
    "Adapter",
    "AdapterPort",
    "CLSID_PortDMus",
    "CLSID_PortMidi",
    "DefaultAdapter",
    "DeviceObject",
    "pc_new_miniport",
    "pc_new_port",
    "pc_register_physical_connection",
    "pc_register_physical_connection_from_external",
    "pc_register_physical_connection_to_external",
    "pc_register_subdevice",
]

CLSID_PortMidi: Final = "b4c90a43-5791-11d0-86f9-00a0c911b544"
CLSID_PortDMus: Final = "b7902fe9-fb0a-11d1-81b0-0060083316c1"
SUBDEVICE_MIDI: Final = "midi"
"""The subdevice name of the default adapter's one port."""

_PORT_CLSIDS: Final = {
    "CLSID_PortMidi": CLSID_PortMidi,
    "CLSID_PortDMus": CLSID_PortDMus,
    CLSID_PortMidi: CLSID_PortMidi,
    CLSID_PortDMus: CLSID_PortDMus,
}
MINIPORT_CLASSES: Final[tuple[type, ...]] = tuple(
    cls for cls in (getattr(contract, "MiniportDMus", None), MiniportMidi)
    if isinstance(cls, type)
)
"""What `port.init` binds: IMiniportDMus (where the contract has it) or IMiniportMidi."""


class DeviceObject(ABC):
    """The device an adapter starts (PDEVICE_OBJECT): handed to `start_device` and passed
    back to every PortCls call. Implemented by the device's process, not by adapters."""

    name: str
    """The device's name in the configuration (its first filter's id)."""
    resources: ResourceList
    """The device's configured resources (what `start_device` got)."""

    @abstractmethod
    def _init_port(self, port: AdapterPort, miniport: Any, resources: ResourceList) -> None:
        """Bind `miniport` to `port` in a host of its own; return once the kernel ran
        IPort::Init, or raise its failure."""

    @abstractmethod
    def _register_subdevice(self, name: str, port: AdapterPort) -> str:
        """Ask the kernel to publish `port`'s filter as `name`; the filter's id."""

    @abstractmethod
    def _register_physical_connection(
        self, via: AdapterPort, from_name: str, from_pin: int, to_name: str, to_pin: int,
        from_external: bool, to_external: bool,
    ) -> None:
        """Ask the kernel (through `via`'s host) to record the connection."""


class AdapterPort:
    """A port driver object (IPortMidi / IPortDMus) as the adapter holds it: made by
    `pc_new_port`, bound by `init`, published by `pc_register_subdevice`."""

    def __init__(self, clsid: str) -> None:
        self.clsid = clsid
        self.device: DeviceObject | None = None
        """The device it was initialised for (None before a successful `init`)."""
        self.subdevice: str | None = None
        """Its subdevice name once registered."""
        self.filter_id: str | None = None
        """The id its filter is published under once registered."""
        self.binding: Any = None
        """The device process's handle on the port's miniport host."""

    def init(self, device: DeviceObject, miniport: Any,
             resources: ResourceList | None = None) -> None:
        """IPort::Init: bind `miniport` to this port. The kernel asks the miniport for
        IMiniportDMus, then IMiniportMidi (anything else: INVALID_PARAMETER), calls its
        `init(resources, port)` and then its `get_description()`; returns once that is
        done, or raises the StatusError the miniport's init failed with (or
        DEVICE_REMOVED if the kernel went away meanwhile). `resources` default to the
        device's configured ones. A second init, after one that succeeded, is a
        successful no-op, as in PortCls."""
        if self.device is not None:
            return
        if not isinstance(device, DeviceObject):
            raise StatusError(Status.INVALID_PARAMETER, "not the device start_device got")
        if not isinstance(miniport, MINIPORT_CLASSES):
            raise StatusError(Status.INVALID_PARAMETER,
                              f"{type(miniport).__name__} is neither IMiniportDMus nor "
                              "IMiniportMidi")
        if resources is not None and not isinstance(resources, ResourceList):
            raise StatusError(Status.INVALID_PARAMETER, "resources must be a ResourceList")
        device._init_port(self, miniport, device.resources if resources is None else resources)
        self.device = device

    def __repr__(self) -> str:
        where = self.filter_id or ("bound" if self.device else "unbound")
        return f"<AdapterPort {self.clsid} {where}>"


class Adapter(ABC):
    """An adapter driver. Construct it with the device's options (keyword arguments)."""

    @abstractmethod
    def start_device(self, device: DeviceObject, resources: ResourceList) -> None:
        """StartDevice: make and bind the device's ports and register its subdevices and
        the physical connections between them. Raise StatusError to fail the start."""


class DefaultAdapter(Adapter):
    """What a device configured with only a miniport gets: one port (CLSID_PortMidi),
    that miniport, one subdevice named "midi", published under the device's name."""

    def __init__(self, miniport: Any) -> None:
        self.miniport = miniport

    def start_device(self, device: DeviceObject, resources: ResourceList) -> None:
        port = pc_new_port(CLSID_PortMidi)
        port.init(device, self.miniport, resources)
        pc_register_subdevice(device, SUBDEVICE_MIDI, port)


def pc_new_port(clsid: str) -> AdapterPort:
    """PcNewPort: CLSID_PortMidi or CLSID_PortDMus (a GUID string or the constant's
    name; since Windows XP one implementation serves both); anything else raises
    StatusError(NOT_SUPPORTED)."""
    key = clsid.strip() if isinstance(clsid, str) else ""
    normal = _PORT_CLSIDS.get(key) or _PORT_CLSIDS.get(key.strip("{}").lower())
    if normal is None:
        raise StatusError(Status.NOT_SUPPORTED, f"no port driver for {clsid!r}")
    return AdapterPort(normal)


def pc_new_miniport(clsid: str, **options: Any) -> Any:
    """PcNewMiniport: a built-in miniport for a class id (the MPU-401 UART family:
    CLSID_MiniportDriverUart, ...DMusUART, ...DMusUARTCapture, as GUID strings or by
    name), constructed with `options`; anything else raises
    StatusError(INVALID_PARAMETER)."""
    from miniports.mpu401.miniport import pc_new_miniport as builtin

    return builtin(clsid, **options)


def _registered(device: DeviceObject, port: Any, what: str) -> AdapterPort:
    if not isinstance(port, AdapterPort) or port.device is not device:
        raise StatusError(Status.INVALID_PARAMETER, f"{what} is not a port initialised for "
                          "this device")
    if port.subdevice is None:
        raise StatusError(Status.INVALID_DEVICE_STATE,
                          f"{what}: register its subdevice before its physical connections")
    return port


def pc_register_subdevice(device: DeviceObject, name: str, port: AdapterPort) -> str:
    """PcRegisterSubdevice: publish `port`'s filter under `name`, unique per device (else
    OBJECT_NAME_COLLISION; letters, digits, _ . -, at most 64, else INVALID_PARAMETER).
    `port` must be initialised for `device` (else INVALID_PARAMETER) and not registered
    yet (else INVALID_DEVICE_STATE). Returns the filter's id: the device's name for its
    first subdevice, "<device>/<name>" for every further one; clients hear of its
    arrival."""
    if not isinstance(port, AdapterPort) or port.device is not device:
        raise StatusError(Status.INVALID_PARAMETER, "not a port initialised for this device")
    if port.subdevice is not None:
        raise StatusError(Status.INVALID_DEVICE_STATE,
                          f"the port is registered as {port.subdevice!r} already")
    if not isinstance(name, str):
        raise StatusError(Status.INVALID_PARAMETER, "a subdevice name is a string")
    fid = device._register_subdevice(name, port)
    port.subdevice, port.filter_id = name, fid
    return fid


def pc_register_physical_connection(
    device: DeviceObject, from_port: AdapterPort, from_pin: int, to_port: AdapterPort,
    to_pin: int,
) -> None:
    """PcRegisterPhysicalConnection: the hard-wired connection from `from_pin` of
    `from_port`'s filter to `to_pin` of `to_port`'s, both registered subdevices of
    `device` (else INVALID_PARAMETER / INVALID_DEVICE_STATE). Clients see it as
    KSPROPERTY_PIN_PHYSICALCONNECTION on both pins, each naming the other end.
    INVALID_PARAMETER for a pin the filter does not have; OBJECT_NAME_COLLISION for a
    pin that has a physical connection already."""
    src = _registered(device, from_port, "from_port")
    dst = _registered(device, to_port, "to_port")
    assert src.subdevice is not None and dst.subdevice is not None
    device._register_physical_connection(src, src.subdevice, _pin(from_pin), dst.subdevice,
                                         _pin(to_pin), False, False)


def pc_register_physical_connection_to_external(
    device: DeviceObject, from_port: AdapterPort, from_pin: int, to_filter: str,
    to_pin: int,
) -> None:
    """PcRegisterPhysicalConnectionToExternal: from `from_pin` of a registered port's
    filter to `to_pin` of a filter outside the device, named by its id (which need not
    exist yet). Only this device's pin answers KSPROPERTY_PIN_PHYSICALCONNECTION."""
    src = _registered(device, from_port, "from_port")
    assert src.subdevice is not None
    device._register_physical_connection(src, src.subdevice, _pin(from_pin), str(to_filter),
                                         _pin(to_pin), False, True)


def pc_register_physical_connection_from_external(
    device: DeviceObject, from_filter: str, from_pin: int, to_port: AdapterPort,
    to_pin: int,
) -> None:
    """PcRegisterPhysicalConnectionFromExternal: from `from_pin` of a filter outside the
    device (by id) to `to_pin` of a registered port's filter."""
    dst = _registered(device, to_port, "to_port")
    assert dst.subdevice is not None
    device._register_physical_connection(dst, str(from_filter), _pin(from_pin),
                                         dst.subdevice, _pin(to_pin), True, False)


def _pin(pin: Any) -> int:
    if type(pin) is not int or not 0 <= pin < (1 << 31):
        raise StatusError(Status.INVALID_PARAMETER, f"{pin!r} is not a pin id")
    return pin
