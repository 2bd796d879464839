"""The port as a miniport sees it (`Port`, IPortMidi).

`HostPort` is what `MiniportMidi.init` gets: `notify` from the miniport's ISR
(any thread), service groups (`new_service_group`, `register_service_group`;
see `miniports.host.dpc`), the device's properties and registry keys (calls to
the kernel; a key is a proxy of one in the kernel's device store).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ipc import protocol as p
from ipc.rpc import RpcEndpoint
from ipc.status import BufferTooSmall, Status, StatusError
from miniports.contract import Port, PortServiceGroup, RegistryKey
from miniports.host.bus import KernelBus
from miniports.host.dpc import NOTIFY_ALL, HostServiceGroup, ServiceGroups
from miniports.host.streams import HostStream

__all__ = ["HostPort", "RegistryKeyProxy"]


class RegistryKeyProxy(RegistryKey):
    """A key of the device's registry store in the kernel; every call is a round trip."""

    def __init__(self, bus: KernelBus, key_type: int, path: str) -> None:
        self.bus, self.key_type, self.path = bus, key_type, path

    def _call(self, action: str, name: str = "", value: Any = None) -> Any:
        return self.bus.call(p.Registry(self.key_type, self.path, action, name, value))

    def query_value(self, name: str) -> Any:
        return self._call("query", name)

    def set_value(self, name: str, value: Any) -> None:
        self._call("set", name, value)

    def delete_value(self, name: str) -> None:
        self._call("delete", name)

    def enumerate_values(self) -> dict[str, Any]:
        return dict(self._call("enumerate"))

    def new_sub_key(self, name: str) -> RegistryKey:
        path = f"{self.path}\\{name}" if self.path else name
        self.bus.call(p.Registry(self.key_type, path, "create", "", None))
        return RegistryKeyProxy(self.bus, self.key_type, path)

    def delete_key(self) -> None:
        self._call("delete_key")


class HostPort(Port):
    """The port of one miniport host.

    `runtime_dir`, `rpc` and `streams` are there for tools that reach behind the
    contract (the fault injector): the kernel's runtime directory, the bus
    socket's endpoint and the host's streams by id.
    """

    def __init__(
        self,
        bus: KernelBus,
        streams: dict[int, HostStream],
        runtime_dir: Path,
        groups: ServiceGroups,
    ) -> None:
        self.bus = bus
        self.streams = streams
        self.runtime_dir = runtime_dir
        self.groups = groups

    @property
    def rpc(self) -> RpcEndpoint:
        return self.bus.rpc

    def notify(self, group: PortServiceGroup | None = None) -> None:
        gid = group.gid if isinstance(group, HostServiceGroup) else NOTIFY_ALL
        self.groups.request(gid)

    def register_service_group(self, group: PortServiceGroup) -> None:
        if not isinstance(group, HostServiceGroup):
            raise StatusError(Status.INVALID_PARAMETER, "not a group made by new_service_group")
        self.groups.register_port(group)
        self.bus.post_call(p.RegisterServiceGroup(group.gid))

    def new_service_group(self) -> PortServiceGroup:
        return self.groups.new_group()

    def get_device_property(self, prop: int, length: int) -> bytes:
        value = self.bus.call(p.DeviceProperty(int(prop), int(length)))
        if not isinstance(value, bytes):
            raise StatusError(Status.UNSUCCESSFUL, "kernel sent a non-bytes property")
        if length < len(value):
            raise BufferTooSmall(len(value))
        return value

    def new_registry_key(self, key_type: int, path: str = "") -> RegistryKey:
        self.bus.call(p.Registry(int(key_type), path, "create", "", None))
        return RegistryKeyProxy(self.bus, int(key_type), path)
