"""A published subdevice (PcRegisterSubdevice): what clients see and open pins on.

The published filter is the factory; a client opens an instance of it (KS: a
handle on the filter) and pins on that instance. A pin's per-filter instance
limit counts the pins open on one filter instance, its global limit those on
all of them.
"""

from __future__ import annotations

from typing import Any, Final

from ipc.ks import DataFormat, FilterDescriptor, PinDescriptor
from ipc.status import BufferTooSmall, Status, StatusError
from kernel.monitor import MonitorTap
from kernel.port import PortMidi

KSINTERFACESETID_STANDARD: Final = "1a8766a0-62ce-11cf-a5d6-28db04c10000"
KSINTERFACE_STANDARD_STREAMING: Final = 0
KSMEDIUMSETID_STANDARD: Final = "4747b320-62ce-11cf-a5d6-28db04c10000"
KSMEDIUM_TYPE_ANYINSTANCE: Final = 0
KSDATAFORMAT_SIZE: Final = 64
"""sizeof(KSDATAFORMAT): what a DATAINTERSECTION result needs."""


def sized_format(fmt: DataFormat, size: int) -> dict[str, Any]:
    """A property's KSDATAFORMAT result for a caller's buffer of `size` bytes: size 0 is
    a size query (STATUS_BUFFER_OVERFLOW and the size), too small BUFFER_TOO_SMALL."""
    if size == 0:
        return {"status": int(Status.BUFFER_OVERFLOW), "size": KSDATAFORMAT_SIZE}
    if size < KSDATAFORMAT_SIZE:
        raise BufferTooSmall(KSDATAFORMAT_SIZE)
    return {"status": int(Status.SUCCESS), "size": KSDATAFORMAT_SIZE, "format": fmt.to_wire()}


class Filter:
    """A filter factory: its descriptor, its port, and how many of each pin are open."""

    def __init__(self, fid: str, device: str, name: str, port: PortMidi) -> None:
        assert port.description is not None
        self.fid = fid
        self.device = device
        self.name = name
        self.port = port
        self.descriptor: FilterDescriptor = port.description
        self.open_counts = [0] * len(self.descriptor.pins)
        self.taps: list[list[MonitorTap]] = [[] for _ in self.descriptor.pins]
        """Per pin id: the monitors watching every instance of that pin."""
        self.physical_connections: dict[int, dict[str, Any]] = {}
        """PcRegisterPhysicalConnection: pin id -> {"filter": ..., "pin": ...} it is wired to."""

    def pin(self, pin_id: int) -> PinDescriptor:
        if not 0 <= pin_id < len(self.descriptor.pins):
            raise StatusError(Status.INVALID_PARAMETER, f"{self.fid} has no pin {pin_id}")
        return self.descriptor.pins[pin_id]

    def instance_limit(self, pin_id: int) -> int:
        desc = self.pin(pin_id)
        return min(desc.max_global_instances, desc.max_filter_instances)

    def take_instance(self, pin_id: int, instance: FilterInstance) -> None:
        """Count one more open instance of `pin_id` on `instance`; INSUFFICIENT_RESOURCES
        at the pin's per-filter limit (on that instance) or its global limit."""
        desc = self.pin(pin_id)
        if instance.counts[pin_id] >= desc.max_filter_instances:
            raise StatusError(
                Status.INSUFFICIENT_RESOURCES,
                f"pin {pin_id} has all {desc.max_filter_instances} instance(s) per filter "
                f"open on this filter instance",
            )
        if self.open_counts[pin_id] >= desc.max_global_instances:
            raise StatusError(
                Status.INSUFFICIENT_RESOURCES,
                f"pin {pin_id} has all {desc.max_global_instances} instance(s) open",
            )
        instance.counts[pin_id] += 1
        self.open_counts[pin_id] += 1

    def give_back_instance(self, pin_id: int, instance: FilterInstance) -> None:
        instance.counts[pin_id] = max(0, instance.counts[pin_id] - 1)
        self.open_counts[pin_id] = max(0, self.open_counts[pin_id] - 1)

    def pin_property(self, pin_id: int, prop: str, value: Any = None) -> Any:
        """KSPROPERTY_PIN_xxx, by lower-case name (DATAINTERSECTION, which asks the
        miniport, is the port's: `PortMidi.data_intersection`). `value`: what a set
        request carries (PROPOSEDATAFORMAT's format); None for a get."""
        if prop == "ctypes":
            return len(self.descriptor.pins)
        desc = self.pin(pin_id)
        match prop:
            case "dataflow":
                return int(desc.dataflow)
            case "communication":
                return int(desc.communication)
            case "dataranges" | "constraineddataranges":
                # No range of a MIDI pin is constrained by what else is open.
                return [r.to_wire() for r in desc.data_ranges]
            case "interfaces":
                if not desc.streaming:
                    return []
                return [{"set": KSINTERFACESETID_STANDARD, "id": KSINTERFACE_STANDARD_STREAMING,
                         "flags": 0}]
            case "mediums":
                return [{"set": KSMEDIUMSETID_STANDARD, "id": KSMEDIUM_TYPE_ANYINSTANCE,
                         "flags": 0}]
            case "proposedataformat":
                if value is None:  # get: the format the pin would take by default
                    if not desc.data_ranges:
                        raise StatusError(Status.NOT_SUPPORTED, f"pin {pin_id} takes no data")
                    r = desc.data_ranges[0]
                    return DataFormat(r.major_format, r.sub_format, r.specifier).to_wire()
                fmt = DataFormat.from_wire(value)
                if not any(r.matches(fmt) for r in desc.data_ranges):
                    raise StatusError(Status.NO_MATCH, "the pin does not take that format")
                return True
            case "cinstances":  # per filter instance: `instance_property` answers it
                return {"possible": desc.max_filter_instances, "current": 0}
            case "globalcinstances":
                return {"possible": desc.max_global_instances,
                        "current": self.open_counts[pin_id]}
            case "necessaryinstances":
                return desc.min_instances
            case "name":
                return desc.name
            case "category":
                return desc.category
            case "physicalconnection":
                return self.physical_connections.get(pin_id)
        raise StatusError(Status.NOT_SUPPORTED, f"no pin property {prop!r}")

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.fid,
            "device": self.device,
            "name": self.name,
            "description": self.descriptor.to_wire(),
            "open": list(self.open_counts),
        }


class FilterInstance:
    """One client's open instance of a filter: the pins open on it, per pin id."""

    def __init__(self, instance_id: int, factory: Filter) -> None:
        self.id = instance_id
        self.factory = factory
        self.counts = [0] * len(factory.descriptor.pins)

    def cinstances(self, pin_id: int) -> dict[str, int]:
        """KSPROPERTY_PIN_CINSTANCES on this filter instance."""
        desc = self.factory.pin(pin_id)
        return {"possible": desc.max_filter_instances, "current": self.counts[pin_id]}
