"""`portcls monitor FILTER[:PIN]`: what a capture pin receives, one line per message.

It opens a capture pin of its own (the loopback's allows 4 instances). Watching what a
render pin plays needs the kernel's monitor tap, which is not built yet."""

from __future__ import annotations

import argparse
import json
import time

import ksclient
from ksclient.cli import common

DESCRIPTION = "print what a filter's capture pin receives, one line per message"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="FILTER[:PIN]")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON object a line")
    output.add_argument("--raw", action="store_true", help="hex bytes instead of names")
    parser.add_argument("--count", type=int, help="stop after this many messages")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    common.add_runtime(parser)


def run(args: argparse.Namespace) -> int:
    """Times are the capture timestamps, in seconds since the monitor started."""
    out = common.console()
    seen = 0
    deadline = None if args.duration is None else time.monotonic() + args.duration
    with common.connect(args) as client:
        filter_id, pin_id = common.resolve_pin(client, args.target, capture=True)
        with client.open_capture(filter_id, pin_id) as pin:
            pin.run()
            zero = ksclient.now()
            # On stderr, so that it never mixes with --json lines; it says "ready" too.
            common.console(stderr=True).print(f"monitoring {filter_id}:{pin_id} (Ctrl-C stops)")
            try:
                while args.count is None or seen < args.count:
                    wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                    if wait <= 0:
                        break
                    if not pin.poll(wait):
                        continue
                    msg = pin.receive_nowait()
                    seen += 1
                    seconds = (msg.timestamp - zero) / 10_000_000
                    if args.json:
                        record = {"time": round(seconds, 7), "timestamp": msg.timestamp,
                                  **common.fields(msg.data)}
                        if msg.aborted:
                            record["aborted"] = True
                        print(json.dumps(record), flush=True)
                    else:
                        text = common.describe(msg.data, raw=args.raw)
                        if msg.aborted:
                            text += "  (aborted SysEx)"
                        out.print(f"{seconds:12.6f}  {text}", markup=False)
            except KeyboardInterrupt:
                pass
    return 0
