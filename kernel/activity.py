"""What `portcls up` shows of the stack at work: one log line (and, when tracing,
one trace event) per client hello and goodbye, pin open, state change and close.

Never per message: those are in the trace (ipc/trace.py), not the log.
"""

from __future__ import annotations

import logging

from ipc import trace
from ipc.ks import (
    KSDATAFORMAT_SUBTYPE_DIRECTMUSIC,
    KSDATAFORMAT_SUBTYPE_MIDI,
    KSDATAFORMAT_SUBTYPE_MIDI_BUS,
    DataFormat,
    KsState,
)

log = logging.getLogger("portcls.kernel")

SUBFORMAT_NAMES = {
    KSDATAFORMAT_SUBTYPE_MIDI: "MIDI",
    KSDATAFORMAT_SUBTYPE_MIDI_BUS: "MIDI bus",
    KSDATAFORMAT_SUBTYPE_DIRECTMUSIC: "DirectMusic",
}


def _client(name: str, pid: int) -> str:
    return name if name.endswith(str(pid)) else f"{name} (pid {pid})"


def _pin_event(name: str, handle: int, **args: object) -> None:
    trace.instant(name, "pin", {"pin": handle, **args})


def client_hello(name: str, pid: int) -> None:
    log.info("client %s: hello", _client(name, pid))
    if trace.ON:
        trace.instant("client hello", "client", {"client": name, "pid": pid})


def client_goodbye(name: str, pid: int, why: str) -> None:
    log.info("client %s: session ended: %s", _client(name, pid), why)
    if trace.ON:
        trace.instant("client goodbye", "client", {"client": name, "pid": pid, "why": why})


def pin_opened(
    client: str, handle: int, filter_id: str, pin_id: int, capture: bool, fmt: DataFormat
) -> None:
    kind = "capture" if capture else "render"
    subformat = SUBFORMAT_NAMES.get(fmt.sub_format, fmt.sub_format)
    log.info("pin %d opened by %s: %s pin %d (%s), format %s", handle, client, filter_id,
             pin_id, kind, subformat)
    if trace.ON:
        _pin_event("pin open", handle, filter=filter_id, pin_id=pin_id, kind=kind,
                   format=subformat)


def pin_state(handle: int, state: KsState) -> None:
    log.info("pin %d: %s", handle, state.name)
    if trace.ON:
        _pin_event("pin state", handle, state=state.name)


def pin_closed(handle: int, stats: dict[str, int]) -> None:
    moved = ", ".join(f"{k} {v}" for k, v in sorted(stats.items()) if v)
    log.info("pin %d closed%s", handle, f" ({moved})" if moved else "")
    if trace.ON:
        _pin_event("pin close", handle, **stats)
