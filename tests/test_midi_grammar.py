"""Tests for ipc.midi, the one MIDI 1.0 grammar: the table, the helpers, the assembler, and
the two cases its users used to settle differently (F4/F5, a SysEx aborted by a status).

tests/test_midiparse.py tests the kernel's capture parser, which is this assembler
delivering the undefined real-time bytes; the tests here are about what every user
shares, and about the cases the copies of the grammar used to settle differently.
"""

from __future__ import annotations

import itertools

import mido.messages.specs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipc.ks import DataFormat, KsState
from ipc.midi import (
    FLAG_SYSEX,
    FLAG_SYSEX_ABORTED,
    FLAG_SYSEX_MORE,
    MESSAGE_LENGTH,
    SPECS,
    UNDEFINED,
    MessageAssembler,
    Record,
    data_length,
    is_channel_status,
    is_realtime,
    is_status,
    is_undefined,
    message_length,
    spec_for,
)
from kernel.midiparse import MidiStreamParser
from miniports.midibytes import MessageFramer
from miniports.mpu401.cables import MidiFramer, NullCable
from miniports.mpu401.card import Mpu401
from miniports.mpu401.miniport import MessageTracker
from miniports.rtmidi.miniport import RtMidiMiniport

MORE = FLAG_SYSEX | FLAG_SYSEX_MORE
ABORTED = FLAG_SYSEX | FLAG_SYSEX_ABORTED


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def messages_of(records: list[Record]) -> list[bytes]:
    return [msg for _, _, msg in records]


def joined(records: list[Record]) -> list[tuple[bytes, bool]]:
    """(message, aborted) with SysEx chunks joined, in the order the messages ended."""
    wholes: list[tuple[bytes, bool]] = []
    sysex = b""
    for _, flags, msg in records:
        if not flags:
            wholes.append((msg, False))
            continue
        sysex += msg
        if not flags & FLAG_SYSEX_MORE:
            wholes.append((sysex, bool(flags & FLAG_SYSEX_ABORTED)))
            sysex = b""
    return wholes


class TestTable:
    def test_specs_are_midos(self) -> None:
        theirs = [(s["status_byte"], s["type"], s["length"]) for s in mido.messages.specs.SPECS]
        ours = [(s.status, s.name, s.length or float("inf")) for s in SPECS]
        assert ours == theirs

    def test_message_length_by_byte(self) -> None:
        expected = [0] * 256
        for status in range(0x80, 0xF0):
            expected[status] = 2 if 0xC0 <= status <= 0xDF else 3
        expected[0xF1] = expected[0xF3] = 2
        expected[0xF2] = 3
        for status in (0xF6, 0xF8, 0xFA, 0xFB, 0xFC, 0xFE, 0xFF):
            expected[status] = 1
        assert list(MESSAGE_LENGTH) == expected
        assert [message_length(b) for b in range(256)] == expected
        assert [data_length(b) for b in range(256)] == [max(n - 1, 0) for n in expected]

    def test_spec_for_every_channel(self) -> None:
        for channel in range(16):
            assert spec_for(0x90 | channel) == SPECS[1]
            assert spec_for(0xC0 | channel) is not None
        assert [spec_for(b) for b in (0x00, 0x7F, 0xF4, 0xF5, 0xF7, 0xF9, 0xFD)] == [None] * 7
        assert spec_for(0xF0) is not None and spec_for(0xF0).name == "sysex"  # type: ignore[union-attr]

    def test_helpers(self) -> None:
        assert [b for b in range(256) if is_status(b)] == list(range(0x80, 0x100))
        assert [b for b in range(256) if is_channel_status(b)] == list(range(0x80, 0xF0))
        assert [b for b in range(256) if is_realtime(b)] == list(range(0xF8, 0x100))
        assert sorted(b for b in range(256) if is_undefined(b)) == [0xF4, 0xF5, 0xF9, 0xFD]
        assert frozenset({0xF4, 0xF5, 0xF9, 0xFD}) == UNDEFINED

    def test_flags_are_the_wire_values(self) -> None:
        # The capture ring and every SDK built on it carry these numbers.
        assert (FLAG_SYSEX, FLAG_SYSEX_MORE, FLAG_SYSEX_ABORTED) == (1, 2, 4)


