"""The DirectMusic data path over real processes: a DMus miniport's render events through
put_message within the pre-fetch, in order, chains and packages intact, nothing leaked
from the allocator; capture passed up in RUN and PAUSE, discarded in STOP/ACQUIRE,
stamped with the master clock; the pin format converted to the miniport's kind."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

import ksclient
from ipc.dmusic import (
    DMUS_KEF_EVENT_INCOMPLETE,
    DMUS_KEF_PACKAGE_EVENT,
    DONT_HOLD_FOR_SEQUENCING,
    DONT_HOLD_ON_WIRE,
    split_group,
)
from ipc.ks import KSDATAFORMAT_SUBTYPE_DIRECTMUSIC, DataFormat, KsState
from ipc.midi import FLAG_SYSEX, FLAG_SYSEX_MORE
from ipc.status import Status, StatusError
from kernel.dmuspins import check_prefetch
from miniports.host.dmus import DEFAULT_BUFFER_SIZE
from miniports.testing import check_miniport

DMUS = DataFormat(sub_format=KSDATAFORMAT_SUBTYPE_DIRECTMUSIC)
MS = 10_000
PREFETCH = 30 * MS


def _config(log: Path, cls: str = "DmusLoopback", **options: Any) -> str:
    opts = ", ".join(f"{k} = {json.dumps(v)}" for k, v in {"log_file": str(log), **options}.items())
    return f"""
