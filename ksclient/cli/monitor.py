"""`portcls monitor FILTER[:PIN]...`: what pins render and capture, one line per message.

A render pin is watched through the kernel's monitor tap: no pin instance is
taken, so it can watch the render pin a player holds; a monitor that falls behind
loses copies (counted, shown at the end), never the pin's own data. A capture pin
is read through an instance of its own (capture happens only while one is open),
or through the tap when every instance is taken. Without PIN, the filter's capture
pins are watched (with --all, its render pins too); PIN (an id or a name) may be a
render pin."""

from __future__ import annotations

import argparse
import json
import time

import ksclient
from ksclient.cli import common
from ksclient.monitor import Monitor

DESCRIPTION = "print what a filter's pins render and capture, one line per message"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", metavar="FILTER[:PIN]", nargs="+")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON object a line")
    output.add_argument("--raw", action="store_true", help="hex bytes instead of names")
    parser.add_argument("--count", type=int, help="stop after this many messages")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--all", action="store_true",
                        help="without PIN: the render pins too, not only the capture pins")
    common.add_runtime(parser)


def _pins(client: ksclient.Client, target: str, every: bool) -> list[tuple[str, int, str]]:
    """(filter, pin id, "render"/"capture") for each pin `target` names."""
    name, sep, pin = target.partition(":")
    f = client.filter(name)
    found = []
    for info in f.pins:
        if not (info.is_render or info.is_capture):
            continue
        if sep and pin:
            if pin not in (str(info.id), info.name):
                continue
        elif info.is_render and not every:
            continue
        found.append((f.id, info.id, "render" if info.is_render else "capture"))
    if not found:
        raise ValueError(f"{f.id} has no streaming pin {pin!r}" if pin
                         else f"{f.id} has no streaming pin")
    return found


def run(args: argparse.Namespace) -> int:
    """Times are when each pin passed the message on, in seconds since the start."""
    out = common.console()
    err = common.console(stderr=True)
    seen = 0
    deadline = None if args.duration is None else time.monotonic() + args.duration
    with common.connect(args) as client:
        watched: list[tuple[Monitor | ksclient.CapturePin, str, str]] = []
        try:
            for target in args.targets:
                for filter_id, pin_id, kind in _pins(client, target, args.all):
                    watched.append((_source(client, filter_id, pin_id, kind),
                                    f"{filter_id}:{pin_id}", kind))
            zero = ksclient.now()
            # On stderr, so that it never mixes with --json lines; it says "ready" too.
            err.print("monitoring " + ", ".join(f"{label} ({kind})" for _, label, kind in watched)
                      + " (Ctrl-C stops)")
            try:
                while args.count is None or seen < args.count:
                    wait = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
                    if wait <= 0:
                        break
                    got = False
                    for monitor, label, kind in watched:
                        while (args.count is None or seen < args.count) and monitor.poll(0):
                            msg = monitor.receive_nowait()
                            got = True
                            seen += 1
                            _show(args, out, msg, (msg.timestamp - zero) / 1e7,
                                  label if len(watched) > 1 else "", kind)
                    if not got:
                        watched[0][0].poll(wait / len(watched))
            except KeyboardInterrupt:
                pass
            dropped = {label: m.dropped for m, label, _ in watched if isinstance(m, Monitor)}
            if any(dropped.values()):
                err.print("dropped (the monitor fell behind; the pins lost nothing): " + ", ".join(
                    f"{label} {n}" for label, n in dropped.items() if n))
        finally:
            for monitor, _, _ in watched:
                monitor.close()
    return 0


def _source(
    client: ksclient.Client, filter_id: str, pin_id: int, kind: str
) -> Monitor | ksclient.CapturePin:
    if kind == "capture":
        try:
            pin = client.open_capture(filter_id, pin_id)
        except ksclient.InstancesExhaustedError:
            pass  # an application has them all: watch what they capture
        else:
            pin.run()
            return pin
    return client.open_monitor(filter_id, pin_id)


def _show(args: argparse.Namespace, out: object, msg: ksclient.MidiMessage, seconds: float,
          label: str, kind: str) -> None:
    if args.json:
        record = {"time": round(seconds, 7), "timestamp": msg.timestamp, "pin": label,
                  "direction": kind, **common.fields(msg.data)}
        if msg.aborted:
            record["aborted"] = True
        print(json.dumps(record), flush=True)
        return
    text = common.describe(msg.data, raw=args.raw)
    if msg.aborted:
        text += "  (aborted SysEx)"
    if label:  # several pins watched: say which, and which way
        text = f"{label:<14} {'->' if kind == 'render' else '<-'} {text}"
    out.print(f"{seconds:12.6f}  {text}", markup=False)  # type: ignore[attr-defined]
