"""The SDK's side of DirectMusic pins and the synth clocks, over a real kernel where a
kernel is needed: opening a pin with the DirectMusic format, what `write`/`send` put in
its ring (the ipc.dmusic record layout), framing errors that send nothing, the capture
side's record parsing (GroupJoiner) and buffer framing (`dmusic.frame_captured`), and
KSPROPERTY_SYNTH_MASTERCLOCK / LATENCYCLOCK.

The round trips through a miniport are in tests/test_dmusic_pins.py."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest

import ksclient
from ipc.dmusic import (
    DMUS_EVENT_STRUCTURED,
    DONT_HOLD_FOR_SEQUENCING,
    GROUP_PREFIX,
    DmusEvent,
    event_size,
    unpack_buffer,
)
from ipc.ks import RENDER_FLAG_IN_BUFFER, RENDER_FLAG_PHYSICAL_TIME
from ipc.midi import FLAG_SYSEX, FLAG_SYSEX_ABORTED, FLAG_SYSEX_MORE
from ipc.status import Status
from kernel.pins import Pin as KernelPin
from kernel.properties import schedule_prefetch
from ksclient import dmusic, ksmusic
from ksclient.client import GroupJoiner

MORE = FLAG_SYSEX | FLAG_SYSEX_MORE
SYSEX_64K = b"\xf0" + bytes(i % 0x80 for i in range(65536 - 2)) + b"\xf7"

MPU = """
[[device]]
name = "mpu401"
miniport = "mpu401"
resources = { io = [[0x330, 2]], irq = [9] }
options = { baud = 1000000 }
"""
DMUS_RENDER, CAPTURE = 1, 4


def g(group: int, data: bytes) -> bytes:
    return GROUP_PREFIX.pack(group) + data


class TestGroupJoiner:
    def test_groups_are_stripped_and_sysex_joined_per_group(self) -> None:
        joiner = GroupJoiner()
        records = [
            (10, MORE, g(1, b"\xf0\x01\x02")),
            (11, MORE, g(2, b"\xf0\x11")),
            (12, 0, g(7, b"\x90\x3c\x40")),
            (13, FLAG_SYSEX, g(2, b"\x12\xf7")),
            (14, FLAG_SYSEX, g(1, b"\x03\xf7")),
            (15, FLAG_SYSEX | FLAG_SYSEX_ABORTED, g(65535, b"\xf0\x05")),
        ]
        assert joiner.join(records) == [
            (12, 0, b"\x90\x3c\x40", 7),
            (11, FLAG_SYSEX, b"\xf0\x11\x12\xf7", 2),
            (10, FLAG_SYSEX, b"\xf0\x01\x02\x03\xf7", 1),
            (15, FLAG_SYSEX | FLAG_SYSEX_ABORTED, b"\xf0\x05", 65535),
        ]
        assert joiner.malformed == 0

    def test_a_sysex_goes_on_across_calls_and_clear_forgets_it(self) -> None:
        joiner = GroupJoiner()
        assert joiner.join([(1, MORE, g(3, b"\xf0\x01"))]) == []
        assert joiner.join([(2, FLAG_SYSEX, g(3, b"\xf7"))]) == [
            (1, FLAG_SYSEX, b"\xf0\x01\xf7", 3)]
        assert joiner.join([(3, MORE, g(3, b"\xf0\x09"))]) == []
        joiner.clear()
        assert joiner.join([(4, FLAG_SYSEX, g(3, b"\xf0\x0a\xf7"))]) == [
            (4, FLAG_SYSEX, b"\xf0\x0a\xf7", 3)]

    @pytest.mark.parametrize("payload", [
        b"", b"\x01\x00\x00", GROUP_PREFIX.pack(0) + b"\x90\x3c\x40",
        GROUP_PREFIX.pack(0x10000) + b"\xf8", b"\x90\x3c\x40\x00\x00", GROUP_PREFIX.pack(1),
    ])
    def test_a_malformed_prefix_is_dropped_and_counted_never_raised(self, payload: bytes) -> None:
        joiner = GroupJoiner()
        got = joiner.join([(1, 0, g(1, b"\xf8")), (2, 0, payload), (3, 0, g(2, b"\xfe"))])
        assert got == [(1, 0, b"\xf8", 1), (3, 0, b"\xfe", 2)]
        assert joiner.malformed == 1


def _taker(messages: list[dmusic.Captured]) -> Callable[[], dmusic.Captured | None]:
    pending = list(messages)
    return lambda: pending.pop(0) if pending else None


class TestFrameCaptured:
    def test_deltas_count_from_the_first_event_in_100ns(self) -> None:
        take = _taker([(5000, b"\x90\x3c\x40", 1), (5000, b"\xf8", 9), (12345, b"\xf0\x01\xf7", 2)])
        first, buf, rest, dropped = dmusic.frame_captured(4096, take)
        assert (first, rest, dropped) == (5000, None, 0)
        assert unpack_buffer(buf) == [
            DmusEvent(1, 0, DMUS_EVENT_STRUCTURED, b"\x90\x3c\x40"),
            DmusEvent(9, 0, DMUS_EVENT_STRUCTURED, b"\xf8"),
            DmusEvent(2, 7345, 0, b"\xf0\x01\xf7"),
        ]
        assert take() is None

    def test_nothing_waiting_frames_nothing(self) -> None:
        assert dmusic.frame_captured(24, _taker([])) == (None, b"", None, 0)
        with pytest.raises(ValueError, match="at least 24"):
            dmusic.frame_captured(23, _taker([]))

    def test_a_long_sysex_is_split_into_pieces_that_join_back(self) -> None:
        pending: list[dmusic.Captured] = [(7, SYSEX_64K, 4), (9, b"\x80\x3c\x00", 4)]
        events: list[DmusEvent] = []
        rest: dmusic.Captured | None = None
        while True:
            def take() -> dmusic.Captured | None:
                nonlocal rest
                if rest is not None:
                    got, rest = rest, None
                    return got
                return pending.pop(0) if pending else None
            first, buf, rest, dropped = dmusic.frame_captured(1000, take)
            assert dropped == 0 and len(buf) <= 1000
            if first is None:
                break
            events += unpack_buffer(buf)
        pieces = [e for e in events if not e.structured]
        assert len(pieces) == -(-65536 // 980) == 67  # 1000 bytes hold 980 of data
        assert b"".join(e.data for e in pieces) == SYSEX_64K
        assert {e.channel_group for e in events} == {4}
        assert events[-1] == DmusEvent(4, 2, DMUS_EVENT_STRUCTURED, b"\x80\x3c\x00")

    def test_what_directmusic_cannot_carry_is_dropped_and_counted(self) -> None:
        take = _taker([(1, b"\xf9", 1), (2, b"", 1), (3, b"\xfe", 1)])
        first, buf, rest, dropped = dmusic.frame_captured(64, take)
        assert (first, rest, dropped) == (3, None, 2)
        assert unpack_buffer(buf) == [DmusEvent(1, 0, DMUS_EVENT_STRUCTURED, b"\xfe")]

    def test_a_structured_message_always_fits_the_smallest_buffer(self) -> None:
        take = _taker([(1, b"\x90\x3c\x40", 1), (2, b"\x90\x3d\x40", 1)])
        first, buf, rest, _ = dmusic.frame_captured(24 + 23, take)
        assert first == 1 and len(buf) == 24 and rest is None
        assert take() == (2, b"\x90\x3d\x40", 1)  # not taken when it cannot fit: not lost


def test_schedule_prefetch_of_a_stream() -> None:
    def pin(**attrs: Any) -> KernelPin:
        return cast(KernelPin, SimpleNamespace(**attrs))

    assert schedule_prefetch(pin()) == 0  # a MIDI stream (before DirectMusic streams exist)
    assert schedule_prefetch(pin(schedule_prefetch=20_000)) == 20_000
    assert schedule_prefetch(pin(schedule_prefetch=DONT_HOLD_FOR_SEQUENCING)) == 0
    assert schedule_prefetch(pin(schedule_prefetch=-1)) == 0


def test_the_master_clock_is_the_shared_clock_read_by_the_kernel(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        c.wait_for_filter("loopback")
        before = ksclient.now()
        master = c.master_clock("loopback")
        after = ksclient.now()
        assert isinstance(master, ksclient.PhysicalTime)
        assert before <= master <= after
        assert c.master_clock("loopback") >= master
        with pytest.raises(ksclient.NotFoundError):
            c.master_clock("nothing")
        with pytest.raises(ksclient.KsError) as err:
            c.pin_property("loopback", 0, "masterclock", 5)
        assert err.value.status == Status.NOT_SUPPORTED


def test_the_latency_clock_of_a_midi_stream_is_the_master_time(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        c.wait_for_filter("loopback")
        with c.open_render("loopback") as out, c.open_capture("loopback") as inp:
            for pin in (out, inp):
                before = ksclient.now()
                latency = pin.latency_clock()
                assert before <= latency <= ksclient.now()
            with pytest.raises(ksclient.KsError) as err:
                out.connection_property("latencyclock", 1)
            assert err.value.status == Status.NOT_SUPPORTED


def test_a_directmusic_pin_knows_its_format(start_kernel) -> None:
    kernel = start_kernel(MPU)
    with kernel.connect() as c:
        c.wait_for_filter("mpu401")
        with c.open_render("mpu401", DMUS_RENDER, dmusic.FORMAT) as dm, \
                c.open_render("mpu401", 0) as midi, \
                c.open_capture("mpu401", CAPTURE, dmusic.FORMAT) as cap:
            assert dm.is_directmusic and cap.is_directmusic and not midi.is_directmusic
            assert dm.format == dmusic.FORMAT
            master = c.master_clock("mpu401")
            assert dm.latency_clock() >= master  # master time + a pre-fetch >= 0


def test_framing_errors_and_bad_groups_send_nothing(start_kernel) -> None:
    kernel = start_kernel(MPU)
    with kernel.connect() as c:
        c.wait_for_filter("mpu401")
        with c.open_render("mpu401", DMUS_RENDER, dmusic.FORMAT) as dm, \
                c.open_render("mpu401", 0) as midi:
            dm.run()
            midi.run()
            good = dmusic.pack([dmusic.event(b"\x90\x3c\x40")])
            for bad in (good[:-1], good + good[:20],
                        ksmusic.pack([(0, b"\x90\x3c\x40")]),  # KSMUSICFORMAT is not DirectMusic
                        good[:4] + GROUP_PREFIX.pack(0) + good[8:]):
                with pytest.raises(dmusic.FramingError) as err:
                    dm.write(bad)
                assert err.value.status == Status.INVALID_PARAMETER
            with pytest.raises(dmusic.FramingError, match="after 2\\*\\*63-1"):
                dm.write(dmusic.pack([dmusic.event(b"\xf8", rt_delta=(1 << 63) - 1)]), 1)
            for group in (0, 65536, True):
                with pytest.raises(ValueError, match="channel group"):
                    dm.send(b"\x90\x3c\x40", channel_group=group)
            with pytest.raises(ValueError, match="MIDI pin"):
                midi.send(b"\x90\x3c\x40", channel_group=2)
            with pytest.raises(ksmusic.FramingError):
                midi.write(good)  # and a DirectMusic buffer is not KSMUSICFORMAT
            # Records put in the rings (the SDK's count): none of the above wrote one.
            assert dm._written == 0 and midi._written == 0
            assert dm.write(b"").wait(5) == Status.SUCCESS


def test_what_a_directmusic_pin_puts_in_its_ring(start_kernel) -> None:
    kernel = start_kernel(MPU)
    with kernel.connect() as c:
        c.wait_for_filter("mpu401")
        with c.open_render("mpu401", DMUS_RENDER, dmusic.FORMAT) as dm:
            records = dm._records(SYSEX_64K, ksclient.physical(77), channel_group=300)
            limit = dm._channel.ring.max_payload
            assert len(records) > 1
            for stamp, flags, payload in records:
                assert (stamp, flags) == (77, RENDER_FLAG_PHYSICAL_TIME)
                assert len(payload) <= limit and payload[:4] == GROUP_PREFIX.pack(300)
            assert b"".join(r[2][4:] for r in records) == SYSEX_64K
            assert dm._records(b"\xf8", 5) == [(5, 0, g(1, b"\xf8"))]
            # A buffer: each event at its rtDelta from the start, in time order.
            buf = dmusic.pack([dmusic.event(b"\x90\x3c\x40", 30_000, 2),
                               dmusic.event(b"\x80\x3c\x00", 10_000, 3),
                               dmusic.event(b"\xf8", 10_000, 4)])
            assert dm._dmus_timed(buf) == [(10_000, 3, b"\x80\x3c\x00"), (10_000, 4, b"\xf8"),
                                           (30_000, 2, b"\x90\x3c\x40")]
            assert dm._chunked(9, RENDER_FLAG_IN_BUFFER, b"\xf8", 4) == [
                (9, RENDER_FLAG_IN_BUFFER, g(4, b"\xf8"))]
            assert event_size(3) == 24


def test_the_async_flavour_has_the_clocks_and_the_groups(loopback_kernel) -> None:
    import asyncio

    import ksclient.aio

    async def main() -> None:
        async with await ksclient.aio.connect(loopback_kernel.runtime) as k:
            await k.wait_for_filter("loopback")
            before = ksclient.now()
            assert before <= await k.master_clock("loopback") <= ksclient.now()
            out = await k.open_render("loopback")
            await out.run()
            assert not out.is_directmusic
            assert before <= await out.latency_clock() <= ksclient.now()
            with pytest.raises(ValueError, match="MIDI pin"):
                await out.send(b"\x90\x3c\x40", channel_group=2)
            with pytest.raises(ValueError, match="MIDI pin"):
                await out.send_many([b"\x90\x3c\x40"], channel_group=3)
            await out.send(b"\x90\x3c\x40", channel_group=1)
            await out.close()

    asyncio.run(main())
