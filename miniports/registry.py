"""Finding miniport and adapter classes: built-ins, the `portcls.miniports` and
`portcls.adapters` entry points, `module:Class`.

Imports happen only when a miniport is asked for, so a miniport whose optional
dependency is missing fails with a clear "not available" error, and only then.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Final

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


def _available(builtin: dict[str, str], group: str) -> dict[str, str]:
    found = dict(builtin)
    for ep in entry_points(group=group):
        found.setdefault(ep.name, ep.value)
    return found


def _resolve(kind: str, name: str, builtin: dict[str, str], group: str,
             base: Any, base_name: str) -> Any:
    """The class a registered name or a `module:Class` spec names; StatusError:
    OBJECT_NAME_NOT_FOUND for an unknown name, NOT_SUPPORTED if its module cannot be
    imported, INVALID_PARAMETER if it names no subclass of `base`."""
    spec = name if ":" in name else _available(builtin, group).get(name)
    if spec is None:
        known = ", ".join(sorted(_available(builtin, group)))
        raise StatusError(Status.OBJECT_NAME_NOT_FOUND, f"no {kind} {name!r} (known: {known})")
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise StatusError(Status.INVALID_PARAMETER, f"{spec!r} is not 'module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise StatusError(
            Status.NOT_SUPPORTED, f"{kind} {spec!r} is not available: {exc}"
        ) from exc
    cls = getattr(module, attr, None)
    if not isinstance(cls, type) or not issubclass(cls, base):
        raise StatusError(Status.INVALID_PARAMETER, f"{spec!r} is not {base_name} subclass")
    return cls


def available() -> dict[str, str]:
    """Every miniport name that can be asked for, with the `module:Class` it names."""
    return _available(BUILTIN, ENTRY_POINT_GROUP)


def load(name: str) -> type[MiniportMidi | MiniportDMus]:
    """The class for a registered name or a `module:Class` spec."""
    cls: type[MiniportMidi | MiniportDMus] = _resolve(
        "miniport", name, BUILTIN, ENTRY_POINT_GROUP, MiniportMidi | MiniportDMus,
        "a MiniportMidi or MiniportDMus")
    return cls


# Adapters (PortCls adapter drivers: start_device binds the device's ports).

ADAPTER_ENTRY_POINT_GROUP: Final = "portcls.adapters"

BUILTIN_ADAPTERS: Final[dict[str, str]] = {
    "mpu401card": "miniports.mpu401card:Mpu401CardAdapter",
}


def available_adapters() -> dict[str, str]:
    """Every adapter name that can be asked for, with the `module:Class` it names."""
    return _available(BUILTIN_ADAPTERS, ADAPTER_ENTRY_POINT_GROUP)


def load_adapter(name: str) -> type[Adapter]:
    """The adapter class for a registered name or a `module:Class` spec (StatusError as
    for miniports)."""
    cls: type[Adapter] = _resolve("adapter", name, BUILTIN_ADAPTERS,
                                  ADAPTER_ENTRY_POINT_GROUP, Adapter, "an Adapter")
    return cls
