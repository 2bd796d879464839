"""The miniport's half of a group's DPC, in process: `miniports.host.dpc.ServiceGroups`
with plain callables for the bus and the port's sink."""

from __future__ import annotations

import threading

import pytest

from ipc import protocol as p
from ipc.runtime import now_100ns
from ipc.status import Status, StatusError
from miniports.base import ServiceSink
from miniports.host.dpc import (
    MAX_GROUPS,
    NOTIFY_ALL,
    RUN_BUDGET,
    HostServiceGroup,
    ServiceGroups,
)


class Sink(ServiceSink):
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def request_service(self) -> None:
        self.log.append(self.name)


def _groups(log: list[str]) -> tuple[ServiceGroups, list[object]]:
    posted: list[object] = []
    groups = ServiceGroups(posted.append, lambda: None, lambda when: log.append("port"))
    return groups, posted


def test_members_in_insertion_order_nested_groups_after_and_coalesced() -> None:
    log: list[str] = []
    groups, posted = _groups(log)
    outer, inner = groups.new_group(), groups.new_group()
    outer.add_member(Sink(log, "a"))
    outer.add_member(inner)
    groups.register_port(outer)
    inner.add_member(Sink(log, "b"))
    groups.add_stream(7, inner, lambda when: log.append("read 7"))
    for _ in range(3):
        outer.request_service()
    assert groups.pending
    ran = groups.run()
    assert log == ["a", "port", "b", "read 7"]
    assert list(ran) == [outer.gid, inner.gid]  # the interrupt names both
    assert (outer.runs, inner.runs) == (1, 1) and not groups.pending
    assert posted[:2] == [p.GroupNew(outer.gid), p.GroupNew(inner.gid)]
    assert p.GroupAddMember(outer.gid, inner.gid, None) in posted


def test_only_the_notified_group_runs_and_a_request_during_a_run_queues_in_order() -> None:
    log: list[str] = []
    groups, _ = _groups(log)
    main, side, later = groups.new_group(), groups.new_group(), groups.new_group()
    groups.port_init_returned(main)
    groups.add_stream(1, main, lambda when: log.append("read main"))
    groups.add_stream(2, side, lambda when: log.append("read side"))
    later.add_member(Sink(log, "later"))

    class Requester(ServiceSink):
        def request_service(self) -> None:
            log.append("request")
            later.request_service()  # during main's run: queued now, after main

    main.add_member(Requester())
    main.add_member(side)
    groups.request(main.gid)
    groups.run()
    assert log == ["port", "read main", "request", "later", "read side"]


def test_notify_all_runs_the_port_group_then_every_stream_group() -> None:
    log: list[str] = []
    groups, _ = _groups(log)
    a, b = groups.new_group(), groups.new_group()
    groups.add_stream(1, b, lambda when: log.append("read 1"))
    groups.add_stream(2, a, lambda when: log.append("read 2"))
    groups.request(NOTIFY_ALL)
    ran = groups.run()
    # No port group: the port's sink runs alone first (the kernel does it at once).
    assert log == ["port", "read 1", "read 2"]
    assert list(ran) == [NOTIFY_ALL, b.gid, a.gid]
    groups.register_port(a)
    log.clear()
    groups.request(NOTIFY_ALL)
    groups.run()
    assert log == ["read 2", "port", "read 1"]


def test_the_time_of_the_first_request_stamps_the_run() -> None:
    stamps: list[int] = []
    groups, _ = _groups([])
    group = groups.new_group()
    groups.add_stream(1, group, stamps.append)
    groups.request(group.gid, 100)
    groups.request(group.gid, 200)
    assert groups.run() == {group.gid: 100}
    assert stamps == [100]


def test_delayed_service_needs_support_and_its_timer_lives_in_the_host() -> None:
    log: list[str] = []
    groups, posted = _groups(log)
    group = groups.new_group()
    group.add_member(Sink(log, "a"))
    with pytest.raises(StatusError) as info:
        group.request_delayed_service(-10)
    assert info.value.status == Status.INVALID_DEVICE_REQUEST
    group.support_delayed_service()
    start = now_100ns()
    group.request_delayed_service(-1_000_000)
    due = groups.next_due()
    assert due is not None and due >= start + 1_000_000
    group.request_delayed_service(start + 500)  # absolute; replaces the relative one
    assert groups.next_due() == start + 500
    groups.fire_due_timers(start + 499)
    assert not groups.pending
    groups.fire_due_timers(start + 500)
    assert groups.run() == {group.gid: start + 500} and log == ["a"]
    group.request_delayed_service(start + 900)
    group.cancel_delayed_service()
    assert groups.next_due() is None
    assert not any(type(m).__name__.startswith("GroupRequest") for m in posted)


class _Again(ServiceSink):
    def __init__(self, group: HostServiceGroup) -> None:
        self.group = group

    def request_service(self) -> None:
        self.group.request_service()


def test_a_group_that_keeps_asking_runs_within_a_budget_and_is_named_when_it_ran() -> None:
    groups, _ = _groups([])
    group = groups.new_group()
    group.add_member(_Again(group))
    group.request_service()
    assert list(groups.run()) == [group.gid]
    assert group.runs == RUN_BUDGET and groups.pending  # the rest on the next loop turn
    assert list(groups.run()) == [group.gid]


def test_requests_from_another_thread_wake_the_loop() -> None:
    woken = threading.Event()
    groups = ServiceGroups(lambda body: None, woken.set, lambda when: None)
    group = groups.new_group()
    thread = threading.Thread(target=group.request_service)
    thread.start()
    thread.join()
    assert woken.is_set() and groups.pending
    assert list(groups.run()) == [group.gid]


def test_no_more_groups_than_one_interrupt_record_can_name() -> None:
    groups, _ = _groups([])
    for _ in range(MAX_GROUPS):
        groups.new_group()
    with pytest.raises(StatusError) as info:
        groups.new_group()
    assert info.value.status == Status.INSUFFICIENT_RESOURCES


def test_requests_run_in_the_order_they_were_made_across_threads() -> None:
    """The loop's own requests queue at once, but never ahead of one another thread
    made before them (nor ahead of a Notify(NULL) made before them)."""
    log: list[str] = []
    groups, _ = _groups(log)
    first, second, third = groups.new_group(), groups.new_group(), groups.new_group()
    for name, group in (("first", first), ("second", second), ("third", third)):
        group.add_member(Sink(log, name))
    thread = threading.Thread(target=first.request_service)  # an ISR's thread
    thread.start()
    thread.join()
    second.request_service()  # the loop's thread, after it
    assert list(groups.run()) == [first.gid, second.gid]
    assert log == ["first", "second"]
    log.clear()
    groups.register_port(third)
    groups.request(NOTIFY_ALL)
    first.request_service()
    assert list(groups.run()) == [NOTIFY_ALL, third.gid, first.gid]
    assert log == ["third", "port", "first"]
