"""Hostile peers of the same user cannot kill, hang or starve the kernel.

Every attack runs against a real kernel with a stream running beside it on
another device; afterwards the kernel is alive, serves a well-formed client,
and that stream lost nothing.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq

import ksclient
from ipc import protocol as p
from ipc.runtime import BUS_SOCKET, USER_SOCKET, endpoint
from ipc.status import Status, StatusError
from kernel.devicestore import MAX_KEYS, MAX_VALUE_BYTES, MAX_VALUES, DeviceStore
from kernel.dpc import DPC_BUDGET, Dpc, Scheduler, Timer
from kernel.loop import KernelLoop
from kernel.servicegroup import ServiceGroup
from kernel.usermode import MAX_SESSIONS_PER_PID
from tests.hostile import (
    HOSTILE,
    SOCKETS,
    SteadyStream,
    assert_kernel_serves,
    fuzz_socket,
    kernel_resources,
)
from tests.hostile_miniports import (
    BAD_INTERRUPT_RECORDS,
    CALL_FLOOD,
    DOORBELL_FLOOD,
    GROUP_CYCLE,
    REFUSED,
    RING_CORRUPT,
    RING_DELETE,
    RING_TRUNCATE,
    SERVICE_CYCLE,
    _flood,
    attack,
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


def _hello(sock: zmq.Socket, pid: int, rid: int = 1) -> p.Reply:
    sock.send(p.encode_request(rid, p.Hello(pid, "hostile")))
    assert sock.poll(5000), "no reply"
    reply = p.decode(sock.recv())
    assert isinstance(reply, p.Reply)
    return reply


def _process_watches(pid: int) -> int:
    """The kernel's pidfds: one per watched client and miniport process."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[pidfd]"
    return n


def test_sessions_are_capped_and_released_when_the_client_dies(hostile_kernel) -> None:
    kernel = hostile_kernel
    pid = kernel.proc.pid
    with open(f"/proc/{pid}/limits") as f:
        line = next(x for x in f if x.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    assert soft == hard  # raised at start
    assert_kernel_serves(kernel)
    victim = subprocess.Popen(["sleep", "60"])
    ctx = zmq.Context()
    socks = []
    try:
        with SteadyStream(kernel.runtime) as steady:
            watches_before = _process_watches(pid)
            refused = None
            for i in range(200):
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(endpoint(kernel.runtime, USER_SOCKET))
                socks.append(sock)
                reply = _hello(sock, victim.pid)
                if not reply.ok:
                    refused = (i, reply.status)
                    break
            assert refused == (MAX_SESSIONS_PER_PID, Status.INSUFFICIENT_RESOURCES)
            assert _process_watches(pid) == watches_before + MAX_SESSIONS_PER_PID
            # The "client" dies without goodbye: every session it had is released.
            victim.kill()
            victim.wait()
            deadline = time.monotonic() + 10
            while _process_watches(pid) > watches_before and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _process_watches(pid) == watches_before
            assert _hello(socks[-1], victim.pid, 2).ok  # room again
            assert_kernel_serves(kernel)
        steady.stop()
    finally:
        victim.kill()
        victim.wait()
        for sock in socks:
            sock.close()
        ctx.term()


CLIENT = """
import sys, time, ksclient
with ksclient.connect(sys.argv[1]) as client:
    client.wait_for_filter("target")
    out = client.open_render("target")
    inp = client.open_capture("target")
    inp.run()
    out.run()
    print("open", flush=True)
    time.sleep(60)
"""


def test_a_killed_client_leaves_nothing_behind(hostile_kernel) -> None:
    kernel = hostile_kernel
    pid = kernel.proc.pid
    assert_kernel_serves(kernel)
    fds_before, _ = kernel_resources(pid)
    for _ in range(3):
        client = subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(kernel.runtime)], stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        try:
            assert client.stdout is not None and client.stdout.readline() == b"open\n"
        finally:
            client.kill()
            client.wait()
            assert client.stdout is not None
            client.stdout.close()
    deadline = time.monotonic() + 10
    while kernel_resources(pid)[0] > fds_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert kernel_resources(pid)[0] <= fds_before
    assert_kernel_serves(kernel)  # the render pin's one instance is free again


def test_a_client_that_never_reads_costs_bounded_memory(hostile_kernel) -> None:
    kernel = hostile_kernel
    _, rss_before = kernel_resources(kernel.proc.pid)
    ctx, sock = _raw(kernel, USER_SOCKET)
    try:
        sock.setsockopt(zmq.RCVHWM, 10)
        assert _hello(sock, os.getpid()).ok
        for rid in range(2, 20_000):
            sock.send(p.encode_request(rid, p.ListFilters()))
        with kernel.connect() as client:  # behind the flood: all of it was handled
            stats = client.stats()["kernel"]
        assert stats["user_send_dropped"] > 10_000
    finally:
        sock.close()
        ctx.term()
    assert kernel_resources(kernel.proc.pid)[1] < rss_before + (32 << 20)
    assert_kernel_serves(kernel)


def test_a_device_registry_is_bounded() -> None:
    store = DeviceStore("d", "m")
    store.registry(0, "k", "create", "", None)
    with pytest.raises(StatusError) as caught:
        store.registry(0, "k", "set", "v", b"x" * (MAX_VALUE_BYTES + 1))
    assert caught.value.status == Status.INSUFFICIENT_RESOURCES
    for i in range(MAX_VALUES):
        store.registry(0, "k", "set", f"v{i}", i)
    with pytest.raises(StatusError) as caught:
        store.registry(0, "k", "set", "one more", 1)
    assert caught.value.status == Status.INSUFFICIENT_RESOURCES
    for i in range(MAX_KEYS - 1):
        store.registry(0, f"k{i}", "create", "", None)
    with pytest.raises(StatusError):
        store.registry(0, "one more", "create", "", None)


