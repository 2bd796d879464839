"""What each process did, for `portcls trace`: a bounded ring of Trace Event Format events.

Off unless the environment names a directory in `PORTCLS_TRACE` (children
inherit it, so one variable traces a kernel, its miniport hosts and any client
started under it). Off, it costs one test of the module-level `ON` at each
trace point, which is why callers write `if trace.ON: trace.instant(...)`.

On, events go into a deque of at most `PORTCLS_TRACE_EVENTS` entries (the
oldest are dropped and counted: tracing never blocks and never grows without
bound), stamped with `time.monotonic_ns()`, the shared clock (CLOCK_MONOTONIC
is system-wide, so every process's events line up). At exit (normal exit,
`SystemExit`, SIGTERM) the process writes them to `<dir>/<pid>.json`;
`merge` gathers a directory's files into one JSON array that Perfetto and
chrome://tracing open.

Flows follow a message: ids from `render_flow_id` (the pin handle and the
record's place in the pin's stream, the same number in client, kernel and
host) and `capture_flow_id` (the ISR time the record carries end to end).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any, Final, TextIO

ENV_TRACE: Final = "PORTCLS_TRACE"
ENV_TRACE_EVENTS: Final = "PORTCLS_TRACE_EVENTS"
DEFAULT_EVENTS: Final = 200_000

ON: bool = False
"""True when this process records events: the one thing a trace point tests."""

_Event = tuple[str, str, str, int, int, int, Any, Any]
"""(ph, name, cat, ts ns, dur ns, tid, args, flow id) in the ring; converted at dump."""

_ring: collections.deque[_Event] = collections.deque(maxlen=DEFAULT_EVENTS)
_appended = 0
_directory: Path | None = None
_process_name = ""
_threads: dict[int, str] = {}
_dumped = False

now = time.monotonic_ns
"""The trace clock: the shared monotonic clock in ns."""

RENDER_FLOW_BASE: Final = 1 << 52
"""Render ids sit above every capture id (an ISR time in 100 ns, far below 2**52)
and below 2**53, so chrome://tracing's JavaScript numbers hold them exactly."""


def render_flow_id(handle: int, seq: int) -> int:
    """The id of the `seq`th record (from 0) a client wrote into render pin `handle`:
    the kernel releases it and the host reads it as the same `seq`th of that stream."""
    return RENDER_FLOW_BASE + ((handle & 0xFFFFF) << 32) + (seq & 0xFFFFFFFF)


def capture_flow_id(isr_time: int) -> int:
    """The id of what was captured at `isr_time` (100 ns): the host stamps its record
    with it, the kernel's parser keeps it, the client receives it as the timestamp."""
    return isr_time & (RENDER_FLOW_BASE - 1)


def _tid() -> int:
    tid = threading.get_native_id()
    if tid not in _threads:
        _threads[tid] = threading.current_thread().name
    return tid


def _push(event: _Event) -> None:
    global _appended
    _appended += 1
    _ring.append(event)


def instant(name: str, cat: str, args: Mapping[str, Any] | None = None) -> None:
    """Something happened now (an interrupt, a notify)."""
    _push(("i", name, cat, now(), 0, _tid(), args, None))


def complete(
    name: str, cat: str, start: int, args: Mapping[str, Any] | None = None,
    flows: Iterable[int] = (), flow_ph: str = "t", flow_cat: str = "",
) -> None:
    """A call that began at `start` (a `now()`) and ends now; `flows` are the ids of
    the messages it moved, each as a flow event of phase `flow_ph` ("s" starts a
    message's path, "t" continues it, "f" ends it) inside this slice."""
    end = now()
    tid = _tid()
    _push(("X", name, cat, start, end - start, tid, args, None))
    for fid in flows:
        _push((flow_ph, "message", flow_cat or cat, start, 0, tid, None, fid))


def set_process_name(name: str) -> None:
    """How this process's track is labelled ("kernel", "miniport loopback", ...)."""
    global _process_name
    _process_name = name


def name_process_once(name: str) -> None:
    """Label this process's track unless it has a label already (a client's first
    connection names it; `portcls trace` names itself first)."""
    if not _process_name:
        set_process_name(name)


def statistics() -> dict[str, int]:
    """Events recorded so far, those kept, those dropped for room."""
    return {"recorded": _appended, "kept": len(_ring), "dropped": _appended - len(_ring)}


