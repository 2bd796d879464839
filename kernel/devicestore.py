"""Per-device state the port hands out: device properties and the registry store.

`GetDeviceProperty` answers from the device's configuration, encoding strings
the way Windows does (UTF-16LE with a terminating NUL, multi-strings with a
double NUL); `NewRegistryKey` opens keys of an in-kernel store that outlives
miniport restarts (one store per device name, for the kernel's lifetime).
A miniport cannot make the store cost unbounded memory: it holds at most
MAX_KEYS keys of MAX_VALUES values each, a value of at most MAX_VALUE_BYTES;
more is refused with STATUS_INSUFFICIENT_RESOURCES.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Final

from ipc.status import Status, StatusError

MAX_KEYS: Final = 256
MAX_VALUES: Final = 256
MAX_VALUE_BYTES: Final = 64 << 10
"""A value's size: bytes, or characters of a string or of a multi-string's strings."""


def _value_size(value: Any) -> int:
    if isinstance(value, list):
        return sum(len(v) + 1 for v in value)
    return len(value) if isinstance(value, (str, bytes)) else 8


class DeviceProperty(IntEnum):
    DEVICE_DESCRIPTION = 0
    HARDWARE_ID = 1
    COMPATIBLE_IDS = 2
    CLASS_NAME = 5
    CLASS_GUID = 6
    DRIVER_KEY_NAME = 7
    MANUFACTURER = 8
    FRIENDLY_NAME = 9
    LOCATION_INFORMATION = 10
    PHYSICAL_DEVICE_OBJECT_NAME = 11
    ENUMERATOR_NAME = 15
    ADDRESS = 16
    UI_NUMBER = 17


class RegistryKeyType(IntEnum):
    GENERAL = 0
    DEVICE = 1
    DRIVER = 2
    HW_PROFILE = 3
    DEVICE_INTERFACE = 4


_MULTI = {DeviceProperty.HARDWARE_ID, DeviceProperty.COMPATIBLE_IDS}
_NUMBERS = {DeviceProperty.ADDRESS, DeviceProperty.UI_NUMBER}


def _encode_property(prop: DeviceProperty, value: Any) -> bytes:
    if prop in _NUMBERS:
        return int(value).to_bytes(4, "little")
    if prop in _MULTI:
        items = value if isinstance(value, list) else [str(value)]
        return "".join(f"{s}\0" for s in items).encode("utf-16-le") + b"\0\0"
    return (str(value) + "\0").encode("utf-16-le")


class DeviceStore:
    """The properties and registry keys of one device."""

    def __init__(self, name: str, miniport: str, properties: dict[str, Any] | None = None) -> None:
        props: dict[DeviceProperty, Any] = {
            DeviceProperty.DEVICE_DESCRIPTION: f"{miniport} MIDI device",
            DeviceProperty.FRIENDLY_NAME: name,
            DeviceProperty.HARDWARE_ID: [f"PORTCLS_EMU\\{miniport.upper()}"],
            DeviceProperty.COMPATIBLE_IDS: ["PORTCLS_EMU\\MIDI"],
            DeviceProperty.CLASS_NAME: "MEDIA",
            DeviceProperty.CLASS_GUID: "{4d36e96c-e325-11ce-bfc1-08002be10318}",
            DeviceProperty.DRIVER_KEY_NAME: f"{{4d36e96c-e325-11ce-bfc1-08002be10318}}\\{name}",
            DeviceProperty.MANUFACTURER: "portcls-emu",
            DeviceProperty.LOCATION_INFORMATION: f"kernel device {name}",
            DeviceProperty.PHYSICAL_DEVICE_OBJECT_NAME: f"\\Device\\portcls-emu\\{name}",
            DeviceProperty.ENUMERATOR_NAME: "PORTCLS_EMU",
            DeviceProperty.ADDRESS: 0,
            DeviceProperty.UI_NUMBER: 0,
        }
        for key, value in (properties or {}).items():
            try:
                props[DeviceProperty[key.upper()]] = value
            except KeyError:
                raise StatusError(
                    Status.DEVICE_CONFIGURATION_ERROR, f"unknown device property {key!r}"
                ) from None
        self.properties = props
        self.keys: dict[tuple[int, str], dict[str, Any]] = {}
        self.key_names: dict[tuple[int, str], str] = {}
        """Each key's path as it was first created (lookups ignore case)."""

    def get_property(self, prop: int) -> bytes:
        """The property's value as Windows encodes it; the caller compares buffer sizes."""
        try:
            which = DeviceProperty(prop)
        except ValueError:
            raise StatusError(Status.INVALID_PARAMETER, f"unknown device property {prop}") from None
        return _encode_property(which, self.properties[which])

    def registry_snapshot(self) -> list[dict[str, Any]]:
        """Every key with its values, for a reader (a copy: nothing here can change them)."""
        return [
            {"type": RegistryKeyType(key_type).name,
             "path": self.key_names.get((key_type, path), path),
             "values": {name: value for name, value in values.values()}}
            for (key_type, path), values in sorted(self.keys.items())
        ]

    def registry(self, key_type: int, path: str, action: str, name: str, value: Any) -> Any:
        """One operation on a key: create, query, set, delete, enumerate, delete_key."""
        try:
            RegistryKeyType(key_type)
        except ValueError:
            raise StatusError(Status.INVALID_PARAMETER, f"unknown key type {key_type}") from None
        if len(path) > 255 or len(name) > 255:
            raise StatusError(Status.INVALID_PARAMETER, "registry names are at most 255 chars")
        key = (key_type, path.lower())
        if action == "create":
            if key not in self.keys and len(self.keys) >= MAX_KEYS:
                raise StatusError(Status.INSUFFICIENT_RESOURCES,
                                  f"a device's registry holds at most {MAX_KEYS} keys")
            self.keys.setdefault(key, {})
            self.key_names.setdefault(key, path)
            return None
        values = self.keys.get(key)
        if values is None:
            raise StatusError(Status.OBJECT_NAME_NOT_FOUND, f"no key {path!r}")
        if action == "query":
            if name.lower() not in values:
                raise StatusError(Status.OBJECT_NAME_NOT_FOUND, f"no value {name!r}")
            return values[name.lower()][1]
        if action == "set":
            ok = (
                (isinstance(value, (int, str, bytes))
                and not isinstance(value, bool))
                or (isinstance(value, list)
                and all(isinstance(v, str) for v in value))
            )
            if not ok:
                raise StatusError(Status.INVALID_PARAMETER, "values are int, str, bytes or [str]")
            if _value_size(value) > MAX_VALUE_BYTES:
                raise StatusError(Status.INSUFFICIENT_RESOURCES,
                                  f"a registry value holds at most {MAX_VALUE_BYTES} bytes")
            if name.lower() not in values and len(values) >= MAX_VALUES:
                raise StatusError(Status.INSUFFICIENT_RESOURCES,
                                  f"a registry key holds at most {MAX_VALUES} values")
            values[name.lower()] = (name, value)
            return None
        if action == "delete":
            if values.pop(name.lower(), None) is None:
                raise StatusError(Status.OBJECT_NAME_NOT_FOUND, f"no value {name!r}")
            return None
        if action == "enumerate":
            return dict(values.values())
        if action == "delete_key":
            prefix = key[1] + "\\"
            if any(k[0] == key_type and k[1].startswith(prefix) for k in self.keys):
                raise StatusError(Status.INVALID_DEVICE_REQUEST, "the key has sub-keys")
            del self.keys[key]
            return None
        raise StatusError(Status.INVALID_PARAMETER, f"unknown registry action {action!r}")