def test_planted_ring_files_do_not_collide(hostile_kernel) -> None:
    kernel = hostile_kernel
    planted = []
    for handle in range(1, 64):  # every name the next pins would have had
        for side in ("client", "miniport"):
            for suffix in (".ring", ".data", ".space"):
                path = kernel.runtime / f"pin{handle}-{side}{suffix}"
                path.touch()
                planted.append(path)
    try:
        with SteadyStream(kernel.runtime) as steady:
            assert_kernel_serves(kernel)
        steady.stop()
    finally:
        for path in planted:
            path.unlink()


@pytest.mark.parametrize("ring_attack", [RING_DELETE, RING_CORRUPT])
def test_a_miniport_spoiling_a_new_ring_fails_that_open_alone(start_kernel, ring_attack) -> None:
    kernel = start_kernel(HOSTILE_TARGET)
    with SteadyStream(kernel.runtime) as steady:
        assert _attack(kernel, ring_attack) == [bytes([0x90, ring_attack, REFUSED])]
        with kernel.connect() as client:
            with pytest.raises(ksclient.KsError) as caught:
                client.open_capture("target")
            assert caught.value.status == Status.INSUFFICIENT_RESOURCES
        assert_kernel_serves(kernel)
    steady.stop()


def test_a_miniport_truncating_its_rings_gets_eperm_and_the_kernel_carries_on(
    start_kernel,
) -> None:
    kernel = start_kernel(HOSTILE_TARGET)
    with SteadyStream(kernel.runtime) as steady:
        with kernel.connect() as client:
            client.wait_for_filter("target")
            with client.open_render("target") as out, client.open_capture("target") as inp:
                inp.run()
                out.run()
                out.send_raw(attack(RING_TRUNCATE))
                # Every ftruncate (stream rings, interrupt ring) failed with EPERM.
                assert inp.receive(timeout=10).data == bytes([0x90, RING_TRUNCATE, REFUSED])
                # The same streams still carry data, through the same rings.
                out.send(b"\x90\x3c\x40")
                assert inp.receive(timeout=10).data == b"\x90\x3c\x40"
        assert kernel.alive()
        assert_kernel_serves(kernel)
    steady.stop()


def test_too_many_calls_in_one_callback_are_refused_visibly(start_kernel) -> None:
    kernel = start_kernel(HOSTILE_TARGET)
    with SteadyStream(kernel.runtime) as steady:
        # Refused to the miniport, and what it did before the refusal reached the kernel.
        assert _attack(kernel, CALL_FLOOD) == [bytes([0x90, CALL_FLOOD, REFUSED])]
        stats = kernel_stats(kernel)
        assert stats.get("bus_malformed", 0) == 0
        assert_kernel_serves(kernel)
    steady.stop()


def test_the_safety_sweep_runs_although_timers_keep_the_loop_busy() -> None:
    loop = KernelLoop()
    try:
        sweeps = []
        loop.idle_sweeps.append(lambda: sweeps.append(time.monotonic()))
        timer = Timer(Dpc(lambda: None))

        def rearm() -> None:  # as heartbeat checks do: every wait is cut short
            loop.scheduler.set_timer(timer, loop.scheduler.clock() + 200_000)

        timer.dpc.routine = lambda: rearm()
        rearm()
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            loop.turn()
        assert len(sweeps) >= 2
    finally:
        loop.close()


def test_a_miniport_flooding_its_doorbell_is_faulted(start_kernel) -> None:
    kernel = start_kernel(HOSTILE_TARGET)
    with SteadyStream(kernel.runtime) as steady:
        assert _attack(kernel, DOORBELL_FLOOD) == [bytes([0x90, DOORBELL_FLOOD, REFUSED])]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stats = kernel_stats(kernel)
            if stats.get("miniport_floods"):
                break
            time.sleep(0.2)
        assert stats.get("miniport_floods", 0) >= 1
        assert_kernel_serves(kernel)  # restarted
    steady.stop()


def test_a_client_flooding_its_doorbell_is_disconnected(hostile_kernel) -> None:
    kernel = hostile_kernel
    with SteadyStream(kernel.runtime) as steady:
        with kernel.connect() as client:
            client.wait_for_filter("target")
            out = client.open_render("target")
            # The doorbell is a pipe the client holds the write end of.
            bell = Path(f"/proc/self/fd/{out._channel._data_bell.write_fileno()}")
            flooder = threading.Thread(target=_flood, args=(bell, 4.0), daemon=True)
            flooder.start()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                stats = kernel_stats(kernel)
                if stats.get("client_floods"):
                    break
                time.sleep(0.2)
            assert stats.get("client_floods", 0) >= 1
            flooder.join()
            with pytest.raises(ksclient.KsError):  # the session was ended
                out.run()
        assert_kernel_serves(kernel)
    steady.stop()


def test_records_the_kernel_cannot_take_on_the_interrupt_ring_are_counted(start_kernel) -> None:
    """Heartbeats share the interrupt ring (p.INTERRUPT_HEARTBEAT): a record with another
    flag, or a heartbeat with a payload, is dropped and counted, and what follows it in
    the ring (the interrupt that brings the outcome back) is still served."""
    kernel = start_kernel(HOSTILE_TARGET)
    with SteadyStream(kernel.runtime) as steady:
        before = kernel_stats(kernel).get("bus_rejected", 0)
        assert _attack(kernel, BAD_INTERRUPT_RECORDS) == [
            bytes([0x90, BAD_INTERRUPT_RECORDS, REFUSED])]
        assert kernel_stats(kernel).get("bus_rejected", 0) - before == 3
        assert_kernel_serves(kernel)
    steady.stop()
