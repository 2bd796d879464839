"""Packed records (ipc.midi.FLAG_PACKED): many channel messages in one ring record, end to
end, and the SDK's batch path (`RenderPin.send_batch`, `CapturePin.receive_batch`)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ksclient
from ipc.midi import (
    FLAG_PACKED,
    FLAG_SYSEX,
    PACKED_RUN,
    is_packed_run,
    packed_error,
    split_packed,
)
from kernel.midiparse import MidiStreamParser, unpacked


def test_split_packed_takes_whole_channel_messages_only() -> None:
    assert split_packed(b"\x90\x40\x7f\xc0\x05\xe1\x00\x40") == [
        b"\x90\x40\x7f", b"\xc0\x05", b"\xe1\x00\x40"]
    for bad in (b"", b"\x90\x40", b"\x40\x40\x40", b"\x90\x40\x7f\xf8", b"\xf0\x01\xf7",
                b"\x90\x40\x7f\x40\x7f"):  # running status is not packed
        assert split_packed(bad) is None
        assert packed_error(bad) is not None
    assert packed_error(b"\x90\x40\x7f\x80\x40") == (
        "byte 3: the channel message there (0x80) is cut short or malformed")


# Mostly note-ons (the translate path), with now and then a byte of any class: a 2-byte
# message's status, a system byte, a stray data byte, a cut message.
_NEAR_RUNS = st.lists(
    st.one_of(
        st.builds(lambda s, a, b: bytes((s, a, b)), st.integers(0x90, 0x9F),
                  st.integers(0, 0x7F), st.integers(0, 0x7F)),
        st.builds(bytes, st.lists(st.integers(0, 255), min_size=1, max_size=3)),
    ),
    max_size=40,
).map(b"".join)


@given(_NEAR_RUNS)
def test_is_packed_run_is_the_pattern(data: bytes) -> None:
    assert is_packed_run(data) == (PACKED_RUN.fullmatch(data) is not None)
    assert is_packed_run(bytearray(data)) == is_packed_run(data)
    assert (packed_error(data) is None) == is_packed_run(data)
    assert (packed_error(memoryview(data)) is None) == is_packed_run(data)


def test_is_packed_run_at_every_byte_and_length() -> None:
    note = b"\x90\x40\x7f"
    for byte in range(256):
        for data in (bytes([byte]), note + bytes([byte]), bytes([byte, 0x40, 0x7F]),
                     bytes([0x90, byte, 0x7F]) * 2, note * 5 + bytes([byte, 1, 2])):
            assert is_packed_run(data) == (PACKED_RUN.fullmatch(data) is not None), data
    for n in (0, 1, 2, 21845, 21846, 21847):  # the translate path's limit and beyond
        assert is_packed_run(note * n) == (n > 0)
    assert not is_packed_run(note * 100 + b"\x90\x40")


def test_feed_packed_gives_what_feed_gives() -> None:
    rng = random.Random(16)
    alphabet = [0x90, 0x80, 0xB3, 0xC0, 0xF0, 0xF7, 0xF8, 0x40, 0x7F, 0x00, 0x12]
    for _ in range(300):
        stream = bytes(rng.choice(alphabet) if rng.random() < 0.3 else rng.randrange(0x80)
                       for _ in range(rng.randrange(60)))
        # Mostly whole note-ons so that runs are common.
        stream = b"".join(bytes([0x90, i & 0x7F, 1]) for i in range(rng.randrange(8))) + stream
        plain, packed = MidiStreamParser(), MidiStreamParser()
        expected: list[tuple[int, int, bytes]] = []
        got: list[tuple[int, int, bytes]] = []
        count = 0
        pos = 0
        while pos < len(stream):
            step = rng.randrange(1, 40)
            expected += plain.feed(stream[pos : pos + step], pos)
            out, n = packed.feed_packed(stream[pos : pos + step], pos, limit=12)
            assert all(len(r[2]) <= 12 for r in out if r[1] & FLAG_PACKED)
            got += out
            count += n
            pos += step
        assert unpacked(got) == expected
        assert count == len(expected) == packed.messages == plain.messages


def test_a_run_cut_by_a_fragment_end_is_packed_again_after_the_cut_message() -> None:
    """A capture read of 4096 bytes cuts a run of 3-byte messages (4096 = 3 * 1365 + 1):
    the message it cut is completed the general way, and the rest of the next fragment
    is one packed record again, not a record per message."""
    stream = b"".join(bytes([0x90, i & 0x7F, 1 + i % 100]) for i in range(3000))
    parser, plain = MidiStreamParser(), MidiStreamParser()
    first, n1 = parser.feed_packed(stream[:4096], 1, limit=8192)
    second, n2 = parser.feed_packed(stream[4096:8192], 2, limit=8192)
    assert [r[1] for r in first] == [FLAG_PACKED]
    assert [r[1] for r in second] == [0, FLAG_PACKED]  # the cut message, then the run
    assert n1 + n2 == 1365 + 1 + 1364
    want = plain.feed(stream[:4096], 1) + plain.feed(stream[4096:8192], 2)
    assert unpacked(first + second) == want
    # A status or real-time byte where the cut message's data should be: the general path.
    cut = MidiStreamParser()
    cut.feed_packed(b"\x90\x40", 1)
    out, n = cut.feed_packed(b"\xf8\x7f" + stream[:30], 2)
    assert out[0] == (2, 0, b"\xf8") and n == len(unpacked(out))


def test_send_batch_round_trip_and_per_message_receive(loopback_kernel) -> None:
    messages = [bytes([0x90 | i % 16, i % 128, 1 + i % 100]) for i in range(5000)]
    messages[7] = b"\xc3\x11"  # a two-byte channel message rides along
    with loopback_kernel.connect() as c:
        c.wait_for_filter("loopback")
        out, inp = c.open_render("loopback"), c.open_capture("loopback", capacity=1 << 18)
        inp.run()
        out.run()
        with c.open_monitor("loopback", capacity=1 << 18) as render_tap, \
                c.open_monitor("loopback", capture=True, capacity=1 << 18) as capture_tap:
            out.send_batch(b"".join(messages[:4000]))
            data = b""
            while len(data) < sum(map(len, messages[:4000])):
                batches = inp.receive_batch(timeout=10)
                assert batches and all(isinstance(b, ksclient.MidiBatch) for b in batches)
                assert all(not b.flags & (FLAG_PACKED | FLAG_SYSEX) for b in batches)
                data += b"".join(b.data for b in batches)
            assert data == b"".join(messages[:4000])  # order, nothing lost
            # The same packed records through the per-message path.
            out.send_batch(b"".join(messages[4000:]))
            got = [inp.receive(timeout=10).data for _ in range(1000)]
            assert got == messages[4000:]
            assert inp.receive_batch(timeout=0.05) == []
            # Monitors still see every message, one record each.
            for tap in (render_tap, capture_tap):
                copies = []
                while tap.poll(0.5) and len(copies) < len(messages):
                    copies.append(tap.receive_nowait().data)
                assert copies == messages
        stats = out.statistics()["stats"]
        assert stats.get("malformed", 0) == 0
        assert out.lost == 0 and inp.lost == 0 and inp.malformed == 0
        assert inp.statistics()["stats"]["delivered"] == len(messages)
        out.close()
        inp.close()


def test_send_batch_refuses_a_bad_buffer_and_sends_nothing(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        c.wait_for_filter("loopback")
        out, inp = c.open_render("loopback"), c.open_capture("loopback")
        inp.run()
        out.run()
        for bad, where in ((b"\x90\x40\x7f\x90\x40", "byte 3"), (b"\x90\x40\x7f\x40\x41\x00",
                           "byte 3"), (b"\x90\x40\x7f\xf0\x01\xf7", "byte 3"), (b"", "empty")):
            with pytest.raises(ksclient.InvalidMessage, match=where):
                out.send_batch(bad)
        with pytest.raises(ValueError, match="channel group"):
            out.send_batch(b"\x90\x40\x7f", channel_group=2)
        out.send(b"\xf8")
        assert inp.receive(timeout=10).data == b"\xf8"  # only what came after
        assert inp.receive_batch(timeout=0.05) == []


def test_a_malformed_packed_record_from_a_client_is_dropped_and_counted(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        c.wait_for_filter("loopback")
        out, inp = c.open_render("loopback"), c.open_capture("loopback")
        inp.run()
        out.run()
        # What a careless or hostile client could put on its ring, past the SDK's check.
        channel = out._channel
        assert channel.send_many([(0, FLAG_PACKED, b"\x90\x40\x7f\x90\x40"),
                                  (0, FLAG_PACKED, b"\xf0\x01\xf7"),
                                  (0, FLAG_PACKED, b"\x91\x01\x02\x92\x03\x04")]) == 3
        out.send(b"\x93\x05\x06")
        got = [inp.receive(timeout=10).data for _ in range(3)]
        assert got == [b"\x91\x01\x02", b"\x92\x03\x04", b"\x93\x05\x06"]
        assert out.statistics()["stats"]["malformed"] == 2
        c.check_kernel()  # the kernel is still there


DMUS_DEVICE = """
[[device]]
name = "dmus"
miniport = "tests.dmus_miniports:DmusLoopback"
options = { prefetch = 0 }
"""


@pytest.mark.parametrize("directmusic", [True, False])
def test_send_batch_to_a_dmus_miniport_goes_one_event_a_message(start_kernel,
                                                                directmusic) -> None:
    """DirectMusic records are never packed: on a DirectMusic pin the SDK sends one event
    a message, and a packed record on a MIDI pin is split by the kernel for a DMus
    miniport, so each message reaches put_message as its own event."""
    from ipc.ks import KSDATAFORMAT_SUBTYPE_DIRECTMUSIC, DataFormat

    kernel = start_kernel(DMUS_DEVICE)
    fmt = DataFormat(sub_format=KSDATAFORMAT_SUBTYPE_DIRECTMUSIC) if directmusic else None
    messages = [b"\x90\x01\x01", b"\xc2\x07", b"\xe0\x00\x40", b"\x80\x01\x00"]
    with kernel.connect() as c:
        c.wait_for_filter("dmus")
        out = c.open_render("dmus", fmt=fmt) if fmt else c.open_render("dmus")
        inp = c.open_capture("dmus", fmt=fmt) if fmt else c.open_capture("dmus")
        inp.run()
        out.run()
        group = 5 if directmusic else 1
        out.send_batch(b"".join(messages), channel_group=group)
        got = [inp.receive(timeout=5) for _ in messages]
        assert [(m.channel_group, m.data) for m in got] == [(group, m) for m in messages]
        if directmusic:
            with pytest.raises(ValueError, match="receive_many"):
                inp.receive_batch(timeout=0)
        stats = out.statistics()["stats"]
        assert stats.get("malformed", 0) == 0
        assert stats.get("split_extra", 0) == (0 if directmusic else len(messages) - 1)
        out.close()
        inp.close()
        assert out.lost == 0 and inp.lost == 0


def test_send_batch_in_the_asyncio_flavour(loopback_kernel) -> None:
    import asyncio

    import ksclient.aio

    async def main() -> list[bytes]:
        async with await ksclient.aio.connect(loopback_kernel.runtime) as k:
            await k.wait_for_filter("loopback")
            inp = await k.open_capture("loopback")
            out = await k.open_render("loopback")
            await inp.run()
            await out.run()
            await out.send_batch(b"\x90\x3c\x40\x80\x3c\x00")
            with pytest.raises(ksclient.InvalidMessage, match="byte 0"):
                await out.send_batch(b"\xf8")
            got = [(await inp.receive(timeout=5)).data for _ in range(2)]
            await out.close()
            await inp.close()
            return got

    assert asyncio.run(main()) == [b"\x90\x3c\x40", b"\x80\x3c\x00"]
