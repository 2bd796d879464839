"""Capture through the loopback: the kernel's parser, end to end, checked against mido."""

from __future__ import annotations

import mido
import pytest

import ksclient


@pytest.fixture
def loop(loopback_kernel):
    with loopback_kernel.connect() as c:
        c.wait_for_filter("loopback")
        out, inp = c.open_render("loopback"), c.open_capture("loopback", capacity=1 << 20)
        inp.run()
        out.run()
        yield out, inp
        out.close()
        inp.close()


def _all(inp: ksclient.CapturePin, n: int) -> list[bytes]:
    return [inp.receive(timeout=10).data for _ in range(n)]


def test_running_status_is_expanded(loop) -> None:
    out, inp = loop
    out.send_raw(bytes([0x90, 60, 100, 62, 101, 64, 102, 0xC0, 5, 6]))
    assert _all(inp, 5) == [
        bytes([0x90, 60, 100]),
        bytes([0x90, 62, 101]),
        bytes([0x90, 64, 102]),
        bytes([0xC0, 5]),
        bytes([0xC0, 6]),
    ]


def test_real_time_bytes_inside_a_message_come_on_their_own(loop) -> None:
    out, inp = loop
    out.send_raw(bytes([0x90, 0xF8, 60, 0xFE, 100, 0xF0, 1, 0xFA, 2, 0xF7]))
    assert _all(inp, 5) == [
        b"\xf8", b"\xfe", bytes([0x90, 60, 100]), b"\xfa", bytes([0xF0, 1, 2, 0xF7])
    ]


def test_stray_bytes_are_dropped_and_counted(loop) -> None:
    out, inp = loop
    out.send_raw(bytes([60, 61, 0xF7, 0xF4, 0x90, 60, 100]))
    assert _all(inp, 1) == [bytes([0x90, 60, 100])]
    assert inp.statistics()["stray_bytes"] == 4


@pytest.mark.parametrize("payload", [0, 1, 100, 4093, 4096, 65536, 1 << 20])
def test_sysex_of_any_length_round_trips(loop, payload: int) -> None:
    out, inp = loop
    sysex = bytes([0xF0]) + bytes(i % 0x80 for i in range(payload)) + bytes([0xF7])
    before = ksclient.now()
    out.send(sysex)
    msg = inp.receive(timeout=30)
    assert msg.data == sysex and msg.is_sysex and not msg.aborted
    assert msg.timestamp >= before
    out.send(b"\x90\x3c\x40")  # the stream carries on normally afterwards
    assert inp.receive(timeout=10).data == b"\x90\x3c\x40"


def test_sysex_cut_short_by_a_status_byte(loop) -> None:
    out, inp = loop
    out.send_raw(bytes([0xF0, 1, 2, 0x90, 60, 100]))
    cut = inp.receive(timeout=10)
    assert cut.is_sysex and cut.aborted and cut.data == bytes([0xF0, 1, 2])
    assert inp.receive(timeout=10).data == bytes([0x90, 60, 100])


def test_messages_agree_with_mido(loop) -> None:
    out, inp = loop
    msgs = [
        mido.Message("note_on", channel=3, note=60, velocity=90),
        mido.Message("control_change", channel=0, control=7, value=100),
        mido.Message("program_change", channel=9, program=12),
        mido.Message("pitchwheel", channel=1, pitch=-2000),
        mido.Message("aftertouch", channel=2, value=50),
        mido.Message("polytouch", channel=4, note=10, value=20),
        mido.Message("sysex", data=list(range(50))),
        mido.Message("clock"),
        mido.Message("songpos", pos=300),
        mido.Message("song_select", song=5),
        mido.Message("quarter_frame", frame_type=3, frame_value=4),
        mido.Message("tune_request"),
        mido.Message("stop"),
    ]
    out.send_many([m.bytes() for m in msgs])
    got = [inp.receive(timeout=10).to_mido() for _ in msgs]
    assert got == msgs
    stream = b"".join(bytes(m.bytes()) for m in msgs)
    assert [m.bytes() for m in mido.parse_all(stream)] == [m.bytes() for m in got]
