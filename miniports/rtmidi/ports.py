"""Finding and naming rtmidi ports: the APIs this python-rtmidi has, the ports one offers,
a port chosen by name or glob.

Used by the rtmidi miniport, the port watcher and `portcls ls --hardware`; none of it
opens a port for MIDI traffic.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import sys
import tempfile
from collections.abc import Iterator
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
    with c_stderr_captured() as said:
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
            error: StatusError | None = StatusError(Status.IO_DEVICE_ERROR, f"rtmidi {api}: {exc}")
        else:
            error = None
    if error is not None:
        first = next((line for line in said if line.strip()), "")
        if first:
            error = StatusError(error.status, f"{error.message} ({first.strip()[:200]})")
        raise error
    return {"inputs": inputs, "outputs": outputs}


@contextlib.contextmanager
def c_stderr_captured() -> Iterator[list[str]]:
    """What the C libraries under rtmidi (ALSA, JACK) print on file descriptor 2 while
    the block runs, kept out of the user's terminal; the yielded list gets its lines."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read(1 << 16).decode("utf-8", "replace").splitlines())


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