[[device]]
name = "dmus"
miniport = "tests.dmus_miniports:{cls}"
options = {{ {opts} }}
"""


def _log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _counts(c: ksclient.Client, device: str = "dmus") -> dict[str, int]:
    for key in c.device_registry(device):
        if key["path"] == "DMusAllocator":
            return dict(key["values"])
    raise AssertionError("the host published no allocator counts")


def _messages(inp: ksclient.CapturePin, count: int) -> list[tuple[int, bytes]]:
    """(group, message) of the next `count` messages, from the ring's records: each SysEx
    chunk of a DirectMusic pin carries its own group (the MIDI SDK's joiner does not
    know that; ksclient.dmusic does)."""
    out: list[tuple[int, bytes]] = []
    sysex = b""
    deadline = time.monotonic() + 5
    while len(out) < count:
        assert time.monotonic() < deadline, f"only {out}"
        for record in inp._channel.receive_many(64):
            group, data = split_group(record.data)
            if record.flags & FLAG_SYSEX:
                sysex += data
                if record.flags & FLAG_SYSEX_MORE:
                    continue
                data, sysex = sysex, b""
            out.append((group, data))
        time.sleep(0.01)
    return out


def _grouped(message: ksclient.MidiMessage) -> tuple[int, bytes]:
    return message.channel_group, message.data


def _pins(c: ksclient.Client) -> tuple[ksclient.RenderPin, ksclient.CapturePin]:
    c.wait_for_filter("dmus")
    out = c.open_render("dmus", fmt=DMUS)
    inp = c.open_capture("dmus", fmt=DMUS)
    inp.run()
    out.run()
    return out, inp


def test_render_within_prefetch_in_order_chains_packages_no_leak(start_kernel, tmp_path) -> None:
    log = tmp_path / "log"
    kernel = start_kernel(_config(log, prefetch=PREFETCH))
    sysex = bytes([0xF0]) + bytes(i & 0x7F for i in range(1000)) + bytes([0xF7])
    with kernel.connect() as c:
        out, inp = _pins(c)
        start = ksclient.now() + 100 * MS
        sent = [
            (start, 1, b"\x90\x3c\x40"),
            (start, 2, b"\x90\x3e\x40"),  # the same time, another group: one chain
            (start + 40 * MS, 7, sysex),  # longer than a buffer: a package
            (start + 80 * MS, 1, b"\x80\x3c\x00"),
        ]
        for at, group, data in sent:
            out.send_raw(data, at=ksclient.PhysicalTime(at), channel_group=group)
        got = [inp.receive(timeout=5) for _ in sent]
        assert [_grouped(m) for m in got] == [(g, d) for _, g, d in sent]
        for message, (at, _, _) in zip(got, sent, strict=True):
            assert message.timestamp >= at, "played before its presentation time"
        out.stop()
        inp.stop()
        calls = _log(log)
        assert [len(call["events"]) for call in calls] == [2, 1, 1]
        events = [e for call in calls for e in call["events"]]
        assert [e["time"] for e in events] == [at for at, _, _ in sent]
        for call in calls:
            for event in call["events"]:
                assert call["at"] >= event["time"] - PREFETCH, "handed on before the pre-fetch"
        package = events[2]
        assert package["flags"] & DMUS_KEF_PACKAGE_EVENT and package["group"] == 7
        fragments = package["package"]
        assert len(fragments) == -(-len(sysex) // DEFAULT_BUFFER_SIZE)
        assert [f["flags"] for f in fragments] == (
            [DMUS_KEF_EVENT_INCOMPLETE] * (len(fragments) - 1) + [0])
        assert b"".join(bytes.fromhex(f["data"]) for f in fragments) == sysex
        counts = _counts(c)
        assert counts["OutstandingEvents"] == 0 and counts["OutstandingBuffers"] == 0
        assert counts["EventsAllocated"] == counts["EventsReturned"] > 0
        out.close()
        inp.close()


def test_render_held_outside_run_and_handed_back_at_stop(start_kernel, tmp_path) -> None:
    log = tmp_path / "log"
    kernel = start_kernel(_config(log, prefetch=PREFETCH))
    with kernel.connect() as c:
        out, inp = _pins(c)
        out.walk_to(KsState.PAUSE)
        out.send_raw(b"\x90\x40\x40")
        time.sleep(0.2)
        assert _log(log) == [], "an event went to the miniport outside RUN"
        out.run()
        assert _grouped(inp.receive(timeout=5)) == (1, b"\x90\x40\x40")
        # Far in the future: the miniport holds it (DMus pre-fetch), STOP gives it back.
        out.send_raw(b"\x90\x41\x40", at=out.time() + 10_000 * MS)
        out.stop()
        counts = _counts(c)
        assert counts["OutstandingEvents"] == 0
        out.close()
        inp.close()


def test_dont_hold_hands_everything_on_at_once_in_order(start_kernel, tmp_path) -> None:
    log = tmp_path / "log"
    kernel = start_kernel(_config(log, prefetch="dont_hold"))
    with kernel.connect() as c:
        out, inp = _pins(c)
        far = ksclient.now() + 2_000 * MS
        for i in range(5):
            out.send_raw(bytes([0x90, i, 1]), at=ksclient.PhysicalTime(far + i))
        deadline = time.monotonic() + 5
        while sum(len(call["events"]) for call in _log(log)) < 5:
            assert time.monotonic() < deadline, "DONT_HOLD events were held"
            time.sleep(0.02)
        events = [e for call in _log(log) for e in call["events"]]
        assert [bytes.fromhex(e["data"])[1] for e in events] == [0, 1, 2, 3, 4]
        assert all(call["at"] < far for call in _log(log))
        out.close()
        inp.close()


def test_capture_up_in_run_and_pause_discarded_in_acquire(start_kernel, tmp_path) -> None:
    kernel = start_kernel(_config(tmp_path / "log", prefetch=0))
    with kernel.connect() as c:
        out, inp = _pins(c)
        before = ksclient.now()
        out.send_raw(b"\x90\x01\x01", channel_group=3)
        message = inp.receive(timeout=5)
        assert _grouped(message) == (3, b"\x90\x01\x01")
        assert before <= message.timestamp <= ksclient.now(), "not stamped by the master clock"
        inp.pause()
        out.send_raw(b"\x90\x02\x02", channel_group=3)
        assert _grouped(inp.receive(timeout=5)) == (3, b"\x90\x02\x02")
        inp.walk_to(KsState.ACQUIRE)
        out.send_raw(b"\x90\x03\x03", channel_group=3)
        out.send_raw(b"\x90\x04\x04", channel_group=3)
        time.sleep(0.3)
        inp.run()
        out.send_raw(b"\x90\x05\x05", channel_group=3)
        assert _grouped(inp.receive(timeout=5)) == (3, b"\x90\x05\x05")
        out.stop()
        inp.stop()
        counts = _counts(c)
        assert counts["CaptureDiscarded"] == 2
        assert counts["OutstandingEvents"] == 0
        out.close()
        inp.close()


def test_raw_capture_bytes_parsed_per_group(start_kernel, tmp_path) -> None:
    kernel = start_kernel(_config(tmp_path / "log", prefetch=0, raw_capture=True))
    sysex = bytes([0xF0, 1, 2, 3, 0xF7])
    with kernel.connect() as c:
        out, inp = _pins(c)
        out.send_raw(b"\x90\x10\x20", channel_group=5)
        out.send_raw(sysex, channel_group=6)
        out.send_raw(b"\xc0\x07", channel_group=5)
        got = _messages(inp, 3)
        assert got == [(5, b"\x90\x10\x20"), (6, sysex), (5, b"\xc0\x07")]
        out.close()
        inp.close()


def test_midi_format_pins_on_a_dmus_miniport_are_group_1(start_kernel, tmp_path) -> None:
    log = tmp_path / "log"
    kernel = start_kernel(_config(log, prefetch=0))
    with kernel.connect() as c:
        c.wait_for_filter("dmus")
        midi_out = c.open_render("dmus")
        midi_in = c.open_capture("dmus")
        midi_in.run()
        midi_out.run()
        midi_out.send(b"\x90\x3c\x40")
        assert midi_in.receive(timeout=5).data == b"\x90\x3c\x40"
        assert [e["group"] for call in _log(log) for e in call["events"]] == [1]
        midi_out.close()
        with c.open_render("dmus", fmt=DMUS) as out:
            out.run()
            out.send_raw(b"\x90\x01\x01", channel_group=2)  # not group 1: not for a MIDI pin
            out.send_raw(b"\x90\x02\x02")
            assert midi_in.receive(timeout=5).data == b"\x90\x02\x02"
        capture = next(p for p in c.stats()["pins"] if p["capture"])
        assert capture["stats"]["other_groups"] == 1
        midi_in.close()


UART = """
[[device]]
name = "uart"
miniport = "mpu401"
resources = { io = [[0x330, 2]], irq = [9] }
options = { baud = 312500 }
"""


def test_dmus_format_pins_on_a_midi_miniport(start_kernel) -> None:
    kernel = start_kernel(UART)
    with kernel.connect() as c:
        c.wait_for_filter("uart")
        out = c.open_render("uart", pin=1, fmt=DMUS)
        inp = c.open_capture("uart", fmt=DMUS)
        inp.run()
        out.run()
        # One MIDI OUT: every group goes out of it, and comes back as group 1.
        out.send_raw(b"\x90\x01\x01", channel_group=2)
        assert _grouped(inp.receive(timeout=5)) == (1, b"\x90\x01\x01")
        out._send_records([(0, 0, b"\x01\x00")], None)  # no channel group at all: dropped
        out.send_raw(b"\x90\x02\x02")
        assert _grouped(inp.receive(timeout=5)) == (1, b"\x90\x02\x02")
        render = next(p for p in c.stats()["pins"] if not p["capture"])
        assert render["stats"]["malformed"] == 1
        out.close()
        inp.close()


def test_port_init_takes_dmus_over_midi(start_kernel, tmp_path) -> None:
    log = tmp_path / "log"
    kernel = start_kernel(_config(log, cls="BothKinds", prefetch=0))
    with kernel.connect() as c:
        out, inp = _pins(c)
        out.send_raw(b"\x90\x05\x05", channel_group=4)
        assert _grouped(inp.receive(timeout=5)) == (4, b"\x90\x05\x05")
        assert len(_log(log)) == 1, "the port did not drive the DMus interface"
        out.close()
        inp.close()


def test_malformed_records_from_a_hostile_dmus_host_dropped_and_counted(
        start_kernel, tmp_path) -> None:
    kernel = start_kernel(_config(tmp_path / "log", prefetch=0, hostile=True))
    with kernel.connect() as c:
        out, inp = _pins(c)
        out.send_raw(b"\x90\x06\x06")
        assert _grouped(inp.receive(timeout=5)) == (1, b"\x90\x06\x06")
        capture = next(p for p in c.stats()["pins"] if p["capture"])
        assert capture["stats"]["malformed"] == 3
        out.send_raw(b"\x90\x07\x07")
        assert _grouped(inp.receive(timeout=5)) == (1, b"\x90\x07\x07")
        assert c.stats()["devices"]["dmus"]["state"] == "running"
        out.close()
        inp.close()


def test_prefetch_from_a_host_is_checked() -> None:
    assert check_prefetch(0) == 0
    assert check_prefetch(DONT_HOLD_FOR_SEQUENCING) == DONT_HOLD_FOR_SEQUENCING
    assert check_prefetch(DONT_HOLD_ON_WIRE) == DONT_HOLD_FOR_SEQUENCING
    for bad in (-2, (1 << 63) + 1, 1.5, True, "10", None):
        with pytest.raises(StatusError):
            check_prefetch(bad)


def test_the_allocator_check_catches_a_miniport_that_keeps_events() -> None:
    report = check_miniport("tests.dmus_miniports:LeakyDmusLoopback", options={"prefetch": 0},
                            checks=["roundtrip", "allocator"])
    outcomes = {r.name: (r.outcome, r.detail) for r in report.results}
    assert outcomes["roundtrip"][0] == "passed"
    assert outcomes["allocator"][0] == "failed"
    assert "OutstandingEvents" in outcomes["allocator"][1]


def test_a_bad_prefetch_from_a_hostile_host_fails_the_open_and_nothing_else(
        start_kernel, tmp_path) -> None:
    kernel = start_kernel(_config(tmp_path / "log", cls="BadPrefetchHost"))
    with kernel.connect() as c:
        c.wait_for_filter("dmus")
        # Twice: the miniport's stream was closed again (else "render pin in use").
        for _ in range(2):
            with pytest.raises(ksclient.KsError) as err:
                c.open_render("dmus", fmt=DMUS)
            assert err.value.status == Status.INVALID_PARAMETER
        assert c.stats()["pins"] == []
        assert c.stats()["devices"]["dmus"]["state"] == "running"


def test_a_bad_kind_from_a_hostile_host_fails_its_init_only(start_kernel, tmp_path) -> None:
    kernel = start_kernel(_config(tmp_path / "log", cls="BadKindHost") + """
restart = "never"

[[device]]
name = "loopback"
miniport = "loopback"
""")
    with kernel.connect() as c:
        c.wait_for_filter("loopback")
        deadline = time.monotonic() + 10
        while c.stats()["devices"]["dmus"]["state"] != "failed":
            assert time.monotonic() < deadline, c.stats()["devices"]["dmus"]
            time.sleep(0.05)
        assert "dmus" not in {f.id for f in c.filters()}
        assert "bad kind" in str(c.stats()["devices"]["dmus"]), c.stats()["devices"]["dmus"]