def _metadata() -> list[dict[str, Any]]:
    """The process's and its threads' names, and the overflow if there was one."""
    pid = os.getpid()
    name = _process_name or Path(sys.argv[0] or "python").name
    stats = statistics()
    out: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "ts": 0,
         "args": {"name": f"{name} ({pid})"}},
    ]
    if stats["dropped"]:
        out.append({"ph": "M", "name": "process_labels", "pid": pid, "tid": 0, "ts": 0,
                    "args": {"labels": f"trace ring overflowed: {stats['dropped']} dropped"}})
    for tid, tname in tuple(_threads.items()):
        out.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "ts": 0,
                    "args": {"name": tname}})
    return out


def events() -> list[dict[str, Any]]:
    """This process's events in Trace Event Format (ts and dur in µs), with its
    process and thread names as metadata."""
    pid = os.getpid()
    out = _metadata()
    for ph, ename, cat, ts, dur, tid, args, fid in tuple(_ring):
        event: dict[str, Any] = {"ph": ph, "name": ename, "cat": cat, "ts": ts / 1000,
                                 "pid": pid, "tid": tid}
        if ph == "X":
            event["dur"] = dur / 1000
        elif ph == "i":
            event["s"] = "t"
        else:
            event["id"] = fid
            event["bp"] = "e"
        if args:
            event["args"] = dict(args)
        out.append(event)
    return out


def _write_json(out: TextIO) -> None:
    """`events()` as a JSON array, written line by line: a process writes this while it
    exits (its owner may kill it soon), so it formats the common fields itself."""
    pid = os.getpid()
    dumps = json.JSONEncoder(separators=(",", ":"), default=str).encode
    names: dict[str, str] = {}

    def quoted(text: str) -> str:
        if text not in names:
            names[text] = dumps(text)
        return names[text]

    out.write("[\n")
    out.write(",\n".join(dumps(e) for e in _metadata()))
    for ph, ename, cat, ts, dur, tid, args, fid in tuple(_ring):
        head = (f',\n{{"ph":"{ph}","name":{quoted(ename)},"cat":{quoted(cat)},'
                f'"ts":{ts / 1000:.3f},"pid":{pid},"tid":{tid}')
        if ph == "X":
            tail = f',"dur":{dur / 1000:.3f}'
        elif ph == "i":
            tail = ',"s":"t"'
        else:
            tail = f',"id":{int(fid)},"bp":"e"'
        if args:
            tail += f',"args":{dumps(args)}'
        out.write(head + tail + "}")
    out.write("\n]\n")


def dump() -> Path | None:
    """Write this process's events to `<dir>/<pid>.json` (once); the path, or None
    when tracing is off or the directory is gone."""
    global _dumped
    if not ON or _directory is None or _dumped:
        return None
    _dumped = True
    path = _directory / f"{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    try:
        with tmp.open("w") as out:
            _write_json(out)
        tmp.replace(path)
    except OSError:
        return None
    return path


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    dump()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def enable(directory: Path | str, process_name: str = "", events: int = DEFAULT_EVENTS) -> None:
    """Start recording into a ring of `events`, written to `directory` at exit."""
    global ON, _directory, _ring, _dumped
    _directory = Path(directory)
    _ring = collections.deque(maxlen=max(1, events))
    _dumped = False
    if process_name:
        set_process_name(process_name)
    if not ON:
        atexit.register(dump)
        # A process killed by SIGTERM's default action runs no atexit: write first.
        with contextlib.suppress(ValueError):  # not the main thread
            if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _on_sigterm)
    ON = True


def disable() -> None:
    """Stop recording (what was recorded stays until `dump`)."""
    global ON
    ON = False


def merge(directory: Path | str) -> list[dict[str, Any]]:
    """Every process's events from `directory`'s `<pid>.json` files, in one list
    (a file that is not a trace is skipped)."""
    merged: list[dict[str, Any]] = []
    for path in sorted(Path(directory).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, list):
            merged.extend(e for e in data if isinstance(e, dict))
    return merged


def write_merged(directory: Path | str, out: Path | str) -> list[dict[str, Any]]:
    """`merge` the directory into the file `out` (a JSON array); the events."""
    merged = merge(directory)
    Path(out).write_text(json.dumps(merged, separators=(",", ":")))
    return merged


def _from_environment() -> None:
    directory = os.environ.get(ENV_TRACE)
    if not directory:
        return
    try:
        size = int(os.environ.get(ENV_TRACE_EVENTS, DEFAULT_EVENTS))
    except ValueError:
        size = DEFAULT_EVENTS
    enable(directory, events=size)


_from_environment()
