"""The phases of ``portcls bench``, in order, and everything they start and stop.

Order (each phase is timed; one that fails is recorded with its error and the
rest still run):

1. a kernel with three miniports (the built-in default devices, ``loopback`` and
   ``mpu401``, plus a second loopback), then its CPU idle with no pin open; while
   that window runs, this process starts the baselines (raw pyzmq chain, raw ring
   chain, JACK), which costs the idle kernel nothing;
2. the loopback pins opened and in RUN, the CPU idle again; meanwhile the scaling
   kernel and its client processes start;
3. round trips, interleaved in blocks across every path (3-byte and 1 KiB SysEx
   through the loopback, raw pyzmq, raw rings, python-rtmidi/JACK); JACK stops
   right after, so its 1.3 ms cycle disturbs nothing else;
4. throughput (loopback, with the CPU of each process under that load; raw rings;
   raw pyzmq), the paced-rate ladder, the scaling grid;
5. everything above stopped, the pinned variant in a fresh child process
   (``--pinned-child CPU``), which pins itself first thing, runs its own kernel and
   chains on that CPU and writes its figures to a JSON file.

Everything started is stopped on the way out, also on Ctrl-C (SIGINT) and SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from array import array
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final

import zmq

from ipc.procwatch import stop_process
from ipc.runtime import runtime_base
from ksclient.cli.bench import report
from ksclient.cli.bench.baselines import (
    ENV_RUN,
    Floor,
    RawRingChain,
    RawZmqChain,
    RtmidiJackLoop,
    scratch_prefix,
)
from ksclient.cli.bench.project import LADDER, CpuMeter, LoopbackPins, RateStep, measuring
from ksclient.cli.bench.stats import no_nan, summarize
from ksclient.cli.bench.traffic import NOTE, SYSEX_1K, ThroughputResult
from ksclient.launch import KernelProcess, start_kernel, toml_config
from miniports.testing.cablebank import MAX_CABLES

__all__ = ["Settings", "run"]

THROUGHPUT_WINDOW: Final = 16_384
"""Messages in flight at most in the single-client throughput runs (every path)."""
RAW_MESSAGES_FACTOR: Final = 4
"""The raw chains move this many times the messages of the loopback run: they are some
20 times faster, and a run of a few milliseconds would mostly measure its start."""
DRAIN_TIMEOUT: Final = 10.0
THROUGHPUT_RUNS: Final = 3
"""Each throughput path runs this many times and reports its median run (all runs are in
the JSON): on this 2-CPU machine one run of the same code lands at about half or at
full speed depending on whether the scheduler puts two busy processes on one CPU, and a
single run reported whichever mode it happened to catch."""
JACK_PERIOD: Final = 64
JACK_RATE: Final = 48_000
EXTRA_DEVICE: Final = "loopback2"


def _ints(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or min(values) < 1:
        raise ValueError(f"expected a comma-separated list of positive counts, got {text!r}")
    return values


@dataclass
class Settings:
    """What one run measures and how much; the mode's defaults, then the overrides."""

    quick: bool
    samples: int
    sysex_samples: int
    jack_samples: int
    warmup: int
    blocks: int
    messages: int
    idle_seconds: float
    step_seconds: float
    rates: tuple[int, ...]
    cells: list[tuple[int, int]]
    reduced_grid: bool
    scaling_seconds: float
    jack: bool
    pinned: bool
    scaling: bool
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_args(cls, args: Any) -> Settings:
        quick = bool(args.quick)

        def pick(value: Any, full: Any, fast: Any) -> Any:
            return value if value is not None else (fast if quick else full)

        max_rate = args.max_rate or LADDER[-1]
        rates = tuple(r for r in LADDER if r <= max_rate) or (max_rate,)
        if args.clients or args.miniports:
            clients = _ints(args.clients) if args.clients else (1, 8, 32)
            miniports = _ints(args.miniports) if args.miniports else (1, 4, 8)
            cells = [(c, m) for c in clients for m in miniports]
            reduced = False
        elif quick:
            cells, reduced = [(1, 1), (32, 8)], True
        else:
            cells, reduced = [(c, m) for c in (1, 8, 32) for m in (1, 4, 8)], False
        for c, m in cells:
            if math.ceil(c / m) > MAX_CABLES:
                raise ValueError(f"{c} clients on {m} miniports need more than {MAX_CABLES} "
                                 "cables a device")
        settings = cls(
            quick=quick,
            samples=pick(args.samples, 20_000, 4_000),
            sysex_samples=pick(args.sysex_samples, 2_000, 400),
            jack_samples=pick(args.jack_samples, 5_000, 1_000),
            warmup=max(0, pick(args.warmup, 1_000, 300)),
            blocks=pick(args.blocks, 20, 10),
            messages=pick(args.messages, 300_000, 100_000),
            idle_seconds=pick(args.idle_seconds, 10.0, 5.0),
            step_seconds=pick(args.step_seconds, 1.0, 0.4),
            rates=rates,
            cells=cells,
            reduced_grid=reduced,
            scaling_seconds=pick(args.scaling_seconds, 3.0, 1.5),
            jack=not args.no_jack,
            pinned=not args.no_pinned,
            scaling=not args.no_scaling,
        )
        if quick:
            settings.notes.append(
                f"quick run: {settings.samples} round trips a path (full: 20000), "
                f"idle CPU over {settings.idle_seconds:g} s windows (full: 10 s), "
                f"{settings.step_seconds:g} s a ladder step (full: 1 s)"
                + (", scaling grid reduced to 1x1 and 32x8 (full: 3x3)" if reduced else "")
                + ("" if args.child_throughput else ", pinned variant without throughput")
            )
        return settings

    def child_argv(self, cpu: int, out: Path, throughput: bool) -> list[str]:
        """The command line of the pinned variant's child process."""
        argv = [
            sys.executable, "-m", "ksclient.cli.bench", "--pinned-child", str(cpu),
            "--child-out", str(out), "--samples", str(self.samples),
            "--warmup", str(self.warmup), "--blocks", str(self.blocks),
            "--messages", str(self.messages), "--no-jack", "--no-pinned",
        ]
        if throughput:
            argv.append("--child-throughput")
        return argv


