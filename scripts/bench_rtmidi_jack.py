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

    python scripts/bench_rtmidi_jack.py [--samples 2000] [--period 64] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import rtmidi  # noqa: E402

from miniports.jackbed import JackServer, jack_missing_reason  # noqa: E402
from miniports.testing import KernelUnderTest, start_kernel, toml_config  # noqa: E402

MESSAGE = bytes((0x90, 60, 100))


def percentile(ns: list[int], q: float) -> float:
    data = sorted(ns)
    if not data:
        return math.nan
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return (data[lo] + (data[hi] - data[lo]) * (pos - lo)) / 1000.0


class PinLoop:
    """Round trips through a kernel: render pin out, capture pin back."""

    def __init__(self, kut: KernelUnderTest, device: str) -> None:
        self.client = kut.connect()
        self.client.wait_for_filter(device)
        self.out = self.client.open_render(device)
        self.inp = self.client.open_capture(device)
        self.inp.run()
        self.out.run()

    def once(self) -> int:
        start = time.perf_counter_ns()
        self.out.send(MESSAGE)
        msg = self.inp.receive(timeout=5)
        elapsed = time.perf_counter_ns() - start
        if msg.data != MESSAGE:
            raise RuntimeError(f"got {msg.data.hex(' ')}")
        return elapsed

    def close(self) -> None:
        self.out.close()
        self.inp.close()
        self.client.close()


class RtmidiLoop:
    """python-rtmidi alone: MidiOut → JACK → MidiIn (callback) in this process."""

    def __init__(self, server: JackServer) -> None:
        self.arrived = threading.Event()
        self.midi_in = rtmidi.MidiIn(rtapi=rtmidi.API_UNIX_JACK, name="bench-rx")
        self.midi_in.ignore_types(sysex=False, timing=False, active_sense=False)
        self.midi_in.set_callback(lambda event, _: self.arrived.set())
        self.midi_in.open_virtual_port("in")
        self.midi_out = rtmidi.MidiOut(rtapi=rtmidi.API_UNIX_JACK, name="bench-tx")
        self.midi_out.open_virtual_port("out")
        server.wait_for_port("bench-rx:in")
        server.connect("bench-tx:out", "bench-rx:in")

    def once(self) -> int:
        self.arrived.clear()
        start = time.perf_counter_ns()
        self.midi_out.send_message(MESSAGE)
        if not self.arrived.wait(5):
            raise RuntimeError("python-rtmidi: the message did not come back")
        return time.perf_counter_ns() - start

    def close(self) -> None:
        self.midi_in.delete()
        self.midi_out.delete()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    with JackServer(period=args.period, rate=args.rate) as server:
        import os

        os.environ.update(server.env({}))
        jack_kernel = start_kernel(toml_config([{
            "name": "jack", "miniport": "rtmidi",
            "options": {"api": "jack", "virtual": True, "client_name": "bench-dev",
                        "jack_server": server.name},
        }]), env=server.env())
        loop_kernel = start_kernel(toml_config([{"name": "loopback", "miniport": "loopback"}]))
        paths: dict[str, Callable[[], int]] = {}
        closers = []
        try:
            server.wait_for_port("bench-dev-out:out")
            server.wait_for_port("bench-dev-in:in")
            server.connect("bench-dev-out:out", "bench-dev-in:in")
            project = PinLoop(jack_kernel, "jack")
            alone = RtmidiLoop(server)
            loopback = PinLoop(loop_kernel, "loopback")
            closers += [project.close, alone.close, loopback.close]
            paths = {"project+jack": project.once, "rtmidi alone": alone.once,
                     "loopback": loopback.once}
            samples: dict[str, list[int]] = {name: [] for name in paths}
            for once in paths.values():
                for _ in range(args.warmup):
                    once()
            while len(samples["loopback"]) < args.samples:
                for name, once in paths.items():
                    samples[name] += [once() for _ in range(args.block)]
        finally:
            for close in closers:
                close()
            jack_kernel.stop()
            loop_kernel.stop()
    print(f"JACK dummy backend, period {args.period} at {args.rate} Hz "
          f"({args.period / args.rate * 1e3:.2f} ms); {args.samples} samples a path, "
          f"blocks of {args.block} interleaved")
    print(f"{'path':<14} {'p50 µs':>9} {'p90 µs':>9} {'p99 µs':>9} {'max µs':>9}")
    figures: dict[str, dict[str, float]] = {}
    for name, ns in samples.items():
        row = {"p50_us": percentile(ns, 50), "p90_us": percentile(ns, 90),
               "p99_us": percentile(ns, 99), "max_us": max(ns) / 1000, "samples": len(ns),
               "mean_us": statistics.fmean(ns) / 1000}
        figures[name] = row
        print(f"{name:<14} {row['p50_us']:9.0f} {row['p90_us']:9.0f} {row['p99_us']:9.0f} "
              f"{row['max_us']:9.0f}")
    base = figures["rtmidi alone"]
    for name in ("project+jack", "loopback"):
        print(f"{name} / rtmidi alone: p50 {figures[name]['p50_us'] / base['p50_us']:.2f}, "
              f"p99 {figures[name]['p99_us'] / base['p99_us']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(
            {"period": args.period, "rate": args.rate, "roundtrip": figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
