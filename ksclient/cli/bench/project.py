"""The paths through the driver model, and the CPU its processes spend.

:class:`LoopbackPins` is one client with a loopback device's render and capture
pins open and in RUN; every measurement of the project's data path goes
client -> kernel (sequencer) -> loopback miniport (write, cable, ISR, read) ->
kernel (parser) -> client through it:

* :meth:`LoopbackPins.roundtrip`: one message in flight, ``send`` then ``receive``;
* :meth:`LoopbackPins.throughput`: numbered note-ons in batches of 64 through the
  SDK's batch path (``send_batch`` of the 64 messages' bytes, ``receive_batch``), every
  message checked in order, zero loss expected;
* :meth:`LoopbackPins.throughput_per_message`: the same with ``send_many`` of 64
  message objects and ``receive_nowait`` per message (the figure beside it);
* :meth:`LoopbackPins.paced`: a fixed send rate (per message, or through the batch
  path), latency from each message's
  scheduled send time to its receipt (so a late sender is counted, not hidden).

:class:`CpuMeter` reads the CPU time (user + system, psutil) of a kernel process and
its miniport hosts.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import select
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import psutil

import ksclient
from ksclient.cli.bench.stats import summarize
from ksclient.cli.bench.traffic import (
    BATCH,
    SequenceCheck,
    ThroughputResult,
    numbered_messages,
)
from ksclient.launch import KernelProcess

__all__ = [
    "LADDER",
    "CpuMeter",
    "LoopbackPins",
    "RateStep",
    "measuring",
]

LADDER: Final = (1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000)
"""Paced rates tried, in messages per second, lowest first."""
TICK_NS: Final = 1_000_000
"""A paced sender sends what is due about every millisecond."""
LATENCY_LIMIT_US: Final = 1000.0
"""A paced rate passes while its latency p99 stays under this."""


@contextlib.contextmanager
def measuring() -> Iterator[None]:
    """Collect garbage now, then keep the collector off while measuring: a collection
    in the middle of a round trip would be charged to whatever path was running."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass
class RateStep:
    """One rung of the paced-rate ladder."""

    rate: int
    sent: int = 0
    lost: int = 0
    seconds: float = math.nan
    latency_ns: array[int] = field(default_factory=lambda: array("q"))

    @property
    def passed(self) -> bool:
        p99 = summarize(self.latency_ns).p99_us
        return self.lost == 0 and p99 is not None and p99 < LATENCY_LIMIT_US

    def to_json(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "sent": self.sent,
            "lost": self.lost,
            "seconds": self.seconds,
            "latency": summarize(self.latency_ns).to_json(),
            "passed": self.passed,
        }


def _wait_readable(pin: ksclient.CapturePin, seconds: float) -> None:
    """Block until the capture pin may have a message, or ``seconds`` pass.

    ``CapturePin.poll`` takes whole milliseconds (it rounds a shorter timeout up to
    1 ms), which would make a 1 ms-paced sender late by up to a millisecond and
    charge that to the path. So, as ``ksclient.aio`` does, arm the pin's channel
    and wait on its doorbell with a microsecond timeout; the next receive disarms
    it. Falls back to ``poll`` should the pin ever stop having a channel.
    """
    channel: Any = getattr(pin, "_channel", None)
    if channel is None or not hasattr(channel, "prepare_to_sleep"):
        pin.poll(seconds)
        return
    if channel.prepare_to_sleep():
        select.select([channel.data_fileno()], [], [], max(0.0, seconds))


