"""Tools for tests that attack a real kernel: a steady stream beside the attack, the
checks every attack ends with, and the frame fuzzer (also behind scripts/fuzz_kernel.py).

The attacker speaks raw ZeroMQ and msgpack, as a hostile process would, never
through the SDK.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import zmq

import ksclient
from ipc import protocol as p
from ipc.runtime import BUS_SOCKET, USER_SOCKET, endpoint

HOSTILE = """
[[device]]
name = "steady"
miniport = "loopback"

[[device]]
name = "target"
miniport = "loopback"
"""
"""Two devices: the one attacked, and one streaming beside the attack."""


class SteadyStream:
    """A client streaming through the `steady` loopback device in a thread while a
    test attacks the kernel; `stop()` checks that every message came back, in order."""

    def __init__(self, runtime: Path, device: str = "steady", interval: float = 0.002) -> None:
        self.runtime = runtime
        self.device = device
        self.interval = interval
        self.sent = 0
        self.received: list[bytes] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steady", daemon=True)

    def __enter__(self) -> SteadyStream:
        self._thread.start()
        assert self._started.wait(30), f"the steady stream did not start: {self.error}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        try:
            with ksclient.connect(self.runtime) as client:
                client.wait_for_filter(self.device)
                with client.open_render(self.device) as out, \
                        client.open_capture(self.device) as inp:
                    inp.run()
                    out.run()
                    self._started.set()
                    while not self._stop.is_set():
                        out.send([0x90, self.sent % 128, 1 + self.sent // 128 % 127])
                        self.sent += 1
                        self._drain(inp, self.interval)
                    deadline = time.monotonic() + 10
                    while len(self.received) < self.sent and time.monotonic() < deadline:
                        self._drain(inp, 0.1)
        except BaseException as exc:  # reported by stop()
            self.error = exc
            self._started.set()

    def _drain(self, inp: Any, timeout: float) -> None:
        if inp.poll(timeout):
            while inp.poll(0):
                self.received.append(inp.receive_nowait().data)

    def stop(self) -> int:
        """End the stream; assert nothing was lost or reordered; the count sent."""
        self.__exit__()
        assert self.error is None, f"the steady stream broke: {self.error!r}"
        expected = [bytes([0x90, i % 128, 1 + i // 128 % 127]) for i in range(self.sent)]
        assert self.received == expected, (
            f"steady stream: sent {self.sent}, received {len(self.received)}"
        )
        return self.sent


def assert_kernel_serves(kernel: Any, device: str = "target") -> None:
    """The kernel is alive and a well-formed client can list and use `device`."""
    assert kernel.alive(), "the kernel died"
    with kernel.connect() as client:
        client.wait_for_filter(device, timeout=20)
        with client.open_render(device) as out, client.open_capture(device) as inp:
            inp.run()
            out.run()
            out.send([0x90, 60, 100])
            assert inp.receive(timeout=5).data == bytes([0x90, 60, 100])


def kernel_resources(pid: int) -> tuple[int, int]:
    """The kernel's open descriptors and resident memory in bytes."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return fds, rss