def _progress(message: str, started: float) -> None:
    print(f"bench [{time.monotonic() - started:6.1f} s] {message}", file=sys.stderr, flush=True)


class Phases:
    """Runs phases, timing each and recording a failure instead of stopping the run."""

    def __init__(self, started: float, label: str = "") -> None:
        self.started = started
        self.label = label
        self.records: dict[str, dict[str, Any]] = {}

    def run(self, name: str, fn: Callable[[], None]) -> bool:
        """Run ``fn``; True if it returned. An Exception marks the phase failed (with
        its traceback on stderr); KeyboardInterrupt and SystemExit pass through."""
        _progress(self.label + name, self.started)
        t0 = time.monotonic()
        try:
            fn()
        except Exception as exc:
            self.fail(name, exc, time.monotonic() - t0)
            return False
        self.records[name] = {"ok": True, "error": None, "seconds": time.monotonic() - t0}
        return True

    def fail(self, name: str, exc: BaseException | str, seconds: float = 0.0) -> None:
        error = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        self.records[name] = {"ok": False, "error": error, "seconds": seconds}
        print(f"bench: phase {self.label}{name} FAILED: {error}", file=sys.stderr)
        if isinstance(exc, BaseException):
            traceback.print_exception(exc, file=sys.stderr)
        sys.stderr.flush()

    @property
    def failed(self) -> list[str]:
        return [name for name, r in self.records.items() if not r["ok"]]


