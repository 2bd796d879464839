"""DirectMusic pins end to end: DMUS_EVENTHEADER buffers and channel-group messages through
the kernel's DirectMusic pin conversion and the MPU-401 with its cable looped back.

Each test runs twice: with the MIDI UART driving the card (the port strips the group
on render and puts group 1 in front of what it captures) and with the DirectMusic UART
(the events travel as DMUS_KERNEL_EVENT chains to its IMXF and back from its capture
stream through the port's sink).

A MIDI cable carries no channel groups: whatever group an event is rendered in, the
MPU-401 captures it in group 1, as a MIDI miniport's side always is.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

import ksclient
from ipc.dmusic import DMUS_EVENT_STRUCTURED, DmusEvent
from ipc.status import Status
from ksclient import dmusic
from tests.conftest import ROOT

MPU = """
[[device]]
name = "mpu401"
miniport = "mpu401"
resources = { io = [[0x330, 2]], irq = [9] }
options = { baud = 1000000, capture_ring = 131072 }
"""
# The ISR's ring holds what a 64 KiB SysEx at 1 Mbaud needs: the emulated card loses
# (and counts, CaptureOverflows) what a slow DPC leaves in a real-sized ring, and these
# tests are about the pin format, not about overrunning the hardware.
MIDI_RENDER, DMUS_RENDER, CAPTURE = 0, 1, 4
SYSEX_64K = b"\xf0" + bytes(i % 0x80 for i in range(65536 - 2)) + b"\xf7"
MS = 10_000


@pytest.fixture(params=["mpu401", "dmusuart"])
def mpu(request, start_kernel) -> Iterator[ksclient.Client]:  # type: ignore[no-untyped-def]
    """The MPU-401 with its cable looped, driven by the MIDI UART (the port converts the
    DirectMusic pins) or by the DirectMusic UART (DMusUART: the events reach its IMXF)."""
    kernel = start_kernel(MPU.replace('miniport = "mpu401"', f'miniport = "{request.param}"'))
    with kernel.connect() as c:
        c.wait_for_filter("mpu401")
        yield c


def _dmus_pins(c: ksclient.Client) -> tuple[ksclient.RenderPin, ksclient.CapturePin]:
    out = c.open_render("mpu401", DMUS_RENDER, dmusic.FORMAT, capacity=1 << 18)
    inp = c.open_capture("mpu401", CAPTURE, dmusic.FORMAT, capacity=1 << 20)
    inp.run()
    out.run()
    return out, inp


def _receive(inp: ksclient.CapturePin, n: int) -> list[ksclient.MidiMessage]:
    return [inp.receive(timeout=30) for _ in range(n)]


def test_structured_events_in_several_groups_round_trip(mpu: ksclient.Client) -> None:
    out, inp = _dmus_pins(mpu)
    events = [dmusic.event(b"\x90\x3c\x40", 0, 1), dmusic.event(b"\xc0\x05", 0, 2),
              dmusic.event(b"\xb0\x07\x64", MS, 3), dmusic.event(b"\x80\x3c\x00", 2 * MS, 65535)]
    buf = dmusic.pack(events)
    request = out.write(buf, presentation_time=1)
    assert request.wait(10) == Status.SUCCESS and request.data_used == len(buf)
    got = _receive(inp, len(events))
    assert [m.data for m in got] == [e.data for e in events]
    assert {m.channel_group for m in got} == {1}  # the cable carries no groups
    assert inp.malformed == 0
    out.close()
    inp.close()


def test_sysex_of_1_byte_and_of_64_kib_round_trip(mpu: ksclient.Client) -> None:
    out, inp = _dmus_pins(mpu)
    small = b"\xf0\x01\xf7"
    buf = dmusic.pack([dmusic.event(small, 0, 2), dmusic.event(SYSEX_64K, 0, 3),
                       dmusic.event(b"\xf8", 0, 4)])
    assert out.write(buf).wait(30) == Status.SUCCESS
    got = _receive(inp, 3)
    assert [m.data for m in got] == [small, SYSEX_64K, b"\xf8"]
    assert got[1].is_sysex and not got[1].aborted
    # A SysEx piece by piece in one buffer (unstructured events, F0 ... then ... F7).
    pieces = dmusic.pack([DmusEvent(1, 0, 0, b"\xf0\x7d"), DmusEvent(1, 0, 0, b"\x01\x02"),
                          DmusEvent(1, 0, 0, b"\xf7")])
    assert out.write(pieces).wait(10) == Status.SUCCESS
    assert inp.receive(timeout=10).data == b"\xf0\x7d\x01\x02\xf7"
    assert inp.malformed == 0
    out.close()
    inp.close()


def test_read_gives_a_directmusic_buffer(mpu: ksclient.Client) -> None:
    out, inp = _dmus_pins(mpu)
    out.send_many([b"\x90\x3c\x40", b"\x90\x3e\x40"], channel_group=7)
    out.send(SYSEX_64K, channel_group=2)
    events: list[DmusEvent] = []
    starts = []
    while sum(len(e.data) for e in events) < 6 + len(SYSEX_64K):
        start, buf = inp.read(4096, timeout=30)
        assert len(buf) <= 4096
        starts.append(start)
        got = dmusic.unpack(buf)
        assert got[0].rt_delta == 0 and all(e.rt_delta >= 0 for e in got)
        events += got
    assert [e.data for e in events[:2]] == [b"\x90\x3c\x40", b"\x90\x3e\x40"]
    assert all(e.flags == DMUS_EVENT_STRUCTURED for e in events[:2])
    assert all(e.flags == 0 for e in events[2:])
    assert b"".join(e.data for e in events[2:]) == SYSEX_64K
    assert {e.channel_group for e in events} == {1}
    assert starts == sorted(starts) and inp.malformed == 0
    out.close()
    inp.close()


def test_rt_delta_counts_from_the_buffers_start(mpu: ksclient.Client) -> None:
    out, inp = _dmus_pins(mpu)
    start = ksclient.now()
    # Not in time order in the buffer: rtDelta is from the start, not from the event before.
    buf = dmusic.pack([dmusic.event(b"\x80\x3c\x00", 200 * MS), dmusic.event(b"\x90\x3c\x40", 0),
                       dmusic.event(b"\xb0\x07\x64", 100 * MS)])
    assert out.write(buf, presentation_time=start).wait(10) == Status.SUCCESS
    got = _receive(inp, 3)
    assert [m.data for m in got] == [b"\x90\x3c\x40", b"\xb0\x07\x64", b"\x80\x3c\x00"]
    # Never early: each arrives no sooner than start + its rtDelta.
    assert got[1].timestamp >= start + 100 * MS and got[2].timestamp >= start + 200 * MS
    out.close()
    inp.close()


def test_midi_and_directmusic_pins_talk_to_each_other(mpu: ksclient.Client) -> None:
    midi_out = mpu.open_render("mpu401", MIDI_RENDER)
    dm_in = mpu.open_capture("mpu401", CAPTURE, dmusic.FORMAT)
    dm_in.run()
    midi_out.run()
    midi_out.send(b"\x90\x40\x40")
    msg = dm_in.receive(timeout=10)
    assert (msg.data, msg.channel_group) == (b"\x90\x40\x40", 1)
    midi_out.close()
    dm_in.close()
    dm_out = mpu.open_render("mpu401", DMUS_RENDER, dmusic.FORMAT)
    midi_in = mpu.open_capture("mpu401", CAPTURE)
    midi_in.run()
    dm_out.run()
    dm_out.send(b"\x90\x41\x40", channel_group=9)
    assert midi_in.receive(timeout=10).data == b"\x90\x41\x40"
    dm_out.close()
    midi_in.close()


README_BLOCKS = [
    block for block in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    if "dmusic.FORMAT" in block
]


@pytest.mark.parametrize("index", range(len(README_BLOCKS)))
def test_the_readme_directmusic_example_runs(start_kernel, index: int) -> None:  # type: ignore[no-untyped-def]
    kernel = start_kernel(MPU)
    env = {**os.environ, "PORTCLS_RUNTIME_DIR": str(kernel.runtime)}
    done = subprocess.run([sys.executable, "-c", README_BLOCKS[index]], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    print(done.stdout)
    assert done.returncode == 0, done.stderr
