"""`portcls ping FILTER`: round trips through a looped device (render pin -> the same
filter's capture pin), with the latency figures jack_midi_latency_test gives."""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from typing import Any

from rich.table import Table

import ksclient
from ksclient.cli import common

DESCRIPTION = (
    "round trips through a looped filter (render pin -> capture pin): min/avg/p50/p99/max "
    "latency and jitter"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="FILTER")
    parser.add_argument("--count", type=int, default=100, help="round trips (default 100)")
    parser.add_argument("--interval", type=float, default=0.0,
                        help="seconds between round trips")
    parser.add_argument("--wait", type=float, default=2.0,
                        help="seconds to wait for each message before counting it lost")
    parser.add_argument("--json", action="store_true", help="the figures as one JSON object")
    common.add_runtime(parser)


UNDEFINED_CONTROLLERS = range(102, 120)


def probe(i: int) -> bytes:
    """The i-th probe: a control change on an undefined controller (102-119) of channel 16,
    so that a real synthesizer on the loop plays nothing; unique over 2,304 in a row."""
    control = UNDEFINED_CONTROLLERS[(i // 128) % len(UNDEFINED_CONTROLLERS)]
    return bytes((0xBF, control, i % 128))


def percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted values."""
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summarize(rtts: list[float], lost: int, filter_id: str) -> dict[str, Any]:
    """Figures in microseconds. Jitter is the mean absolute difference between consecutive
    round trips (RFC 3550's idea), and `stdev` their standard deviation."""
    result: dict[str, Any] = {"filter": filter_id, "sent": len(rtts) + lost,
                              "received": len(rtts), "lost": lost}
    if rtts:
        ordered = sorted(rtts)
        diffs = [abs(b - a) for a, b in itertools.pairwise(rtts)]
        figures = {
            "min_us": ordered[0], "avg_us": statistics.fmean(rtts),
            "p50_us": percentile(ordered, 0.50), "p99_us": percentile(ordered, 0.99),
            "max_us": ordered[-1], "jitter_us": statistics.fmean(diffs) if diffs else 0.0,
            "stdev_us": statistics.pstdev(rtts),
        }
        result.update({key: round(value, 1) for key, value in figures.items()})
    return result


def run(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise ValueError("--count must be at least 1")
    rtts: list[float] = []
    lost = 0
    with common.connect(args) as client:
        f = client.filter(args.target)
        with client.open_capture(f.id) as inp, client.open_render(f.id) as out:
            inp.run()
            out.run()
            for i in range(args.count):
                data = probe(i)
                sent = ksclient.now()
                out.send(data)
                try:
                    while True:
                        msg = inp.receive(timeout=args.wait)
                        if msg.data == data:
                            break
                except ksclient.KsTimeoutError:
                    lost += 1
                    continue
                rtts.append((ksclient.now() - sent) / 10)
                if args.interval:
                    time.sleep(args.interval)
    result = summarize(rtts, lost, f.id)
    if args.json:
        print(json.dumps(result))
    else:
        _print(result)
    return 0 if not lost else 1


def _print(result: dict[str, Any]) -> None:
    out = common.console()
    out.print(f"{result['received']}/{result['sent']} round trips through {result['filter']} "
              f"(render pin -> capture pin), {result['lost']} lost")
    if not result["received"]:
        return
    table = Table("min", "avg", "p50", "p99", "max", "jitter", "stdev",
                  title="round trip, microseconds")
    table.add_row(*(f"{result[k + '_us']:.0f}"
                    for k in ("min", "avg", "p50", "p99", "max", "jitter", "stdev")))
    out.print(table)