def median_throughput(
    fn: Callable[[int, int, float], ThroughputResult], count: int, runs: int = THROUGHPUT_RUNS,
) -> dict[str, Any]:
    """`runs` zero-loss throughput runs of `count` messages: the median run's figures,
    with every run's rate and loss under "runs", and "lost" the loss of all runs (a run
    that lost anything fails the path, however fast the others were)."""
    results: list[ThroughputResult] = []
    with measuring():
        for _ in range(runs):
            results.append(fn(count, THROUGHPUT_WINDOW, DRAIN_TIMEOUT))
    ordered = sorted(results, key=lambda r: r.msgs_per_s if not math.isnan(r.msgs_per_s) else -1)
    out = ordered[len(ordered) // 2].to_json()
    out["lost"] = sum(r.lost for r in results)
    out["runs"] = [{"msgs_per_s": r.msgs_per_s, "lost": r.lost, "note": r.note} for r in results]
    return out


def _need(value: Any, what: str) -> Any:
    if value is None:
        raise RuntimeError(f"{what} is not available (its start-up failed)")
    return value


def _kernel_devices() -> list[dict[str, Any]]:
    """The built-in default devices (kernel.config.DEFAULT) plus one more loopback."""
    from kernel.config import DEFAULT

    devices: list[dict[str, Any]] = []
    for dev in DEFAULT.devices:
        entry: dict[str, Any] = {"name": dev.name, "miniport": dev.miniport}
        for key in ("options", "resources", "properties"):
            if getattr(dev, key):
                entry[key] = dict(getattr(dev, key))
        devices.append(entry)
    devices.append({"name": EXTRA_DEVICE, "miniport": "loopback"})
    return devices


def _runtime() -> Path:
    return runtime_base() / f"{scratch_prefix()}kernel-{uuid.uuid4().hex[:10]}"


def _stop_kernel(kernel: KernelProcess, problems: list[str], what: str) -> None:
    code = kernel.stop()
    if kernel.killed:
        problems.append(f"{what}: the kernel did not stop on SIGTERM")
    elif code not in (0, -signal.SIGTERM, -signal.SIGINT):
        problems.append(f"{what} exited with status {code}")
    for stale in kernel.runtime.parent.glob(kernel.runtime.name + "*"):
        problems.append(f"{what} left {stale} behind (removed)")
        shutil.rmtree(stale, ignore_errors=True)


def _on_exit(
    stack: contextlib.ExitStack, problems: list[str], what: str, undo: Callable[[], object]
) -> None:
    """Call ``undo`` when ``stack`` closes. Its failure is recorded in ``problems`` (and
    a list it returns is added to them), never raised, so everything else is still
    stopped; a slow stop is told on stderr."""

    def call() -> None:
        t0 = time.monotonic()
        try:
            result = undo()
            if isinstance(result, list):
                problems.extend(str(p) for p in result)
        except Exception as exc:
            problems.append(f"stopping {what}: {type(exc).__name__}: {exc}")
        took = time.monotonic() - t0
        if took > 2.0:
            print(f"bench: stopping {what} took {took:.1f} s", file=sys.stderr)

    stack.callback(call)


class IdleWindow:
    """CPU of a kernel and its miniports from now until :meth:`finish` (which first
    sleeps out the rest of the window). Other work may run meanwhile in other
    processes: an idle process's CPU time does not depend on it."""

    def __init__(self, kernel: KernelProcess, seconds: float) -> None:
        self.meter = CpuMeter(kernel.process.pid)
        self.seconds = seconds
        self.t0 = time.monotonic()
        self.before = self.meter.sample()

    def finish(self) -> dict[str, Any]:
        time.sleep(max(0.0, self.t0 + self.seconds - time.monotonic()))
        after = self.meter.sample()
        return CpuMeter.percent(self.before, after, time.monotonic() - self.t0)


@dataclass
class RoundTripPath:
    name: str
    roundtrip: Callable[[int, array[int], bytes], None]
    message: bytes
    samples: int


def _share(total: int, parts: int, index: int) -> int:
    base, extra = divmod(total, parts)
    return base + (1 if index < extra else 0)


def interleaved_roundtrips(
    paths: list[RoundTripPath], warmup: int, blocks: int, phases: Phases
) -> dict[str, Any]:
    """Warm every path up, then take each path's samples in ``blocks`` blocks, one block
    of every path in turn, so that drift on the machine hits all of them alike. A path
    that fails is dropped from the rotation (and recorded); the others go on."""
    largest = max((p.samples for p in paths), default=1)
    samples = {p.name: array("q") for p in paths}
    alive = list(paths)
    scratch: array[int] = array("q")
    t0 = time.monotonic()

    def attempt(path: RoundTripPath, n: int, into: array[int]) -> None:
        try:
            path.roundtrip(n, into, path.message)
        except Exception as exc:
            alive.remove(path)
            phases.fail(f"round trip {path.name}", exc, time.monotonic() - t0)

    with measuring():
        for path in list(alive):
            attempt(path, max(10, warmup * path.samples // largest) if warmup else 0, scratch)
        for block in range(blocks):
            for path in list(alive):
                n = _share(path.samples, blocks, block)
                if n:
                    attempt(path, n, samples[path.name])
    return {p.name: summarize(samples[p.name]).to_json() for p in alive}


def _machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return {
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "platform": platform.platform(),
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "loadavg_at_start": list(os.getloadavg()),
        "jackd": shutil.which("jackd"),
    }


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM (and SIGHUP) interrupt the run like Ctrl-C, so everything is cleaned up."""

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


class MainRun:
    """The unpinned run: every phase but the pinned variant."""

    def __init__(self, s: Settings, doc: dict[str, Any], phases: Phases) -> None:
        self.s = s
        self.doc = doc
        self.phases = phases
        self.problems: list[str] = doc["problems"]
        self.kernel: KernelProcess | None = None
        self.pins: LoopbackPins | None = None
        self.zmq_chain: RawZmqChain | None = None
        self.ring_chain: RawRingChain | None = None
        self.floor: Floor | None = None
        self.jack: Any = None
        self.rtmidi: RtmidiJackLoop | None = None
        self.scaling_kernel: KernelProcess | None = None
        self.pool: Any = None

    def run(self, stack: contextlib.ExitStack) -> None:
        s, phases, doc = self.s, self.phases, self.doc
        cpu: dict[str, Any] = doc.setdefault("cpu", {})

        def start_kernel_a() -> None:
            self.kernel = start_kernel(toml_config(_kernel_devices()), runtime=_runtime())
            kernel = self.kernel
            _on_exit(stack, self.problems, "the kernel",
                     lambda: _stop_kernel(kernel, self.problems, "the kernel"))
            children = len(self.kernel.miniport_pids())
            if children != 3:
                raise RuntimeError(f"the kernel runs {children} miniport processes, not 3")

        phases.run("start kernel (loopback, mpu401, loopback2)", start_kernel_a)

        idle: IdleWindow | None = None
        if self.kernel is not None:
            idle = IdleWindow(self.kernel, s.idle_seconds)
        phases.run("start raw pyzmq chain", lambda: self._start_zmq(stack))
        phases.run("start raw ring chain", lambda: self._start_ring(stack))
        phases.run("start the floor chain", lambda: self._start_floor(stack))
        jack_stack = stack.enter_context(contextlib.ExitStack())
        if s.jack:
            phases.run("start JACK and python-rtmidi", lambda: self._start_jack(jack_stack))
        else:
            doc["skipped"]["rtmidi_jack"] = "--no-jack"

        def idle_no_pins() -> None:
            cpu["idle"] = _need(idle, "the kernel").finish()
            cpu["idle"]["miniports"] = len(cpu["idle"]["processes"]) - 1
            doc["idle_cpu_percent"] = cpu["idle"]["total_percent"]

        phases.run(f"CPU idle, no pin open ({s.idle_seconds:g} s)", idle_no_pins)

        def open_pins() -> None:
            self.pins = LoopbackPins(_need(self.kernel, "the kernel"))
            _on_exit(stack, self.problems, "the loopback pins", self._close_pins)
            with measuring():
                self.pins.roundtrip(50, array("q"), NOTE)

        phases.run("open loopback pins", open_pins)
        idle2: IdleWindow | None = None
        if self.pins is not None and self.kernel is not None:
            idle2 = IdleWindow(self.kernel, s.idle_seconds)
        if s.scaling:
            phases.run("start scaling kernel and clients", lambda: self._start_scaling(stack))
        else:
            doc["skipped"]["scaling"] = "--no-scaling"
        phases.run(
            f"CPU idle, render + capture pins in RUN ({s.idle_seconds:g} s)",
            lambda: cpu.__setitem__("idle_pins_run", _need(idle2, "the loopback pins").finish()),
        )

        if self.rtmidi is not None:
            phases.run("round trips beside python-rtmidi/JACK", self._roundtrips_jack)
        # JACK's realtime cycle (every 1.3 ms) would disturb everything that follows.
        jack_stack.close()
        phases.run("round trips", self._roundtrips)
        phases.run("throughput loopback", self._throughput_loopback)
        phases.run("throughput raw ring", lambda: self._throughput(
            "raw_ring", _need(self.ring_chain, "the raw ring chain").throughput))
        phases.run("throughput floor", lambda: self._throughput(
            "floor", _need(self.floor, "the floor chain").throughput))
        phases.run("throughput raw pyzmq", lambda: self._throughput(
            "raw_zmq", _need(self.zmq_chain, "the raw pyzmq chain").throughput))
        phases.run("paced-rate ladder", self._ladder)
        if s.scaling:
            phases.run("scaling grid", self._scaling)

    def _close_pins(self) -> None:
        if self.pins is not None:
            self.pins.close()

    def _start_zmq(self, stack: contextlib.ExitStack) -> None:
        chain = self.zmq_chain = RawZmqChain()
        _on_exit(stack, self.problems, "the raw pyzmq chain", chain.close)

    def _start_ring(self, stack: contextlib.ExitStack) -> None:
        chain = self.ring_chain = RawRingChain()
        _on_exit(stack, self.problems, "the raw ring chain", chain.close)

    def _start_floor(self, stack: contextlib.ExitStack) -> None:
        chain = self.floor = Floor()
        _on_exit(stack, self.problems, "the floor chain", chain.close)

    def _start_jack(self, stack: contextlib.ExitStack) -> None:
        from miniports.testing.jack import JackServer, jack_missing_reason

        reason = jack_missing_reason()
        if reason is not None:
            self.doc["skipped"]["rtmidi_jack"] = reason
            return
        server = JackServer(period=JACK_PERIOD, rate=JACK_RATE)
        _on_exit(stack, self.problems, "the JACK server", server.stop)
        server.start()
        self.jack = server
        # libjack finds its server through the environment of this process.
        saved = {k: os.environ.get(k) for k in server.env({})}
        _on_exit(stack, self.problems, "the environment", lambda: _restore_env(saved))
        os.environ.update(server.env({}))
        self.rtmidi = RtmidiJackLoop(server)
        _on_exit(stack, self.problems, "python-rtmidi", self.rtmidi.close)
        self.doc["jack"] = {"period": JACK_PERIOD, "rate": JACK_RATE,
                            "realtime": server.realtime, "backend": "dummy"}

    def _start_scaling(self, stack: contextlib.ExitStack) -> None:
        from ksclient.cli.bench import scaling

        devices = max(m for _, m in self.s.cells)
        cables = max(math.ceil(c / m) for c, m in self.s.cells)
        config = toml_config([
            {"name": scaling.device_name(i), "miniport": scaling.MINIPORT,
             "options": {"cables": cables}}
            for i in range(devices)
        ])
        self.scaling_kernel = start_kernel(config, runtime=_runtime())
        kernel = self.scaling_kernel
        _on_exit(stack, self.problems, "the scaling kernel",
                 lambda: _stop_kernel(kernel, self.problems, "the scaling kernel"))
        pool = scaling.ClientPool(str(self.scaling_kernel.runtime),
                                  max(c for c, _ in self.s.cells))
        self.pool = pool
        _on_exit(stack, self.problems, "the scaling clients", pool.close)

    def _roundtrips(self) -> None:
        s = self.s
        paths: list[RoundTripPath] = []
        if self.pins is not None:
            paths.append(RoundTripPath("loopback", self.pins.roundtrip, NOTE, s.samples))
            paths.append(RoundTripPath("loopback_sysex_1k", self.pins.roundtrip, SYSEX_1K,
                                       s.sysex_samples))
        if self.zmq_chain is not None:
            paths.append(RoundTripPath("raw_zmq", self.zmq_chain.roundtrip, NOTE, s.samples))
        if self.ring_chain is not None:
            paths.append(RoundTripPath("raw_ring", self.ring_chain.roundtrip, NOTE, s.samples))
        if self.floor is not None:
            paths.append(RoundTripPath("floor", self.floor.roundtrip, NOTE, s.samples))
        if not paths:
            raise RuntimeError("no path to measure (every start-up failed)")
        self.doc["roundtrip"].update(
            interleaved_roundtrips(paths, s.warmup, s.blocks, self.phases)
        )

    def _roundtrips_jack(self) -> None:
        """python-rtmidi through JACK, interleaved with the loopback while the JACK server
        runs (its own loopback figure: `loopback_beside_jack`)."""
        s = self.s
        rtmidi = _need(self.rtmidi, "python-rtmidi")
        paths = [RoundTripPath("rtmidi_jack", rtmidi.roundtrip, NOTE, s.jack_samples)]
        if self.pins is not None:
            paths.append(RoundTripPath("loopback_beside_jack", self.pins.roundtrip, NOTE,
                                       s.jack_samples))
        self.doc["roundtrip"].update(
            interleaved_roundtrips(paths, s.warmup, s.blocks, self.phases)
        )

    def _throughput(
        self, key: str, fn: Callable[[int, int, float], ThroughputResult]
    ) -> None:
        count = self.s.messages * (1 if key.startswith("loopback") else RAW_MESSAGES_FACTOR)
        self.doc["throughput"][key] = median_throughput(fn, count)

    def _throughput_loopback(self) -> None:
        pins = _need(self.pins, "the loopback pins")
        meter = CpuMeter(_need(self.kernel, "the kernel").process.pid)
        before = meter.sample()
        t0 = time.monotonic()
        self._throughput("loopback", pins.throughput)
        self.doc["cpu"]["load"] = CpuMeter.percent(before, meter.sample(), time.monotonic() - t0)
        self.doc["cpu"]["load"]["during"] = "throughput loopback"
        if self.doc["throughput"]["loopback"]["lost"]:
            self.doc["throughput"]["loopback"]["pin_statistics"] = pins.statistics()
        # The per-message SDK path beside it (send_many of objects, receive_nowait).
        self._throughput("loopback_per_message", pins.throughput_per_message)
        if self.doc["throughput"]["loopback_per_message"]["lost"]:
            self.doc["throughput"]["loopback_per_message"]["pin_statistics"] = pins.statistics()

    def _ladder(self) -> None:
        pins = _need(self.pins, "the loopback pins")
        with measuring():
            for key, batched in (("rate_ladder", False), ("rate_ladder_batch", True)):
                self.doc[key] = self._climb(pins, batched)

    def _climb(self, pins: LoopbackPins, batched: bool) -> dict[str, Any]:
        """The paced-rate ladder, lowest rung first, up to the first rung that fails
        twice: a rung that fails is tried once more (this machine is shared; one
        scheduling hiccup in a short window should not end the climb), and both
        attempts are reported."""
        steps: list[RateStep] = []
        pins.paced(self.s.rates[0], 0.1, batched=batched)  # warm-up, not reported
        stopped_at = None
        for rate in self.s.rates:
            step = pins.paced(rate, self.s.step_seconds, batched=batched)
            steps.append(step)
            if not step.passed:
                step = pins.paced(rate, self.s.step_seconds, batched=batched)
                steps.append(step)
            if not step.passed:
                stopped_at = rate
                break
        passed = [st.rate for st in steps if st.passed]
        return {
            "limit_us": 1000.0,
            "step_seconds": self.s.step_seconds,
            "path": "send_batch / receive_batch" if batched else "send_many / receive_nowait",
            "max_rate_passed": max(passed) if passed else None,
            "steps": [st.to_json() for st in steps],
            "stopped_at": stopped_at,
        }

    def _scaling(self) -> None:
        from ksclient.cli.bench import scaling

        pool = _need(self.pool, "the scaling clients")
        grid: dict[str, Any] = {
            "miniport": scaling.MINIPORT,
            "why": "a loopback device has one render pin and sends what it renders to "
                   "every capture pin, so clients sharing one cannot each time a round "
                   "trip; each client gets a private cable of a cable-bank device instead",
            "reduced": self.s.reduced_grid,
            "latency_seconds": self.s.scaling_seconds,
            "throughput_seconds": self.s.scaling_seconds * 2 / 3,
            "cells": [],
        }
        if self.pins is not None:
            with contextlib.suppress(Exception):
                grid["loopback_render_cinstances"] = self.pins.client.pin_property(
                    "loopback", 0, "cinstances")
        self.doc["scaling"] = grid
        failures = []
        for clients, miniports in self.s.cells:
            try:
                cell = scaling.run_cell(pool, clients, miniports, self.s.scaling_seconds,
                                        0.1)
            except Exception as exc:
                cell = {"clients": clients, "miniports": miniports,
                        "error": f"{type(exc).__name__}: {exc}"}
                failures.append(f"{clients}x{miniports}: {exc}")
            grid["cells"].append(cell)
        if failures:
            raise RuntimeError("; ".join(failures))


def _restore_env(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _pinned_variant(s: Settings, doc: dict[str, Any], phases: Phases) -> None:
    """Run the child that measures with every process pinned to one CPU; merge its JSON."""
    cpu = max(os.sched_getaffinity(0))
    out_dir = Path(tempfile.mkdtemp(prefix=f"{scratch_prefix()}pinned-", dir=runtime_base()))
    out = out_dir / "pinned.json"
    throughput = not s.quick
    proc = subprocess.Popen(s.child_argv(cpu, out, throughput), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL)
    try:
        # Generous: the child's own phases are bounded; this only catches a hang.
        code = proc.wait(timeout=300)
    except BaseException:
        stop_process(proc, 15.0)
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    try:
        child = json.loads(out.read_text()) if out.exists() else None
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    if child is None:
        raise RuntimeError(f"the pinned child exited with {code} and wrote no figures")
    doc["pinned"] = child
    for name, record in child.get("phases", {}).items():
        phases.records[f"pinned: {name}"] = record
    if code != 0 and not any(not r["ok"] for r in child.get("phases", {}).values()):
        raise RuntimeError(f"the pinned child exited with status {code}")


def _pinned_child(args: Any) -> int:
    """The pinned variant, in its own process (already pinned by ``__main__``)."""
    started = time.monotonic()
    s = Settings.from_args(args)
    cpu = int(args.pinned_child)
    if os.sched_getaffinity(0) != {cpu}:
        os.sched_setaffinity(0, {cpu})
    phases = Phases(started, label="pinned: ")
    doc: dict[str, Any] = {
        "cpu": cpu, "affinity": sorted(os.sched_getaffinity(0)),
        "roundtrip": {}, "throughput": {}, "problems": [],
    }
    interrupted = False
    with _signals_interrupt():
        try:
            with contextlib.ExitStack() as stack:
                _pinned_phases(s, cpu, doc, phases, stack, bool(args.child_throughput))
        except KeyboardInterrupt:
            interrupted = True
    doc["phases"] = phases.records
    doc["wall_s"] = time.monotonic() - started
    if doc["problems"]:
        phases.records["cleanup"] = {"ok": False, "error": "; ".join(doc["problems"]),
                                     "seconds": 0.0}
    if args.child_out is not None:
        args.child_out.write_text(json.dumps(no_nan(doc), allow_nan=False))
    return 130 if interrupted else (1 if phases.failed else 0)


def _pinned_phases(
    s: Settings, cpu: int, doc: dict[str, Any], phases: Phases, stack: contextlib.ExitStack,
    throughput: bool,
) -> None:
    problems: list[str] = doc["problems"]
    holder: dict[str, Any] = {}

    def start() -> None:
        env = dict(os.environ, PORTCLS_CPUS=str(cpu))
        kernel = start_kernel(toml_config([{"name": "loopback", "miniport": "loopback"}]),
                              runtime=_runtime(), env=env)
        _on_exit(stack, problems, "the pinned kernel",
                 lambda: _stop_kernel(kernel, problems, "the pinned kernel"))
        holder["kernel"] = kernel
        pins = LoopbackPins(kernel)
        _on_exit(stack, problems, "the loopback pins", pins.close)
        holder["pins"] = pins

    def start_zmq() -> None:
        chain = RawZmqChain()
        _on_exit(stack, problems, "the raw pyzmq chain", chain.close)
        holder["zmq"] = chain

    def start_ring() -> None:
        chain = RawRingChain()
        _on_exit(stack, problems, "the raw ring chain", chain.close)
        holder["ring"] = chain

    phases.run("start kernel and loopback pins", start)
    phases.run("start raw pyzmq chain", start_zmq)
    phases.run("start raw ring chain", start_ring)

    def start_floor() -> None:
        chain = Floor()
        _on_exit(stack, problems, "the floor chain", chain.close)
        holder["floor"] = chain

    phases.run("start the floor chain", start_floor)

    def roundtrips() -> None:
        paths = [
            RoundTripPath(name, holder[key].roundtrip, NOTE, s.samples)
            for name, key in (("loopback", "pins"), ("raw_zmq", "zmq"), ("raw_ring", "ring"),
                              ("floor", "floor"))
            if key in holder
        ]
        doc["roundtrip"].update(interleaved_roundtrips(paths, s.warmup, s.blocks, phases))

    phases.run("round trips", roundtrips)
    if throughput:
        for name, key in (("loopback", "pins"), ("loopback_per_message", "pins"),
                          ("raw_ring", "ring"), ("raw_zmq", "zmq"), ("floor", "floor")):
            def one(name: str = name, key: str = key) -> None:
                chain = _need(holder.get(key), name)
                run = (chain.throughput_per_message if name == "loopback_per_message"
                       else chain.throughput)
                count = s.messages * (1 if name.startswith("loopback") else RAW_MESSAGES_FACTOR)
                doc["throughput"][name] = median_throughput(run, count)

            phases.run(f"throughput {name}", one)


def run(args: Any) -> int:
    """Run ``portcls bench`` as parsed; prints the report, writes the JSON, and returns
    the exit status: 0, 1 if any phase failed, 130 if interrupted."""
    if args.pinned_child is not None:
        return _pinned_child(args)
    os.environ.setdefault(ENV_RUN, str(os.getpid()))
    started = time.monotonic()
    try:
        s = Settings.from_args(args)
    except ValueError as exc:
        print(f"portcls bench: {exc}", file=sys.stderr)
        return 2
    phases = Phases(started)
    doc: dict[str, Any] = {
        "version": 1,
        "quick": s.quick,
        "settings": {k: v for k, v in asdict(s).items() if k != "notes"},
        "notes": s.notes,
        "machine": _machine(),
        "roundtrip": {},
        "throughput": {},
        "idle_cpu_percent": None,
        "skipped": {},
        "problems": [],
    }
    interrupted = False
    with _signals_interrupt():
        try:
            with contextlib.ExitStack() as stack:
                MainRun(s, doc, phases).run(stack)
                _progress("stopping everything", started)
            if s.pinned:
                phases.run("pinned variant", lambda: _pinned_variant(s, doc, phases))
            else:
                doc["skipped"]["pinned"] = "--no-pinned"
        except KeyboardInterrupt:
            interrupted = True
            doc["interrupted"] = True
            print("bench: interrupted; everything started was stopped", file=sys.stderr)
    if doc["problems"]:
        phases.records["cleanup"] = {"ok": False, "error": "; ".join(doc["problems"]),
                                     "seconds": 0.0}
    doc["phases"] = phases.records
    doc["failed_phases"] = phases.failed
    doc["durations_s"] = {name: r["seconds"] for name, r in phases.records.items()}
    doc["wall_s"] = time.monotonic() - started
    doc["ratios"] = report.ratios(doc)
    doc["targets"] = report.targets(doc)
    report.print_report(doc)
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(no_nan(doc), indent=2, allow_nan=False) + "\n")
        except OSError as exc:
            print(f"portcls bench: cannot write {args.json}: {exc}", file=sys.stderr)
            return 1
    if interrupted:
        return 130
    return 1 if phases.failed else 0