class TestAssembler:
    def test_running_status_and_realtime_anywhere(self) -> None:
        a = MessageAssembler()
        recs = a.feed(h("90 3c f8 40 3e 40 c1 05 fe 06"), 7)
        assert recs == [
            (7, 0, h("f8")),
            (7, 0, h("90 3c 40")),
            (7, 0, h("90 3e 40")),
            (7, 0, h("c1 05")),
            (7, 0, h("fe")),
            (7, 0, h("c1 06")),
        ]
        assert (a.stray_bytes, a.undefined_bytes, a.aborted_sysex, a.messages) == (0, 0, 0, 6)

    def test_default_timestamp_is_zero(self) -> None:
        assert MessageAssembler().feed(h("f6")) == [(0, 0, h("f6"))]

    def test_sysex_chunks_and_realtime_inside(self) -> None:
        a = MessageAssembler(4)
        recs = a.feed(h("f0 01 02 f8 03 04 05 f7"), 1)
        assert recs == [
            (1, 0, h("f8")), (1, MORE, h("f0 01 02 03")), (1, FLAG_SYSEX, h("04 05 f7"))
        ]

    def test_strays(self) -> None:
        a = MessageAssembler()
        assert messages_of(a.feed(h("01 02 f7 90 3c 80 3c 40"), 0)) == [h("80 3c 40")]
        assert a.stray_bytes == 2 + 1 + 2
        assert a.undefined_bytes == 0

    @pytest.mark.parametrize("undefined", [0xF4, 0xF5])
    def test_undefined_system_common_is_dropped_counted_and_acts_as_a_status(
        self, undefined: int
    ) -> None:
        a = MessageAssembler()
        u = bytes([undefined])
        # Cancels running status, abandons a partial message, aborts a SysEx.
        recs = a.feed(h("90 3c 40") + u + h("3c 40 90 3c") + u + h("f0 01") + u + h("c0 01"), 0)
        assert recs == [
            (0, 0, h("90 3c 40")),
            (0, ABORTED, h("f0 01")),
            (0, 0, h("c0 01")),
        ]
        assert a.undefined_bytes == 3
        assert a.stray_bytes == 3 + 2 + 2
        assert a.aborted_sysex == 1

    @pytest.mark.parametrize("undefined", [0xF9, 0xFD])
    def test_undefined_realtime_is_dropped_and_counted_without_disturbing_anything(
        self, undefined: int
    ) -> None:
        a = MessageAssembler(4)
        u = bytes([undefined])
        recs = a.feed(u + h("90 3c") + u + h("40 3e") + u + h("40 f0 01") + u + h("02 03 f7"), 0)
        assert recs == [
            (0, 0, h("90 3c 40")),
            (0, 0, h("90 3e 40")),
            (0, MORE, h("f0 01 02 03")),
            (0, FLAG_SYSEX, h("f7")),
        ]
        assert (a.undefined_bytes, a.stray_bytes, a.aborted_sysex) == (4, 4, 0)

    @pytest.mark.parametrize("undefined", [0xF9, 0xFD])
    def test_undefined_realtime_delivered_on_request(self, undefined: int) -> None:
        a = MessageAssembler(deliver_undefined_realtime=True)
        u = bytes([undefined])
        assert messages_of(a.feed(h("90 3c") + u + h("40 f0") + u + h("f7"), 0)) == [
            u, h("90 3c 40"), u, h("f0 f7")
        ]
        assert (a.undefined_bytes, a.stray_bytes) == (0, 0)

    @pytest.mark.parametrize("status", ["90 3c 40", "f1 01", "f6", "f0 02 f7"])
    def test_sysex_aborted_by_any_non_realtime_status(self, status: str) -> None:
        a = MessageAssembler()
        recs = a.feed(h("f0 01 02") + h(status), 3)
        flags = FLAG_SYSEX if status.startswith("f0") else 0
        assert recs == [(3, ABORTED, h("f0 01 02")), (3, flags, h(status))]
        assert (a.aborted_sysex, a.stray_bytes) == (1, 0)

    def test_aborted_with_everything_already_emitted_gets_an_empty_chunk(self) -> None:
        a = MessageAssembler()
        assert a.feed(h("f0 01"), 1) == [(1, MORE, h("f0 01"))]
        assert a.feed(h("b0"), 2) == [(2, ABORTED, b"")]
        assert a.aborted_sysex == 1

    def test_reset_forgets_without_counting(self) -> None:
        a = MessageAssembler()
        a.feed(h("90 3c 40 3e"), 0)
        assert a.pending_bytes == 1
        a.reset()
        assert a.pending_bytes == 0
        assert a.feed(h("40 f0 01"), 1) == [(1, MORE, h("f0 01"))]
        assert a.in_sysex
        a.reset()
        assert not a.in_sysex
        assert (a.stray_bytes, a.aborted_sysex) == (1, 0)

    def test_copy_is_independent(self) -> None:
        a = MessageAssembler(3)
        a.feed(h("01 90 3c"), 0)
        b = a.copy()
        assert type(b) is MessageAssembler
        assert a.feed(h("40"), 1) == [(0, 0, h("90 3c 40"))]
        assert b.feed(h("41"), 2) == [(0, 0, h("90 3c 41"))]
        assert b.stray_bytes == a.stray_bytes == 1
        b.feed(h("f0 01 02 03"), 3)
        assert not a.in_sysex and b.in_sysex

    def test_feed_message_stops_after_each_message(self) -> None:
        a = MessageAssembler(3)
        data = h("90 3c 40 3e f8 40 f0 01 02 03 fe 04 f7 c0")
        steps = []
        i = 0
        while i < len(data):
            i, recs = a.feed_message(data, i, 5)
            steps.append((i, recs))
        assert steps == [
            (3, [(5, 0, h("90 3c 40"))]),
            (5, [(5, 0, h("f8"))]),
            (6, [(5, 0, h("90 3e 40"))]),
            (11, [(5, MORE, h("f0 01 02")), (5, 0, h("fe")), (5, MORE, h("03"))]),
            (13, [(5, FLAG_SYSEX, h("04 f7"))]),
            (14, []),
        ]
        assert a.messages == 7

    def test_feed_message_stops_before_the_status_that_aborts(self) -> None:
        a = MessageAssembler()
        data = h("f0 01 90 3c 40")
        assert a.feed_message(data) == (2, [(0, ABORTED, h("f0 01"))])
        assert a.feed_message(data, 2) == (5, [(0, 0, h("90 3c 40"))])

    def test_rejects_tiny_chunk(self) -> None:
        with pytest.raises(ValueError):
            MessageAssembler(1)


