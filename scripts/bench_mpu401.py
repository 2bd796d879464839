"""Throughput of the MPU-401 device at the real MIDI wire rate, and the CPU it costs.

What is measured:

1. A burst of 10 seconds' worth of wire time (31,250 bytes: 10,417 three-byte
   note-ons, a counter in the data bytes) handed to the render pin in one
   `send_many`, far faster than the wire. The emulated card's cable is looped
   back, so every byte comes back on the capture pin; every message is checked
   in order and "lost" must be 0. The theoretical rate is 3,125 bytes/s
   (31,250 baud, 10 bits a byte).
   - end to end: bytes / (last message received - send_many called), in the client;
   - on the wire: bytes between the first and last capture timestamp (the
     ISR's time) / that span, which leaves out the start-up latency;
   - per second: bytes whose capture timestamps fall in each whole second of
     the burst (median, min, max over those windows).
2. CPU of the kernel process and the miniport process during each burst:
   psutil `cpu_times()` (user + system) deltas / wall time, in % of one core.
3. The same CPU figures for an idle period with both pins open in RUN.

Runs are repeated (--runs, default 3) and medians printed. The absolute figures
drift on a shared 2-vCPU machine; the CPU numbers count only time the
processes actually ran, so they show whether anything spins.

    cd /work/main && .venv/bin/python scripts/bench_mpu401.py [--runs N] [--seconds S]
                                                             [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import ksclient  # noqa: E402
from ksclient.launch import start_kernel, toml_config  # noqa: E402
from miniports import mpu401  # noqa: E402

DEVICE = "mpu401"
WIRE_RATE = mpu401.WIRE_BAUD / mpu401.BITS_PER_BYTE  # 3,125 bytes/s


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _message(i: int) -> bytes:
    return bytes((0x90 | (i % 16), (i >> 7) & 0x7F, i & 0x7F))


def burst(
    out: ksclient.RenderPin,
    inp: ksclient.CapturePin,
    procs: dict[str, psutil.Process],
    seconds: float,
) -> dict[str, Any]:
    count = round(seconds * WIRE_RATE / 3)
    messages = [_message(i) for i in range(count)]
    size = 3 * count
    cpu_before = {name: _cpu(p) for name, p in procs.items()}
    start = time.monotonic()
    out.send_many(messages)
    got = []
    for _ in messages:
        got.append(inp.receive(timeout=seconds * 3 + 10))
    elapsed = time.monotonic() - start
    cpu = {name: (_cpu(p) - cpu_before[name]) / elapsed * 100 for name, p in procs.items()}
    lost = sum(1 for m, g in zip(messages, got, strict=True) if m != g.data)
    stamps = [m.timestamp for m in got]
    span = (stamps[-1] - stamps[0]) / 1e7
    per_second: list[int] = []
    first = stamps[0]
    whole_seconds = int(span)
    for second in range(whole_seconds):
        low, high = first + second * 10_000_000, first + (second + 1) * 10_000_000
        per_second.append(3 * sum(1 for s in stamps if low <= s < high))
    return {
        "bytes": size,
        "elapsed_s": elapsed,
        "end_to_end_Bps": size / elapsed,
        "wire_Bps": (size - 3) / span if span > 0 else float("nan"),
        "per_second_Bps": per_second,
        "cpu_percent": cpu,
        "lost": lost,
    }


def idle(procs: dict[str, psutil.Process], seconds: float) -> dict[str, float]:
    before = {name: _cpu(p) for name, p in procs.items()}
    start = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - start
    return {name: (_cpu(p) - before[name]) / elapsed * 100 for name, p in procs.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="wire time of one burst")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    config = toml_config(
        [{"name": DEVICE, "miniport": "mpu401",
          "resources": {"io": [[0x330, 2]], "irq": [9]}}]
    )
    results: list[dict[str, Any]] = []
    with start_kernel(config) as kut, kut.connect() as client:
        client.wait_for_filter(DEVICE)
        (miniport_pid,) = kut.miniport_pids()
        procs = {"kernel": psutil.Process(kut.process.pid),
                 "miniport": psutil.Process(miniport_pid)}
        with client.open_render(DEVICE) as out, client.open_capture(
            DEVICE, capacity=1 << 20
        ) as inp:
            inp.run()
            out.run()
            for i in range(50):  # warm-up
                out.send(_message(i))
                inp.receive(timeout=5)
            idle_cpu = idle(procs, 2.0)
            for run in range(args.runs):
                result = burst(out, inp, procs, args.seconds)
                results.append(result)
                windows = result["per_second_Bps"]
                print(
                    f"run {run + 1}: {result['bytes']} B in {result['elapsed_s']:.2f} s, "
                    f"end to end {result['end_to_end_Bps']:.0f} B/s, "
                    f"wire {result['wire_Bps']:.0f} B/s, per second "
                    f"{min(windows)}..{max(windows)} B/s, lost {result['lost']}, CPU kernel "
                    f"{result['cpu_percent']['kernel']:.1f} %, miniport "
                    f"{result['cpu_percent']['miniport']:.1f} %",
                    flush=True,
                )

    def med(key: str, sub: str | None = None) -> float:
        values = [r[key][sub] if sub else r[key] for r in results]
        return float(statistics.median(values))

    windows = [w for r in results for w in r["per_second_Bps"]]
    print(f"\ntheoretical wire rate          {WIRE_RATE:8.0f} B/s")
    print(f"end to end (median of {len(results)})      {med('end_to_end_Bps'):8.0f} B/s  "
          f"({med('end_to_end_Bps') / WIRE_RATE:.1%})")
    print(f"on the wire (median)           {med('wire_Bps'):8.0f} B/s  "
          f"({med('wire_Bps') / WIRE_RATE:.1%})")
    print(f"per-second windows ({len(windows)})      median {statistics.median(windows):.0f}, "
          f"min {min(windows)}, max {max(windows)} B/s")
    print(f"CPU during the burst (median)  kernel {med('cpu_percent', 'kernel'):5.1f} %   "
          f"miniport {med('cpu_percent', 'miniport'):5.1f} %   (of one core)")
    print(f"CPU idle, pins in RUN          kernel {idle_cpu['kernel']:5.1f} %   "
          f"miniport {idle_cpu['miniport']:5.1f} %")
    print(f"messages lost                  {sum(r['lost'] for r in results)}")
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "idle_cpu_percent": idle_cpu},
                                        indent=2))
    return 1 if any(r["lost"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
