"""The crash-test tool: prove that a miniport's crashes hurt nobody but its own device.

`run_crashtest` starts a private kernel (its own runtime directory) with two
devices: "faulty", the miniport under test wrapped in the fault injector
(miniports.testing.faults; a DirectMusic miniport in its DMus twin), and
"healthy", a loopback device a background thread streams through steadily.
Each iteration streams through the faulty device (with `auto_reopen`), injects
one fault, and measures:

  detect   fault injected -> removal event (seconds)
  recover  removal event -> arrival event after the restart (seconds)
  lost     messages lost on the faulty device: measured end to end when the
           device echoes what it is sent (loopback does), plus what the SDK
           reported (`Pin.lost`)
  leaks    extra miniport processes, runtime files (rings, doorbells, command
           files) and kernel file descriptors (sockets) once it has settled

The promises (`Report.broken_promises`): the kernel survives and answers,
every fault is detected and the device comes back, the healthy device loses
nothing and never sees a removal, nothing leaks. `portcls crashtest` is the
command line (ksclient.cli); `miniports.testing.pytest_plugin` the pytest fixture.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import psutil

import ksclient
from ipc.runtime import runtime_base
from ipc.status import StatusError
from ksclient.launch import KernelProcess, KernelStartError, toml_config
from miniports import registry
from miniports.contract import MiniportDMus
from miniports.testing.faults import trigger_fault

FAULT_KINDS: Final = ("kill", "segv", "exception", "hang", "corrupt", "flood")
FAULTY: Final = "faulty"
HEALTHY: Final = "healthy"
SETTLE_SECONDS: Final = 5.0


@dataclass
class FaultResult:
    """One injected fault and what followed."""

    iteration: int
    kind: str
    detect: float | None = None
    recover: float | None = None
    reason: str = ""
    lost_measured: int | None = None
    lost_reported: int = 0
    leaked_processes: int = 0
    leaked_files: list[str] = field(default_factory=list)
    leaked_fds: int = 0
    kernel_ok: bool = True
    error: str = ""


@dataclass
class Report:
    """Everything a crash test found; `broken_promises()` empty means it passed."""

    miniport: str
    seed: int
    results: list[FaultResult] = field(default_factory=list)
    healthy_sent: int = 0
    healthy_received: int = 0
    healthy_errors: list[str] = field(default_factory=list)
    healthy_removals: int = 0
    kernel_survived: bool = True
    kernel_exit: int | None = None
    echoes: bool = True

    @property
    def healthy_lost(self) -> int:
        return self.healthy_sent - self.healthy_received

    def broken_promises(self) -> list[str]:
        broken = []
        if not self.kernel_survived:
            broken.append(f"the kernel died (exit {self.kernel_exit})")
        for r in self.results:
            what = f"iteration {r.iteration} ({r.kind})"
            if r.error:
                broken.append(f"{what}: {r.error}")
            if r.detect is None:
                broken.append(f"{what}: no removal event")
            elif r.recover is None:
                broken.append(f"{what}: the device did not come back")
            if not r.kernel_ok:
                broken.append(f"{what}: the kernel did not answer")
            if r.leaked_processes or r.leaked_files or r.leaked_fds:
                broken.append(
                    f"{what}: leaked {r.leaked_processes} processes, files {r.leaked_files}, "
                    f"{r.leaked_fds} descriptors"
                )
        if self.healthy_lost:
            broken.append(f"the healthy device lost {self.healthy_lost} messages")
        if self.healthy_removals:
            broken.append(f"the healthy device was removed {self.healthy_removals} times")
        broken += [f"healthy device: {e}" for e in self.healthy_errors]
        return broken

    def summary(self) -> dict[str, Any]:
        def spread(values: list[float]) -> dict[str, float | None]:
            if not values:
                return {"p50": None, "max": None}
            return {"p50": statistics.median(values), "max": max(values)}

        kinds: dict[str, int] = {}
        for r in self.results:
            kinds[r.kind] = kinds.get(r.kind, 0) + 1
        by_kind = {
            kind: {
                "faults": kinds[kind],
                "detect": spread(
                    [r.detect for r in self.results if r.kind == kind and r.detect is not None]
                ),
                "recover": spread(
                    [r.recover for r in self.results if r.kind == kind and r.recover is not None]
                ),
            }
            for kind in sorted(kinds)
        }
        measured = [r.lost_measured for r in self.results if r.lost_measured is not None]
        return {
            "miniport": self.miniport,
            "seed": self.seed,
            "faults": len(self.results),
            "by_kind": by_kind,
            "detect": spread([r.detect for r in self.results if r.detect is not None]),
            "recover": spread([r.recover for r in self.results if r.recover is not None]),
            "faulty_lost_measured": {
                "total": sum(measured),
                "max_per_fault": max(measured, default=0),
            } if self.echoes else None,
            "faulty_lost_reported": sum(r.lost_reported for r in self.results),
            "healthy_sent": self.healthy_sent,
            "healthy_lost": self.healthy_lost,
            "leaked_processes": sum(r.leaked_processes for r in self.results),
            "leaked_files": sum(len(r.leaked_files) for r in self.results),
            "leaked_fds": sum(r.leaked_fds for r in self.results),
            "kernel_survived": self.kernel_survived,
            "broken_promises": self.broken_promises(),
        }

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.summary(), "results": [asdict(r) for r in self.results]}

    def text(self) -> str:
        s = self.summary()

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1000:.0f} ms"

        lines = [
            f"crash test of {self.miniport}: {s['faults']} faults, seed {self.seed}",
            f"  {'fault':<10} {'n':>4}  {'detect p50':>10} {'max':>8}  {'recover p50':>11} "
            f"{'max':>8}",
        ]
        for kind, k in s["by_kind"].items():
            lines.append(
                f"  {kind:<10} {k['faults']:>4}  {ms(k['detect']['p50']):>10} "
                f"{ms(k['detect']['max']):>8}  {ms(k['recover']['p50']):>11} "
                f"{ms(k['recover']['max']):>8}"
            )
        lines.append(
            f"  {'all':<10} {s['faults']:>4}  {ms(s['detect']['p50']):>10} "
            f"{ms(s['detect']['max']):>8}  {ms(s['recover']['p50']):>11} "
            f"{ms(s['recover']['max']):>8}"
        )
        measured = s["faulty_lost_measured"]
        lines.append(
            "  faulty device lost: "
            + (f"{measured['total']} measured (max {measured['max_per_fault']} per fault), "
               if measured else "not measurable (it does not echo), ")
            + f"{s['faulty_lost_reported']} reported by the SDK"
        )
        lines.append(
            f"  healthy device: {s['healthy_sent']} sent, {s['healthy_lost']} lost"
        )
        lines.append(
            f"  leaks: {s['leaked_processes']} processes, {s['leaked_files']} files, "
            f"{s['leaked_fds']} descriptors; kernel "
            + ("survived" if self.kernel_survived else "DIED")
        )
        broken = s["broken_promises"]
        lines.append("  PASS" if not broken else "  FAIL:\n    " + "\n    ".join(broken))
        return "\n".join(lines)


class CrashTestError(RuntimeError):
    """The crash test could not run (the miniport does not start, the kernel does not
    come up); the message says why. Nothing is left behind."""


def _config(
    miniport: str, options: dict[str, Any], hang_timeout: float, resources: dict[str, Any]
) -> str:
    return toml_config(
        [
            {"name": HEALTHY, "miniport": "loopback", "restart": "never"},
            {
                "name": FAULTY,
                "miniport": _injector(miniport),
                "options": {"miniport": miniport, "options": options},
                "resources": resources,
                "restart": {"limit": 1000000, "window": 5.0, "backoff": 0.05,
                            "max_backoff": 0.5},
            },
        ],
        kernel={
            "heartbeat_interval": 0.1,
            "heartbeat_timeout": hang_timeout,
            "call_timeout": max(2.0, hang_timeout),
            "stop_grace": 0.5,
        },
    )


def _injector(miniport: str) -> str:
    """The fault injector for `miniport`: "faulty_dmus" for a DirectMusic miniport (found
    from here), else "faulty"."""
    try:
        cls = registry.load(miniport)
    except StatusError:
        return "faulty"
    return "faulty_dmus" if issubclass(cls, MiniportDMus) else "faulty"


class _HealthyStream(threading.Thread):
    """Streams numbered messages through the healthy loopback device and counts them."""

    def __init__(self, runtime: Path, report: Report) -> None:
        super().__init__(name="healthy-stream", daemon=True)
        self.runtime = runtime
        self.report = report
        self.stopping = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            self._stream()
        except Exception as exc:  # reported, never hidden: the healthy device must not fail
            self.report.healthy_errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            self.ready.set()

    def _stream(self) -> None:
        report = self.report

        def on_event(event: ksclient.KernelEvent) -> None:
            if event.kind == "removal" and event.filter == HEALTHY:
                report.healthy_removals += 1

        with ksclient.connect(self.runtime, name="crashtest-healthy") as client:
            client.on_event(on_event)
            with client.open_capture(HEALTHY) as inp, client.open_render(HEALTHY) as out:
                inp.run()
                out.run()
                self.ready.set()
                seq = 0
                while not self.stopping.is_set():
                    out.send_many(
                        [bytes([0x90, (seq + i) >> 7 & 0x7F, (seq + i) & 0x7F]) for i in range(4)]
                    )
                    seq += 4
                    report.healthy_sent = seq
                    self._receive(inp, 0.005)
                deadline = time.monotonic() + SETTLE_SECONDS
                while report.healthy_received < seq and time.monotonic() < deadline:
                    self._receive(inp, 0.05)

    def _receive(self, inp: ksclient.CapturePin, timeout: float) -> None:
        if inp.poll(timeout):
            with contextlib.suppress(ksclient.WouldBlock):
                while True:
                    inp.receive_nowait()
                    self.report.healthy_received += 1


class _Kernel(KernelProcess):
    """A private kernel process for one crash test."""

    @classmethod
    def open(cls, config: str, log: bool) -> _Kernel:
        runtime = Path(tempfile.mkdtemp(prefix="portcls-crashtest-", dir=runtime_base()))
        os.rmdir(runtime)
        # The injected faults make the miniport hosts print tracebacks: noise unless asked.
        return cls.start(config, runtime=runtime, stderr=None if log else subprocess.DEVNULL)

    @functools.cached_property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.process.pid)

    def miniports(self) -> list[psutil.Process]:
        try:
            return [c for c in self.ps.children() if c.status() != psutil.STATUS_ZOMBIE]
        except psutil.Error:
            return []

    def fds(self) -> int:
        try:
            return self.ps.num_fds()
        except psutil.Error:
            return 0

    def files(self) -> list[str]:
        with contextlib.suppress(OSError):
            return sorted(p.name for p in self.runtime.iterdir())
        return []


class _FaultyStream:
    """The main thread's client of the faulty device: streams, injects, times the events."""

    def __init__(self, kernel: _Kernel, client: ksclient.Client) -> None:
        self.kernel = kernel
        self.client = client
        self.sent = 0
        self.received = 0
        self.removal_at: float | None = None
        self.removal_reason = ""
        self.arrival_at: float | None = None
        client.on_event(self._on_event)
        self.inp = client.open_capture(FAULTY, auto_reopen=True)
        self.out = client.open_render(FAULTY, auto_reopen=True)
        self.inp.run()
        self.out.run()

    def _on_event(self, event: ksclient.KernelEvent) -> None:
        if event.filter != FAULTY:
            return
        if event.kind == "removal" and self.removal_at is None:
            self.removal_at = time.monotonic()
            self.removal_reason = event.reason
        elif event.kind == "arrival" and self.removal_at is not None and self.arrival_at is None:
            self.arrival_at = time.monotonic()

    def step(self, timeout: float = 0.2) -> None:
        """Send one message and take what came back; waits (bounded) while the device is away."""
        with contextlib.suppress(ksclient.KsTimeoutError):
            if self.inp.poll(0.002 if self.removal_at is None else timeout):
                with contextlib.suppress(ksclient.WouldBlock):
                    while True:
                        self.inp.receive_nowait()
                        self.received += 1
        with contextlib.suppress(ksclient.KsTimeoutError):
            self.out.send(bytes([0x90, 0x40, self.sent & 0x7F]), timeout=timeout)
            self.sent += 1

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        last = -1
        while time.monotonic() < deadline and last != self.received:
            last = self.received
            if self.inp.poll(0.1):
                with contextlib.suppress(ksclient.WouldBlock):
                    while True:
                        self.inp.receive_nowait()
                        self.received += 1

    def close(self) -> None:
        self.out.close()
        self.inp.close()


