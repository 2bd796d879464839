"""The kernel's configuration: which devices the PnP manager starts, and its timings.

Read from a TOML file (`portcls up config.toml`); without one, the built-in
default needs no hardware: one loopback device and one MPU-401 (emulated, its
cable looped back).

    [kernel]
    heartbeat_interval = 1.0     # seconds between a miniport host's heartbeats
    heartbeat_timeout = 5.0      # silence after which a miniport is declared hung
    call_timeout = 5.0           # how long the kernel waits for a miniport's reply
    malformed_limit = 50         # this many malformed messages from a miniport in
    malformed_window = 10.0      #   this many seconds is a fault (0 = never)
    stop_grace = 1.0             # SIGTERM to a failed miniport, SIGKILL this much later
    ring_capacity = 65536        # least bytes in a stream's kernel-miniport ring
    start_timeout = 60.0         # an adapter's start_device not done by then is a fault

    [[device]]
    name = "loopback"            # the filter's name; unique
    miniport = "loopback"        # a registered miniport or "module:Class"
    options = { max_write = 3 } # constructor keyword arguments
    # or, instead of miniport: adapter = "mpu401card" (a registered adapter or
    # "module:Class"; options go to its constructor); its start_device binds the ports
    resources = { io = [[0x330, 2]], irq = [9] }
    properties = { friendly_name = "Loopback" }
    restart = { limit = 5, window = 60.0, backoff = 0.2 }   # limit 0 (or "never"): no restart
    physical_connections = [{ pin = 2, to = "synth", to_pin = 0 }]  # PcRegisterPhysicalConnection

    [[hotplug]]                  # every matching rtmidi port becomes a device while it exists
    api = "jack"                 # alsa, jack, coremidi, winmm
    match = "synth*:*"           # glob over port names
    direction = "both"           # input (capture from it), output (render to it), both
    prefix = "hw"                # device name: hw-<port name>
    options = { pace = false }   # more rtmidi miniport options
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipc.status import Status, StatusError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class ConfigError(StatusError):
    """A configuration the kernel cannot run; `key` names the offending key if one does."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(Status.DEVICE_CONFIGURATION_ERROR, message)
        self.key = key


def _config_error(message: str, key: str | None = None) -> ConfigError:
    return ConfigError(message, key)


