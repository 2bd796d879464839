"""A client's session in user mode: the pins it opened and the filter instances it holds."""

from __future__ import annotations

from dataclasses import dataclass, field

from ipc.procwatch import ProcessWatch
from kernel.filters import Filter, FilterInstance
from kernel.pins import Pin


@dataclass(eq=False)
class PinInstance:
    """A pin a client opened, the filter it was opened on, and the filter instance."""

    pin: Pin
    filter: Filter
    instance: FilterInstance


@dataclass(eq=False)
class ClientSession:
    identity: bytes
    pid: int
    name: str
    watch: ProcessWatch | None = None
    pins: dict[int, PinInstance] = field(default_factory=dict)
    filters: dict[int, FilterInstance] = field(default_factory=dict)
    default_filters: dict[str, FilterInstance] = field(default_factory=dict)
    """The instance a pin opened without one goes on, per filter id."""
