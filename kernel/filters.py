"""A published subdevice (PcRegisterSubdevice): what clients see and open pins on."""

from __future__ import annotations

from typing import Any

from ipc.ks import FilterDescriptor, PinDescriptor
from ipc.status import Status, StatusError
from kernel.port import PortMidi


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

    def pin(self, pin_id: int) -> PinDescriptor:
        if not 0 <= pin_id < len(self.descriptor.pins):
            raise StatusError(Status.INVALID_PARAMETER, f"{self.fid} has no pin {pin_id}")
        return self.descriptor.pins[pin_id]

    def instance_limit(self, pin_id: int) -> int:
        desc = self.pin(pin_id)
        return min(desc.max_global_instances, desc.max_filter_instances)

    def take_instance(self, pin_id: int) -> None:
        """Count one more open instance of `pin_id`; INSUFFICIENT_RESOURCES at the limit."""
        limit = self.instance_limit(pin_id)
        if self.open_counts[pin_id] >= limit:
            raise StatusError(
                Status.INSUFFICIENT_RESOURCES,
                f"pin {pin_id} has all {limit} instance(s) open",
            )
        self.open_counts[pin_id] += 1

    def give_back_instance(self, pin_id: int) -> None:
        self.open_counts[pin_id] = max(0, self.open_counts[pin_id] - 1)

    def pin_property(self, pin_id: int, prop: str) -> Any:
        """KSPROPERTY_PIN_xxx, by lower-case name."""
        if prop == "ctypes":
            return len(self.descriptor.pins)
        desc = self.pin(pin_id)
        match prop:
            case "dataflow":
                return int(desc.dataflow)
            case "communication":
                return int(desc.communication)
            case "dataranges":
                return [r.to_wire() for r in desc.data_ranges]
            case "cinstances":
                return {"possible": self.instance_limit(pin_id),
                        "current": self.open_counts[pin_id]}
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
                return None
        raise StatusError(Status.NOT_SUPPORTED, f"no pin property {prop!r}")

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.fid,
            "device": self.device,
            "name": self.name,
            "description": self.descriptor.to_wire(),
            "open": list(self.open_counts),
        }
