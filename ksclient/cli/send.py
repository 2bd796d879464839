"""`portcls send FILTER MESSAGE…`: send MIDI to a render pin, now or later, once or more."""

from __future__ import annotations

import argparse
import time

import ksclient
from ksclient.cli import common

DESCRIPTION = (
    "send MIDI to a filter's render pin: hex bytes (90 3c 40) or mido text "
    "(note_on note=60 velocity=64; several separated by commas)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="FILTER[:PIN]")
    parser.add_argument("message", nargs="+", metavar="MESSAGE")
    parser.add_argument("--at", type=float, default=0.0, help="seconds from now")
    parser.add_argument("--repeat", type=int, default=1, help="send it N times")
    parser.add_argument("--interval", type=float, default=0.0,
                        help="seconds between repeats (on the kernel's clock)")
    common.add_runtime(parser)


def run(args: argparse.Namespace) -> int:
    messages = common.parse_messages(args.message)
    if args.repeat < 1 or args.at < 0 or args.interval < 0:
        raise ValueError("--repeat must be at least 1, --at and --interval not negative")
    out = common.console()
    with common.connect(args) as client:
        filter_id, pin_id = common.resolve_pin(client, args.target, capture=False)
        with client.open_render(filter_id, pin_id) as pin:
            pin.run()
            start = ksclient.now() + int(args.at * 10_000_000)
            timed = args.at > 0 or args.interval > 0
            for i in range(args.repeat):
                at = start + int(i * args.interval * 10_000_000) if timed else None
                pin.send_many(messages, at=at)
            last = start + int((args.repeat - 1) * args.interval * 10_000_000)
            # Closing the pin flushes what is still queued: stay until the last one played.
            while ksclient.now() < last:
                time.sleep(min(0.05, (last - ksclient.now()) / 10_000_000 + 0.001))
            time.sleep(0.01)
    for data in messages:
        out.print(f"sent {args.repeat}x to {filter_id}:{pin_id}: "
                  f"{common.short_hex(data)}  ({common.describe(data)})")
    return 0
