"""The DirectMusic buffer grammar (ipc.dmusic): DMUS_EVENTHEADER packing, the validating
decoder, random round trips, and each malformation named with its offset; and the SDK's
wrapper (ksclient.dmusic) raising the SDK's framing error."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipc.dmusic import (
    DMUS_EVENT_STRUCTURED,
    EVENT_HEADER,
    MAX_CHANNEL_GROUP,
    DmusEvent,
    DmusFramingError,
    event_size,
    pack_buffer,
    unpack_buffer,
)
from ipc.midi import SPECS
from ipc.status import Status
from ksclient import dmusic, errors

STRUCTURED = DMUS_EVENT_STRUCTURED


def header(cb: int, group: int = 1, delta: int = 0, flags: int = STRUCTURED) -> bytes:
    return EVENT_HEADER.pack(cb, group, delta, flags)


def test_the_layout_is_dmusbuff_h() -> None:
    # DMUS_EVENTHEADER is packed to 4: 20 bytes; data follows at once; QWORD-aligned events.
    assert EVENT_HEADER.size == 20
    assert [event_size(n) for n in (1, 3, 4, 5, 12, 13)] == [24, 24, 24, 32, 32, 40]
    buf = pack_buffer([DmusEvent(3, 1000, STRUCTURED, b"\x90\x3c\x40"),
                       DmusEvent(1, 0, 0, b"\xf0\x01\x02\x03\x04\xf7")])
    assert buf.hex() == (
        "03000000" "03000000" "e803000000000000" "01000000" "903c40" "00"
        "06000000" "01000000" "0000000000000000" "00000000" "f001020304f7" "000000000000"
    )
    assert unpack_buffer(buf) == [(3, 1000, STRUCTURED, b"\x90\x3c\x40"),
                                  (1, 0, 0, b"\xf0\x01\x02\x03\x04\xf7")]
    assert unpack_buffer(b"") == [] and pack_buffer([]) == b""


def test_sysex_pieces_and_every_structured_kind_are_accepted() -> None:
    events = [DmusEvent(1, 0, 0, piece)
              for piece in (b"\xf0", b"\x01", b"\xf7", b"\xf0\xf7", b"\xf0\x7f", b"\x00\xf7")]
    for spec in SPECS:
        if spec.status != 0xF0:
            msg = bytes([spec.status]) + bytes(spec.length - 1)
            events.append(DmusEvent(MAX_CHANNEL_GROUP, (1 << 63) - 1, STRUCTURED, msg))
    assert unpack_buffer(pack_buffer(events)) == events


midi_messages = st.sampled_from([s for s in SPECS if s.status != 0xF0]).flatmap(
    lambda spec: st.tuples(
        st.integers(0, 15 if spec.is_channel else 0),
        st.lists(st.integers(0, 0x7F), min_size=spec.length - 1, max_size=spec.length - 1),
    ).map(lambda cd: bytes([spec.status + cd[0], *cd[1]])))
sysex_bytes = st.tuples(st.booleans(), st.binary(max_size=40), st.booleans()).map(
    lambda t: (b"\xf0" if t[0] else b"") + bytes(b & 0x7F for b in t[1])
    + (b"\xf7" if t[2] else b"")).filter(bool)
events = st.builds(
    DmusEvent,
    st.integers(1, MAX_CHANNEL_GROUP),
    st.integers(0, (1 << 63) - 1),
    st.just(0),
    sysex_bytes,
) | st.builds(
    DmusEvent,
    st.integers(1, MAX_CHANNEL_GROUP),
    st.integers(0, (1 << 63) - 1),
    st.just(STRUCTURED),
    midi_messages,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(events, max_size=20))
def test_random_buffers_round_trip(evs: list[DmusEvent]) -> None:
    buf = pack_buffer(evs)
    assert len(buf) == sum(event_size(len(e.data)) for e in evs)
    assert len(buf) % 8 == 0
    assert unpack_buffer(buf) == evs
    assert dmusic.unpack(dmusic.pack(evs)) == evs


@settings(max_examples=200, deadline=None)
@given(st.lists(events, min_size=1, max_size=8), st.data())
def test_every_cut_of_a_buffer_is_refused_whole(evs: list[DmusEvent], data: st.DataObject) -> None:
    buf = pack_buffer(evs)
    cut = data.draw(st.integers(1, len(buf) - 1))
    whole = {sum(event_size(len(e.data)) for e in evs[:i]) for i in range(len(evs))}
    if cut in whole:
        assert unpack_buffer(buf[:cut]) == evs[: sorted(whole).index(cut)]
    else:
        with pytest.raises(DmusFramingError):
            unpack_buffer(buf[:cut])


BAD_BUFFERS = [
    (header(3)[:12], 0, "header is cut short"),
    (header(3) + b"\x90\x3c\x40\x00" + header(3)[:19], 24, "header is cut short"),
    (header(0), 0, "cbEvent is 0"),
    (header(9) + b"\x90\x3c\x40\x00", 0, "runs past the end"),
    (header(3) + b"\x90\x3c\x40", 0, "not padded to 8 bytes"),
    (header(3) + b"\x90\x3c\x40\x01", 0, "non-zero padding"),
    (header(3) + b"\x90\x3c\x40\x00" + header(3, flags=0x2) + b"\x90\x3c\x40\x00", 24,
     "unknown dwFlags bits 0x2"),
    (header(3, group=0) + b"\x90\x3c\x40\x00", 0, "channel group 0 is not in 1..65535"),
    (header(3, group=0x10000) + b"\x90\x3c\x40\x00", 0, "channel group 65536"),
    (header(3, delta=-1) + b"\x90\x3c\x40\x00", 0, "rtDelta -1 is negative"),
    (header(3) + b"\x90\x3c\x80\x00", 0, "not a data byte"),
    (header(2) + b"\x90\x3c\x00\x00", 0, "is 3 bytes, not 2"),
    (header(3) + b"\x3c\x40\x00\x00", 0, "a data byte"),
    (header(1) + b"\xf4\x00\x00\x00", 0, "undefined status"),
    (header(3) + b"\xf0\x01\xf7\x00", 0, "structured event holds a SysEx"),
    (header(3, flags=0) + b"\x90\x3c\x40\x00", 0, "unstructured byte 0 is 0x90"),
    (header(3, flags=0) + b"\xf0\xf7\x01\x00", 0, "unstructured byte 1 is 0xf7"),
    (header(3, flags=0) + b"\x01\xf0\x01\x00", 0, "unstructured byte 1 is 0xf0"),
    (header(3, flags=0) + b"\xf0\x01\xf8\x00", 0, "unstructured byte 2 is 0xf8"),
]


@pytest.mark.parametrize(("buf", "offset", "words"), BAD_BUFFERS)
def test_each_malformation_is_named_with_its_offset(buf: bytes, offset: int, words: str) -> None:
    with pytest.raises(DmusFramingError) as err:
        unpack_buffer(buf)
    assert err.value.offset == offset
    assert words in str(err.value) and f"offset {offset}" in str(err.value)
    with pytest.raises(dmusic.FramingError) as sdk_err:
        dmusic.unpack(buf)
    assert sdk_err.value.status == Status.INVALID_PARAMETER
    assert isinstance(sdk_err.value, errors.KsError) and isinstance(sdk_err.value, ValueError)
    assert sdk_err.value.offset == offset and words in str(sdk_err.value)


def test_a_good_prefix_does_not_make_a_bad_buffer_half_good() -> None:
    good = pack_buffer([DmusEvent(1, 0, STRUCTURED, b"\xf8")] * 3)
    with pytest.raises(DmusFramingError) as err:
        unpack_buffer(good + header(3, group=0) + b"\x90\x3c\x40\x00")
    assert err.value.offset == 72


@pytest.mark.parametrize(("event", "words"), [
    (DmusEvent(0, 0, STRUCTURED, b"\xf8"), "channel group 0"),
    (DmusEvent(1, -5, STRUCTURED, b"\xf8"), "rtDelta -5"),
    (DmusEvent(1, 1 << 63, STRUCTURED, b"\xf8"), "past 2**63-1"),
    (DmusEvent(1, 0, 4, b"\xf8"), "unknown dwFlags"),
    (DmusEvent(1, 0, STRUCTURED, b""), "cbEvent is 0"),
    (DmusEvent(1, 0, STRUCTURED, b"\x90\x3c"), "not 2"),
    (DmusEvent(1, 0, 0, b"\xfe"), "unstructured byte 0 is 0xfe"),
])
def test_pack_refuses_what_unpack_would_and_builds_nothing(event: DmusEvent, words: str) -> None:
    ok = DmusEvent(1, 0, STRUCTURED, b"\xfe")
    with pytest.raises(DmusFramingError) as err:
        pack_buffer([ok, event])
    assert err.value.offset == 24 and words in str(err.value)
    with pytest.raises(dmusic.FramingError):
        dmusic.pack([ok, event])


def test_the_sdk_helper_picks_structured_or_unstructured() -> None:
    assert dmusic.event(b"\x90\x3c\x40") == DmusEvent(1, 0, STRUCTURED, b"\x90\x3c\x40")
    assert dmusic.event([0xF0, 1, 0xF7], rt_delta=7, channel_group=9) == \
        DmusEvent(9, 7, 0, b"\xf0\x01\xf7")
    with pytest.raises(dmusic.FramingError):
        dmusic.event(b"\x90\x3c")  # checked at once, not when packed


def test_a_64_kib_sysex_is_one_unstructured_event() -> None:
    sysex = b"\xf0" + bytes(i % 0x80 for i in range(65536 - 2)) + b"\xf7"
    buf = dmusic.pack([dmusic.event(sysex, channel_group=2), dmusic.event(b"\xf8", rt_delta=1)])
    assert len(buf) == event_size(65536) + 24
    assert struct.unpack_from("<I", buf)[0] == 65536
    assert dmusic.unpack(buf) == [DmusEvent(2, 0, 0, sysex), DmusEvent(1, 1, STRUCTURED, b"\xf8")]
