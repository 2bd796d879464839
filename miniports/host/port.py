"""The port as a miniport sees it (`Port`, IPortMidi), and the proxies it hands out.

`HostPort` is what `MiniportMidi.init` gets: `notify` from the miniport's ISR
(any thread), service groups (`new_service_group`, `register_service_group`),
the device's properties and registry keys (calls to the kernel). The groups
and keys it returns are proxies of objects that live in the kernel.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ipc import protocol as p
from ipc.rpc import RpcEndpoint
from ipc.runtime import now_100ns
from ipc.status import BufferTooSmall, Status, StatusError
from miniports.base import Port, PortServiceGroup, RegistryKey, ServiceSink
from miniports.host.bus import KernelBus
from miniports.host.streams import HostStream

__all__ = ["HostPort", "RegistryKeyProxy", "ServiceGroupProxy"]


class ServiceGroupProxy(PortServiceGroup):
    """A service group of the kernel's, named by its id."""

    def __init__(self, port: HostPort, gid: int) -> None:
        self.port = port
        self.gid = gid

    def _member(self, sink: ServiceSink | PortServiceGroup) -> tuple[int | None, int | None]:
        if isinstance(sink, ServiceGroupProxy):
            return sink.gid, None
        if isinstance(sink, ServiceSink):
            return None, self.port.sink_id(sink)
        raise StatusError(Status.INVALID_PARAMETER, "a member is a ServiceSink or a service group")

    def add_member(self, sink: ServiceSink | PortServiceGroup) -> None:
        self.port.bus.post(p.GroupAddMember(self.gid, *self._member(sink)))

    def remove_member(self, sink: ServiceSink | PortServiceGroup) -> None:
        self.port.bus.post(p.GroupRemoveMember(self.gid, *self._member(sink)))

    def request_service(self) -> None:
        self.port.bus.post(p.GroupRequestService(self.gid))

    def support_delayed_service(self) -> None:
        self.port.bus.post(p.GroupSupportDelayed(self.gid))

    def request_delayed_service(self, due_time: int) -> None:
        self.port.bus.post(p.GroupRequestDelayed(self.gid, int(due_time)))

    def cancel_delayed_service(self) -> None:
        self.port.bus.post(p.GroupCancelDelayed(self.gid))


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
        wake: Callable[[], None],
    ) -> None:
        self.bus = bus
        self.streams = streams
        self.runtime_dir = runtime_dir
        self._wake = wake
        self._thread = threading.get_ident()
        self._lock = threading.Lock()
        self._irq_groups: set[int] = set()
        self._irq_time: int | None = None
        self._ids = iter(range(1, 1 << 62))
        self._sinks: dict[int, ServiceSink] = {}
        self._sink_ids: dict[int, int] = {}

    @property
    def rpc(self) -> RpcEndpoint:
        return self.bus.rpc

    def sink_id(self, sink: ServiceSink) -> int:
        """The id a miniport sink travels under (the same sink, the same id)."""
        key = id(sink)
        if key not in self._sink_ids:
            sid = next(self._ids)
            self._sink_ids[key] = sid
            self._sinks[sid] = sink
        return self._sink_ids[key]

    def sink(self, sink_id: int) -> ServiceSink | None:
        return self._sinks.get(sink_id)

    @property
    def interrupt_pending(self) -> bool:
        return bool(self._irq_groups)

    def take_interrupt(self) -> tuple[list[int], int] | None:
        """The groups notified since the last call and the time of the first notify."""
        if not self._irq_groups:
            return None
        with self._lock:
            groups = sorted(self._irq_groups)
            isr_time = self._irq_time or now_100ns()
            self._irq_groups.clear()
            self._irq_time = None
        return groups, isr_time

    def notify(self, group: PortServiceGroup | None = None) -> None:
        gid = group.gid if isinstance(group, ServiceGroupProxy) else -1
        with self._lock:
            self._irq_groups.add(gid)
            if self._irq_time is None:
                self._irq_time = now_100ns()
        if threading.get_ident() != self._thread:
            self._wake()

    def register_service_group(self, group: PortServiceGroup) -> None:
        if not isinstance(group, ServiceGroupProxy):
            raise StatusError(Status.INVALID_PARAMETER, "not a group made by new_service_group")
        self.bus.post(p.RegisterServiceGroup(group.gid))

    def new_service_group(self) -> PortServiceGroup:
        group = ServiceGroupProxy(self, next(self._ids))
        self.bus.post(p.GroupNew(group.gid))
        return group

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
