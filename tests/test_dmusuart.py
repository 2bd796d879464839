"""The built-in DirectMusic UART over real processes: the emulated MPU-401 with its cable
looped, driven as an IMiniportDMus with a pre-fetch."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ksclient
from ipc.dmusic import split_group
from ipc.ks import KSDATAFORMAT_SUBTYPE_DIRECTMUSIC, DataFormat
from ipc.midi import FLAG_SYSEX, FLAG_SYSEX_MORE
from miniports.mpu401.miniport import CAPTURE_PIN, DMUS_RENDER_PIN, RENDER_PIN
from miniports.testing import assert_conformant, check_miniport
from miniports.testing.conformance import DMUS_CHECKS

ROOT = Path(__file__).resolve().parent.parent
DMUS = DataFormat(sub_format=KSDATAFORMAT_SUBTYPE_DIRECTMUSIC)
MS = 10_000

CONFIG = """
[[device]]
name = "dmusuart"
miniport = "dmusuart"
resources = { io = [[0x330, 2]], irq = [9] }
options = { baud = 3125000, prefetch = 200000 }
"""


def _receive(inp: ksclient.CapturePin, count: int) -> list[tuple[int, int, bytes]]:
    """(timestamp, group, message) of the next `count` messages, SysEx chunks joined
    (each chunk of a DirectMusic pin carries its own channel group)."""
    out: list[tuple[int, int, bytes]] = []
    sysex, first = b"", 0
    deadline = time.monotonic() + 5
    while len(out) < count:
        assert time.monotonic() < deadline, f"only {len(out)} of {count} messages came"
        time.sleep(0.01)
        for record in inp._channel.receive_many(64):
            group, data = split_group(record.data)
            if record.flags & FLAG_SYSEX:
                first = first or record.timestamp
                sysex += data
                if record.flags & FLAG_SYSEX_MORE:
                    continue
                data, sysex, stamp, first = sysex, b"", first, 0
            else:
                stamp = record.timestamp
            out.append((stamp, group, data))
    return out


def test_dmusuart_round_trip_at_presentation_times(start_kernel) -> None:
    kernel = start_kernel(CONFIG)
    sysex = bytes([0xF0]) + bytes(i & 0x7F for i in range(3000)) + bytes([0xF7])
    with kernel.connect() as c:
        c.wait_for_filter("dmusuart")
        out = c.open_render("dmusuart", pin=DMUS_RENDER_PIN, fmt=DMUS)
        inp = c.open_capture("dmusuart", pin=CAPTURE_PIN, fmt=DMUS)
        inp.run()
        out.run()
        start = ksclient.now() + 50 * MS
        sent = [(start, 1, b"\x90\x3c\x40"), (start + 30 * MS, 2, sysex),
                (start + 60 * MS, 3, b"\xf8"), (start + 90 * MS, 1, b"\x80\x3c\x00")]
        for at, group, data in sent:
            out.send_raw(data, at=ksclient.PhysicalTime(at), channel_group=group)
        got = _receive(inp, len(sent))
        # One MIDI OUT: every group goes out of it and comes back as group 1.
        assert [(g, d) for _, g, d in got] == [(1, d) for _, _, d in sent]
        for (stamp, _, _), (at, _, _) in zip(got, sent, strict=True):
            assert stamp >= at, "on the wire before its presentation time"
        out.close()
        inp.close()


def test_dmusuart_capture_passes_up_in_pause_and_midi_pins_still_work(start_kernel) -> None:
    kernel = start_kernel(CONFIG)
    with kernel.connect() as c:
        c.wait_for_filter("dmusuart")
        out = c.open_render("dmusuart", pin=RENDER_PIN)  # a MIDI-format pin: group 1
        inp = c.open_capture("dmusuart", pin=CAPTURE_PIN)
        inp.pause()
        out.run()
        out.send(b"\x90\x40\x01")
        assert inp.receive(timeout=5).data == b"\x90\x40\x01"
        out.close()
        inp.close()


def test_the_conformance_suite_passes_on_the_dmusuart() -> None:
    report = assert_conformant(
        "dmusuart",
        options={"baud": 1_000_000, "capture_ring": 1 << 16},
        resources={"io": [[0x330, 2]], "irq": [9]},
    )
    names = [r.name for r in report.results]
    assert set(DMUS_CHECKS) <= set(names) and names[-1] == "shutdown"
    assert all(r.outcome == "passed" for r in report.results), report.summary()


def test_the_conformance_suite_passes_on_a_dont_hold_dmus_loopback() -> None:
    report = assert_conformant("tests.dmus_miniports:DmusLoopback",
                               options={"prefetch": "dont_hold"})
    assert all(r.outcome == "passed" for r in report.results), report.summary()


def test_the_dmus_checks_skip_on_a_midi_miniport() -> None:
    report = check_miniport("loopback", checks=["states", *DMUS_CHECKS])
    assert [r.outcome for r in report.results] == ["passed"] + ["skipped"] * len(DMUS_CHECKS)


@pytest.mark.slow
def test_the_dmusuart_is_crash_tested_like_any_other(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "ksclient.cli", "crashtest", "--miniport", "dmusuart",
         "--options", '{"baud": 1000000}', "--resources", '{"io": [[816, 2]], "irq": [9]}',
         "--iterations", "6", "--json", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "PASS" in proc.stdout
    summary = json.loads(report.read_text())
    assert summary["summary"]["faults"] == 6


CARD = """
[[device]]
name = "card"
adapter = "mpu401card"
options = { cable = "loopback", baud = 3125000 }
resources = { io = [[0x330, 2], [0x300, 2]], irq = [9, 10] }
"""


def test_the_mpu401card_adapters_second_subdevice_is_the_dmusuart(start_kernel) -> None:
    kernel = start_kernel(CARD)
    with kernel.connect() as c:
        c.wait_for_filter("card/dmus")
        out = c.open_render("card/dmus", pin=DMUS_RENDER_PIN, fmt=DMUS)
        inp = c.open_capture("card/dmus", pin=CAPTURE_PIN, fmt=DMUS)
        kinds = {p["filter"]: p["miniport_kind"] for p in c.stats()["pins"]}
        assert kinds == {"card/dmus": "dmus"}
        inp.run()
        out.run()
        out.send_raw(b"\x90\x30\x30")
        assert [(g, d) for _, g, d in _receive(inp, 1)] == [(1, b"\x90\x30\x30")]
        out.close()
        inp.close()
        with c.open_render("card"):
            assert c.stats()["pins"][0]["miniport_kind"] == "midi"


def test_the_latency_clock_is_the_master_clock_plus_the_streams_prefetch(start_kernel) -> None:
    """KSPROPERTY_SYNTH_LATENCYCLOCK of a DMus render stream: the master clock (the
    filter's KSPROPERTY_SYNTH_MASTERCLOCK) plus its pre-fetch (200,000 in CONFIG)."""
    kernel = start_kernel(CONFIG)
    with kernel.connect() as c:
        c.wait_for_filter("dmusuart")
        with c.open_render("dmusuart", DMUS_RENDER_PIN, DMUS) as out:
            before = c.master_clock("dmusuart")
            latency = out.latency_clock()
            after = c.master_clock("dmusuart")
            assert before + 200_000 <= latency <= after + 200_000