class LoopbackPins:
    """One client with a loopback device's render and capture pins open and in RUN."""

    def __init__(
        self, kernel: KernelProcess, device: str = "loopback", capacity: int = 1 << 20,
        name: str = "portcls-bench",
    ) -> None:
        self.device = device
        self.client = kernel.connect(timeout=10.0, name=name)
        try:
            self.client.wait_for_filter(device, timeout=10.0)
            self.out = self.client.open_render(device)
            # Room for the throughput window (see throughput) many times over.
            self.inp = self.client.open_capture(device, capacity=capacity)
            self.inp.run()
            self.out.run()
        except BaseException:
            self.client.close()
            raise

    def roundtrip(self, n: int, samples: array[int], message: bytes) -> None:
        """``n`` round trips of ``message`` (``send`` then ``receive``); ns into ``samples``."""
        send, receive, clock = self.out.send, self.inp.receive, time.perf_counter_ns
        for _ in range(n):
            t0 = clock()
            send(message)
            got = receive(timeout=5.0)
            t1 = clock()
            if got.data != message:
                raise RuntimeError(
                    f"loopback round trip: sent {message[:8].hex()}.. ({len(message)} B), "
                    f"got {got.data[:8].hex()}.. ({len(got.data)} B)"
                )
            samples.append(t1 - t0)

    def _drain(self, check: SequenceCheck) -> None:
        receive_nowait, take = self.inp.receive_nowait, check.take
        with contextlib.suppress(ksclient.WouldBlock):
            while True:
                take(receive_nowait().data)

    def _drain_batches(self, check: SequenceCheck) -> None:
        receive_batch, take_run = self.inp.receive_batch, check.take_run
        while batches := receive_batch(timeout=0):
            for batch in batches:
                take_run(batch.data)

    def throughput(self, count: int, window: int, drain_timeout: float) -> ThroughputResult:
        """``count`` numbered note-ons, ``send_batch`` of 64 messages' bytes at a time,
        the capture pin drained (``receive_batch``) after every batch, every message
        checked in order: what a client wanting throughput uses."""
        messages = numbered_messages(count)
        batches = [b"".join(messages[i : i + BATCH]) for i in range(0, count, BATCH)]
        return self._throughput(messages, batches, [len(b) // 3 for b in batches],
                                self.out.send_batch, self._drain_batches, window, drain_timeout)

    def throughput_per_message(
        self, count: int, window: int, drain_timeout: float
    ) -> ThroughputResult:
        """``count`` numbered note-ons, ``send_many`` in batches of 64, the capture pin
        drained after every batch, every message checked in order."""
        messages = numbered_messages(count)
        batches = [messages[i : i + BATCH] for i in range(0, count, BATCH)]
        return self._throughput(messages, batches, [len(b) for b in batches],
                                self.out.send_many, self._drain, window, drain_timeout)

    def _throughput(
        self, messages: list[bytes], batches: list[Any], sizes: list[int],
        send: Callable[..., None], drain: Callable[[SequenceCheck], None],
        window: int, drain_timeout: float,
    ) -> ThroughputResult:
        """Send `batches` (of `sizes` messages) with `send`, `drain` after each, and check
        every message in order.

        At most ``window`` messages are in flight: the kernel drops what does not fit a
        capture ring (the pin's ``dropped``), so a client that wants zero loss must
        not let a descheduled moment of its own overflow it.
        """
        check = SequenceCheck(messages)
        poll = self.inp.poll
        dropped_before = self.inp.dropped
        sent = 0
        t0 = time.perf_counter()
        for batch, n in zip(batches, sizes, strict=True):
            while sent + n - check.expected - check.out_of_order > window:
                before = check.expected
                if poll(drain_timeout):
                    drain(check)
                if check.expected == before:
                    raise RuntimeError(f"the loopback stalled for {drain_timeout:g} s")
            send(batch, timeout=drain_timeout)
            sent += n
            drain(check)
        note = ""
        deadline = time.monotonic() + drain_timeout
        while not check.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                note = f"tail not delivered within {drain_timeout:g} s"
                break
            if poll(min(remaining, 0.5)):
                drain(check)
        seconds = time.perf_counter() - t0
        dropped = self.inp.dropped - dropped_before
        if dropped:
            note = "; ".join(x for x in (note, f"capture ring dropped {dropped}") if x)
        return ThroughputResult.from_check(check, seconds, window, note)

    def paced(
        self, rate: int, seconds: float, drain_timeout: float = 3.0, batched: bool = False,
    ) -> RateStep:
        """Send numbered note-ons at ``rate`` per second for ``seconds``, single thread.

        The schedule is a batch every millisecond (tick ``j`` holds the messages
        ``j * rate // 1000`` up to ``(j + 1) * rate // 1000``); the sender sends every
        batch that is due with one ``send_many`` (``batched``: one ``send_batch`` of the
        bytes, received with ``receive_batch``, each run's messages sharing its receipt
        time, which is when the client had them), then receives until the next tick.
        A message's latency is its receipt time minus its batch's scheduled time, so
        a sender that falls behind is charged for it, not hidden.
        """
        count = max(1, round(rate * seconds))
        ticks_per_s = 1_000_000_000 // TICK_NS
        messages = numbered_messages(count)
        check = SequenceCheck(messages)
        step = RateStep(rate)
        latency = step.latency_ns
        clock = time.perf_counter_ns
        last_tick = -(-count * ticks_per_s // rate) - 1  # the tick of the last message
        t0 = clock() + TICK_NS

        def arrived(k: int, received_at: int) -> None:
            """Messages `k` .. `check.expected` - 1 came in order at `received_at`."""
            for m in range(k, check.expected):
                # m's tick: the first j with (j + 1) * rate // ticks_per_s > m.
                j = -(-(m + 1) * ticks_per_s // rate) - 1
                latency.append(received_at - t0 - j * TICK_NS)

        if batched:
            send_batch, receive_batch = self.out.send_batch, self.inp.receive_batch

            def send(first: int, end: int) -> None:
                send_batch(b"".join(messages[first:end]), timeout=drain_timeout)

            def receive() -> None:
                for batch in receive_batch(timeout=0):
                    received_at = clock()
                    k = check.expected
                    check.take_run(batch.data)
                    if check.expected == k + len(batch.data) // 3:
                        arrived(k, received_at)
        else:
            send_many, receive_nowait = self.out.send_many, self.inp.receive_nowait

            def send(first: int, end: int) -> None:
                send_many(messages[first:end], timeout=drain_timeout)

            def receive() -> None:
                with contextlib.suppress(ksclient.WouldBlock):
                    while True:
                        data = receive_nowait().data
                        received_at = clock()
                        k = check.expected
                        check.take(data)
                        if check.expected == k + 1:  # message k itself, in order
                            arrived(k, received_at)

        tick = 0  # the next tick to send
        sent = 0
        end = None
        while not check.done:
            now = clock()
            if tick <= last_tick and now >= t0 + tick * TICK_NS:
                # Every tick due now (more than one if this sender is late).
                tick = min(last_tick, (now - t0) // TICK_NS) + 1
                due = min(count, tick * rate // ticks_per_s)
                if due > sent:
                    send(sent, due)
                    sent = due
            receive()
            if tick <= last_tick:
                wait = (t0 + tick * TICK_NS - clock()) / 1e9
                if wait > 0:
                    _wait_readable(self.inp, wait)
                continue
            if end is None:
                end = time.monotonic() + drain_timeout
            elif time.monotonic() > end:
                break
            _wait_readable(self.inp, 0.05)
        step.seconds = (clock() - t0) / 1e9
        step.sent = sent
        step.lost = check.lost()
        if not check.done:
            self.settle()
        return step

    def settle(self, quiet: float = 0.2, limit: float = 5.0) -> None:
        """Read and drop whatever still arrives, until the pin is quiet for ``quiet`` s."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and self.inp.poll(quiet):
            with contextlib.suppress(ksclient.WouldBlock):
                while True:
                    self.inp.receive_nowait()

    def statistics(self) -> dict[str, Any]:
        """The kernel's counters for both pins (or the error that prevented reading them)."""
        try:
            return {"render": self.out.statistics(), "capture": self.inp.statistics()}
        except ksclient.KsError as exc:
            return {"error": repr(exc)}

    def close(self) -> None:
        """Close both pins and the client. Fast when the kernel has died: closing a pin
        would otherwise wait for its reply until the call timeout."""
        with contextlib.suppress(ksclient.KsError):
            self.client.check_kernel()
        try:
            self.out.close()
            self.inp.close()
        finally:
            self.client.close()


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _schedstat_seconds(pid: int) -> float:
    """CPU time of every live thread of ``pid`` from /proc/<pid>/task/*/schedstat
    (nanoseconds); NaN where the kernel does not offer it."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[0])
    except OSError:
        return math.nan
    return total / 1e9


def _label(proc: psutil.Process, kernel_pid: int) -> str:
    if proc.pid == kernel_pid:
        return "kernel"
    with contextlib.suppress(psutil.Error, ValueError, IndexError):
        cmdline = proc.cmdline()
        if "--device" in cmdline:
            return "miniport " + cmdline[cmdline.index("--device") + 1]
    return f"pid {proc.pid}"


CLOCK_TICK: Final = 1.0 / os.sysconf("SC_CLK_TCK")
"""The resolution of psutil's cpu_times on Linux (USER_HZ ticks: 10 ms)."""


class CpuMeter:
    """CPU time of a kernel process and its children (the miniport hosts), per process
    and summed, as % of one core over a window.

    The figures are psutil's ``cpu_times`` (user + system), which count whole clock
    ticks of 10 ms: over a 5 s window one tick is 0.2 % of a core, so an idle figure
    is only that precise. Beside them, ``total_percent_schedstat`` sums the threads'
    scheduler run time (/proc/<pid>/task/*/schedstat, nanoseconds) as a cross-check.
    """

    def __init__(self, kernel_pid: int) -> None:
        self.kernel_pid = kernel_pid
        kernel = psutil.Process(kernel_pid)
        self.processes = {
            _label(p, kernel_pid): p for p in [kernel, *kernel.children(recursive=True)]
        }

    def sample(self) -> dict[str, tuple[float, float]]:
        """(psutil seconds, schedstat seconds) of CPU used so far, per process (NaN for
        a process gone since)."""
        out: dict[str, tuple[float, float]] = {}
        for label, proc in self.processes.items():
            try:
                out[label] = (_cpu_seconds(proc), _schedstat_seconds(proc.pid))
            except psutil.Error:
                out[label] = (math.nan, math.nan)
        return out

    @staticmethod
    def percent(
        before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]],
        seconds: float,
    ) -> dict[str, Any]:
        """``{"seconds", "total_percent", "processes": {label: percent}, ...}`` for a
        window of ``seconds``."""
        per = {
            label: (after[label][0] - before[label][0]) / seconds * 100.0
            for label in before if label in after
        }
        exact = [
            (after[label][1] - before[label][1]) / seconds * 100.0
            for label in before if label in after
        ]
        return {
            "seconds": seconds,
            "total_percent": math.fsum(v for v in per.values() if not math.isnan(v)),
            "processes": per,
            "resolution_percent_per_process": CLOCK_TICK / seconds * 100.0,
            "total_percent_schedstat": math.fsum(exact) if exact else math.nan,
        }
