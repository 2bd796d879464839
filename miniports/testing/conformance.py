"""The conformance suite: checks any miniport against the contract, with one call.

    from miniports.testing import assert_conformant
    assert_conformant("mypackage.mymidi:MyMiniport", options={"port": "x"})

It starts a real kernel in a private runtime directory with one device driven
by the miniport (in its own process, as always), and checks, through the
client SDK, what a client and the port rely on:

  descriptor      the filter is published; every pin answers its properties;
                  streaming pins carry MIDI data ranges; bridge pins cannot be opened
  format          a format outside the pin's data ranges fails with no-match
  instances       a pin's instance limit is enforced, and freed on close
  states          KSSTATE walks STOP→ACQUIRE→PAUSE→RUN and back, one step at a time
  roundtrip       short messages come back whole and in order (read until 0)
  first_interrupt each message comes back on the interrupt it raised, within 1 s: what
                  the miniport moves into its FIFO in service() is read in that DPC
  timestamps      capture times are monotonic and lie between send and receipt
  sysex_realtime  a 1 KiB SysEx and real-time bytes (clock, start, active sensing) intact
  burst           a burst far faster than the device: nothing lost, nothing reordered
                  (the port's partial/busy write path at work)
  stop_flush      going to STOP drops what was queued and not yet played
  shutdown        the kernel unloads the miniport cleanly: exit 0, nothing left behind

A DirectMusic miniport (IMiniportDMus; the port tells which when a pin opens)
runs every check above (MIDI-format pins are its channel group 1) and these:

  prefetch        events at future times come back in order, none before its
                  presentation time minus the stream's schedule pre-fetch (the port
                  never hands one over earlier)
  pause_capture   a capture pin in PAUSE passes events up; in ACQUIRE it does not
  dmus_format     DirectMusic-format pins (where the pins take them) carry channel
                  group 1 both ways (structured events and real-time bytes)
  allocator       once its streams stopped and closed, the port's allocator has
                  every event and buffer back (the host's "DMusAllocator" counts),
                  a 2 KiB SysEx (a package) and an event held at STOP included

The checks from `roundtrip` on need a loop: what the device renders must come
back on its capture pin (the loopback does that by design; an MPU-401 with its
cable looped back; an rtmidi device whose output port is wired to its input,
which `prepare` can do once the kernel runs). Pass `loop=False` for a device
without one: those checks are then reported as skipped, not passed.
"""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

import ksclient
from ipc.dmusic import DONT_HOLD_ON_WIRE
from ipc.ks import KSDATAFORMAT_SUBTYPE_DIRECTMUSIC, DataFormat, KsState
from ipc.runtime import runtime_base
from ipc.status import Status
from ksclient.launch import (
    READY_TIMEOUT,
    STOP_GRACE,
    KernelProcess,
    KernelStartError,
    toml_config,
)

__all__ = [
    "CHECKS",
    "DMUS_CHECKS",
    "CheckResult",
    "ConformanceError",
    "ConformanceReport",
    "KernelUnderTest",
    "assert_conformant",
    "check_miniport",
    "running_kernel",
    "start_kernel",
    "toml_config",
]

DEVICE = "dut"
"""The name of the device under test."""

FIRST_INTERRUPT_DEADLINE = 1.0
"""Seconds a message may take to come back when nothing else is sent after it."""


class ConformanceError(AssertionError):
    """A miniport failed one or more checks; the message is the report."""


class _Skip(Exception):
    """A check that does not apply to this device."""


@dataclass
class CheckResult:
    name: str
    outcome: str
    """"passed", "failed" or "skipped"."""
    detail: str = ""
    seconds: float = 0.0


@dataclass
class ConformanceReport:
    miniport: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.outcome != "failed" for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.outcome == "failed"]

    def summary(self) -> str:
        lines = [f"conformance of {self.miniport}:"]
        for r in self.results:
            detail = f"  {r.detail}" if r.detail else ""
            lines.append(f"  {r.outcome:<7} {r.name:<15} {r.seconds * 1000:7.0f} ms{detail}")
        lines.append("  " + ("all checks passed" if self.ok else f"{len(self.failed)} failed"))
        return "\n".join(lines)

    def raise_for_failures(self) -> None:
        if not self.ok:
            raise ConformanceError(self.summary())


