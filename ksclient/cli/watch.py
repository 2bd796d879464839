"""`portcls watch`: device arrivals, removals and pin errors as they happen."""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime

import ksclient
from ipc.status import Status
from ksclient.cli import common

DESCRIPTION = "print device arrivals, removals and pin errors as they happen"
STYLES = {"arrival": "green", "removal": "red", "pin_error": "yellow",
          "kernel_shutdown": "bold red"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    parser.add_argument("--count", type=int, help="stop after this many events")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    common.add_runtime(parser)


def run(args: argparse.Namespace) -> int:
    out = common.console()
    seen = 0
    deadline = None if args.duration is None else time.monotonic() + args.duration
    with common.connect(args) as client:
        # On stderr, so that it never mixes with --json lines; it says "ready" too.
        common.console(stderr=True).print(
            f"watching the kernel in {client.runtime_dir} (Ctrl-C stops)"
        )
        while args.count is None or seen < args.count:
            wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if wait <= 0:
                break
            try:
                event = client.next_event(wait)
            except ksclient.KsTimeoutError:
                continue
            except ksclient.KernelGoneError:
                _show(out, args.json, ksclient.KernelEvent("kernel_shutdown", reason="gone"))
                return 1
            seen += 1
            _show(out, args.json, event)
            if event.kind == "kernel_shutdown":
                return 1
    return 0


def _show(out: common.Console, as_json: bool, event: ksclient.KernelEvent) -> None:
    stamp = datetime.now().astimezone()
    if as_json:
        record: dict[str, object] = {
            "time": stamp.isoformat(timespec="milliseconds"), "kind": event.kind,
            "filter": event.filter, "reason": event.reason,
        }
        if event.kind == "pin_error":
            record.update(handle=event.handle, status=Status.name_of(event.status))
        print(json.dumps(record), flush=True)
        return
    detail = event.reason
    if event.kind == "pin_error":
        detail = f"pin {event.handle}: {Status.name_of(event.status)} {event.reason}"
    style = STYLES.get(event.kind, "")
    out.print(f"{stamp:%H:%M:%S.%f}"[:-3] + f"  [{style}]{event.kind:<15}[/{style}] "
              f"{event.filter}  {detail}".rstrip(), markup=True)
