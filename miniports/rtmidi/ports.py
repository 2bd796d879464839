"""Finding and naming rtmidi ports: the APIs this python-rtmidi has, the ports one offers,
a port chosen by name or glob.

Used by the rtmidi miniport, the port watcher and `portcls ls --hardware`; none of it
opens a port for MIDI traffic.
"""

from __future__ import annotations

import fnmatch
import os
from typing import Final

import rtmidi

from ipc.status import Status, StatusError

APIS: Final[dict[str, int]] = {
    "auto": rtmidi.API_UNSPECIFIED,
    "alsa": rtmidi.API_LINUX_ALSA,
    "jack": rtmidi.API_UNIX_JACK,
    "coremidi": rtmidi.API_MACOSX_CORE,
    "winmm": rtmidi.API_WINDOWS_MM,
}

__all__ = ["APIS", "api_id", "compiled_apis", "list_ports", "match_port", "no_autostart"]


def api_id(name: str) -> int:
    """The rtmidi API constant for a name; StatusError(INVALID_PARAMETER) if unknown,
    NOT_SUPPORTED if this python-rtmidi was built without it."""
    if name not in APIS:
        raise StatusError(
            Status.INVALID_PARAMETER, f"api {name!r}: one of {', '.join(APIS)}"
        )
    api = APIS[name]
    if api != rtmidi.API_UNSPECIFIED and api not in rtmidi.get_compiled_api():
        raise StatusError(Status.NOT_SUPPORTED, f"python-rtmidi here has no {name} API")
    return api


def compiled_apis() -> list[str]:
    """The API names this python-rtmidi can use."""
    built = set(rtmidi.get_compiled_api())
    return [name for name, api in APIS.items() if api in built]


def list_ports(api: str, client_name: str = "portcls-ls") -> dict[str, list[str]]:
    """The ports rtmidi sees on `api`: {"inputs": [...], "outputs": [...]}.

    Raises StatusError(IO_DEVICE_ERROR) if the API cannot be opened (a JACK
    API with no server running, say).
    """
    api_const = api_id(api)
    no_autostart()
    try:
        midi_in = rtmidi.MidiIn(rtapi=api_const, name=client_name)
        try:
            inputs = list(midi_in.get_ports())
        finally:
            midi_in.delete()
        midi_out = rtmidi.MidiOut(rtapi=api_const, name=client_name)
        try:
            outputs = list(midi_out.get_ports())
        finally:
            midi_out.delete()
    except rtmidi.RtMidiError as exc:
        raise StatusError(Status.IO_DEVICE_ERROR, f"rtmidi {api}: {exc}") from exc
    return {"inputs": inputs, "outputs": outputs}


def no_autostart() -> None:
    """Asking JACK for ports must not start a server of its own (libjack would, by default)."""
    os.environ.setdefault("JACK_NO_START_SERVER", "1")


def match_port(names: list[str], pattern: str) -> int | None:
    """The index of the port named `pattern`, else of the first matching it as a glob."""
    if pattern in names:
        return names.index(pattern)
    for index, name in enumerate(names):
        if fnmatch.fnmatchcase(name, pattern):
            return index
    return None