class KernelUnderTest(KernelProcess):
    """A kernel process started for a test (`start_kernel`): a `KernelProcess` whose
    `stop` fails the test when the kernel had to be killed."""

    @property
    def proc(self) -> subprocess.Popen[str]:
        return self.process

    def stop(self, grace: float = STOP_GRACE) -> int:
        """SIGTERM, wait; SIGKILL (and AssertionError) if it does not stop in time."""
        killed_before = self.killed
        code = super().stop(grace)
        if self.killed and not killed_before:
            raise AssertionError("the kernel did not stop on SIGTERM")
        return code


def start_kernel(
    config: str | None,
    runtime: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = READY_TIMEOUT,
) -> KernelUnderTest:
    """Start `python -m kernel` with a TOML configuration and wait until it is ready
    (`ksclient.launch.start_kernel`); AssertionError if it exits first or is not
    ready within `timeout` seconds.

    Child processes see the caller's `sys.path`, so a miniport importable here
    (`module:Class`) is importable in its miniport host too.
    """
    runtime = runtime or runtime_base() / f"portcls-t{uuid.uuid4().hex[:10]}"
    try:
        return KernelUnderTest.start(config, runtime=runtime, env=env, timeout=timeout)
    except KernelStartError as exc:
        raise AssertionError(str(exc)) from exc


@contextlib.contextmanager
def running_kernel(
    config: str | None, env: Mapping[str, str] | None = None
) -> Iterator[KernelUnderTest]:
    kut = start_kernel(config, env=env)
    try:
        yield kut
    finally:
        kut.stop()