GARBAGE = st.lists(
    st.one_of(
        st.integers(0, 0x7F),
        st.integers(0x80, 0xFF),
        st.sampled_from([0x90, 0xC0, 0xF0, 0xF7, 0xF8, 0xF4, 0xF5, 0xF9, 0xFD]),
    ),
    max_size=200,
).map(bytes)


@settings(max_examples=200, deadline=None)
@given(garbage=GARBAGE, cuts=st.lists(st.integers(0, 200), max_size=6),
       chunk=st.sampled_from([2, 3, 4096]), deliver=st.booleans())
def test_feed_and_feed_message_agree_on_any_stream(
    garbage: bytes, cuts: list[int], chunk: int, deliver: bool
) -> None:
    """Whichever way a stream is fed, the messages and the counters are the same."""
    whole = MessageAssembler(chunk, deliver_undefined_realtime=deliver)
    expected = joined(whole.feed(garbage + b"\xf6"))

    pieces = MessageAssembler(chunk, deliver_undefined_realtime=deliver)
    bounds = sorted({0, len(garbage), *(c for c in cuts if c < len(garbage))})
    got: list[Record] = []
    for a, b in itertools.pairwise(bounds):
        got += pieces.feed(garbage[a:b])
    got += pieces.feed(b"\xf6")

    stepped = MessageAssembler(chunk, deliver_undefined_realtime=deliver)
    data = garbage + b"\xf6"
    steps: list[Record] = []
    i = 0
    while i < len(data):
        i, recs = stepped.feed_message(data, i)
        assert sum(1 for _, flags, _ in recs if not flags & FLAG_SYSEX_MORE) <= 1
        steps += recs

    assert joined(got) == joined(steps) == expected
    for other in (pieces, stepped):
        assert (other.stray_bytes, other.undefined_bytes, other.aborted_sysex) == (
            whole.stray_bytes, whole.undefined_bytes, whole.aborted_sysex
        )
    undefined = sum(1 for b in garbage if b in (0xF4, 0xF5) or (not deliver and b in UNDEFINED))
    assert whole.undefined_bytes == undefined
    assert whole.aborted_sysex == sum(1 for _, aborted in expected if aborted)


