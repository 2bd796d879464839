"""Service groups: in-process against the kernel's scheduler, and through real processes."""

from __future__ import annotations

import time

import pytest

import ksclient
from ipc.runtime import now_100ns
from ipc.status import StatusError
from kernel.dpc import Scheduler
from kernel.servicegroup import ServiceGroup


class Recorder:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def request_service(self) -> None:
        self.log.append(self.name)


def test_members_in_insertion_order_and_coalesced() -> None:
    sched = Scheduler()
    log: list[str] = []
    group = ServiceGroup(sched)
    for name in "abc":
        group.add_member(Recorder(log, name))
    group.request_service()
    group.request_service()
    group.request_service()
    assert sched.run_dpcs() == 1
    assert log == ["a", "b", "c"]
    assert (group.requests, group.runs) == (3, 1)


def test_nested_groups_run_after_the_outer_members() -> None:
    sched = Scheduler()
    log: list[str] = []
    outer, inner = ServiceGroup(sched), ServiceGroup(sched)
    outer.add_member(Recorder(log, "a"))
    outer.add_member(inner)
    outer.add_member(Recorder(log, "d"))
    inner.add_member(Recorder(log, "b"))
    inner.add_member(Recorder(log, "c"))
    outer.request_service()
    sched.run_dpcs()
    assert log == ["a", "d", "b", "c"]


def test_remove_member_and_self_membership() -> None:
    sched = Scheduler()
    log: list[str] = []
    group = ServiceGroup(sched)
    a, b = Recorder(log, "a"), Recorder(log, "b")
    group.add_member(a)
    group.add_member(b)
    group.remove_member(a)
    group.remove_member(Recorder(log, "x"))  # unknown: ignored, as in PortCls
    group.request_service()
    sched.run_dpcs()
    assert log == ["b"]
    with pytest.raises(StatusError):
        group.add_member(group)


def test_delayed_service_relative_absolute_and_cancelled() -> None:
    clock = [1_000_000]
    sched = Scheduler(clock=lambda: clock[0])
    log: list[str] = []
    group = ServiceGroup(sched)
    group.add_member(Recorder(log, "a"))
    with pytest.raises(StatusError):
        group.request_delayed_service(-10)
    group.support_delayed_service()
    start = now_100ns()
    group.request_delayed_service(start + 500)  # absolute
    assert sched.next_deadline() == start + 500
    assert group.cancel_delayed_service()
    assert sched.next_deadline() is None
    assert not group.cancel_delayed_service()
    group.request_delayed_service(-100)  # relative to the real shared clock
    deadline = sched.next_deadline()
    assert deadline is not None and deadline >= start + 100
    clock[0] = deadline - 1
    assert sched.fire_due_timers() == 0
    clock[0] = deadline
    assert sched.fire_due_timers() == 1
    sched.run_dpcs()
    assert log == ["a"]


def test_a_request_during_the_run_queues_another_run() -> None:
    sched = Scheduler()
    log: list[str] = []
    group = ServiceGroup(sched)

    class Again:
        def request_service(self) -> None:
            log.append("x")
            if len(log) < 3:
                group.request_service()

    group.add_member(Again())
    group.request_service()
    assert sched.run_dpcs() == 3
    assert log == ["x", "x", "x"]


PROBE = """
[[device]]
name = "probe"
miniport = "tests.probe_miniports:GroupProbe"
"""


def _reports(inp: ksclient.CapturePin, quiet: float = 0.3) -> list[tuple[int, int]]:
    out = []
    while True:
        try:
            msg = inp.receive(timeout=quiet)
        except ksclient.KsTimeoutError:
            return out
        out.append((msg.data[1], msg.timestamp))


def test_groups_through_real_processes(start_kernel) -> None:
    kernel = start_kernel(PROBE)
    with kernel.connect() as client:
        client.wait_for_filter("probe")
        with client.open_render("probe") as cmd, client.open_capture("probe") as inp:
            inp.run()
            cmd.run()
            cmd.send_raw(b"\x01")  # three requests on main: one run, members in order, nested last
            assert [v for v, _ in _reports(inp)] == [0x0A, 0x0D, 0x0B, 0x0C]

            sent = now_100ns()
            cmd.send_raw(b"\x02")  # delayed 20 ms
            reports = _reports(inp)
            assert [v for v, _ in reports] == [0x0B, 0x0C]
            assert all(t - sent >= 200_000 for _, t in reports)

            cmd.send_raw(b"\x03\x05")  # delayed then cancelled: only the marker comes
            time.sleep(0.25)
            assert [v for v, _ in _reports(inp)] == [0x55]

            sent = now_100ns()
            cmd.send_raw(b"\x06")  # absolute time 30 ms ahead
            reports = _reports(inp)
            assert [v for v, _ in reports] == [0x0B, 0x0C]
            assert all(t - sent >= 300_000 for _, t in reports)

            cmd.send_raw(b"\x04")  # C removed from group_a
            assert [v for v, _ in _reports(inp)] == [0x0B]
