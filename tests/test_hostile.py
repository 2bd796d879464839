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
from ipc.runtime import BUS_SOCKET, USER_SOCKET, endpoint
from ipc.status import Status, StatusError
from kernel.dpc import DPC_BUDGET, Dpc, Scheduler
from kernel.servicegroup import ServiceGroup
from tests.hostile import (
    HOSTILE,
    SOCKETS,
    SteadyStream,
    assert_kernel_serves,
    fuzz_socket,
    kernel_resources,
)
from tests.hostile_miniports import GROUP_CYCLE, REFUSED, SERVICE_CYCLE, attack

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


HOSTILE_TARGET = HOSTILE.replace(
    'name = "target"\nminiport = "loopback"',
    'name = "target"\nminiport = "tests.hostile_miniports:HostileLoopback"',
)


def _attack(kernel, *codes: int) -> list[bytes]:
    """Make the target's miniport attack, one attack after the other; what its host said
    to each (a note-on `90 code outcome`)."""
    outcomes = []
    with kernel.connect() as client:
        client.wait_for_filter("target")
        with client.open_render("target") as out, client.open_capture("target") as inp:
            inp.run()
            out.run()
            for code in codes:
                out.send_raw(attack(code))
                outcomes.append(inp.receive(timeout=10).data)
    return outcomes


def test_service_groups_in_a_cycle_are_refused(start_kernel) -> None:
    kernel = start_kernel(HOSTILE_TARGET)
    with SteadyStream(kernel.runtime) as steady:
        assert _attack(kernel, GROUP_CYCLE, SERVICE_CYCLE) == [
            bytes([0x90, GROUP_CYCLE, REFUSED]), bytes([0x90, SERVICE_CYCLE, REFUSED])]
        time.sleep(0.5)
        assert_kernel_serves(kernel)
        stats = kernel_stats(kernel)
        assert stats.get("bus_rejected", 0) >= 1  # the kernel refused its twin's cycle too
    steady.stop()


def test_kernel_groups_refuse_cycles_and_a_dpc_pass_is_bounded() -> None:
    scheduler = Scheduler()
    a, b, c = (ServiceGroup(scheduler, n) for n in "abc")
    a.add_member(b)
    b.add_member(c)
    with pytest.raises(StatusError) as caught:
        c.add_member(a)
    assert caught.value.status == Status.INVALID_PARAMETER
    b.add_member(c)  # twice in one group is no cycle

    class Requeue:
        def __init__(self) -> None:
            self.dpc = Dpc(lambda: scheduler.queue_dpc(self.dpc))

    forever = Requeue()
    scheduler.queue_dpc(forever.dpc)
    assert scheduler.run_dpcs() == DPC_BUDGET
    assert scheduler.pending == 1  # the rest waits for the next turn


def test_an_impostor_on_the_bus_cannot_touch_the_device(hostile_kernel) -> None:
    kernel = hostile_kernel
    real_pid = dict(zip(("steady", "target"), sorted(kernel.miniport_pids()), strict=False))
    with SteadyStream(kernel.runtime) as steady, kernel.connect() as client:
        client.wait_for_filter("target")
        with client.open_render("target") as out, client.open_capture("target") as inp:
            inp.run()
            out.run()
            # An impostor under the device's name, and one with the real host's pid.
            ctx, sock = _raw(kernel, BUS_SOCKET, b"target")
            try:
                for pid in real_pid.values():
                    sock.send(p.encode_request(1, p.Register(
                        "target", pid, "loopback", False, False, secret=b"\0" * 32)))
                    sock.send(p.encode_request(2, p.LoadFailed("target", pid, "x", b"")))
                for stream in range(1, 10):
                    sock.send(p.encode_event(p.StreamError(stream, Status.IO_DEVICE_ERROR, "x")))
                for _ in range(200):
                    sock.send(b"\xc1garbage")
                sock.send(p.encode_event(p.Interrupt([1, 2, 3])))
                time.sleep(1)
                received = []
                while sock.poll(0):
                    received.append(p.decode(sock.recv()))
            finally:
                sock.close()
                ctx.term()
            # Only answers to its own requests, each a refusal: never a call meant for
            # the real miniport.
            assert received and all(isinstance(r, p.Reply) and not r.ok for r in received)
            out.send([0x90, 61, 1])
            assert inp.receive(timeout=5).data == bytes([0x90, 61, 1])
            stats = client.stats()
            target = stats["devices"]["target"]
            assert (target["state"], target["malformed"], target["restarts"]) == (
                "running", 0, 0)
            assert stats["kernel"]["bus_impostors"] >= 2
            assert all(pin["stats"].get("device_errors", 0) == 0 for pin in stats["pins"])
    steady.stop()
    assert_kernel_serves(kernel)