# The two settled cases, across every user of the grammar: the kernel's capture parser,
# the render re-framer (rtmidi miniport), the MPU-401's rtmidi cable and the UART's tracker.


def framed(stream: bytes, refuse_every: int = 0) -> tuple[list[bytes], MessageFramer]:
    """Feed `stream` to a re-framer as the rtmidi miniport's port does, re-offering refusals."""
    framer = MessageFramer()
    sent: list[bytes] = []
    calls = 0

    def send(message: bytes) -> bool:
        nonlocal calls
        calls += 1
        if refuse_every and calls % refuse_every == 0:
            return False
        sent.append(message)
        return True

    while stream:
        stream = stream[framer.feed(stream, send) :]
    return sent, framer


@pytest.mark.parametrize("undefined", [0xF4, 0xF5])
def test_f4_f5_are_dropped_and_counted_everywhere(undefined: int) -> None:
    u = bytes([undefined])
    stream = h("90 3c 40") + u + h("3e 40 c0 05") + u + h("f8 06 b0 07 7f")
    expected = [h("90 3c 40"), h("c0 05"), h("f8"), h("b0 07 7f")]

    parser = MidiStreamParser()
    assert messages_of(parser.feed(stream, 0)) == expected
    assert (parser.undefined_bytes, parser.stray_bytes) == (2, 1 + 2 + 1 + 1)

    for refuse_every in (0, 2):
        sent, framer = framed(stream, refuse_every)
        assert sent == expected
        assert framer.statistics() == {"discarded": 5, "aborted_sysex": 0, "undefined_bytes": 2}

    cable = MidiFramer()
    assert list(cable.feed(stream)) == expected
    assert cable.statistics()["undefined_bytes"] == 2

    tracker = MessageTracker()
    for byte in h("90 3c 40 3c") + u:
        tracker.feed(byte)
    assert not tracker.inside_message  # F4/F5 ends the message and cancels running status
    tracker.feed(0x3E)
    assert not tracker.inside_message


def test_a_sysex_aborted_by_a_status_is_detected_identically_everywhere() -> None:
    stream = h("f0 7e 01 02 90 3c 40 f0 03 f8 04 c0 05 f0 06 f7")

    parser = MidiStreamParser()
    records = parser.feed(stream, 0)
    assert [(flags, msg) for _, flags, msg in records] == [
        (ABORTED, h("f0 7e 01 02")),
        (0, h("90 3c 40")),
        (0, h("f8")),
        (ABORTED, h("f0 03 04")),
        (0, h("c0 05")),
        (FLAG_SYSEX, h("f0 06 f7")),
    ]
    assert parser.aborted_sysex == 2
    # Split into chunks, the first one ends with an empty aborting chunk.
    small = MidiStreamParser(4)
    assert joined(small.feed(stream, 0)) == joined(records)
    assert small.aborted_sysex == 2

    # The re-framer cannot send half a SysEx: it drops both and counts them.
    for refuse_every in (0, 2, 3):
        sent, framer = framed(stream, refuse_every)
        assert sent == [h("90 3c 40"), h("f8"), h("c0 05"), h("f0 06 f7")]
        assert framer.aborted_sysex == 2
        assert framer.discarded == 4 + 3

    cable = MidiFramer()
    assert list(cable.feed(stream[:3])) == []
    assert list(cable.feed(stream[3:])) == [h("90 3c 40"), h("f8"), h("c0 05"), h("f0 06 f7")]
    assert cable.statistics() == {"discarded": 7, "aborted_sysex": 2, "undefined_bytes": 0}


