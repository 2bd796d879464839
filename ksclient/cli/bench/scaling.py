"""Scaling: many client processes on several miniport processes at once.

One kernel runs ``devices`` cable-bank devices (:mod:`miniports.testing.cablebank`: the
loopback allows one render pin per device, and each client needs a private round
trip). Client ``i`` of a cell with ``M`` miniports opens cable ``i // M`` of device
``i mod M``, so the clients spread evenly over the first ``M`` devices, each a
miniport process of its own (with fewer clients than miniports, the rest idle).
Each client is a separate process, started from a forkserver that has imported
``ksclient`` (never forked from this process, which holds ZeroMQ contexts), and is
driven over a pipe:

* latency: every client does paced round trips (``rate`` a second, one in flight,
  the clients' phases spread evenly over the period) for some seconds; the samples
  are pooled;
* throughput: every client sends numbered note-ons in batches of 64 as fast as it
  can (at most ``window`` in flight, every message checked in order) for some
  seconds; the aggregate is all messages received over the span from the first
  send to the last receipt, on the shared monotonic clock.

Before each measurement every client collects its garbage and turns the collector
off until the measurement ends, and the measurement starts only when all have: 32
collections at once on two CPUs took longer than the 0.2 s start margin, and the
first round trips queued behind them (their p99 was up to 7 times the rest's).
"""

from __future__ import annotations

import contextlib
import gc
import math
import multiprocessing as mp
import signal
import time
from array import array
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Final

import ksclient
from ksclient.cli.bench.stats import summarize
from ksclient.cli.bench.traffic import BATCH, SequenceCheck, numbered, numbered_messages
from miniports.testing.cablebank import capture_pin, render_pin

__all__ = ["DEVICE_PREFIX", "ClientPool", "device_name", "run_cell"]

DEVICE_PREFIX: Final = "cables"
MINIPORT: Final = "miniports.testing.cablebank:CableBankMiniport"
PACED_RATE: Final = 200
"""Round trips a second per client in the latency measurement."""
CLIENT_WINDOW: Final = 1024
"""Messages a client keeps in flight at most (its capture ring holds 2,700)."""
MAX_MESSAGES: Final = (1 << 18) - BATCH
"""The counter in a numbered message wraps at 2**18."""


def device_name(index: int) -> str:
    return f"{DEVICE_PREFIX}{index}"


def _paced_roundtrips(
    out: ksclient.RenderPin, inp: ksclient.CapturePin, start_at: float, seconds: float,
    rate: float,
) -> array[int]:
    samples: array[int] = array("q")
    clock = time.perf_counter_ns
    period = 1.0 / rate
    for k in range(max(1, int(seconds * rate))):
        delay = start_at + k * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        message = numbered(k)
        t0 = clock()
        out.send(message)
        got = inp.receive(timeout=5.0)
        samples.append(clock() - t0)
        if got.data != message:
            raise RuntimeError(f"sent {message.hex()}, got {got.data.hex()}")
    return samples


def _burst(
    out: ksclient.RenderPin, inp: ksclient.CapturePin, start_at: float, seconds: float,
    max_messages: int, window: int,
) -> dict[str, Any]:
    messages = numbered_messages(max_messages)
    check = SequenceCheck(messages)
    send_many, poll, receive_nowait, take = out.send_many, inp.poll, inp.receive_nowait, check.take

    def drain() -> None:
        with contextlib.suppress(ksclient.WouldBlock):
            while True:
                take(receive_nowait().data)

    delay = start_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    started = time.monotonic()
    stop_at = started + seconds
    sent = 0
    while sent < max_messages and time.monotonic() < stop_at:
        batch = messages[sent : sent + BATCH]
        while sent + len(batch) - check.expected - check.out_of_order > window:
            before = check.expected
            if poll(5.0):
                drain()
            if check.expected == before:
                raise RuntimeError("the device stalled for 5 s")
        send_many(batch, timeout=5.0)
        sent += len(batch)
        drain()
    deadline = time.monotonic() + 5.0
    while check.expected < sent and time.monotonic() < deadline:
        if poll(0.5):
            drain()
    ended = time.monotonic()
    lost = check.missing + check.out_of_order + (sent - check.expected)
    return {"sent": sent, "received": check.received, "lost": lost,
            "started": started, "ended": ended}


