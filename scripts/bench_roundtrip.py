"""Loopback round-trip latency and sustained throughput, each beside a raw pyzmq baseline.

What is measured (all in ONE run, so that the baseline shares this machine's state):

1. Round trip of one 3-byte note-on through the loopback device, one message in
   flight: ``time.perf_counter_ns()`` around ``out.send(msg)`` ->
   ``inp.receive()``. The message crosses four process hops:
   client -> kernel (sequencer) -> loopback miniport (write, ISR, read) -> kernel
   (parser) -> client. The capture timestamp (the miniport's ISR time, on the
   shared monotonic clock) splits it into "client -> ISR" and "ISR -> client".
2. Baseline: the same four hops with nothing but pyzmq: process A (this one,
   measuring) -> B ("kernel") -> C ("miniport") -> B -> A, PAIR sockets over
   ipc://, 3-byte payload, blocking send/recv. B and C are spawned processes.
   Both paths get the same warm-up; the samples are taken in interleaved blocks
   (loopback, raw, loopback, raw, ...) so that drift hits both alike.
3. Sustained throughput with zero loss: M note-ons (the counter in the two data
   bytes) sent with ``send_many`` in batches of 64, draining the capture pin with
   ``receive_nowait`` after every batch, then waiting for the tail. Every message
   is checked in order; "lost" counts the missing ones and must be 0. The pyzmq
   baseline sends each batch as one 192-byte message through A -> B -> C -> B -> A
   the same way (A keeps at most --window messages in flight so that no blocking
   send can deadlock; the window is far above what the round trip needs).
4. Ratios project / baseline: above 1 means the project is slower.

How to read it: absolute figures drift from run to run on a 2-vCPU VM (where the
scheduler places the processes dominates); compare the ratios, and compare only
figures printed by the same run. Processes are not pinned to CPUs. The garbage
collector of this process is off while it measures.

    cd /work/main && python scripts/bench_roundtrip.py [--samples N] [--messages M]
                                                       [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import ksclient  # noqa: E402

BATCH = 64
NOTE_ON = 0x90
STOP = b""  # the pyzmq chain's end-of-run message (acknowledged back to A)


# ---------------------------------------------------------------------------------------
# statistics and output


@dataclass
class Latency:
    """A sample set in nanoseconds, summarised in microseconds."""

    name: str
    ns: list[int] = field(default_factory=list)

    def pct(self, q: float) -> float:
        """Percentile q (0-100) in µs, linear interpolation between closest ranks."""
        data = sorted(self.ns)
        if not data:
            return math.nan
        pos = (len(data) - 1) * q / 100.0
        lo = math.floor(pos)
        hi = min(lo + 1, len(data) - 1)
        return (data[lo] + (data[hi] - data[lo]) * (pos - lo)) / 1000.0

    def max(self) -> float:
        return max(self.ns) / 1000.0 if self.ns else math.nan


@dataclass
class Throughput:
    name: str
    messages: int = 0
    received: int = 0
    lost: int = 0
    breaks: int = 0
    seconds: float = math.nan
    note: str = ""

    @property
    def rate(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else math.nan


def fmt(value: float, width: int = 9, digits: int = 1) -> str:
    return f"{'-':>{width}}" if math.isnan(value) else f"{value:>{width}.{digits}f}"


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


# ---------------------------------------------------------------------------------------
# the kernel under test


class KernelUnderTest:
    """A kernel process in a private runtime directory, with its loopback device."""

    def __init__(self, runtime: Path, timeout: float = 30.0) -> None:
        self.runtime = runtime
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        argv = [sys.executable, "-m", "kernel", "--quiet", "--runtime", str(runtime)]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env, cwd=ROOT
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.banner: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise RuntimeError(f"the kernel was not ready in {timeout:g} s") from None
            if line is None:
                self.stop()
                raise RuntimeError(
                    f"the kernel exited ({self.proc.returncode}) before it was ready: "
                    + "".join(self.banner)
                )
            self.banner.append(line)
            if line.startswith("kernel") and "ready" in line:
                break

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def children(self) -> list[int]:
        try:
            import psutil

            return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        except Exception:
            return []

    def stop(self, timeout: float = 15.0) -> list[str]:
        """SIGTERM, wait; kill it (and its miniports, by pid) only if it does not stop.
        Returns the problems seen."""
        problems: list[str] = []
        if self.proc.poll() is None:
            kids = self.children()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                problems.append(f"the kernel did not stop within {timeout:g} s of SIGTERM")
                self.proc.kill()
                self.proc.wait()
                for pid in kids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        else:
            problems.append("the kernel had exited before it was asked to stop")
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.proc.returncode not in (0, -signal.SIGTERM):
            problems.append(f"the kernel exited with status {self.proc.returncode}")
        for stale in self.runtime.parent.glob(self.runtime.name + "*"):
            problems.append(f"the kernel left {stale} behind (removed)")
            shutil.rmtree(stale, ignore_errors=True)
        return problems


class Loopback:
    """A client with the loopback render and capture pins open and running."""

    def __init__(self, runtime: Path) -> None:
        self.client = ksclient.connect(runtime, timeout=10.0, name="bench_roundtrip")
        try:
            self.client.wait_for_filter("loopback", timeout=10.0)
            self.out = self.client.open_render("loopback")
            self.inp = self.client.open_capture("loopback")
            self.inp.run()
            self.out.run()
        except BaseException:
            self.client.close()
            raise

    def roundtrip(
        self, n: int, first: int, timing: Latency, to_isr: Latency, from_isr: Latency
    ) -> None:
        """n round trips; note numbers count from `first` so each reply is checked."""
        send, receive = self.out.send, self.inp.receive
        clock, mono = time.perf_counter_ns, time.monotonic_ns
        for i in range(first, first + n):
            msg = bytes((NOTE_ON, i & 0x7F, 100))
            sent_at = mono() // 100
            t0 = clock()
            send(msg)
            got = receive(timeout=1.0)
            t1 = clock()
            received_at = mono() // 100
            if got.data != msg:
                raise RuntimeError(f"round trip {i}: sent {msg.hex()}, got {got.data.hex()}")
            timing.ns.append(t1 - t0)
            to_isr.ns.append((got.timestamp - sent_at) * 100)
            from_isr.ns.append((received_at - got.timestamp) * 100)

    def throughput(self, m: int, drain_timeout: float) -> Throughput:
        result = Throughput("loopback", m)
        msgs = [bytes((NOTE_ON, (i >> 7) & 0x7F, i & 0x7F)) for i in range(m)]
        batches = [msgs[i : i + BATCH] for i in range(0, m, BATCH)]
        send_many, receive_nowait = self.out.send_many, self.inp.receive_nowait
        would_block = ksclient.WouldBlock
        k = 0  # index of the next expected message
        lost = breaks = 0

        def drain() -> None:
            nonlocal k, lost, breaks
            try:
                while True:
                    data = receive_nowait().data
                    if len(data) != 3 or data[0] != NOTE_ON:
                        breaks += 1
                        continue
                    gap = (((data[1] << 7) | data[2]) - k) & 0x3FFF
                    if gap:
                        breaks += 1
                        lost += gap
                        k += gap
                    k += 1
            except would_block:
                pass

        t0 = time.perf_counter()
        for batch in batches:
            send_many(batch, timeout=10.0)
            drain()
        t_sent = time.perf_counter()
        deadline = time.monotonic() + drain_timeout
        while k < m:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                result.note = f"tail not delivered within {drain_timeout:g} s"
                break
            if self.inp.poll(min(remaining, 0.5)):
                drain()
        t1 = time.perf_counter()
        result.seconds = t1 - t0
        result.received = min(k, m) - lost
        result.lost = lost + max(0, m - k)
        result.breaks = breaks
        extra = f"sending took {t_sent - t0:.2f} s"
        if self.inp.dropped:
            extra += f"; capture ring dropped {self.inp.dropped}"
        result.note = "; ".join(x for x in (result.note, extra) if x)
        return result

    def pin_stats(self) -> dict[str, Any]:
        try:
            return {"render": self.out.statistics(), "capture": self.inp.statistics()}
        except ksclient.KsError as exc:
            return {"error": repr(exc)}

    def close(self) -> None:
        try:
            self.out.close()
            self.inp.close()
        finally:
            self.client.close()


# ---------------------------------------------------------------------------------------
# the pyzmq baseline: A (here) -> B -> C -> B -> A


def _zmq_kernel(up_ep: str, down_ep: str) -> None:
    """Process B: forward A's messages to C and C's back to A, draining after each wake."""
    ctx = zmq.Context()
    up = ctx.socket(zmq.PAIR)
    down = ctx.socket(zmq.PAIR)
    up.linger = down.linger = 1000
    up.bind(up_ep)
    down.connect(down_ep)
    poller = zmq.Poller()
    poller.register(up, zmq.POLLIN)
    poller.register(down, zmq.POLLIN)
    stopping = False
    try:
        while True:
            events = dict(poller.poll(60_000))
            if not events:
                return  # A is gone
            if up in events:
                while True:
                    try:
                        m = up.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    stopping = stopping or m == STOP
                    down.send(m)
            if down in events:
                while True:
                    try:
                        m = down.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    up.send(m)
                    if stopping and m == STOP:
                        return
    finally:
        up.close()
        down.close()
        ctx.term()


def _zmq_miniport(ep: str) -> None:
    """Process C: echo every message back to B."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PAIR)
    sock.linger = 1000
    sock.bind(ep)
    try:
        while sock.poll(60_000):
            m = sock.recv()
            sock.send(m)
            if m == STOP:
                return
    finally:
        sock.close()
        ctx.term()