def _inject(kind: str, pid: int, runtime: Path) -> None:
    if kind == "kill":
        os.kill(pid, signal.SIGKILL)
    else:
        trigger_fault(pid, runtime, kind)


def _faulty_pid(client: ksclient.Client, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        device = client.stats()["devices"][FAULTY]
        if device["state"] == "running" and device["pid"]:
            return int(device["pid"])
        if time.monotonic() > deadline:
            raise RuntimeError(f"the faulty device is {device['state']}, not running")
        time.sleep(0.02)


def _settled_leaks(kernel: _Kernel, baseline_fds: int, pins: int) -> tuple[int, list[str], int]:
    """Wait (bounded) for the runtime to settle; what is still extra then is a leak."""
    expected_files = {"kernel.pid", "user.sock", "bus.sock", "fds.sock"}
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        miniports = kernel.miniports()
        extra_procs = max(0, len(miniports) - 2)
        # Every ring (pins', interrupt channels) is a memfd: none is a file.
        files = kernel.files()
        stray = [f for f in files if f not in expected_files and not f.startswith("pin")]
        extra_pin_files = sum(f.startswith("pin") for f in files)
        extra_fds = max(0, kernel.fds() - baseline_fds)
        clean = not (extra_procs or stray or extra_pin_files or extra_fds)
        if clean or time.monotonic() > deadline:
            if extra_pin_files:
                stray.append(f"{extra_pin_files} extra pin files")
            return extra_procs, stray, extra_fds
        time.sleep(0.05)


def run_crashtest(
    miniport: str = "loopback",
    options: dict[str, Any] | None = None,
    iterations: int = 12,
    faults: Sequence[str] = FAULT_KINDS,
    seed: int | None = None,
    hang_timeout: float = 1.5,
    progress: Callable[[FaultResult], None] | None = None,
    log: bool = False,
    resources: dict[str, Any] | None = None,
    status: Callable[[str], None] | None = None,
) -> Report:
    """Crash-test `miniport` (a name or module:Class, with `options`) for `iterations`
    faults drawn from `faults` (each kind in turn, in an order shuffled by `seed`).

    ValueError for an unknown fault kind or a non-positive iteration count.
    `log`: let the kernel's and the miniport hosts' stderr through. `resources`:
    the device's resource list (what the miniport's init gets), e.g. an MPU-401's
    `{"io": [[0x330, 2]], "irq": [9]}`. `status(line)` hears what the run is doing.
    Returns the Report; nothing is left running or on disk afterwards.
    CrashTestError (at once, with the reason) if the miniport cannot be started.
    """
    unknown = [k for k in faults if k not in FAULT_KINDS]
    if unknown or not faults:
        raise ValueError(f"fault kinds must be among {', '.join(FAULT_KINDS)}; got {unknown}")
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    seed = random.randrange(1 << 30) if seed is None else seed
    rng = random.Random(seed)
    # Every kind equally often, in a random order: a short run still covers them all.
    plan: list[str] = []
    while len(plan) < iterations:
        round_ = list(faults)
        rng.shuffle(round_)
        plan += round_
    plan = plan[:iterations]
    report = Report(miniport, seed)
    say = status or (lambda line: None)
    say(f"starting a kernel with {miniport!r} behind the fault injector")
    try:
        kernel = _Kernel.open(_config(miniport, options or {}, hang_timeout, resources or {}),
                              log)
    except KernelStartError as exc:
        raise CrashTestError(f"the test kernel did not start: {exc}") from None
    healthy = _HealthyStream(kernel.runtime, report)
    try:
        with ksclient.connect(kernel.runtime, name="crashtest", reopen_timeout=30.0) as client:
            _wait_for_devices(client, miniport)
            say(f"streaming; injecting {iterations} faults ({', '.join(faults)}), seed {seed}")
            healthy.start()
            healthy.ready.wait(10)
            stream = _FaultyStream(kernel, client)
            # Warm up: learn whether the device echoes, and the descriptor baseline.
            for _ in range(50):
                stream.step()
            stream.drain(1.0)
            report.echoes = stream.received > 0
            _settled_leaks(kernel, 1 << 30, 4)
            baseline_fds = kernel.fds()
            for i, kind in enumerate(plan):
                result = _one_fault(i, kind, kernel, client, stream, baseline_fds, report.echoes)
                report.results.append(result)
                if progress is not None:
                    progress(result)
                if not kernel.alive():
                    break
            stream.close()
    finally:
        healthy.stopping.set()
        try:
            if healthy.is_alive():
                healthy.join(SETTLE_SECONDS + 10)
        finally:
            report.kernel_survived = kernel.alive()
            exit_code = kernel.stop()
            if not report.kernel_survived:
                report.kernel_exit = exit_code
    return report


def _wait_for_devices(client: ksclient.Client, miniport: str, timeout: float = 20.0) -> None:
    """Both devices published; CrashTestError at once if one failed to start."""
    deadline = time.monotonic() + timeout
    while True:
        present = {f.id for f in client.filters()}
        if {FAULTY, HEALTHY} <= present:
            return
        devices = client.stats()["devices"]
        for name in (FAULTY, HEALTHY):
            device = devices.get(name, {})
            if name not in present and device.get("state") == "failed":
                raise CrashTestError(
                    f"the miniport {miniport!r} could not be started: {device.get('last_exit')}"
                    if name == FAULTY else f"the healthy loopback device failed: "
                    f"{device.get('last_exit')}"
                )
        if time.monotonic() >= deadline:
            raise CrashTestError(
                f"the miniport {miniport!r} did not start in {timeout:g} s "
                f"(state {devices.get(FAULTY, {}).get('state')!r})"
            )
        time.sleep(0.05)


def _one_fault(
    i: int, kind: str, kernel: _Kernel, client: ksclient.Client, stream: _FaultyStream,
    baseline_fds: int, echoes: bool,
) -> FaultResult:
    result = FaultResult(i, kind)
    try:
        for _ in range(20):
            stream.step()
        sent0, received0 = stream.sent, stream.received
        lost0 = stream.out.lost + stream.inp.lost
        out_reopens0, inp_reopens0 = stream.out.reopens, stream.inp.reopens
        stream.removal_at = stream.arrival_at = None
        pid = _faulty_pid(client)
        injected = time.monotonic()
        _inject(kind, pid, kernel.runtime)
        deadline = injected + 30.0
        # Stream on through the fault until both pins are reopened on the new device.
        while time.monotonic() < deadline and (
            stream.out.reopens <= out_reopens0 or stream.inp.reopens <= inp_reopens0
        ):
            stream.step()
            if not kernel.alive():
                break
        for _ in range(20):
            stream.step()
        stream.drain(2.0)
        if stream.removal_at is not None:
            result.detect = stream.removal_at - injected
            result.reason = stream.removal_reason
            if stream.arrival_at is not None:
                result.recover = stream.arrival_at - stream.removal_at
        if echoes:
            result.lost_measured = (stream.sent - sent0) - (stream.received - received0)
        result.lost_reported = stream.out.lost + stream.inp.lost - lost0
        try:
            client.stats()
        except ksclient.KsError as exc:
            result.kernel_ok = False
            result.error = f"stats: {exc}"
        result.kernel_ok = result.kernel_ok and kernel.alive()
        procs, files, fds = _settled_leaks(kernel, baseline_fds, 4)
        result.leaked_processes, result.leaked_files, result.leaked_fds = procs, files, fds
    except Exception as exc:  # one broken iteration is reported, and the run goes on
        result.error = f"{type(exc).__name__}: {exc}"
    return result