class _Suite:
    def __init__(
        self, kut: KernelUnderTest, client: ksclient.Client, loop: bool, burst: int,
        timeout: float,
    ) -> None:
        self.kut, self.client, self.loop = kut, client, loop
        self.burst_size, self.timeout = burst, timeout
        self.info = client.filter(DEVICE)
        self.render = self._pin(capture=False)
        self.capture = self._pin(capture=True)
        self.miniport_kind, self.schedule_prefetch = self._kind()

    def _kind(self) -> tuple[str, int]:
        """The miniport's kind and the render stream's pre-fetch, as the port reports
        them for an open pin."""
        pin_id = self.render if self.render is not None else self.capture
        if pin_id is None:
            return "midi", 0
        with self.client.open_pin(DEVICE, pin_id) as pin:
            for info in self.client.stats()["pins"]:
                if info["handle"] == pin.handle:
                    return str(info.get("miniport_kind", "midi")), int(
                        info.get("schedule_prefetch", 0))
        return "midi", 0

    def _dmus_only(self) -> None:
        if self.miniport_kind != "dmus":
            raise _Skip("not a DirectMusic miniport")

    def _pin(self, capture: bool) -> int | None:
        with contextlib.suppress(ksclient.NotFoundError):
            return self.info.find_pin(capture)
        return None

    def descriptor(self) -> None:
        pins = self.info.pins
        if not any(p.streaming for p in pins):
            raise AssertionError("the filter has no streaming pin")
        count = self.client.pin_property(DEVICE, 0, "ctypes")
        if count != len(pins):
            raise AssertionError(f"ctypes says {count} pins, the descriptor has {len(pins)}")
        for pin in pins:
            for prop in ("dataflow", "communication", "dataranges", "cinstances", "name"):
                self.client.pin_property(DEVICE, pin.id, prop)
            if pin.streaming and not any(r.matches(DataFormat()) for r in pin.data_ranges):
                raise AssertionError(f"streaming pin {pin.id} has no MIDI data range")
            if not pin.streaming:
                try:
                    self.client.open_pin(DEVICE, pin.id).close()
                except ksclient.KsError:
                    continue
                raise AssertionError(f"bridge pin {pin.id} could be opened")

    def format(self) -> None:
        bogus = DataFormat(major_format=str(uuid.uuid4()))
        for pin in self.info.pins:
            if not pin.streaming:
                continue
            try:
                self.client.open_pin(DEVICE, pin.id, bogus).close()
            except ksclient.NoMatchError:
                continue
            raise AssertionError(f"pin {pin.id} opened with a format outside its data ranges")

    def intersection(self) -> None:
        """KSPROPERTY_PIN_DATAINTERSECTION through the miniport's data_range_intersection
        (or the port's default): the size query, a buffer too small, the pin's own
        ranges giving a format that opens the pin, a foreign range refused."""
        bogus = ksclient.DataRange(major_format=str(uuid.uuid4()))
        for pin in self.info.pins:
            if not pin.streaming:
                continue
            query = self.client.data_intersection(DEVICE, pin.id, pin.data_ranges, size=0)
            if query.get("status") != Status.BUFFER_OVERFLOW or not query.get("size"):
                raise AssertionError(f"pin {pin.id}: the size query answered {query!r}")
            try:
                self.client.data_intersection(DEVICE, pin.id, pin.data_ranges,
                                              size=int(query["size"]) - 1)
            except ksclient.KsError as exc:
                if exc.status != Status.BUFFER_TOO_SMALL:
                    raise AssertionError(f"pin {pin.id}: a short buffer gave {exc}") from exc
            else:
                raise AssertionError(f"pin {pin.id}: a buffer too small was accepted")
            fmt = self.client.data_intersection(DEVICE, pin.id, pin.data_ranges)
            if not any(r.matches(fmt) for r in pin.data_ranges):
                raise AssertionError(f"pin {pin.id}: intersection gave {fmt}, outside its ranges")
            self.client.open_pin(DEVICE, pin.id, fmt).close()
            try:
                self.client.data_intersection(DEVICE, pin.id, [bogus])
            except ksclient.NoMatchError:
                continue
            raise AssertionError(f"pin {pin.id}: a foreign data range intersected")

    def set_format(self) -> None:
        """KSPROPERTY_CONNECTION_DATAFORMAT set reaches the stream's set_format: the
        pin's own format is taken; a refusal comes back as an error and changes nothing;
        the stream still plays afterwards."""
        out, inp = self._loop_pins(run=False)
        try:
            out.set_format(out.format)  # in STOP, as a KS client sets a connection's format
            inp.set_format(inp.format)
            inp.run()
            out.run()
            marker = b"\x90\x3c\x41"
            out.send(marker)
            self._expect(inp, [marker])
        finally:
            out.close()
            inp.close()

    def instances(self) -> None:
        checked = 0
        for pin in self.info.pins:
            if not pin.streaming or pin.max_instances > 64:
                continue
            opened = []
            try:
                for _ in range(pin.max_instances):
                    opened.append(self.client.open_pin(DEVICE, pin.id))
                try:
                    opened.append(self.client.open_pin(DEVICE, pin.id))
                except ksclient.InstancesExhaustedError:
                    pass
                else:
                    raise AssertionError(
                        f"pin {pin.id} opened {pin.max_instances + 1} times (limit "
                        f"{pin.max_instances})")
            finally:
                for opened_pin in opened:
                    opened_pin.close()
            # Closing frees the instances.
            self.client.open_pin(DEVICE, pin.id).close()
            checked += 1
        if not checked:
            raise _Skip("no pin has a finite instance limit")

    def states(self) -> None:
        steps = [KsState.ACQUIRE, KsState.PAUSE, KsState.RUN, KsState.PAUSE, KsState.ACQUIRE,
                 KsState.STOP]
        for pin_id in (self.render, self.capture):
            if pin_id is None:
                continue
            with self.client.open_pin(DEVICE, pin_id) as pin:
                for state in steps * 2:
                    pin.set_state(state)
                    if pin.state != state:
                        raise AssertionError(f"pin {pin_id}: asked for {state.name}, "
                                             f"is {pin.state.name}")

    def _device_stats(self) -> object:
        """The device's registry values (its miniport's statistics), or why not."""
        try:
            return {k["path"]: k["values"] for k in self.client.device_registry(DEVICE)}
        except ksclient.KsError as exc:
            return repr(exc)

    def _loop_pins(
        self, run: bool = True, fmt: DataFormat | None = None,
    ) -> tuple[ksclient.RenderPin, ksclient.CapturePin]:
        if not self.loop:
            raise _Skip("no loop from render to capture (loop=False)")
        if self.render is None or self.capture is None:
            raise _Skip("the filter lacks a render or a capture pin")
        render, capture = self.render, self.capture
        if fmt is not None:
            pins = [p for p in self.info.pins if p.streaming
                    and any(r.matches(fmt) for r in p.data_ranges)]
            renders = [p.id for p in pins if p.is_render]
            captures = [p.id for p in pins if p.is_capture]
            if not renders or not captures:
                raise _Skip("no render and capture pin take that format")
            render, capture = renders[0], captures[0]
        out = self.client.open_render(DEVICE, render, fmt)
        try:
            inp = self.client.open_capture(DEVICE, capture, fmt)
        except BaseException:
            out.close()
            raise
        if run:
            inp.run()
            out.run()
        return out, inp

    def _expect(
        self, inp: ksclient.CapturePin, wanted: list[bytes], then_silent: float = 0.1
    ) -> list[ksclient.MidiMessage]:
        """Receive exactly `wanted`, in order; then nothing more for `then_silent` s."""
        got: list[ksclient.MidiMessage] = []
        deadline = time.monotonic() + self.timeout
        while len(got) < len(wanted):
            left = deadline - time.monotonic()
            try:
                msg = inp.receive(timeout=max(0.0, left))
            except ksclient.KsTimeoutError:
                missing = wanted[len(got)][:16].hex(" ")
                raise AssertionError(
                    f"{len(got)} of {len(wanted)} messages came back in {self.timeout} s "
                    f"(missing: {missing})"
                ) from None
            data = msg.data
            index = len(got)
            if data != wanted[index]:
                raise AssertionError(
                    f"message {index}: sent {wanted[index][:16].hex(' ')}, "
                    f"got {data[:16].hex(' ')} ({len(data)} bytes)")
            got.append(msg)
        if then_silent and inp.poll(then_silent):
            extra = inp.receive_nowait()
            raise AssertionError(f"an unexpected message came back: {extra.data[:16].hex(' ')}")
        return got

    def roundtrip(self) -> None:
        out, inp = self._loop_pins()
        with out, inp:
            for i in range(100):
                message = bytes((0x90 | (i % 16), i % 128, 1 + i % 127))
                out.send(message)
                self._expect(inp, [message], then_silent=0.0 if i < 99 else 0.1)

    def first_interrupt(self) -> None:
        # One message at a time and nothing after it: no later interrupt can carry it
        # along, so it comes back only if the DPC of its own interrupt reads it after
        # the miniport's service(), as PortCls orders them.
        out, inp = self._loop_pins()
        with out, inp:
            for i in range(10):
                message = bytes((0x90, 60 + i, 100))
                out.send(message)
                try:
                    data = inp.receive(timeout=FIRST_INTERRUPT_DEADLINE).data
                except ksclient.KsTimeoutError:
                    raise AssertionError(
                        f"message {i} ({message.hex(' ')}) did not come back within "
                        f"{FIRST_INTERRUPT_DEADLINE:g} s: its own interrupt did not deliver it"
                    ) from None
                if data != message:
                    raise AssertionError(f"sent {message.hex(' ')}, got {data[:16].hex(' ')}")

    def timestamps(self) -> None:
        out, inp = self._loop_pins()
        with out, inp:
            wanted = [bytes((0xB0, 7, i)) for i in range(50)]
            sent_at = ksclient.now()
            for message in wanted:
                out.send(message)
                time.sleep(0.002)
            got = self._expect(inp, wanted)
            received_at = ksclient.now()
            stamps = [m.timestamp for m in got]
            if any(b < a for a, b in itertools.pairwise(stamps)):
                raise AssertionError(f"capture times go backwards: {stamps}")
            if stamps[0] < sent_at or stamps[-1] > received_at:
                raise AssertionError("capture times lie outside the time the messages travelled")

    def sysex_realtime(self) -> None:
        out, inp = self._loop_pins()
        with out, inp:
            sysex = bytes([0xF0, 0x7D]) + bytes(i % 128 for i in range(1020)) + b"\xf7"
            wanted = [
                b"\xfa", bytes((0x90, 64, 100)), b"\xf8", sysex, b"\xf8",
                bytes((0x80, 64, 0)), b"\xfe", b"\xfc",
            ]
            out.send_many(wanted)
            self._expect(inp, wanted)

    def burst(self) -> None:
        out, inp = self._loop_pins()
        with out, inp:
            wanted = [bytes((0x90 | (i % 16), i % 128, (i // 128) % 128)) for i in
                      range(self.burst_size)]
            out.send_many(wanted)
            try:
                self._expect(inp, wanted)
            except AssertionError as exc:
                # Where a message was lost or doubled: what the kernel released to the
                # miniport and delivered from it, and what the device says it did.
                raise AssertionError(f"{exc}; render pin {out.statistics()}; capture pin "
                                     f"{inp.statistics()}; device {self._device_stats()}"
                                     ) from None

    def stop_flush(self) -> None:
        out, inp = self._loop_pins()
        with out, inp:
            later = ksclient.now() + 10_000_000
            out.send(bytes((0x90, 1, 1)), at=later)
            out.walk_to(KsState.STOP)
            out.run()
            marker = bytes((0x90, 2, 2))
            out.send(marker)
            self._expect(inp, [marker])
            if inp.poll(1.2):
                raise AssertionError("an event queued before STOP was played after it")


    def prefetch(self) -> None:
        self._dmus_only()
        out, inp = self._loop_pins()
        with out, inp:
            dont_hold = self.schedule_prefetch == DONT_HOLD_ON_WIRE
            ahead = self.schedule_prefetch
            start = ksclient.now() + 50 * MS
            times = [start + i * 20 * MS for i in range(8)]
            wanted = [bytes((0x90, i, 1 + i)) for i in range(len(times))]
            for at, data in zip(times, wanted, strict=True):
                out.send(data, at=at)
            got = self._expect(inp, wanted)
            for i, (message, at) in enumerate(zip(got, times, strict=True)):
                if not dont_hold and message.timestamp < at - ahead:
                    raise AssertionError(
                        f"event {i} came back {(at - message.timestamp) / MS:.1f} ms before "
                        f"its presentation time, more than the pre-fetch of {ahead / MS:g} ms")

    def pause_capture(self) -> None:
        self._dmus_only()
        out, inp = self._loop_pins()
        with out, inp:
            inp.pause()
            marker = bytes((0x90, 3, 3))
            out.send(marker)
            self._expect(inp, [marker], then_silent=0.0)
            inp.walk_to(KsState.ACQUIRE)
            out.send(bytes((0x90, 4, 4)))
            time.sleep(0.3)
            inp.run()
            marker = bytes((0x90, 5, 5))
            out.send(marker)
            self._expect(inp, [marker])

    def dmus_format(self) -> None:
        self._dmus_only()
        out, inp = self._loop_pins(fmt=DataFormat(sub_format=KSDATAFORMAT_SUBTYPE_DIRECTMUSIC))
        with out, inp:
            wanted = [bytes((0x90, 64, 100)), b"\xf8", bytes((0xC0, 5)), bytes((0x80, 64, 0))]
            for message in wanted:
                out.send_raw(message)
            got = [(m.channel_group, m.data) for m in self._expect(inp, wanted)]
            if got != [(1, m) for m in wanted]:
                raise AssertionError(f"DirectMusic-format events came back as {got}")

    def allocator(self) -> None:
        self._dmus_only()
        out, inp = self._loop_pins()
        with out, inp:
            sysex = bytes([0xF0, 0x7D]) + bytes(i % 128 for i in range(2000)) + b"\xf7"
            wanted = [bytes((0x90, 6, 6)), sysex, bytes((0x80, 6, 0))]
            out.send_many(wanted)
            self._expect(inp, wanted, then_silent=0.0)
            out.send(bytes((0x90, 7, 7)), at=ksclient.now() + 10_000_000)  # held at STOP
            out.stop()
            inp.stop()
        values: dict[str, int] = {}
        for key in self.client.device_registry(DEVICE):
            if key["path"] == "DMusAllocator":
                values = key["values"]
        if not values:
            raise AssertionError("the port published no allocator counts")
        leaked = {k: values[k] for k in ("OutstandingEvents", "OutstandingBuffers") if values[k]}
        if leaked:
            raise AssertionError(f"not given back to the allocator after STOP and close: {leaked}")


MS = 10_000
"""One millisecond in 100 ns units."""

CHECKS: tuple[str, ...] = (
    "descriptor", "format", "intersection", "instances", "states", "set_format", "roundtrip",
    "first_interrupt",
    "timestamps", "sysex_realtime", "burst", "stop_flush", "shutdown",
)
DMUS_CHECKS: tuple[str, ...] = ("prefetch", "pause_capture", "dmus_format", "allocator")
"""Run by default on a DirectMusic miniport (before "shutdown"); skipped on a MIDI one."""


def check_miniport(
    miniport: str,
    *,
    options: Mapping[str, Any] | None = None,
    resources: Mapping[str, Any] | None = None,
    loop: bool = True,
    prepare: Callable[[KernelUnderTest], None] | None = None,
    env: Mapping[str, str] | None = None,
    burst: int = 2000,
    timeout: float = 20.0,
    checks: Iterable[str] | None = None,
) -> ConformanceReport:
    """Run the conformance checks on `miniport` (a registered name or `module:Class`).

    `options` and `resources` are the device's configuration; `prepare` runs
    once the kernel is up (to wire an external loop, say); `env` is the
    environment of the kernel and miniport processes. `checks` defaults to CHECKS,
    and DMUS_CHECKS too for a DirectMusic miniport. Returns the report;
    `assert_conformant` raises on a failure instead.
    """
    wanted = list(checks) if checks is not None else list(CHECKS)
    unknown = set(wanted) - set(CHECKS) - set(DMUS_CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; known: {CHECKS}")
    report = ConformanceReport(miniport)
    device: dict[str, Any] = {"name": DEVICE, "miniport": miniport,
                              "restart": {"limit": 0}}
    if options:
        device["options"] = dict(options)
    if resources:
        device["resources"] = dict(resources)
    kut = start_kernel(toml_config([device]), env=env)
    stopped = False
    try:
        miniport_pids = kut.miniport_pids()
        with kut.connect() as client:
            try:
                client.wait_for_filter(DEVICE, timeout=timeout)
            except ksclient.KsError as exc:
                report.results.append(CheckResult(
                    "descriptor", "failed", f"the device was never published: {exc}; "
                    f"kernel said: {kut.output().strip()[-500:]}"))
                return report
            if prepare is not None:
                prepare(kut)
            suite = _Suite(kut, client, loop, burst, timeout)
            if checks is None and suite.miniport_kind == "dmus":
                wanted[-1:-1] = DMUS_CHECKS  # before "shutdown"
            for name in wanted:
                if name == "shutdown":
                    continue
                report.results.append(_run(name, getattr(suite, name)))
        if "shutdown" in wanted:
            stopped = True
            report.results.append(_run("shutdown", lambda: _shutdown(kut, miniport_pids)))
    finally:
        if not stopped:
            kut.stop()
    return report


def _run(name: str, check: Callable[[], None]) -> CheckResult:
    start = time.monotonic()
    try:
        check()
    except _Skip as exc:
        return CheckResult(name, "skipped", str(exc), time.monotonic() - start)
    except (AssertionError, ksclient.KsError) as exc:
        detail = f"{type(exc).__name__}: {exc}" if isinstance(exc, ksclient.KsError) else str(exc)
        return CheckResult(name, "failed", detail, time.monotonic() - start)
    return CheckResult(name, "passed", "", time.monotonic() - start)


def _shutdown(kut: KernelUnderTest, miniport_pids: list[int]) -> None:
    code = kut.stop()
    if code != 0:
        raise AssertionError(f"the kernel exited with {code}")
    left = [pid for pid in miniport_pids if psutil.pid_exists(pid)
            and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    if left:
        raise AssertionError(f"miniport processes left running: {left}")
    if kut.runtime.exists():
        raise AssertionError(f"the runtime directory is left: {sorted(kut.runtime.iterdir())}")


def assert_conformant(miniport: str, **kwargs: Any) -> ConformanceReport:
    """`check_miniport`, raising ConformanceError (an AssertionError) with the report
    if any check failed."""
    report = check_miniport(miniport, **kwargs)
    report.raise_for_failures()
    return report
