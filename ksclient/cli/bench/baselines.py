"""The baselines: what the same hops cost without the driver model.

* :class:`RawZmqChain`: process A (the measuring one) -> B -> C -> B -> A with
  nothing but pyzmq PAIR sockets over ``ipc://`` in a temporary directory; B stands
  where the kernel stands, C where the miniport does.
* :class:`RawRingChain`: the same four hops over the project's own shared-memory
  channels (:class:`ipc.channel.ChannelWriter` / :class:`~ipc.channel.ChannelReader`:
  a ring plus FIFO doorbells with armed-flag coalescing). Every wait is blocking:
  ``prepare_to_sleep()``, poll ``data_fileno()``, ``receive_many()``; nothing spins.
  No protocol, no pins, no KSSTATE: the floor the project's data path stands on.
* :class:`Floor`: the floor every ratio is taken against: the same four hops over
  minimal rings that share no code with the project (``floor.py``, run as a script
  by B and C, standard library only).
* :class:`RtmidiJackLoop`: python-rtmidi alone, ``MidiOut`` -> JACK connection ->
  ``MidiIn`` in one process, on a private ``jackd -d dummy``: what a user gets
  without this project.

B and C are spawned (never forked: the parent may hold ZeroMQ contexts) and ignore
SIGINT, so Ctrl-C reaches the parent, which stops them. They also exit on their own
within a second of the parent's death.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import select
import shutil
import signal
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Final

import zmq

from ipc.channel import (
    ChannelReader,
    ChannelWriter,
    create_channel_files,
    remove_channel_files,
)
from ipc.procwatch import stop_process
from ipc.ring import Buffer, Record
from ipc.runtime import runtime_base
from ksclient.cli.bench.traffic import BATCH, SequenceCheck, ThroughputResult, numbered_messages

__all__ = [
    "ENV_RUN", "Floor", "RawRingChain", "RawZmqChain", "RtmidiJackLoop", "scratch_prefix"
]

ENV_RUN: Final = "PORTCLS_BENCH_RUN"
"""Names the run in everything it puts in the runtime base (set by the benchmark's
main process, inherited by its pinned child), so leftovers can be told apart."""

STOP: Final = b""
"""The pyzmq chain's end-of-run message, echoed back to A."""
STOP_FLAG: Final = 0x8000
"""The ring chain's end-of-run record flag, echoed back to A."""
IDLE_POLL_MS: Final = 1000
"""How often an idle B or C checks that its parent still lives."""
RING_CAPACITY: Final = 1 << 20


def _orphaned(parent: int) -> bool:
    return os.getppid() != parent