class RawZmqChain:
    """Processes B and C, and A's socket in this process."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="portcls-bench-zmq-"))
        a_ep = f"ipc://{self.dir}/a"
        c_ep = f"ipc://{self.dir}/c"
        spawn = mp.get_context("spawn")
        self.procs = [
            spawn.Process(target=_zmq_miniport, args=(c_ep,), name="raw-C", daemon=True),
            spawn.Process(target=_zmq_kernel, args=(a_ep, c_ep), name="raw-B", daemon=True),
        ]
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PAIR)
        self.sock.linger = 0
        try:
            for p in self.procs:
                p.start()
            self.sock.connect(a_ep)
            self.sock.send(b"\x01")
            if not self.sock.poll(30_000):
                raise RuntimeError("the pyzmq chain did not answer within 30 s")
            self.sock.recv()
        except BaseException:
            self.close()
            raise

    def roundtrip(self, n: int, timing: Latency) -> None:
        send, recv, clock = self.sock.send, self.sock.recv, time.perf_counter_ns
        msg = bytes((NOTE_ON, 60, 100))
        if not self.sock.poll(0, zmq.POLLOUT):
            raise RuntimeError("the pyzmq chain is not writable")
        for _ in range(n):
            t0 = clock()
            send(msg)
            got = recv()
            t1 = clock()
            if got != msg:
                raise RuntimeError(f"raw round trip: sent {msg.hex()}, got {got.hex()}")
            timing.ns.append(t1 - t0)

    def throughput(self, m: int, window: int, drain_timeout: float) -> Throughput:
        result = Throughput("raw_zmq", m)
        msgs = [bytes((NOTE_ON, (i >> 7) & 0x7F, i & 0x7F)) for i in range(m)]
        payloads = [b"".join(msgs[i : i + BATCH]) for i in range(0, m, BATCH)]
        sizes = [len(p) // 3 for p in payloads]
        sock = self.sock
        send, recv = sock.send, sock.recv
        j = 0  # index of the next expected batch
        in_flight = received = breaks = 0

        def take(payload: bytes) -> None:
            nonlocal j, in_flight, received, breaks
            if j < len(payloads) and payload == payloads[j]:
                received += sizes[j]
                in_flight -= sizes[j]
                j += 1
            else:
                breaks += 1

        def drain() -> None:
            try:
                while True:
                    take(recv(zmq.NOBLOCK))
            except zmq.Again:
                pass

        t0 = time.perf_counter()
        for payload, size in zip(payloads, sizes, strict=True):
            while in_flight + size > window:
                if not sock.poll(int(drain_timeout * 1000)):
                    raise RuntimeError("the pyzmq chain stalled")
                drain()
            send(payload)
            in_flight += size
            drain()
        deadline = time.monotonic() + drain_timeout
        while j < len(payloads):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                result.note = f"tail not delivered within {drain_timeout:g} s"
                break
            if sock.poll(int(min(remaining, 0.5) * 1000)):
                drain()
        result.seconds = time.perf_counter() - t0
        result.received = received
        result.lost = m - received
        result.breaks = breaks
        return result

    def close(self) -> list[str]:
        problems: list[str] = []
        try:
            if any(p.is_alive() for p in self.procs):
                self.sock.send(STOP, zmq.NOBLOCK)
                deadline = time.monotonic() + 5.0
                while time.monotonic() < deadline and self.sock.poll(
                    int(max(1, (deadline - time.monotonic()) * 1000))
                ):
                    if self.sock.recv() == STOP:
                        break
        except zmq.ZMQError as exc:
            problems.append(f"stopping the pyzmq chain: {exc!r}")
        self.sock.close()
        self.ctx.term()
        for p in self.procs:
            if p.pid is None:
                continue
            p.join(5.0)
            if p.is_alive():
                problems.append(f"{p.name} did not stop; terminated")
                p.terminate()
                p.join(5.0)
        shutil.rmtree(self.dir, ignore_errors=True)
        return problems


# ---------------------------------------------------------------------------------------
# the run


def blocks(total: int, count: int) -> list[int]:
    count = max(1, min(count, total))
    base, extra = divmod(total, count)
    return [base + (1 if i < extra else 0) for i in range(count)]


def measured(fn: Callable[[], None]) -> None:
    gc.collect()
    gc.disable()
    try:
        fn()
    finally:
        gc.enable()


def phase(name: str, failures: list[str], fn: Callable[[], None]) -> None:
    """Run one phase; on an exception print the full traceback and go on with the next."""
    try:
        fn()
    except Exception:
        failures.append(name)
        print(f"\n!!! {name} FAILED:", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()


def print_report(
    args: argparse.Namespace,
    rt: dict[str, Latency],
    tp: dict[str, Throughput],
    setup: dict[str, float],
) -> None:
    lb, raw = rt["loopback"], rt["raw_zmq"]
    print()
    print(
        f"bench_roundtrip: python {platform.python_version()}, pyzmq {zmq.__version__}"
        f" (libzmq {zmq.zmq_version()}), {os.cpu_count()} CPUs, processes not pinned"
    )
    print(
        f"kernel ready in {setup['kernel_s']:.2f} s; warm-up {args.warmup} per path;"
        f" samples in {args.blocks} interleaved blocks"
    )
    print()
    head = f"{'Round trip, 3-byte note-on, one in flight (µs)':<50}{'n':>7}"
    print(head + "".join(f"{h:>9}" for h in ("p50", "p90", "p99", "max")))
    print("-" * (len(head) + 36))
    rows: Sequence[tuple[str, Latency]] = (
        ("loopback: client>kernel>miniport>kernel>client", lb),
        ("  of which client -> ISR stamp (2 hops)", rt["to_isr"]),
        ("  of which ISR stamp -> client (2 hops)", rt["from_isr"]),
        ("raw pyzmq PAIR ipc://, A>B>C>B>A (baseline)", raw),
    )
    for label, lat in rows:
        print(
            f"{label:<50}{len(lat.ns):>7}"
            + "".join(fmt(v) for v in (lat.pct(50), lat.pct(90), lat.pct(99), lat.max()))
        )
    print(
        f"{'ratio loopback / baseline':<50}{'':>7}"
        + "".join(
            fmt(ratio(lb_v, raw_v), digits=2)
            for lb_v, raw_v in (
                (lb.pct(50), raw.pct(50)),
                (lb.pct(90), raw.pct(90)),
                (lb.pct(99), raw.pct(99)),
                (lb.max(), raw.max()),
            )
        )
    )
    print()
    head = f"{'Throughput, 3-byte note-ons, batches of 64':<50}{'sent':>9}"
    print(head + "".join(f"{h:>11}" for h in ("msgs/s", "lost", "seconds")))
    print("-" * (len(head) + 33))
    for label, key in (
        ("loopback (send_many + receive_nowait)", "loopback"),
        (f"raw pyzmq, same 4 hops, window {args.window} (baseline)", "raw_zmq"),
    ):
        t = tp[key]
        print(f"{label:<50}{t.messages:>9}{fmt(t.rate, 11, 0)}{t.lost:>11}{fmt(t.seconds, 11, 2)}")
    r = ratio(tp["loopback"].rate, tp["raw_zmq"].rate)
    print(f"{'ratio loopback / baseline (msgs/s)':<50}{'':>9}{fmt(r, 11, 3)}")
    for key, t in tp.items():
        if t.note or t.breaks:
            print(f"  {key}: {t.note}" + (f"; {t.breaks} sequence breaks" if t.breaks else ""))


def _no_nan(value: Any) -> Any:
    """NaN is not JSON: a figure a failed phase could not produce becomes null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def write_json(
    path: Path, rt: dict[str, Latency], tp: dict[str, Throughput], extra: dict[str, Any]
) -> None:
    def lat(x: Latency) -> dict[str, Any]:
        return {
            "p50_us": x.pct(50),
            "p90_us": x.pct(90),
            "p99_us": x.pct(99),
            "max_us": x.max(),
            "samples": len(x.ns),
        }

    def thr(x: Throughput) -> dict[str, Any]:
        return {
            "msgs_per_s": x.rate,
            "lost": x.lost,
            "messages": x.messages,
            "seconds": x.seconds,
        }

    doc = {
        "roundtrip": {
            "loopback": lat(rt["loopback"]),
            "raw_zmq": lat(rt["raw_zmq"]),
            "loopback_client_to_isr": lat(rt["to_isr"]),
            "loopback_isr_to_client": lat(rt["from_isr"]),
        },
        "throughput": {"loopback": thr(tp["loopback"]), "raw_zmq": thr(tp["raw_zmq"])},
        "ratios": {
            "roundtrip_p50": ratio(rt["loopback"].pct(50), rt["raw_zmq"].pct(50)),
            "roundtrip_p99": ratio(rt["loopback"].pct(99), rt["raw_zmq"].pct(99)),
            "throughput": ratio(tp["loopback"].rate, tp["raw_zmq"].rate),
        },
        **extra,
    }
    path.write_text(json.dumps(_no_nan(doc), indent=2, allow_nan=False) + "\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=5000, help="round trips per path")
    ap.add_argument("--warmup", type=int, default=500, help="unmeasured round trips per path")
    ap.add_argument("--blocks", type=int, default=10, help="interleaved blocks per path")
    ap.add_argument("--messages", type=int, default=200_000, help="messages in throughput")
    ap.add_argument(
        "--window",
        type=int,
        default=16_384,
        help="messages the pyzmq baseline keeps in flight at most",
    )
    ap.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the tail of a throughput run",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    for name in ("samples", "warmup", "blocks", "messages", "window"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            ap.error(f"--{name} is too small")
    if args.window < BATCH:
        ap.error(f"--window must be at least {BATCH}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    runtime = Path("/dev/shm" if Path("/dev/shm").is_dir() else tempfile.gettempdir())
    runtime = runtime / f"portcls-bench-{uuid.uuid4().hex[:12]}"
    rt = {k: Latency(k) for k in ("loopback", "to_isr", "from_isr", "raw_zmq")}
    tp = {k: Throughput(k, args.messages) for k in ("loopback", "raw_zmq")}
    setup: dict[str, float] = {}
    failures: list[str] = []
    problems: list[str] = []
    pin_stats: dict[str, Any] = {}

    kernel: KernelUnderTest | None = None
    loop: Loopback | None = None
    chain: RawZmqChain | None = None
    try:
        t = time.monotonic()
        kernel = KernelUnderTest(runtime)
        setup["kernel_s"] = time.monotonic() - t
        loop = Loopback(runtime)
        chain = RawZmqChain()
        lb, ch = loop, chain

        def roundtrips() -> None:
            scratch = [Latency("warm-up") for _ in range(3)]
            lb.roundtrip(args.warmup, 0, *scratch)
            ch.roundtrip(args.warmup, scratch[0])
            first = args.warmup
            for n in blocks(args.samples, args.blocks):
                measured(
                    lambda n=n, first=first: lb.roundtrip(
                        n, first, rt["loopback"], rt["to_isr"], rt["from_isr"]
                    )
                )
                measured(lambda n=n: ch.roundtrip(n, rt["raw_zmq"]))
                first += n

        phase("round trips", failures, roundtrips)

        def loop_throughput() -> None:
            holder: list[Throughput] = []
            measured(lambda: holder.append(lb.throughput(args.messages, args.drain_timeout)))
            tp["loopback"] = holder[0]

        def raw_throughput() -> None:
            holder: list[Throughput] = []
            measured(
                lambda: holder.append(ch.throughput(args.messages, args.window, args.drain_timeout))
            )
            tp["raw_zmq"] = holder[0]

        phase("loopback throughput", failures, loop_throughput)
        phase("raw pyzmq throughput", failures, raw_throughput)
        pin_stats = lb.pin_stats()
    finally:
        if chain is not None:
            problems += chain.close()
        if loop is not None:
            try:
                loop.close()
            except Exception:
                problems.append("closing the client: " + traceback.format_exc())
        if kernel is not None:
            problems += kernel.stop()

    print_report(args, rt, tp, setup)
    print(f"\ntotal {time.monotonic() - started:.1f} s")
    status = 0
    for key, t in tp.items():
        if t.lost or t.breaks:
            print(
                f"\n!!! {key}: LOST {t.lost} of {t.messages} MESSAGES"
                f" ({t.breaks} sequence breaks) !!!",
                file=sys.stderr,
            )
            status = 1
    if pin_stats and tp["loopback"].lost:
        print(f"pin statistics: {pin_stats}", file=sys.stderr)
    for problem in problems:
        print(f"!!! problem: {problem}", file=sys.stderr)
    if failures:
        print(f"!!! failed phases: {', '.join(failures)}", file=sys.stderr)
        status = 1
    if args.json is not None:
        write_json(args.json, rt, tp, {"failed_phases": failures, "problems": problems})
    return status or (1 if problems else 0)


if __name__ == "__main__":
    sys.exit(main())
