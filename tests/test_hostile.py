"""Hostile peers of the same user cannot kill, hang or starve the kernel.

Every attack runs against a real kernel with a stream running beside it on
another device; afterwards the kernel is alive, serves a well-formed client,
and that stream lost nothing.
"""

from __future__ import annotations

import time

import msgpack
import pytest
import zmq

from ipc import protocol as p
from ipc.runtime import USER_SOCKET, endpoint
from tests.hostile import (
    HOSTILE,
    SOCKETS,
    SteadyStream,
    assert_kernel_serves,
    fuzz_socket,
    kernel_resources,
)

FUZZ_FRAMES = 20_000


@pytest.fixture
def hostile_kernel(start_kernel):
    return start_kernel(HOSTILE)


def _raw(kernel, name: str, identity: bytes | None = None) -> tuple[zmq.Context, zmq.Socket]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    sock.connect(endpoint(kernel.runtime, name))
    return ctx, sock


def test_hello_with_an_impossible_pid_is_refused(hostile_kernel) -> None:
    with SteadyStream(hostile_kernel.runtime) as steady:
        ctx, sock = _raw(hostile_kernel, USER_SOCKET)
        try:
            sock.send(msgpack.packb([0, 1, "hello", [1 << 40, "x", 1]]))
            assert sock.poll(5000)
            reply = p.decode(sock.recv())
            assert isinstance(reply, p.Reply) and not reply.ok
            assert reply.status == p.Status.INVALID_PARAMETER
        finally:
            sock.close()
            ctx.term()
        assert_kernel_serves(hostile_kernel)
    steady.stop()


def test_fuzzed_frames_on_both_sockets(hostile_kernel) -> None:
    pid = hostile_kernel.proc.pid
    assert_kernel_serves(hostile_kernel)
    fds_before, rss_before = kernel_resources(pid)
    started = time.monotonic()
    with SteadyStream(hostile_kernel.runtime) as steady:
        for seed, name in enumerate(SOCKETS):
            fuzz_socket(hostile_kernel.runtime, name, seed, FUZZ_FRAMES)
            assert hostile_kernel.alive(), f"the kernel died of fuzzing {name}"
        assert_kernel_serves(hostile_kernel)
    steady.stop()
    elapsed = time.monotonic() - started
    fds_after, rss_after = kernel_resources(pid)
    stats = kernel_stats(hostile_kernel)
    print(stats)
    assert stats["user_malformed"] > 1000 and stats["bus_malformed"] > 1000
    print(f"fuzzed {len(SOCKETS) * FUZZ_FRAMES} frames in {elapsed:.1f} s; "
          f"fds {fds_before}->{fds_after}, rss {rss_before >> 20}->{rss_after >> 20} MiB")
    assert fds_after <= fds_before + 8
    assert rss_after < rss_before + (64 << 20)


def kernel_stats(kernel) -> dict:
    with kernel.connect() as client:
        return dict(client.stats()["kernel"])
