"""Tests for kernel.midiparse: unit tests per MIDI 1.0 rule, long SysEx, and property tests.

The property tests use two oracles:

* mido 1.3.3's parser.  Its tokenizer (mido/tokenizer.py) does NOT implement running status:
  after a complete message it drops data bytes until the next status byte.  A real-time byte
  outside a SysEx resets it, dropping any partial message, and it ignores F9/FD entirely.
  So mido is an oracle for the whole output only when the stream has no running-status
  compression, no F9/FD, and real-time bytes only between messages or inside a SysEx.  For
  every stream it is still an oracle for the non-real-time messages, parsed from the
  uncompressed serialisation without the inserted real-time bytes.
* The expected record list built together with the stream, and for arbitrary byte garbage a
  deliberately naive byte-at-a-time model of the specification (``reference_parse``).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import mido
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel.midiparse import (
    FLAG_SYSEX,
    FLAG_SYSEX_ABORTED,
    FLAG_SYSEX_MORE,
    MidiStreamParser,
)

Record = tuple[int, int, bytes]

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

REALTIME = bytes(range(0xF8, 0x100))
MIDO_REALTIME = bytes((0xF8, 0xFA, 0xFB, 0xFC, 0xFE, 0xFF))  # mido drops F9 and FD
# Property tests stamp fragment k with FIRST_TS + k; non-zero so a stray 0 cannot pass.
FIRST_TS = 1_000


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def feed_all(
    parser: MidiStreamParser, fragments: Iterable[bytes], first_ts: int = 0
) -> list[Record]:
    """Feed fragments with timestamps first_ts, first_ts + 1, ...; return all records."""
    out: list[Record] = []
    for ts, fragment in enumerate(fragments, first_ts):
        out.extend(parser.feed(fragment, ts))
    return out


def messages_of(records: Sequence[Record]) -> list[bytes]:
    return [msg for _, _, msg in records]


def fragment_index(starts: Sequence[int], pos: int) -> int:
    """Index of the fragment (given by sorted start offsets) that holds stream offset pos."""
    return bisect.bisect_right(starts, pos) - 1


@dataclass
class Whole:
    """A message reassembled from records: SysEx chunks joined, placed at its last chunk and
    stamped with its first chunk's timestamp."""

    ts: int
    data: bytes
    aborted: bool = False


def reassemble(records: Sequence[Record], sysex_chunk: int) -> list[Whole]:
    """Join SysEx chunks, checking the chunk contract on the way."""
    wholes: list[Whole] = []
    pending: Whole | None = None
    for ts, flags, msg in records:
        assert type(msg) is bytes
        assert flags & ~(FLAG_SYSEX | FLAG_SYSEX_MORE | FLAG_SYSEX_ABORTED) == 0
        if not flags & FLAG_SYSEX:
            assert flags == 0
            assert msg, "only SysEx chunks may be empty"
            # Only real-time bytes can come out while a SysEx is in progress.
            assert pending is None or (len(msg) == 1 and msg[0] >= 0xF8)
            wholes.append(Whole(ts, msg))
            continue
        assert len(msg) <= sysex_chunk
        assert not (flags & FLAG_SYSEX_MORE and flags & FLAG_SYSEX_ABORTED)
        body = msg
        if pending is None:
            assert body[:1] == b"\xf0", "a SysEx starts with F0"
            body = body[1:]
            pending = Whole(ts, b"")
        pending.data += msg
        if flags & FLAG_SYSEX_MORE:
            assert msg, "a MORE chunk carries bytes"
        elif flags & FLAG_SYSEX_ABORTED:
            pending.aborted = True
        else:
            assert body[-1:] == b"\xf7", "a complete SysEx ends with F7"
            body = body[:-1]
        assert max(body, default=0) < 0x80, "only data bytes between F0 and F7"
        if not flags & FLAG_SYSEX_MORE:
            wholes.append(pending)
            pending = None
    return wholes


def channel_length(status: int) -> int:
    return 2 if 0xC0 <= status <= 0xDF else 3