def _quiet_child() -> int:
    """Common start of B and C: leave Ctrl-C to the parent; return the parent's pid."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return os.getppid()


def _stop_processes(procs: Sequence[BaseProcess], what: str) -> list[str]:
    problems: list[str] = []
    for proc in procs:
        if proc.pid is None:
            continue
        proc.join(5.0)
        if proc.is_alive():
            problems.append(f"{what} {proc.name} did not stop; terminated")
            stop_process(proc, 5.0)
    return problems


def scratch_prefix() -> str:
    """``portcls-bench-<run>-``: the start of every name a run makes in the runtime base."""
    return f"portcls-bench-{os.environ.get(ENV_RUN) or os.getpid()}-"


def _scratch_dir(kind: str) -> Path:
    # tmpfs where there is one: the rings are mmap'd files, the sockets live beside them.
    return Path(tempfile.mkdtemp(prefix=f"{scratch_prefix()}{kind}-", dir=runtime_base()))


def _zmq_middle(up_ep: str, down_ep: str) -> None:
    """Process B of the pyzmq chain: A's messages to C, C's back to A, draining after
    each wake-up."""
    parent = _quiet_child()
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
            events = dict(poller.poll(IDLE_POLL_MS))
            if not events and _orphaned(parent):
                return
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


def _zmq_end(ep: str) -> None:
    """Process C of the pyzmq chain: echo every message back to B."""
    parent = _quiet_child()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PAIR)
    sock.linger = 1000
    sock.bind(ep)
    try:
        while True:
            if not sock.poll(IDLE_POLL_MS):
                if _orphaned(parent):
                    return
                continue
            m = sock.recv()
            sock.send(m)
            if m == STOP:
                return
    finally:
        sock.close()
        ctx.term()


class RawZmqChain:
    """A -> B -> C -> B -> A over pyzmq PAIR sockets; A is this process."""

    def __init__(self) -> None:
        self.dir = _scratch_dir("zmq")
        a_ep = f"ipc://{self.dir}/a"
        c_ep = f"ipc://{self.dir}/c"
        spawn = mp.get_context("spawn")
        self.procs: list[BaseProcess] = [
            spawn.Process(target=_zmq_end, args=(c_ep,), name="raw-zmq-C", daemon=True),
            spawn.Process(target=_zmq_middle, args=(a_ep, c_ep), name="raw-zmq-B", daemon=True),
        ]
        self.ctx: zmq.Context[Any] = zmq.Context()
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

    def roundtrip(self, n: int, samples: array[int], message: bytes) -> None:
        """``n`` round trips of ``message``, blocking send and receive; ns into ``samples``."""
        send, recv, clock = self.sock.send, self.sock.recv, time.perf_counter_ns
        for _ in range(n):
            t0 = clock()
            send(message)
            got = recv()
            t1 = clock()
            if got != message:
                raise RuntimeError(f"raw pyzmq round trip: sent {message.hex()}, got {got.hex()}")
            samples.append(t1 - t0)

    def throughput(self, count: int, window: int, drain_timeout: float) -> ThroughputResult:
        """``count`` numbered note-ons, each batch of 64 as one 192-byte message, at most
        ``window`` messages in flight; every message checked in order."""
        messages = numbered_messages(count)
        check = SequenceCheck(messages)
        payloads = [b"".join(messages[i : i + BATCH]) for i in range(0, count, BATCH)]
        sock = self.sock
        send, recv = sock.send, sock.recv
        take_run = check.take_run
        sent = 0

        def drain() -> None:
            try:
                while True:
                    take_run(recv(zmq.NOBLOCK))
            except zmq.Again:
                pass

        t0 = time.perf_counter()
        for payload in payloads:
            size = len(payload) // 3
            while sent + size - check.expected - check.out_of_order > window:
                if not sock.poll(int(drain_timeout * 1000)):
                    raise RuntimeError("the pyzmq chain stalled")
                drain()
            send(payload)
            sent += size
            drain()
        def pump(seconds: float) -> None:
            if sock.poll(max(1, int(seconds * 1000))):
                drain()

        note = _drain_tail(check, pump, drain_timeout)
        return ThroughputResult.from_check(check, time.perf_counter() - t0, window, note)

    def close(self) -> list[str]:
        """Stop B and C (an explicit, acknowledged end: libzmq may drop an ipc stream's
        tail otherwise), close the socket, remove the directory; the problems seen."""
        problems: list[str] = []
        try:
            if any(p.is_alive() for p in self.procs):
                self.sock.send(STOP, zmq.NOBLOCK)
                deadline = time.monotonic() + 5.0
                while time.monotonic() < deadline and self.sock.poll(
                    max(1, int((deadline - time.monotonic()) * 1000))
                ):
                    if self.sock.recv() == STOP:
                        break
        except zmq.ZMQError as exc:
            problems.append(f"stopping the pyzmq chain: {exc!r}")
        self.sock.close()
        self.ctx.term()
        problems += _stop_processes(self.procs, "raw pyzmq")
        shutil.rmtree(self.dir, ignore_errors=True)
        return problems


def _drain_tail(check: SequenceCheck, pump: Callable[[float], None], timeout: float) -> str:
    """Wait for the rest of a throughput run (``pump(seconds)`` waits for and takes what
    comes); a note if it did not all come."""
    deadline = time.monotonic() + timeout
    while not check.done:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return f"tail not delivered within {timeout:g} s"
        pump(min(remaining, 0.5))
    return ""


def _send_all(writer: ChannelWriter, records: Sequence[tuple[int, int, Buffer]]) -> None:
    """Forward records, waiting for room if the ring is full (B and C only; A keeps a
    window far below the ring's capacity, so this never waits in the benchmark)."""
    while records:
        n = writer.send_many(records)
        records = records[n:]
        if records and not writer.wait_for_space(len(records[0][2]), 5.0):
            raise RuntimeError("the ring chain stalled: no room for 5 s")


def _ring_middle(up_in: str, down_out: str, down_in: str, up_out: str) -> None:
    """Process B of the ring chain: records from A on to C, C's back to A."""
    parent = _quiet_child()
    from_a, from_c = ChannelReader.open(up_in), ChannelReader.open(down_in)
    to_c, to_a = ChannelWriter.open(down_out), ChannelWriter.open(up_out)
    poller = select.poll()
    poller.register(from_a.data_fileno(), select.POLLIN)
    poller.register(from_c.data_fileno(), select.POLLIN)
    stopping = False
    try:
        while True:
            records = from_a.receive_many()
            if records:
                stopping = stopping or any(r.flags & STOP_FLAG for r in records)
                _send_all(to_c, records)
            back = from_c.receive_many()
            if back:
                _send_all(to_a, back)
                if stopping and any(r.flags & STOP_FLAG for r in back):
                    return
            if records or back:
                continue
            # Both rings looked empty: arm both, and sleep only if both still are.
            if (
                from_a.prepare_to_sleep()
                and from_c.prepare_to_sleep()
                and not poller.poll(IDLE_POLL_MS)
                and _orphaned(parent)
            ):
                return
    finally:
        for end in (from_a, from_c, to_c, to_a):
            end.close()


def _ring_end(down_in: str, down_out: str) -> None:
    """Process C of the ring chain: echo every record back to B."""
    parent = _quiet_child()
    reader, writer = ChannelReader.open(down_in), ChannelWriter.open(down_out)
    poller = select.poll()
    poller.register(reader.data_fileno(), select.POLLIN)
    try:
        while True:
            records = reader.receive_many()
            if records:
                _send_all(writer, records)
                if any(r.flags & STOP_FLAG for r in records):
                    return
                continue
            if reader.prepare_to_sleep() and not poller.poll(IDLE_POLL_MS) and _orphaned(parent):
                return
    finally:
        reader.close()
        writer.close()


class RawRingChain:
    """A -> B -> C -> B -> A over shared-memory channels (ring + FIFO doorbells);
    A is this process."""

    def __init__(self, capacity: int = RING_CAPACITY) -> None:
        self.dir = _scratch_dir("ring")
        self.capacity = capacity
        names = ("ab", "bc", "cb", "ba")
        bases = {name: str(self.dir / name) for name in names}
        self.procs: list[BaseProcess] = []
        self._writer: ChannelWriter | None = None
        self._reader: ChannelReader | None = None
        try:
            for base in bases.values():
                create_channel_files(base, capacity)
            self._writer = ChannelWriter.open(bases["ab"])
            self._reader = ChannelReader.open(bases["ba"])
            self._poller = select.poll()
            self._poller.register(self._reader.data_fileno(), select.POLLIN)
            spawn = mp.get_context("spawn")
            self.procs = [
                spawn.Process(target=_ring_end, args=(bases["bc"], bases["cb"]),
                              name="raw-ring-C", daemon=True),
                spawn.Process(
                    target=_ring_middle,
                    args=(bases["ab"], bases["bc"], bases["cb"], bases["ba"]),
                    name="raw-ring-B", daemon=True,
                ),
            ]
            for p in self.procs:
                p.start()
            self._writer.send(b"\x01")
            if not self._receive(30.0):
                raise RuntimeError("the ring chain did not answer within 30 s")
        except BaseException:
            self.close()
            raise

    @property
    def writer(self) -> ChannelWriter:
        assert self._writer is not None
        return self._writer

    @property
    def reader(self) -> ChannelReader:
        assert self._reader is not None
        return self._reader

    def _receive(self, timeout: float) -> list[Record]:
        """Records from B, blocking up to ``timeout`` s: arm, poll the doorbell, take."""
        reader = self.reader
        records = reader.receive_many()
        if records:
            return records
        deadline = time.monotonic() + timeout
        while True:
            if reader.prepare_to_sleep():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    reader.end_sleep()
                    return []
                self._poller.poll(max(1, min(IDLE_POLL_MS, int(remaining * 1000))))
            records = reader.receive_many()
            if records:
                return records

    def roundtrip(self, n: int, samples: array[int], message: bytes) -> None:
        """``n`` round trips of ``message`` (one record); ns into ``samples``."""
        send, receive, clock = self.writer.send, self._receive, time.perf_counter_ns
        for _ in range(n):
            t0 = clock()
            if not send(message):
                raise RuntimeError("raw ring round trip: the ring is full")
            got = receive(5.0)
            t1 = clock()
            if len(got) != 1 or got[0].data != message:
                raise RuntimeError(f"raw ring round trip: sent {message.hex()}, got {got!r}")
            samples.append(t1 - t0)

    def throughput(self, count: int, window: int, drain_timeout: float) -> ThroughputResult:
        """``count`` numbered note-ons in batches of 64, each batch one 192-byte record
        (as the pyzmq baseline sends it as one message: the most a transport can make of
        a batch), at most ``window`` messages in flight; every message checked in order."""
        messages = numbered_messages(count)
        check = SequenceCheck(messages)
        payloads = [b"".join(messages[i : i + BATCH]) for i in range(0, count, BATCH)]
        writer, receive_many, take_run = self.writer, self.reader.receive_many, check.take_run
        sent = 0

        def drain() -> None:
            while True:
                records = receive_many()
                if not records:
                    return
                for record in records:
                    take_run(record.data)

        def pump(seconds: float) -> None:
            for record in self._receive(seconds):
                take_run(record.data)

        t0 = time.perf_counter()
        for payload in payloads:
            size = len(payload) // 3
            while sent + size - check.expected - check.out_of_order > window:
                before = check.expected
                pump(drain_timeout)
                if check.expected == before:
                    raise RuntimeError("the ring chain stalled")
            while not writer.send(payload):
                if not writer.wait_for_space(len(payload), drain_timeout):
                    raise RuntimeError("the ring chain's first ring stayed full")
            sent += size
            drain()
        note = _drain_tail(check, pump, drain_timeout)
        return ThroughputResult.from_check(check, time.perf_counter() - t0, window, note)

    def close(self) -> list[str]:
        """Stop B and C with an acknowledged STOP record, close, remove the files."""
        problems: list[str] = []
        if self._writer is not None and any(p.is_alive() for p in self.procs):
            try:
                self._writer.send(b"\x00", 0, STOP_FLAG)
                deadline = time.monotonic() + 5.0
                while time.monotonic() < deadline:
                    got = self._receive(deadline - time.monotonic())
                    if any(r.flags & STOP_FLAG for r in got):
                        break
            except Exception as exc:
                problems.append(f"stopping the ring chain: {exc!r}")
        problems += _stop_processes(self.procs, "raw ring")
        for end in (self._writer, self._reader):
            if end is not None:
                end.close()
        for name in ("ab", "bc", "cb", "ba"):
            remove_channel_files(self.dir / name)
        shutil.rmtree(self.dir, ignore_errors=True)
        return problems


class Floor:
    """The floor chain (ksclient/cli/bench/floor.py) with the benchmark's interface."""

    def __init__(self) -> None:
        from ksclient.cli.bench.floor import FloorChain

        self.chain = FloorChain(_scratch_dir("floor"))

    def roundtrip(self, n: int, samples: array[int], message: bytes) -> None:
        self.chain.roundtrip(n, samples, message)

    def throughput(self, count: int, window: int, drain_timeout: float) -> ThroughputResult:
        """As the raw ring chain: batches of 64 note-ons, one record each, checked."""
        messages = numbered_messages(count)
        check = SequenceCheck(messages)
        payloads = [b"".join(messages[i : i + BATCH]) for i in range(0, count, BATCH)]
        seconds = self.chain.throughput(
            payloads, BATCH, window, check.take_run, lambda: check.done, drain_timeout
        )
        note = "" if check.done else f"tail not delivered within {drain_timeout:g} s"
        if self.chain.missed_wakeups:
            note = "; ".join(x for x in (
                note, f"{self.chain.missed_wakeups} wake-up(s) lost, rescued by the 1 s "
                "safety timeout") if x)
        return ThroughputResult.from_check(check, seconds, window, note)

    def close(self) -> list[str]:
        problems = self.chain.close()
        with contextlib.suppress(OSError):
            self.chain.dir.parent.rmdir()
        return problems


class RtmidiJackLoop:
    """python-rtmidi alone: ``MidiOut`` -> JACK -> ``MidiIn`` (callback) in this process.

    ``server`` is a started :class:`miniports.testing.jack.JackServer`; this process must
    have ``JACK_DEFAULT_SERVER`` naming it (libjack reads the environment).
    """

    def __init__(self, server: Any, name: str = "bench") -> None:
        import rtmidi

        self.arrived = threading.Event()
        self.last: list[int] = []
        self.midi_in = rtmidi.MidiIn(rtapi=rtmidi.API_UNIX_JACK, name=f"{name}-rx")
        self.midi_out: Any = None
        try:
            self.midi_in.ignore_types(sysex=False, timing=False, active_sense=False)
            self.midi_in.set_callback(self._arrived)
            self.midi_in.open_virtual_port("in")
            self.midi_out = rtmidi.MidiOut(rtapi=rtmidi.API_UNIX_JACK, name=f"{name}-tx")
            self.midi_out.open_virtual_port("out")
            server.wait_for_port(f"{name}-rx:in")
            server.wait_for_port(f"{name}-tx:out")
            server.connect(f"{name}-tx:out", f"{name}-rx:in")
        except BaseException:
            self.close()
            raise

    def _arrived(self, event: tuple[list[int], float], _data: object) -> None:
        self.last = event[0]
        self.arrived.set()

    def once(self, message: bytes) -> int:
        """One round trip of ``message``, in ns."""
        self.arrived.clear()
        start = time.perf_counter_ns()
        self.midi_out.send_message(message)
        if not self.arrived.wait(5):
            raise RuntimeError("python-rtmidi: the message did not come back through JACK")
        return time.perf_counter_ns() - start

    def roundtrip(self, n: int, samples: array[int], message: bytes) -> None:
        """``n`` round trips of ``message``; ns into ``samples``."""
        once = self.once
        for _ in range(n):
            samples.append(once(message))
        if bytes(self.last) != message:
            raise RuntimeError(f"python-rtmidi: sent {message.hex()}, got {bytes(self.last).hex()}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.midi_in.cancel_callback()
        self.midi_in.delete()
        if self.midi_out is not None:
            self.midi_out.delete()