def client_worker(conn: Connection, runtime: str, index: int) -> None:
    """One scaling client: obey ``(number, op, arguments)`` requests from the pipe, answer
    each with ``(number, "ok", result)`` or ``(number, "error", text)``, until ``quit``
    or the pipe closes. Its first answer, number 0, says it is connected."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    client: ksclient.Client | None = None
    pins: tuple[ksclient.RenderPin, ksclient.CapturePin] | None = None

    def close_pins() -> None:
        nonlocal pins
        if pins is not None:
            out, inp = pins
            pins = None
            if client is not None:  # a dead kernel would make closing wait for a timeout
                with contextlib.suppress(ksclient.KsError):
                    client.check_kernel()
            out.close()
            inp.close()

    try:
        client = ksclient.connect(runtime, timeout=20.0, name=f"bench-client-{index}")
        conn.send((0, "ok", None))
        while True:
            number, op, kwargs = conn.recv()
            try:
                result: Any = None
                if op == "open":
                    close_pins()
                    device, cable = kwargs["device"], kwargs["cable"]
                    out = client.open_render(device, render_pin(cable))
                    inp = client.open_capture(device, capture_pin(cable))
                    pins = (out, inp)
                    inp.run()
                    out.run()
                    _paced_roundtrips(out, inp, time.monotonic(), kwargs["warmup"], 1000.0)
                elif op == "quiesce":
                    # Collect now and not during the measurement that follows (which
                    # enables the collector again when it ends). A separate request, so
                    # that 32 clients collecting at once are done before any starts.
                    gc.collect()
                    gc.disable()
                elif op in ("latency", "throughput"):
                    if pins is None:
                        raise RuntimeError("no pins open")
                    gc.disable()
                    try:
                        if op == "latency":
                            result = _paced_roundtrips(*pins, **kwargs)
                        else:
                            result = _burst(*pins, **kwargs)
                    finally:
                        gc.enable()
                elif op == "close":
                    close_pins()
                elif op == "quit":
                    close_pins()
                    conn.send((number, "ok", None))
                    return
                else:
                    raise ValueError(f"unknown request {op!r}")
                conn.send((number, "ok", result))
            except Exception as exc:
                conn.send((number, "error", f"client {index}: {type(exc).__name__}: {exc}"))
    except (EOFError, OSError):
        return  # the parent is gone
    finally:
        with contextlib.suppress(Exception):
            close_pins()
        if client is not None:
            client.close()


class ClientPool:
    """``count`` client processes connected to the kernel in ``runtime``."""

    def __init__(self, runtime: str, count: int) -> None:
        ctx = mp.get_context("forkserver")
        # Workers fork from a server that has only imported the SDK: quick to start,
        # and nothing of this process (its ZeroMQ contexts) is inherited.
        ctx.set_forkserver_preload(["ksclient"])
        self.conns: list[Connection] = []
        self.procs: list[BaseProcess] = []
        self._number = 0
        try:
            for i in range(count):
                parent_end, child_end = ctx.Pipe()
                proc = ctx.Process(
                    target=client_worker, args=(child_end, runtime, i),
                    name=f"bench-client-{i}", daemon=True,
                )
                proc.start()
                child_end.close()
                self.conns.append(parent_end)
                self.procs.append(proc)
            self._collect(range(count), "start-up", 60.0)
        except BaseException:
            self.close()
            raise

    def call(
        self, indices: Sequence[int] | range, op: str, kwargs: Any, timeout: float
    ) -> list[Any]:
        """Send ``op`` (with ``kwargs``, or ``kwargs[i]`` for client ``i`` if it is a list)
        to the clients ``indices`` at once, then collect every answer; RuntimeError
        naming the clients that failed or did not answer in time."""
        self._number += 1
        for i in indices:
            self.conns[i].send(
                (self._number, op, kwargs[i] if isinstance(kwargs, list) else kwargs)
            )
        return self._collect(indices, op, timeout)

    def _collect(self, indices: Sequence[int] | range, op: str, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        results: list[Any] = []
        errors: list[str] = []
        for i in indices:
            conn = self.conns[i]
            status: str = "late"
            value: Any = f"client {i}: no answer to {op} in {timeout:g} s"
            try:
                while conn.poll(max(0.0, deadline - time.monotonic())):
                    number, status, value = conn.recv()
                    if number == self._number:
                        break
                    # An answer to an earlier request that timed out or was interrupted.
                    status, value = "late", f"client {i}: no answer to {op} in {timeout:g} s"
            except (EOFError, OSError) as exc:
                status, value = "gone", f"client {i}: gone ({exc!r})"
            if status != "ok":
                errors.append(str(value))
                value = None
            results.append(value)
        if errors:
            raise RuntimeError("; ".join(errors[:4]) + (" ..." if len(errors) > 4 else ""))
        return results

    def close(self) -> list[str]:
        """Ask every client to quit (closing its pins), then make sure it has."""
        problems: list[str] = []
        self._number += 1
        for conn in self.conns:
            with contextlib.suppress(OSError, ValueError):
                conn.send((self._number, "quit", None))
        # Quick: a client whose kernel died may wait out an RPC timeout in closing.
        deadline = time.monotonic() + 3.0
        for proc in self.procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                problems.append(f"{proc.name} did not quit; killed")
                proc.kill()
                proc.join(5.0)
        for conn in self.conns:
            conn.close()
        return problems


def run_cell(
    pool: ClientPool, clients: int, miniports: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """One cell of the grid: ``clients`` clients over the first ``miniports`` devices."""
    indices = range(clients)
    opens = [{"device": device_name(i % miniports), "cable": i // miniports, "warmup": warmup}
             for i in indices]
    try:
        pool.call(indices, "open", opens, 60.0)
        pool.call(indices, "quiesce", None, 30.0)
        start_at = time.monotonic() + 0.2
        period = 1.0 / PACED_RATE
        latency_args = [
            {"start_at": start_at + period * i / clients, "seconds": seconds,
             "rate": PACED_RATE}
            for i in indices
        ]
        per_client = pool.call(indices, "latency", latency_args, seconds + 30.0)
        pooled: array[int] = array("q")
        for samples in per_client:
            pooled.extend(samples)
        burst_seconds = seconds * 2 / 3
        # Enough messages for 3 M/s in total: far above what the machine can do.
        cap = min(MAX_MESSAGES, max(BATCH, math.ceil(3e6 * burst_seconds / clients / BATCH)
                                    * BATCH))
        pool.call(indices, "quiesce", None, 30.0)
        bursts = pool.call(
            indices, "throughput",
            {"start_at": time.monotonic() + 0.2, "seconds": burst_seconds,
             "max_messages": cap, "window": CLIENT_WINDOW},
            burst_seconds + 60.0,
        )
    except BaseException:
        # Close what can be closed, but let the first error (or Ctrl-C) through.
        with contextlib.suppress(Exception):
            pool.call(indices, "close", None, 10.0)
        raise
    pool.call(indices, "close", None, 30.0)
    span = max(b["ended"] for b in bursts) - min(b["started"] for b in bursts)
    received = sum(b["received"] for b in bursts)
    return {
        "clients": clients,
        "miniports": miniports,
        "latency": summarize(pooled).to_json(),
        "rate_per_client": PACED_RATE,
        "throughput": {
            "msgs_per_s": received / span if span > 0 else None,
            "received": received,
            "lost": sum(b["lost"] for b in bursts),
            "seconds": span,
            "per_client_msgs_per_s_min": min(
                b["received"] / max(1e-9, b["ended"] - b["started"]) for b in bursts
            ),
        },
    }