def _check_keys(table: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    """Refuse keys that are not in `known`, naming the closest known key of each."""
    unknown = [key for key in table if key not in known]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    raise _config_error(
        f"{where}: unknown keys {', '.join(hints)}; known keys: {', '.join(known)}", unknown[0]
    )


_KERNEL_KEYS = ("heartbeat_interval", "heartbeat_timeout", "call_timeout", "ring_capacity",
                "malformed_limit", "malformed_window", "stop_grace", "start_timeout")
_RESTART_KEYS = ("limit", "window", "backoff", "max_backoff")
_DEVICE_KEYS = ("name", "miniport", "adapter", "options", "resources", "properties",
                "restart", "physical_connections")
_CONNECTION_KEYS = ("pin", "to", "to_pin")
_HOTPLUG_KEYS = ("api", "match", "direction", "prefix", "options", "interval", "restart")


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    limit: int = 5
    window: float = 60.0
    backoff: float = 0.2
    max_backoff: float = 5.0


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    name: str
    miniport: str
    options: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    restart: RestartPolicy = RestartPolicy()
    physical_connections: tuple[tuple[int, str, int], ...] = ()
    """PcRegisterPhysicalConnection: (this filter's pin, other filter, its pin) wires,
    on the device's first filter (the one named like the device)."""
    adapter: str = ""
    """The adapter plugin whose start_device binds the device's ports ("": the default
    adapter: one port, `miniport`, one subdevice); `options` are then the adapter's."""


@dataclass(frozen=True, slots=True)
class HotplugRule:
    """Every rtmidi port of `api` whose name matches `match` becomes a device while it exists.

    direction "input": the device captures from the port; "output": it renders
    to it; "both": either, as the port allows. The device is named
    `prefix-<port name>` (characters a device name cannot hold become "-").
    """

    api: str
    match: str
    direction: str = "both"
    prefix: str = "hw"
    options: dict[str, Any] = field(default_factory=dict)
    interval: float = 0.25
    restart: RestartPolicy = RestartPolicy()


@dataclass(frozen=True, slots=True)
class KernelConfig:
    devices: tuple[DeviceConfig, ...]
    hotplug: tuple[HotplugRule, ...] = ()
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 5.0
    call_timeout: float = 5.0
    ring_capacity: int = 1 << 16
    malformed_limit: int = 50
    malformed_window: float = 10.0
    stop_grace: float = 1.0
    start_timeout: float = 60.0
    """Seconds a device's start_device may take (registering its ports included)."""


DEFAULT = KernelConfig(
    devices=(
        DeviceConfig(name="loopback", miniport="loopback"),
        # The built-in UART miniport on an emulated MPU-401 whose MIDI OUT is looped to its IN.
        DeviceConfig(
            name="mpu401",
            miniport="mpu401",
            options={"cable": "loopback"},
            resources={"io": [[0x330, 2]], "irq": [9]},
        ),
    )
)


def _number(table: dict[str, Any], key: str, default: float, low: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        raise _config_error(f"{key} must be a number >= {low}", key)
    return float(value)


def _table(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key, {})
    if not isinstance(value, dict):
        raise _config_error(f"{key} must be a table", key)
    return value


def _restart(raw: dict[str, Any], what: str) -> RestartPolicy:
    # `restart = "never"` is short for a limit of 0.
    restart = {"limit": 0} if raw.get("restart") == "never" else _table(raw, "restart")
    _check_keys(restart, _RESTART_KEYS, f"{what}: restart")
    limit = restart.get("limit", 5)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise _config_error(f"{what}: restart.limit must be an int >= 0")
    return RestartPolicy(
        limit=limit,
        window=_number(restart, "window", 60.0, 0.0),
        backoff=_number(restart, "backoff", 0.2, 0.0),
        max_backoff=_number(restart, "max_backoff", 5.0, 0.0),
    )


def _hotplug_rules(raw_rules: Any) -> tuple[HotplugRule, ...]:
    if not isinstance(raw_rules, list):
        raise _config_error("hotplug must be an array of tables ([[hotplug]])")
    rules = []
    for raw in raw_rules:
        if not isinstance(raw, dict):
            raise _config_error("each [[hotplug]] must be a table")
        _check_keys(raw, _HOTPLUG_KEYS, "[[hotplug]]")
        api, match = raw.get("api"), raw.get("match")
        if not isinstance(api, str) or not api:
            raise _config_error("hotplug needs an api (alsa, jack, coremidi, winmm)")
        if not isinstance(match, str) or not match:
            raise _config_error("hotplug needs a match pattern (a glob over port names)")
        direction = raw.get("direction", "both")
        if direction not in ("input", "output", "both"):
            raise _config_error(f"hotplug direction {direction!r}: input, output or both")
        prefix = raw.get("prefix", "hw")
        if not isinstance(prefix, str) or not _NAME.match(prefix) or len(prefix) > 16:
            raise _config_error(f"hotplug prefix {prefix!r}: letters, digits, _ . - (max 16)")
        rules.append(HotplugRule(
            api=api, match=match, direction=direction, prefix=prefix,
            options=_table(raw, "options"),
            interval=_number(raw, "interval", 0.25, 0.01),
            restart=_restart(raw, f"hotplug {match!r}"),
        ))
    return tuple(rules)


def _physical_connections(raw: dict[str, Any], name: str) -> tuple[tuple[int, str, int], ...]:
    wires = raw.get("physical_connections", [])
    where = f"device {name!r}: physical_connections"
    if not isinstance(wires, list):
        raise _config_error(f"{where} must be an array of tables", "physical_connections")
    out = []
    for wire in wires:
        if not isinstance(wire, dict):
            raise _config_error(f"{where}: each is a table {{ pin, to, to_pin }}",
                                "physical_connections")
        _check_keys(wire, _CONNECTION_KEYS, where)
        pin, to, to_pin = wire.get("pin"), wire.get("to"), wire.get("to_pin")
        if (type(pin) is not int or type(to_pin) is not int or pin < 0 or to_pin < 0
                or not isinstance(to, str) or not _NAME.match(to)):
            raise _config_error(f"{where}: pin and to_pin are pin ids, to a device name",
                                "physical_connections")
        out.append((pin, to, to_pin))
    return tuple(out)


def parse(data: dict[str, Any]) -> KernelConfig:
    """Validate a decoded TOML document; StatusError(DEVICE_CONFIGURATION_ERROR) if wrong."""
    _check_keys(data, ("kernel", "device", "hotplug"), "top level")
    kernel = _table(data, "kernel")
    _check_keys(kernel, _KERNEL_KEYS, "[kernel]")
    devices = []
    raw_devices = data.get("device", [])
    if not isinstance(raw_devices, list):
        raise _config_error("device must be an array of tables ([[device]])")
    seen = set()
    for raw in raw_devices:
        if not isinstance(raw, dict):
            raise _config_error("each [[device]] must be a table")
        name, miniport, adapter = raw.get("name"), raw.get("miniport"), raw.get("adapter")
        if not isinstance(name, str) or not _NAME.match(name):
            raise _config_error(f"device name {name!r}: letters, digits, _ . - (max 64)")
        if name in seen:
            raise _config_error(f"device name {name!r} is used twice")
        seen.add(name)
        _check_keys(raw, _DEVICE_KEYS, f"device {name!r}")
        if adapter is not None and (not isinstance(adapter, str) or not adapter):
            raise _config_error(f"device {name!r}: adapter must be a name or module:Class",
                                "adapter")
        if adapter is not None and miniport is not None:
            raise _config_error(f"device {name!r}: give a miniport or an adapter, not both "
                                "(the adapter chooses its miniports)", "adapter")
        if adapter is None and (not isinstance(miniport, str) or not miniport):
            raise _config_error(f"device {name!r} needs a miniport (or an adapter)")
        devices.append(
            DeviceConfig(
                name=name,
                miniport=miniport if isinstance(miniport, str) else "",
                adapter=adapter or "",
                options=_table(raw, "options"),
                resources=_table(raw, "resources"),
                properties=_table(raw, "properties"),
                restart=_restart(raw, f"device {name!r}"),
                physical_connections=_physical_connections(raw, name),
            )
        )
    hotplug = _hotplug_rules(data.get("hotplug", []))
    capacity = kernel.get("ring_capacity", 1 << 16)
    if (
        isinstance(capacity, bool)
        or not isinstance(capacity, int)
        or capacity < 4096
        or capacity & (capacity - 1)
    ):
        raise _config_error("ring_capacity must be a power of two >= 4096", "ring_capacity")
    malformed_limit = kernel.get("malformed_limit", 50)
    if isinstance(malformed_limit, bool) or not isinstance(malformed_limit, int) or (
        malformed_limit < 0
    ):
        raise _config_error(
            "malformed_limit must be an int >= 0 (0: never a fault)", "malformed_limit"
        )
    return KernelConfig(
        devices=tuple(devices),
        hotplug=hotplug,
        heartbeat_interval=_number(kernel, "heartbeat_interval", 1.0, 0.01),
        heartbeat_timeout=_number(kernel, "heartbeat_timeout", 5.0, 0.05),
        call_timeout=_number(kernel, "call_timeout", 5.0, 0.05),
        ring_capacity=capacity,
        malformed_limit=malformed_limit,
        malformed_window=_number(kernel, "malformed_window", 10.0, 0.01),
        stop_grace=_number(kernel, "stop_grace", 1.0, 0.0),
        start_timeout=_number(kernel, "start_timeout", 60.0, 0.1),
    )


def load(path: Path | None) -> KernelConfig:
    """The configuration in `path`, or the built-in default when `path` is None."""
    if path is None:
        return DEFAULT
    try:
        text = Path(path).read_bytes().decode("utf-8")
        return parse(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise _config_error(f"{path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise _config_error(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise _config_error(f"{path}: {exc.strerror}") from exc
    except ConfigError as exc:
        line = _line_of(text, exc.key) if exc.key else None
        where = f"{path}, line {line}" if line else f"{path}"
        raise _config_error(f"{where}: {exc.message}", exc.key) from None


def _line_of(text: str, key: str) -> int | None:
    """The first line that assigns `key` (TOML's semantic errors carry no position)."""
    pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=|[{{,]\s*{re.escape(key)}\s*=")
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.search(line):
            return number
    return None
