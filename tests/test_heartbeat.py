"""Heartbeats: a host proves it is alive through its interrupt ring without waking the
kernel (p.INTERRUPT_HEARTBEAT). That a host which stops beating is found out is
tests/test_faults.py's "hang" case."""

from __future__ import annotations

import time

CONFIG = """
[kernel]
heartbeat_interval = 0.1
heartbeat_timeout = 1.5

[[device]]
name = "one"
miniport = "loopback"

[[device]]
name = "two"
miniport = "loopback"
"""


def _stats(kernel) -> dict:
    with kernel.connect() as client:
        return dict(client.stats())


def test_idle_hosts_beat_through_the_interrupt_ring_and_stay(start_kernel) -> None:
    kernel = start_kernel(CONFIG)
    with kernel.connect() as client:
        client.wait_for_filter("one", timeout=10)
        client.wait_for_filter("two", timeout=10)
    before = _stats(kernel)
    time.sleep(3.0)  # 30 beats per host; twice the timeout
    after = _stats(kernel)
    # Two hosts, ten beats a second each, read at every check; slack for a loaded machine.
    key = "heartbeat_records"
    beats = after["kernel"].get(key, 0) - before["kernel"].get(key, 0)
    assert beats >= 20, after["kernel"]
    assert not after["kernel"].get("bus_rejected")
    assert all(after["devices"][d]["restarts"] == 0 for d in ("one", "two")), after["devices"]
    with (kernel.connect() as client, client.open_render("one") as out,
          client.open_capture("one") as inp):
        inp.run()
        out.run()
        out.send([0x90, 60, 1])
        assert inp.receive(timeout=5).data == bytes([0x90, 60, 1])
