"""Tests for ipc.midi, the one MIDI 1.0 grammar: the table, the helpers, the assembler.

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