_OPS = sorted(p._REGISTRY)
_WEIRD_INTS = [
    0, -1, 1, 2, 3, 255, 1 << 15, 1 << 22, (1 << 31) - 1, 1 << 31, 1 << 32, 1 << 40,
    (1 << 53) + 1, (1 << 63) - 1, -(1 << 63), (1 << 64) - 1,
]


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 3 else 6)
    if kind == 0:
        return rng.choice(_WEIRD_INTS)
    if kind == 1:
        return rng.randrange(-5, 70_000)
    if kind == 2:
        return rng.choice(["", "loopback", "target", "steady", "x" * rng.randrange(5000),
                           "\u00e9\U0001f3b9", "../../etc/passwd"])
    if kind == 3:
        return rng.choice([None, True, False, 1.5, float("nan"), float("inf")])
    if kind == 4:
        return os.urandom(rng.randrange(64))
    if kind == 5:
        return rng.randrange(1 << 16)
    if kind in (6, 7):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {rng.choice(["major", "sub", "format", "a", ""]): _value(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def _valid_fields(rng: random.Random, op: str) -> list[Any]:
    """Fields of the right types, with values sometimes out of range."""
    _, _, names = p._REGISTRY[op]
    return [_value(rng) if rng.random() < 0.3 else rng.choice(
        [rng.randrange(0, 64), "target", {"major": 1}, None, False, [1, 2]]
    ) for _ in names]


def fuzz_frames(rng: random.Random, hello_pid: int) -> Iterator[list[bytes]]:
    """Endless hostile multipart messages (as a DEALER sends them: no identity)."""
    rid = 0
    while True:
        rid += 1
        kind = rng.randrange(12)
        if kind == 0:
            yield [os.urandom(rng.randrange(1, 200))]
        elif kind == 1:  # valid msgpack, wrong shape
            yield [msgpack.packb(_value(rng))]
        elif kind == 2:  # a known op, fields of random types
            op = rng.choice(_OPS)
            n = len(p._REGISTRY[op][2]) + rng.choice([0, 0, 0, -1, 1])
            yield [msgpack.packb([rng.choice([0, 0, 3, 1, 2, 7]), rid, op,
                                  [_value(rng) for _ in range(max(0, n))]])]
        elif kind == 3:  # a known op, plausible fields, out-of-range ints
            op = rng.choice(_OPS)
            yield [msgpack.packb([0, rid, op, _valid_fields(rng, op)])]
        elif kind == 4:  # huge length headers with nothing behind them
            yield [rng.choice([b"\xdb\xff\xff\xff\xff", b"\xdd\x7f\xff\xff\xff",
                               b"\xc6\xff\xff\xff\xff", b"\xdf\x7f\xff\xff\xff",
                               b"\x94\x00\x01\xa5hello\xdd\xff\xff\xff\xff"])]
        elif kind == 5:  # deep nesting
            depth = rng.choice([20, 100, 1000, 5000, 100_000])
            yield [msgpack.packb([0, rid, "hello", [1, "x", 1]])[:-3] + b"\x91" * depth + b"\x00"]
        elif kind == 6:  # truncated
            frame = msgpack.packb([0, rid, rng.choice(_OPS), _valid_fields(rng, "open_pin")])
            yield [frame[: rng.randrange(len(frame))]]
        elif kind == 7:  # extra frames
            yield [b"x"] * rng.randrange(2, 5)
        elif kind == 8:  # pins that do not exist or are not the caller's
            op = rng.choice(["set_state", "get_state", "close_pin"])
            handle = rng.choice([0, 1, 2, 3, 4, rng.randrange(1 << 31)])
            fields = [handle, rng.randrange(4)] if op == "set_state" else [handle]
            yield [msgpack.packb([0, rid, op, fields])]
        elif kind == 9:
            yield [msgpack.packb([0, rid, "hello", [
                rng.choice([hello_pid, 1 << 40, -1, 0, 1, (1 << 22) - 1]), "fuzz",
                rng.choice([1, 1, 0, (1 << 64) - 1])]])]
        elif kind == 10:  # an open_pin with junk formats and capacities
            yield [msgpack.packb([0, rid, "open_pin", [
                rng.choice(["target", "nope"]), rng.choice([0, 1, 3, 7, -1, 1 << 40]),
                _value(rng) if rng.random() < 0.5 else {"major": _value(rng)},
                rng.choice([1 << 14, 3, 0, -1, 1 << 30])]])]
        else:  # a batch of junk (the bus unpacks it)
            yield [msgpack.packb([3, 0, "batch", [[os.urandom(rng.randrange(20))
                                                   for _ in range(rng.randrange(5))]]])]


def fuzz_socket(
    runtime: Path, socket_name: str, seed: int, frames: int,
    identities: int = 4, progress: Callable[[int], None] | None = None,
) -> int:
    """Send `frames` hostile messages to one kernel socket from a few connections (some
    having said hello), reading and discarding replies; the number sent."""
    rng = random.Random(seed)
    ctx = zmq.Context()
    socks = []
    try:
        for i in range(identities):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDTIMEO, 5000)
            sock.setsockopt(zmq.IDENTITY, f"fuzz-{seed}-{i}".encode())
            sock.connect(endpoint(runtime, socket_name))
            if socket_name == USER_SOCKET and i % 2 == 0:
                sock.send(p.encode_request(1, p.Hello(os.getpid(), f"fuzz{i}")))
            socks.append(sock)
        source = fuzz_frames(rng, os.getpid())
        for n in range(frames):
            sock = socks[n % len(socks)]
            sock.send_multipart(next(source))
            while sock.poll(0):
                sock.recv_multipart()
            if progress is not None and n % 10_000 == 0:
                progress(n)
        for sock in socks:  # a request behind the rest: answered once they were handled
            _round_trip(sock)
        return frames
    finally:
        for sock in socks:
            sock.close(linger=0)
        ctx.term()


SOCKETS = (USER_SOCKET, BUS_SOCKET)
_PING_RID = (1 << 62) + 7


def _round_trip(sock: zmq.Socket[Any], timeout: float = 30.0) -> None:
    sock.send(p.encode_request(_PING_RID, p.ListFilters()))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sock.poll(100):
            with contextlib.suppress(p.ProtocolError):
                reply = p.decode(sock.recv_multipart()[-1])
                if isinstance(reply, p.Reply) and reply.rid == _PING_RID:
                    return
    raise AssertionError("the kernel did not answer behind the fuzzed frames")