def reference_parse(stream: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """The specification, one byte at a time with no fast paths.

    Returns the messages in the order they complete, each with the stream index of its first
    input byte (SysEx whole; an aborted one lacks the F7), and the number of stray bytes.
    A SysEx still open at the end is left out.
    """
    out: list[tuple[int, bytes]] = []
    stray = 0
    running = 0
    partial: list[int] | None = None
    first = 0  # stream index of the partial message's (or SysEx's) first input byte
    taken = 0  # input bytes in the partial message
    need = 0
    sysex: list[int] | None = None
    for pos, b in enumerate(stream):
        if b >= 0xF8:
            out.append((pos, bytes([b])))
            continue
        if sysex is not None:
            if b < 0x80:
                sysex.append(b)
                continue
            if b == 0xF7:
                out.append((first, bytes([*sysex, b])))
                sysex = None
                continue
            out.append((first, bytes(sysex)))
            sysex = None
        if b < 0x80:
            if partial is None:
                if not running:
                    stray += 1
                    continue
                partial, first, taken, need = [running], pos, 0, channel_length(running) - 1
            partial.append(b)
            taken += 1
            need -= 1
            if need == 0:
                out.append((first, bytes(partial)))
                partial = None
            continue
        if partial is not None:
            stray += taken
            partial = None
        first = pos
        if b < 0xF0:
            running = b
            partial, taken, need = [b], 1, channel_length(b) - 1
            continue
        running = 0
        if b == 0xF0:
            sysex = [b]
        elif b == 0xF6:
            out.append((pos, bytes([b])))
        elif b in (0xF1, 0xF3):
            partial, taken, need = [b], 1, 1
        elif b == 0xF2:
            partial, taken, need = [b], 1, 2
        else:
            stray += 1
    return out, stray


def test_reference_parse_sanity() -> None:
    assert reference_parse(h("90 3c 40 3c 00 f8 c0 05 06 f4 05 f0 01 f7 f0 02 c0")) == (
        [
            (0, h("90 3c 40")),
            (3, h("90 3c 00")),
            (5, h("f8")),
            (6, h("c0 05")),
            (8, h("c0 06")),
            (11, h("f0 01 f7")),
            (14, h("f0 02")),
        ],
        2,
    )


class TestConstruction:
    def test_rejects_tiny_chunk(self) -> None:
        for bad in (1, 0, -5):
            with pytest.raises(ValueError):
                MidiStreamParser(bad)

    def test_minimum_chunk(self) -> None:
        p = MidiStreamParser(2)
        recs = p.feed(h("f0 01 02 03 f7"), 5)
        assert recs == [
            (5, FLAG_SYSEX | FLAG_SYSEX_MORE, h("f0 01")),
            (5, FLAG_SYSEX | FLAG_SYSEX_MORE, h("02 03")),
            (5, FLAG_SYSEX, h("f7")),
        ]

    def test_counters_start_at_zero(self) -> None:
        p = MidiStreamParser()
        assert (p.stray_bytes, p.messages) == (0, 0)
        assert p.feed(b"", 0) == []

    def test_accepts_bytearray_and_memoryview(self) -> None:
        p = MidiStreamParser()
        recs = p.feed(bytearray(h("90 3c")), 1) + p.feed(memoryview(h("40 c0 01")), 2)
        assert recs == [(1, 0, h("90 3c 40")), (2, 0, h("c0 01"))]
        assert all(type(m) is bytes for _, _, m in recs)


class TestChannelMessages:
    @pytest.mark.parametrize("status", [0x80, 0x9F, 0xA3, 0xB0, 0xC0, 0xCF, 0xD7, 0xE0, 0xEF])
    def test_lengths(self, status: int) -> None:
        msg = bytes([status, 0x12, 0x34][: channel_length(status)])
        running = bytes([status]) + b"\x7f" * (len(msg) - 1)
        p = MidiStreamParser()
        recs = p.feed(msg + b"\x7f" * 4 + b"\xf6", 9)
        assert recs == [(9, 0, msg), *[(9, 0, running)] * (4 // (len(msg) - 1)), (9, 0, b"\xf6")]
        assert p.stray_bytes == 0

    def test_running_status_expanded(self) -> None:
        p = MidiStreamParser()
        recs = p.feed(h("90 3c 40 3e 40 40 00 c1 05 06 07"), 0)
        assert messages_of(recs) == [
            h("90 3c 40"),
            h("90 3e 40"),
            h("90 40 00"),
            h("c1 05"),
            h("c1 06"),
            h("c1 07"),
        ]
        assert p.stray_bytes == 0
        assert p.messages == 6

    def test_running_status_across_every_split(self) -> None:
        stream = h("b0 07 64 0a 40 0b 7f e0 00 40 7f 7f d0 10 20")
        expected = [
            h("b0 07 64"),
            h("b0 0a 40"),
            h("b0 0b 7f"),
            h("e0 00 40"),
            h("e0 7f 7f"),
            h("d0 10"),
            h("d0 20"),
        ]
        for a in range(len(stream) + 1):
            for b in range(a, len(stream) + 1):
                p = MidiStreamParser()
                recs = feed_all(p, [stream[:a], stream[a:b], stream[b:]])
                assert messages_of(recs) == expected
                assert all(flags == 0 for _, flags, _ in recs)

    def test_one_byte_fragments(self) -> None:
        stream = h("90 3c 40 3c 00 f8 3e 40 c0 01 f8 02")
        p = MidiStreamParser()
        recs = feed_all(p, [bytes([b]) for b in stream])
        assert recs == [
            (0, 0, h("90 3c 40")),
            (3, 0, h("90 3c 00")),
            (5, 0, h("f8")),
            (6, 0, h("90 3e 40")),
            (8, 0, h("c0 01")),
            (10, 0, h("f8")),
            (11, 0, h("c0 02")),
        ]

    def test_timestamp_is_first_byte_fragment(self) -> None:
        p = MidiStreamParser()
        assert p.feed(h("90"), 100) == []
        assert p.feed(h("3c"), 200) == []
        assert p.feed(h("40 3e"), 300) == [(100, 0, h("90 3c 40"))]
        # Running-status message: stamped with its first data byte's fragment.
        assert p.feed(h("41"), 400) == [(300, 0, h("90 3e 41"))]
        assert p.feed(h("f8 42"), 500) == [(500, 0, h("f8"))]
        assert p.feed(h("43"), 600) == [(500, 0, h("90 42 43"))]


class TestSystemCommon:
    def test_messages(self) -> None:
        p = MidiStreamParser()
        recs = p.feed(h("f1 23 f2 01 02 f3 05 f6"), 7)
        assert recs == [
            (7, 0, h("f1 23")),
            (7, 0, h("f2 01 02")),
            (7, 0, h("f3 05")),
            (7, 0, h("f6")),
        ]
        assert p.stray_bytes == 0

    @pytest.mark.parametrize("common", ["f1 00", "f2 00 00", "f3 00", "f6"])
    def test_cancels_running_status(self, common: str) -> None:
        p = MidiStreamParser()
        recs = p.feed(h("90 3c 40") + h(common) + h("3c 40"), 0)
        assert messages_of(recs) == [h("90 3c 40"), h(common)]
        assert p.stray_bytes == 2

    def test_data_after_complete_common_is_stray(self) -> None:
        p = MidiStreamParser()
        recs = p.feed(h("f3 01 02 03"), 0)
        assert messages_of(recs) == [h("f3 01")]
        assert p.stray_bytes == 2

    def test_split_across_fragments(self) -> None:
        p = MidiStreamParser()
        recs = feed_all(p, [h("f2"), h("10"), h("20 f1"), h("7f")], 10)
        assert recs == [(10, 0, h("f2 10 20")), (12, 0, h("f1 7f"))]

    @pytest.mark.parametrize("undefined", [0xF4, 0xF5])
    def test_undefined_dropped_and_cancel_running_status(self, undefined: int) -> None:
        p = MidiStreamParser()
        recs = p.feed(h("90 3c 40") + bytes([undefined]) + h("3c 40 c0 01"), 0)
        assert messages_of(recs) == [h("90 3c 40"), h("c0 01")]
        assert p.stray_bytes == 3

    def test_undefined_abandons_partial(self) -> None:
        p = MidiStreamParser()
        recs = p.feed(h("90 3c f5 40"), 0)
        assert recs == []
        assert p.stray_bytes == 4

    def test_stray_f7(self) -> None:
        p = MidiStreamParser()
        recs = p.feed(h("f7 90 3c 40 f7 3c 40"), 0)
        assert messages_of(recs) == [h("90 3c 40")]
        # The stray F7 is a (system common) status byte: it cancels running status too.
        assert p.stray_bytes == 4


class TestRealTime:
    @pytest.mark.parametrize("rt", list(REALTIME))
    def test_single_byte_messages(self, rt: int) -> None:
        p = MidiStreamParser()
        assert p.feed(bytes([rt, rt]), 3) == [(3, 0, bytes([rt]))] * 2
        assert p.stray_bytes == 0

    @pytest.mark.parametrize("pos", [1, 2])
    def test_inside_note_on(self, pos: int) -> None:
        note = h("90 3c 40")
        p = MidiStreamParser()
        recs = p.feed(note[:pos] + h("f8") + note[pos:], 1)
        assert recs == [(1, 0, h("f8")), (1, 0, note)]

    def test_inside_running_status(self) -> None:
        p = MidiStreamParser()
        recs = p.feed(h("90 3c 40 f8 3e fe 41 fa 40 00"), 1)
        assert messages_of(recs) == [
            h("90 3c 40"),
            h("f8"),
            h("fe"),
            h("90 3e 41"),
            h("fa"),
            h("90 40 00"),
        ]

    def test_inside_system_common(self) -> None:
        p = MidiStreamParser()
        recs = p.feed(h("f2 01 fc 02"), 1)
        assert messages_of(recs) == [h("fc"), h("f2 01 02")]

    def test_does_not_cancel_running_status_across_fragments(self) -> None:
        p = MidiStreamParser()
        recs = feed_all(p, [h("c5 01"), h("f9"), h("fd 02")], 1)
        assert recs == [(1, 0, h("c5 01")), (2, 0, h("f9")), (3, 0, h("fd")), (3, 0, h("c5 02"))]

    def test_own_timestamp_inside_partial(self) -> None:
        p = MidiStreamParser()
        recs = feed_all(p, [h("90"), h("3c ff"), h("40")], 50)
        assert recs == [(51, 0, h("ff")), (50, 0, h("90 3c 40"))]

    def test_inside_sysex(self) -> None:
        p = MidiStreamParser()
        recs = p.feed(h("f0 7e f8 01 fe f7"), 4)
        assert recs == [(4, 0, h("f8")), (4, 0, h("fe")), (4, FLAG_SYSEX, h("f0 7e 01 f7"))]


class TestStrayAndAbandon:
    def test_data_at_start(self) -> None:
        p = MidiStreamParser()
        assert p.feed(h("01 02 03 90 3c 40"), 0) == [(0, 0, h("90 3c 40"))]
        assert p.stray_bytes == 3

    def test_data_after_sysex(self) -> None:
        p = MidiStreamParser()
        recs = p.feed(h("90 3c 40 f0 01 f7 3c 40"), 0)
        assert messages_of(recs) == [h("90 3c 40"), h("f0 01 f7")]
        assert p.stray_bytes == 2

    def test_partial_abandoned_by_status(self) -> None:
        p = MidiStreamParser()
        recs = p.feed(h("90 3c 80 3c 40"), 0)
        assert messages_of(recs) == [h("80 3c 40")]
        assert p.stray_bytes == 2

    def test_partial_abandoned_across_fragments(self) -> None:
        p = MidiStreamParser()
        recs = feed_all(p, [h("e0 01"), h("b0 07"), h("64")])
        assert recs == [(1, 0, h("b0 07 64"))]
        assert p.stray_bytes == 2

    def test_running_status_partial_counts_only_input_bytes(self) -> None:
        p = MidiStreamParser()
        recs = p.feed(h("90 3c 40 3e c0 01"), 0)
        assert messages_of(recs) == [h("90 3c 40"), h("c0 01")]
        assert p.stray_bytes == 1

    def test_common_partial_abandoned(self) -> None:
        p = MidiStreamParser()
        recs = p.feed(h("f2 01 f3 05"), 0)
        assert messages_of(recs) == [h("f3 05")]
        assert p.stray_bytes == 2

    def test_partial_abandoned_by_sysex(self) -> None:
        p = MidiStreamParser()
        recs = p.feed(h("90 3c f0 01 f7"), 0)
        assert messages_of(recs) == [h("f0 01 f7")]
        assert p.stray_bytes == 2


class TestSysEx:
    def test_whole_in_one_feed(self) -> None:
        p = MidiStreamParser()
        assert p.feed(h("f0 7e 7f 09 01 f7"), 3) == [(3, FLAG_SYSEX, h("f0 7e 7f 09 01 f7"))]
        assert p.messages == 1

    def test_empty_payload(self) -> None:
        p = MidiStreamParser()
        assert p.feed(h("f0 f7"), 3) == [(3, FLAG_SYSEX, h("f0 f7"))]

    def test_flushed_at_feed_end(self) -> None:
        p = MidiStreamParser()
        recs = feed_all(p, [h("f0"), h("01 02"), b"", h("03"), h("f7")], 10)
        more = FLAG_SYSEX | FLAG_SYSEX_MORE
        assert recs == [
            (10, more, h("f0")),
            (11, more, h("01 02")),
            (13, more, h("03")),
            (14, FLAG_SYSEX, h("f7")),
        ]

    def test_chunking(self) -> None:
        p = MidiStreamParser(4)
        recs = p.feed(h("f0 01 02 03 04 05 06 f7"), 0)
        assert recs == [
            (0, FLAG_SYSEX | FLAG_SYSEX_MORE, h("f0 01 02 03")),
            (0, FLAG_SYSEX, h("04 05 06 f7")),
        ]

    def test_f7_alone_after_full_chunk(self) -> None:
        p = MidiStreamParser(4)
        recs = p.feed(h("f0 01 02 03 04 05 06 07 f7"), 0)
        more = FLAG_SYSEX | FLAG_SYSEX_MORE
        assert recs == [
            (0, more, h("f0 01 02 03")),
            (0, more, h("04 05 06 07")),
            (0, FLAG_SYSEX, h("f7")),
        ]

    def test_aborted_by_status(self) -> None:
        p = MidiStreamParser()
        recs = p.feed(h("f0 01 02 90 3c 40"), 8)
        assert recs == [(8, FLAG_SYSEX | FLAG_SYSEX_ABORTED, h("f0 01 02")), (8, 0, h("90 3c 40"))]
        assert p.stray_bytes == 0

    def test_aborted_with_nothing_pending(self) -> None:
        p = MidiStreamParser()
        recs = feed_all(p, [h("f0 01"), h("f6")], 1)
        assert recs == [
            (1, FLAG_SYSEX | FLAG_SYSEX_MORE, h("f0 01")),
            (2, FLAG_SYSEX | FLAG_SYSEX_ABORTED, b""),
            (2, 0, h("f6")),
        ]

    def test_aborted_after_full_chunk(self) -> None:
        p = MidiStreamParser(3)
        recs = p.feed(h("f0 01 02 f1 05"), 0)
        assert recs == [
            (0, FLAG_SYSEX | FLAG_SYSEX_MORE, h("f0 01 02")),
            (0, FLAG_SYSEX | FLAG_SYSEX_ABORTED, b""),
            (0, 0, h("f1 05")),
        ]

    def test_aborted_by_new_sysex(self) -> None:
        p = MidiStreamParser()
        recs = p.feed(h("f0 01 f0 02 f7"), 0)
        assert recs == [
            (0, FLAG_SYSEX | FLAG_SYSEX_ABORTED, h("f0 01")),
            (0, FLAG_SYSEX, h("f0 02 f7")),
        ]

    @pytest.mark.parametrize("status", [0xF4, 0xF5])
    def test_aborted_by_undefined_status(self, status: int) -> None:
        p = MidiStreamParser()
        recs = p.feed(h("f0 01") + bytes([status]) + h("02"), 0)
        assert recs == [(0, FLAG_SYSEX | FLAG_SYSEX_ABORTED, h("f0 01"))]
        assert p.stray_bytes == 2

    def test_cancels_running_status(self) -> None:
        p = MidiStreamParser()
        recs = p.feed(h("90 3c 40 f0 f7 3c 40"), 0)
        assert messages_of(recs) == [h("90 3c 40"), h("f0 f7")]
        assert p.stray_bytes == 2

    def test_realtime_keeps_chunk_intact(self) -> None:
        p = MidiStreamParser(4)
        recs = p.feed(h("f0 01 f8 02 03 f8 04 f7"), 0)
        more = FLAG_SYSEX | FLAG_SYSEX_MORE
        assert recs == [
            (0, 0, h("f8")),
            (0, more, h("f0 01 02 03")),
            (0, 0, h("f8")),
            (0, FLAG_SYSEX, h("04 f7")),
        ]


class TestReset:
    def test_forgets_running_status_and_partial(self) -> None:
        p = MidiStreamParser()
        p.feed(h("90 3c 40 3e"), 0)
        p.reset()
        assert p.feed(h("40 01"), 1) == []
        assert p.stray_bytes == 2
        assert p.feed(h("80 3c 40"), 2) == [(2, 0, h("80 3c 40"))]

    def test_forgets_sysex(self) -> None:
        p = MidiStreamParser()
        p.feed(h("f0 01"), 0)
        p.reset()
        assert p.feed(h("02 f7 c0 01"), 1) == [(1, 0, h("c0 01"))]
        assert p.stray_bytes == 2

    def test_keeps_counters(self) -> None:
        p = MidiStreamParser()
        p.feed(h("01 90 3c 40"), 0)
        p.reset()
        assert (p.stray_bytes, p.messages) == (1, 1)


@pytest.mark.parametrize("payload_len", [0, 1, 4094, 4095, 4096, 65536, 1 << 20])
def test_long_sysex_random_fragments(payload_len: int) -> None:
    rng = random.Random(payload_len)
    payload = rng.randbytes(payload_len).translate(bytes(b & 0x7F for b in range(256)))
    stream = b"\xf0" + payload + b"\xf7"
    # Tiny fragments only where they stay cheap: a 1 MiB dump in 2-byte fragments is slow to feed.
    max_fragment = rng.choice([3, 64, 4096, 20000] if payload_len <= 65536 else [64, 4096, 20000])
    fragments: list[bytes] = []
    starts: list[int] = []  # stream offset of each fragment
    pos = 0
    while pos < len(stream):
        size = rng.randint(1, max_fragment)
        starts.append(pos)
        fragments.append(stream[pos : pos + size])
        pos += size

    p = MidiStreamParser(4096)
    recs = feed_all(p, fragments, 1000)
    (whole,) = reassemble(recs, 4096)
    assert not whole.aborted
    assert whole.data == stream
    assert all(flags & FLAG_SYSEX for _, flags, _ in recs)
    assert [flags & FLAG_SYSEX_MORE for _, flags, _ in recs[:-1]] == [FLAG_SYSEX_MORE] * (
        len(recs) - 1
    )
    # Each chunk is stamped with the fragment holding its first byte.
    offset = 0
    for ts, _, chunk in recs:
        assert ts == 1000 + fragment_index(starts, offset)
        offset += len(chunk)
    assert p.messages == len(recs)
    assert p.stray_bytes == 0


# Hypothesis strategies: valid mido messages.
channels = st.integers(0, 15)
data7 = st.integers(0, 127)
CHANNEL_FIELDS: dict[str, dict[str, st.SearchStrategy[int]]] = {
    "note_on": {"note": data7, "velocity": data7},
    "note_off": {"note": data7, "velocity": data7},
    "polytouch": {"note": data7, "value": data7},
    "control_change": {"control": data7, "value": data7},
    "program_change": {"program": data7},
    "aftertouch": {"value": data7},
    "pitchwheel": {"pitch": st.integers(-8192, 8191)},
}


@st.composite
def channel_runs(draw: st.DrawFn) -> list[mido.Message]:
    """1-5 channel messages sharing one status, so that running status gets exercised."""
    kind = draw(st.sampled_from(sorted(CHANNEL_FIELDS)))
    channel = draw(channels)
    fields = st.fixed_dictionaries(CHANNEL_FIELDS[kind])
    count = draw(st.integers(1, 5))
    return [mido.Message(kind, channel=channel, **draw(fields)) for _ in range(count)]


OTHER_MESSAGES = st.one_of(
    st.builds(
        mido.Message,
        st.just("sysex"),
        data=st.one_of(st.lists(data7, max_size=12), st.lists(data7, min_size=30, max_size=300)),
    ),
    st.builds(
        mido.Message,
        st.just("quarter_frame"),
        frame_type=st.integers(0, 7),
        frame_value=st.integers(0, 15),
    ),
    st.builds(mido.Message, st.just("songpos"), pos=st.integers(0, 16383)),
    st.builds(mido.Message, st.just("song_select"), song=data7),
    st.sampled_from(
        [
            mido.Message(kind)
            for kind in (
                "tune_request",
                "clock",
                "start",
                "continue",
                "stop",
                "active_sensing",
                "reset",
            )
        ]
    ),
)
MESSAGES = st.lists(
    st.one_of(channel_runs(), channel_runs(), OTHER_MESSAGES.map(lambda msg: [msg])), max_size=15
).map(lambda runs: [msg for run in runs for msg in run])


@dataclass
class Built:
    """A byte stream plus what it must parse to."""

    wire: bytearray = field(default_factory=bytearray)
    # (index of first byte, index of last byte, message) per expected message.
    events: list[tuple[int, int, bytes]] = field(default_factory=list)
    mido_safe: bool = True  # mido's parser sees the same messages in `wire`


def build_stream(
    msgs: Sequence[mido.Message],
    compress: Sequence[bool],
    inserts: Sequence[tuple[int, int]],
) -> Built:
    """Serialise msgs, dropping repeated channel status where compress says, and insert
    real-time bytes (position in the serialised stream, byte) before the given positions."""
    plain = bytearray()
    spans: list[tuple[int, int, bytes]] = []  # (start, end exclusive, message)
    sysex_spans: list[tuple[int, int]] = []
    running = 0
    compressed = False
    for msg, squeeze in zip(msgs, compress, strict=True):
        raw = bytes(msg.bytes())
        status = raw[0]
        start = len(plain)
        if 0x80 <= status < 0xF0 and status == running and squeeze:
            plain += raw[1:]
            compressed = True
        else:
            plain += raw
        if 0x80 <= status < 0xF0:
            running = status
        elif status < 0xF8:
            running = 0
        if status == 0xF0:
            sysex_spans.append((start, len(plain)))
        spans.append((start, len(plain), raw))

    boundaries = {start for start, _, _ in spans} | {len(plain)}
    by_pos: dict[int, list[int]] = {}
    for pos, rt in inserts:
        by_pos.setdefault(min(pos, len(plain)), []).append(rt)

    built = Built(mido_safe=not compressed)
    new_index = [0] * (len(plain) + 1)
    for pos in range(len(plain) + 1):
        for rt in by_pos.get(pos, ()):
            in_sysex = any(a < pos < b for a, b in sysex_spans)
            if rt not in MIDO_REALTIME or not (pos in boundaries or in_sysex):
                built.mido_safe = False
            built.events.append((len(built.wire), len(built.wire), bytes([rt])))
            built.wire.append(rt)
        new_index[pos] = len(built.wire)
        if pos < len(plain):
            built.wire.append(plain[pos])
    for start, end, raw in spans:
        built.events.append((new_index[start], new_index[end - 1], raw))
    built.events.sort(key=lambda e: e[1])
    return built


def draw_fragments(data: st.DataObject, stream: bytes) -> tuple[list[bytes], list[int]]:
    """Split stream at random points; return the fragments and each one's start offset."""
    cuts = data.draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=12))
    starts = sorted({0, *(c for c in cuts if c < len(stream))})
    ends = [*starts[1:], len(stream)]
    return [stream[a:b] for a, b in zip(starts, ends, strict=True)], starts


@st.composite
def message_streams(draw: st.DrawFn, mido_safe: bool = False) -> tuple[list[mido.Message], Built]:
    """Valid messages and their stream; with mido_safe, one that mido parses identically."""
    msgs = draw(MESSAGES)
    if mido_safe:
        compress = [False] * len(msgs)
        # Between messages, or anywhere inside a SysEx.
        allowed: list[int] = [0]
        pos = 0
        for msg in msgs:
            raw = msg.bytes()
            if raw[0] == 0xF0:
                allowed.extend(range(pos + 1, pos + len(raw)))
            pos += len(raw)
            allowed.append(pos)
        positions = st.sampled_from(allowed)
        realtime = MIDO_REALTIME
    else:
        compress = draw(st.lists(st.booleans(), min_size=len(msgs), max_size=len(msgs)))
        positions = st.integers(0, sum(len(m.bytes()) for m in msgs))
        realtime = REALTIME
    inserts = draw(st.lists(st.tuples(positions, st.sampled_from(list(realtime))), max_size=8))
    return msgs, build_stream(msgs, compress, inserts)


def check_against_expectation(
    msgs: Sequence[mido.Message], built: Built, data: st.DataObject, sysex_chunk: int
) -> list[bytes]:
    wire = bytes(built.wire)
    fragments, starts = draw_fragments(data, wire)
    p = MidiStreamParser(sysex_chunk)
    recs = feed_all(p, fragments, FIRST_TS)
    wholes = reassemble(recs, sysex_chunk)

    expected = [(FIRST_TS + fragment_index(starts, first), msg) for first, _, msg in built.events]
    assert [(w.ts, w.data) for w in wholes] == expected
    assert not any(w.aborted for w in wholes)
    assert p.stray_bytes == 0
    assert p.messages == len(recs)

    # mido agrees on the non-real-time messages of the uncompressed, real-time-free stream.
    ours = [w.data for w in wholes]
    plain = b"".join(bytes(m.bytes()) for m in msgs if m.bytes()[0] < 0xF8)
    assert [bytes(m.bytes()) for m in mido.parse_all(plain)] == [m for m in ours if m[0] < 0xF8]
    if built.mido_safe:
        assert [bytes(m.bytes()) for m in mido.parse_all(wire)] == ours
    return ours


@SETTINGS
@given(
    streams=message_streams(),
    data=st.data(),
    sysex_chunk=st.sampled_from([2, 3, 7, 64, 4096]),
)
def test_messages_with_running_status_and_realtime(
    streams: tuple[list[mido.Message], Built], data: st.DataObject, sysex_chunk: int
) -> None:
    msgs, built = streams
    check_against_expectation(msgs, built, data, sysex_chunk)


@SETTINGS
@given(
    streams=message_streams(mido_safe=True),
    data=st.data(),
    sysex_chunk=st.sampled_from([2, 5, 4096]),
)
def test_mido_is_oracle_for_plain_streams(
    streams: tuple[list[mido.Message], Built], data: st.DataObject, sysex_chunk: int
) -> None:
    msgs, built = streams
    assert built.mido_safe
    ours = check_against_expectation(msgs, built, data, sysex_chunk)
    assert ours == [bytes(m.bytes()) for m in mido.parse_all(bytes(built.wire))]


def explicit_channel_statuses(stream: bytes) -> int:
    """Channel status bytes in stream followed, real-time bytes aside, by all their data.

    Exactly these start an emitted message with a status byte taken from the input; every
    other emitted channel message got its status byte from running status.
    """
    count = 0
    for pos, status in enumerate(stream):
        if not 0x80 <= status < 0xF0:
            continue
        need = channel_length(status) - 1
        for b in stream[pos + 1 :]:
            if b >= 0xF8:
                continue
            if b >= 0x80:
                break
            need -= 1
            if not need:
                count += 1
                break
    return count


GARBAGE = st.lists(
    st.one_of(
        st.integers(0, 0x7F),
        st.integers(0x80, 0xFF),
        st.sampled_from([0x90, 0xC0, 0xF0, 0xF7, 0xF8, 0xF2, 0xF4]),
    ),
    max_size=300,
).map(bytes)


@SETTINGS
@given(garbage=GARBAGE, data=st.data(), sysex_chunk=st.sampled_from([2, 5, 4096]))
def test_garbage_matches_reference_and_accounts_for_every_byte(
    garbage: bytes, data: st.DataObject, sysex_chunk: int
) -> None:
    # A final F6 abandons or aborts whatever is pending and completes at once, so afterwards
    # nothing of the input is held inside the parser.
    stream = garbage + b"\xf6"
    fragments, starts = draw_fragments(data, stream)
    p = MidiStreamParser(sysex_chunk)
    recs = feed_all(p, fragments, FIRST_TS)
    wholes = reassemble(recs, sysex_chunk)

    ref_msgs, ref_stray = reference_parse(stream)
    assert [(w.ts, w.data, w.aborted) for w in wholes] == [
        (FIRST_TS + fragment_index(starts, first), msg, msg[-1] != 0xF7 and msg[0] == 0xF0)
        for first, msg in ref_msgs
    ]
    assert p.stray_bytes == ref_stray
    assert p.messages == len(recs)
    for ts, flags, msg in recs:
        assert FIRST_TS <= ts < FIRST_TS + len(fragments)
        if flags:
            continue
        status = msg[0]
        assert status >= 0x80 and all(b < 0x80 for b in msg[1:])
        if status < 0xF0:
            assert len(msg) == channel_length(status)
        else:
            assert len(msg) == {0xF1: 2, 0xF2: 3, 0xF3: 2}.get(status, 1)
            assert status not in (0xF0, 0xF4, 0xF5, 0xF7)

    # Accounting: every input byte is in exactly one record or counted stray; the records'
    # only extra bytes are the status bytes of running-status messages.
    emitted = sum(len(msg) for _, _, msg in recs)
    channel_messages = sum(1 for _, flags, msg in recs if not flags and msg[0] < 0xF0)
    expansions = channel_messages - explicit_channel_statuses(stream)
    assert expansions >= 0
    assert emitted - expansions + p.stray_bytes == len(stream)


@SETTINGS
@given(
    chunks=st.lists(
        st.tuples(
            st.binary(max_size=64),
            st.sampled_from(["bytes", "bytearray", "memoryview"]),
            st.booleans(),
        ),
        max_size=20,
    ),
    sysex_chunk=st.integers(2, 70),
)
def test_random_bytes_never_raise(chunks: list[tuple[bytes, str, bool]], sysex_chunk: int) -> None:
    p = MidiStreamParser(sysex_chunk)
    total = 0
    for ts, (chunk, kind, reset) in enumerate(chunks):
        arg: bytes | bytearray | memoryview = chunk
        if kind == "bytearray":
            arg = bytearray(chunk)
        elif kind == "memoryview":
            arg = memoryview(chunk)
        recs = p.feed(arg, ts)
        total += len(recs)
        for rts, flags, msg in recs:
            assert type(rts) is int and rts <= ts
            assert type(flags) is int
            assert type(msg) is bytes
            assert len(msg) <= max(3, sysex_chunk)
        if reset:
            p.reset()
    assert p.messages == total
    assert 0 <= p.stray_bytes <= sum(len(c) for c, _, _ in chunks)