@settings(max_examples=200, deadline=None)
@given(garbage=GARBAGE, cuts=st.lists(st.integers(0, 200), max_size=4),
       refuse_every=st.sampled_from([0, 2, 3, 5]))
def test_the_re_framer_sends_what_capture_delivers_whole(
    garbage: bytes, cuts: list[int], refuse_every: int
) -> None:
    """Whatever the stream and however the sender refuses, the re-framer sends exactly the
    complete messages the capture parser delivers (SysEx joined), less the undefined real-time
    bytes, and counts as discarded exactly what capture drops or flags aborted."""
    stream = garbage + b"\xf6"
    parser = MidiStreamParser(5)
    wholes = joined(parser.feed(stream, 0))
    expected = [m for m, aborted in wholes if not aborted and m not in (b"\xf9", b"\xfd")]
    aborted_bytes = sum(len(m) for m, aborted in wholes if aborted)
    undefined_realtime = sum(1 for b in stream if b in (0xF9, 0xFD))

    framer = MessageFramer()
    sent: list[bytes] = []
    calls = 0

    def send(message: bytes) -> bool:
        nonlocal calls
        calls += 1
        if refuse_every and calls % refuse_every == 0:
            return False
        sent.append(message)
        return True

    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    for a, b in itertools.pairwise(bounds):
        piece = stream[a:b]
        while piece:
            taken = framer.feed(piece, send)
            assert 0 <= taken <= len(piece)
            piece = piece[taken:]

    assert sent == expected
    assert framer.aborted_sysex == parser.aborted_sysex
    assert framer.undefined_bytes == parser.undefined_bytes + undefined_realtime
    assert framer.discarded == parser.stray_bytes + aborted_bytes + undefined_realtime


def test_the_rtmidi_miniport_counts_what_it_could_not_send() -> None:
    sent: list[list[int]] = []

    class FakeOut:
        def send_message(self, message: bytes) -> None:
            sent.append(list(message))

    miniport = RtMidiMiniport(api="auto", output="nowhere", pace=False)
    miniport._midi_out = FakeOut()
    stream, _ = miniport.new_stream(0, False, DataFormat())
    stream.set_state(KsState.RUN)
    data = h("f0 01 02 90 3c 40 f4 f9 f0 03")
    assert stream.write(data) == len(data)
    assert sent == [[0x90, 0x3C, 0x40]]
    expected = {"discarded": 3 + 2, "aborted_sysex": 1, "undefined_bytes": 2}
    assert {k: miniport.statistics()[k] for k in expected} == expected
    assert miniport.statistics()["sent_messages"] == 1
    stream.set_state(KsState.STOP)  # throws away the SysEx in progress, counted
    stream.close()
    assert miniport.statistics()["discarded"] == 5 + 2


def test_the_mpu401_card_reports_its_cable_counters() -> None:
    class CountingCable(NullCable):
        def statistics(self) -> dict[str, int]:
            return {"aborted_sysex": 1}

    card = Mpu401(CountingCable())
    try:
        assert card.statistics()["cable_aborted_sysex"] == 1
    finally:
        card.close()


@pytest.mark.parametrize("refuse_every", [0, 1000, 7, 2])
def test_the_re_framer_on_a_long_stream(refuse_every: int) -> None:
    """Longer than the framer's largest slice, with SysEx and running status crossing slices."""
    notes = h("90") + b"".join(bytes((i % 128, 64)) for i in range(1500))
    sysex = b"\xf0" + bytes(i % 128 for i in range(3000)) + b"\xf7"
    stream = notes + h("f8") + sysex[:1000] + h("fe") + sysex[1000:] + h("c0 01 02") + sysex[:50]
    expected = [b"\x90" + bytes((i % 128, 64)) for i in range(1500)]
    expected += [h("f8"), h("fe"), sysex, h("c0 01"), h("c0 02")]
    sent, framer = framed(stream + h("f6"), refuse_every)
    assert sent == [*expected, h("f6")]
    assert (framer.aborted_sysex, framer.discarded) == (1, 50)
