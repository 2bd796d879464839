"""The capture parser's fast path against the MessageAssembler it must equal.

`kernel.midiparse.MidiStreamParser` takes runs of whole three-byte channel
messages without the assembler's loop; these tests feed it and a plain
`MessageAssembler` (built as the parser is: undefined real-time bytes
delivered) the same fragments and require the same records, in the same
order, with the same timestamps, and the same counters after every fragment.

The streams are mostly what the fast path takes (runs of note-ons, control
changes, pitch bends) with everything else mixed in at random: running
status, two-byte messages, real-time bytes inside messages, SysEx (short,
long, aborted), undefined bytes, stray data bytes, and random garbage; the
fragment boundaries fall anywhere, so a run can begin or end mid-message.
"""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipc.midi import MessageAssembler
from kernel.midiparse import MidiStreamParser

COUNTERS = ("stray_bytes", "undefined_bytes", "aborted_sysex", "messages", "in_sysex",
            "pending_bytes")


def _reference(sysex_chunk: int) -> MessageAssembler:
    return MessageAssembler(sysex_chunk, deliver_undefined_realtime=True)


def _piece(rng: random.Random) -> bytes:
    """One piece of a stream: usually a run of three-byte channel messages."""
    roll = rng.random()
    if roll < 0.55:
        return b"".join(
            bytes((rng.choice((0x80, 0x90, 0xA0, 0xB0, 0xE0)) | rng.randrange(16),
                   rng.randrange(128), rng.randrange(128)))
            for _ in range(rng.randrange(1, 40))
        )
    if roll < 0.62:  # running status: data pairs with no status byte
        return bytes(rng.randrange(128) for _ in range(2 * rng.randrange(1, 6)))
    if roll < 0.70:  # two-byte channel messages
        return bytes((rng.choice((0xC0, 0xD0)) | rng.randrange(16), rng.randrange(128)))
    if roll < 0.78:  # real-time, undefined ones included
        return bytes((rng.randrange(0xF8, 0x100),))
    if roll < 0.84:  # SysEx, sometimes long, sometimes cut short by a status byte
        body = bytes(rng.randrange(128) for _ in range(rng.choice((0, 3, 50, 300))))
        end = rng.choice((b"\xf7", b"\xf7", b"\x90", b"\xf8"))
        return b"\xf0" + body + end
    if roll < 0.90:  # system common and undefined status bytes
        return bytes((rng.choice((0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7)),
                      rng.randrange(128), rng.randrange(128)))[: rng.randrange(1, 4)]
    if roll < 0.95:  # a message cut short
        return bytes((0x90 | rng.randrange(16), rng.randrange(128)))
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12)))


def _fragments(rng: random.Random, stream: bytes) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randrange(0, 30))))
    edges = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(edges)]


def _assert_same(fragments: list[bytes], sysex_chunk: int = 4096) -> None:
    fast, ref = MidiStreamParser(sysex_chunk), _reference(sysex_chunk)
    for ts, fragment in enumerate(fragments, 1000):
        got, want = fast.feed(fragment, ts), ref.feed(fragment, ts)
        assert got == want, f"fragment {ts - 1000}: {fragment.hex()}"
        for name in COUNTERS:
            assert getattr(fast, name) == getattr(ref, name), name


@pytest.mark.parametrize("seed", range(40))
def test_the_fast_path_equals_the_assembler_on_random_streams(seed: int) -> None:
    rng = random.Random(seed)
    stream = b"".join(_piece(rng) for _ in range(rng.randrange(5, 120)))
    _assert_same(_fragments(rng, stream), sysex_chunk=rng.choice((2, 16, 4096)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=20))
def test_the_fast_path_equals_the_assembler_on_any_bytes(fragments: list[bytes]) -> None:
    _assert_same(fragments)


def test_a_whole_run_of_notes_is_sliced_into_messages() -> None:
    notes = [bytes((0x90, n, 100)) for n in range(64)]
    parser = MidiStreamParser()
    assert parser.feed(b"".join(notes), 7) == [(7, 0, n) for n in notes]
    # Running status carries on from the run's last status byte.
    assert parser.feed(bytes((60, 0)), 8) == [(8, 0, bytes((0x90, 60, 0)))]
    assert parser.messages == 65


def test_a_run_stops_at_a_realtime_byte_and_the_rest_is_assembled() -> None:
    parser = MidiStreamParser()
    data = bytes((0xB0, 7, 100, 0x90, 60)) + b"\xf8" + bytes((100, 0x80, 60, 0))
    assert parser.feed(data, 3) == [
        (3, 0, bytes((0xB0, 7, 100))),
        (3, 0, b"\xf8"),  # real-time comes out before the message it interrupted
        (3, 0, bytes((0x90, 60, 100))),
        (3, 0, bytes((0x80, 60, 0))),
    ]


def test_a_single_message_fragment_while_a_message_is_pending_is_not_taken_whole() -> None:
    parser = MidiStreamParser()
    assert parser.feed(bytes((0x90, 60)), 1) == []
    # 3 bytes that look like a whole message, but the first completes the pending one.
    assert parser.feed(bytes((100, 0x90, 61)), 2) == [(1, 0, bytes((0x90, 60, 100)))]
    assert parser.pending_bytes == 2
