"""Finding miniport and adapter classes: built-ins, the `portcls.miniports` and
`portcls.adapters` entry points, `module:Class`.

Imports happen only when a miniport is asked for, so a miniport whose optional
dependency is missing fails with a clear "not available" error, and only then.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Final

from ipc.status import Status, StatusError
from miniports.adapter import Adapter
from miniports.contract import MiniportDMus, MiniportMidi

ENTRY_POINT_GROUP: Final = "portcls.miniports"

BUILTIN: Final[dict[str, str]] = {
    "loopback": "miniports.loopback:LoopbackMiniport",
    "mpu401": "miniports.mpu401.miniport:UartMiniport",
    "faulty": "miniports.testing.faults:FaultInjector",
    "faulty_dmus": "miniports.testing.faults:DmusFaultInjector",
    "rtmidi": "miniports.rtmidi.miniport:RtMidiMiniport",
    "dmusuart": "miniports.mpu401.dmusuart:DMusUartMiniport",
}


def available() -> dict[str, str]:
    """Every miniport name that can be asked for, with the `module:Class` it names."""
    found = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def _import(spec: str) -> type[MiniportMidi | MiniportDMus]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise StatusError(Status.INVALID_PARAMETER, f"{spec!r} is not 'module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise StatusError(
            Status.NOT_SUPPORTED, f"miniport {spec!r} is not available: {exc}"
        ) from exc
    cls = getattr(module, attr, None)
    if not isinstance(cls, type) or not issubclass(cls, MiniportMidi | MiniportDMus):
        raise StatusError(
            Status.INVALID_PARAMETER, f"{spec!r} is not a MiniportMidi or MiniportDMus subclass"
        )
    return cls


def load(name: str) -> type[MiniportMidi | MiniportDMus]:
    """The class for a registered name or a `module:Class` spec."""
    if ":" in name:
        return _import(name)
    spec = available().get(name)
    if spec is None:
        known = ", ".join(sorted(available()))
        raise StatusError(Status.OBJECT_NAME_NOT_FOUND, f"no miniport {name!r} (known: {known})")
    return _import(spec)


# Adapters (PortCls adapter drivers: start_device binds the device's ports).

ADAPTER_ENTRY_POINT_GROUP: Final = "portcls.adapters"

BUILTIN_ADAPTERS: Final[dict[str, str]] = {
    "mpu401card": "miniports.mpu401card:Mpu401CardAdapter",
}


def available_adapters() -> dict[str, str]:
    """Every adapter name that can be asked for, with the `module:Class` it names."""
    found = dict(BUILTIN_ADAPTERS)
    for ep in entry_points(group=ADAPTER_ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def load_adapter(name: str) -> type[Adapter]:
    """The adapter class for a registered name or a `module:Class` spec; StatusError:
    OBJECT_NAME_NOT_FOUND for an unknown name, NOT_SUPPORTED if its module cannot be
    imported, INVALID_PARAMETER if it names no Adapter subclass."""
    spec = name if ":" in name else available_adapters().get(name)
    if spec is None:
        known = ", ".join(sorted(available_adapters()))
        raise StatusError(Status.OBJECT_NAME_NOT_FOUND, f"no adapter {name!r} (known: {known})")
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise StatusError(Status.INVALID_PARAMETER, f"{spec!r} is not 'module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise StatusError(
            Status.NOT_SUPPORTED, f"adapter {spec!r} is not available: {exc}"
        ) from exc
    cls = getattr(module, attr, None)
    if not isinstance(cls, type) or not issubclass(cls, Adapter):
        raise StatusError(Status.INVALID_PARAMETER, f"{spec!r} is not an Adapter subclass")
    return cls
