#!/usr/bin/env python3
"""Round trip through real JACK: the project's rtmidi device beside python-rtmidi alone.

In one run, on one JACK server (dummy backend; period 64 at 48 kHz unless
told otherwise), with sample blocks interleaved so drift on this shared
machine hits every path alike, it measures the round trip of a 3-byte message:

  project+jack   client → kernel → rtmidi miniport → JACK → rtmidi miniport
                 → kernel → client (the device's output port wired to its input)
  rtmidi alone   python-rtmidi MidiOut → JACK → python-rtmidi MidiIn, one
                 process: what a user would do without this project
  loopback       client → kernel → loopback miniport → kernel → client (no JACK)

and prints p50/p90/p99/max per path and the ratios. Needs Debian's jackd2.
`portcls bench` measures "rtmidi alone" and the loopback too (with the same
code, from ksclient.cli.bench); this script adds the project's own rtmidi device.

    python scripts/bench_rtmidi_jack.py [--samples 2000] [--period 64] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from array import array
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ksclient.cli.bench.baselines import RtmidiJackLoop  # noqa: E402
from ksclient.cli.bench.project import LoopbackPins, measuring  # noqa: E402
from ksclient.cli.bench.stats import ratio, summarize  # noqa: E402
from ksclient.cli.bench.traffic import NOTE  # noqa: E402
from ksclient.launch import start_kernel, toml_config  # noqa: E402
from miniports.testing.jack import JackServer, jack_missing_reason  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2000, help="round trips per path")
    parser.add_argument("--block", type=int, default=100, help="samples per interleaved block")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--period", type=int, default=64, help="JACK frames per period")
    parser.add_argument("--rate", type=int, default=48000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    reason = jack_missing_reason()
    if reason:
        print(f"bench_rtmidi_jack: {reason}", file=sys.stderr)
        return 2
    samples: dict[str, array[int]] = {}
    with JackServer(period=args.period, rate=args.rate) as server:
        os.environ.update(server.env({}))
        jack_kernel = start_kernel(toml_config([{
            "name": "jack", "miniport": "rtmidi",
            "options": {"api": "jack", "virtual": True, "client_name": "bench-dev",
                        "jack_server": server.name},
        }]), env=server.env())
        loop_kernel = start_kernel(toml_config([{"name": "loopback", "miniport": "loopback"}]))
        closers: list[Callable[[], None]] = []
        try:
            server.wait_for_port("bench-dev-out:out")
            server.wait_for_port("bench-dev-in:in")
            server.connect("bench-dev-out:out", "bench-dev-in:in")
            project = LoopbackPins(jack_kernel, device="jack")
            closers.append(project.close)
            alone = RtmidiJackLoop(server)
            closers.append(alone.close)
            loopback = LoopbackPins(loop_kernel)
            closers.append(loopback.close)
            paths = {"project+jack": project.roundtrip, "rtmidi alone": alone.roundtrip,
                     "loopback": loopback.roundtrip}
            samples = {name: array("q") for name in paths}
            with measuring():
                for roundtrip in paths.values():
                    roundtrip(args.warmup, array("q"), NOTE)
                while len(samples["loopback"]) < args.samples:
                    for name, roundtrip in paths.items():
                        roundtrip(args.block, samples[name], NOTE)
        finally:
            for close in closers:
                close()
            jack_kernel.stop()
            loop_kernel.stop()
    print(f"JACK dummy backend, period {args.period} at {args.rate} Hz "
          f"({args.period / args.rate * 1e3:.2f} ms); {args.samples} samples a path, "
          f"blocks of {args.block} interleaved")
    print(f"{'path':<14} {'p50 µs':>9} {'p90 µs':>9} {'p99 µs':>9} {'max µs':>9}")
    figures = {name: summarize(ns).to_json() for name, ns in samples.items()}
    for name, row in figures.items():
        print(f"{name:<14} {row['p50_us']:9.0f} {row['p90_us']:9.0f} {row['p99_us']:9.0f} "
              f"{row['max_us']:9.0f}")
    base = figures["rtmidi alone"]
    for name in ("project+jack", "loopback"):
        p50 = ratio(figures[name]["p50_us"], base["p50_us"]) or float("nan")
        p99 = ratio(figures[name]["p99_us"], base["p99_us"]) or float("nan")
        print(f"{name} / rtmidi alone: p50 {p50:.2f}, p99 {p99:.2f}")
    if args.json:
        args.json.write_text(json.dumps(
            {"period": args.period, "rate": args.rate, "roundtrip": figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
