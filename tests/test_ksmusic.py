"""KSMUSICFORMAT buffers: packing, framing errors, buffer writes with completion, and
framed capture reads."""

from __future__ import annotations

import time

import pytest

import ksclient
from ipc.status import Status
from ksclient import ksmusic


def test_pack_and_unpack_round_trip_with_padding() -> None:
    events = [(0, b"\x90\x3c\x40"), (5, b"\xf8"), (0, b"\xf0" + bytes(6) + b"\xf7")]
    buf = ksmusic.pack(events)
    assert buf[:12] == bytes.fromhex("00000000 03000000 903c4000")
    assert len(buf) % 4 == 0
    assert ksmusic.unpack(buf) == events
    assert ksmusic.unpack(b"") == []


@pytest.mark.parametrize("buf", [
    bytes.fromhex("00000000 04000000 903c40"),  # ByteCount past the end
    bytes.fromhex("00000000 03000000 903c40"),  # missing pad
    bytes.fromhex("00000000 03000000 903c4001"),  # non-zero pad
    bytes.fromhex("00000000 00000000"),  # an empty event
    bytes.fromhex("00000000 0300"),  # a cut header
])
def test_malformed_framing_is_invalid_parameter(buf: bytes) -> None:
    with pytest.raises(ksmusic.FramingError) as err:
        ksmusic.unpack(buf)
    assert err.value.status == Status.INVALID_PARAMETER


def _open(client: ksclient.Client) -> tuple[ksclient.RenderPin, ksclient.CapturePin]:
    client.wait_for_filter("loopback")
    out = client.open_render("loopback", capacity=1 << 18)
    inp = client.open_capture("loopback", capacity=1 << 20)
    inp.run()
    out.run()
    return out, inp


def _receive(inp: ksclient.CapturePin, n: int) -> list[bytes]:
    return [inp.receive(timeout=30).data for _ in range(n)]


def test_a_framed_buffer_plays_as_one_message_and_completes(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        out, inp = _open(c)
        buf = bytes.fromhex("00000000 03000000 903c4000")
        request = out.write(buf)
        assert request.wait(5) == Status.SUCCESS
        assert request.data_used == len(buf)
        assert _receive(inp, 1) == [b"\x90\x3c\x40"]
        with pytest.raises(ksclient.KsTimeoutError):
            inp.receive(timeout=0.2)  # not five note-ons
        with pytest.raises(ksmusic.FramingError):
            out.write(bytes.fromhex("00000000 09000000 903c4000"))
        out.send(b"\x90\x3d\x40")  # the malformed write queued nothing
        assert _receive(inp, 1) == [b"\x90\x3d\x40"]
        out.close()
        inp.close()


def test_large_buffers_play_in_order_with_right_data_used(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        out, inp = _open(c)
        notes = [bytes([0x90, (i >> 7) & 0x7F, i & 0x7F]) for i in range(10_000)]
        big = ksmusic.pack([(0, n) for n in notes])
        sysex = b"\xf0" + bytes(i % 0x80 for i in range(65536 - 2)) + b"\xf7"
        # Past presentation time and zero deltas: all at once, in order.
        first = out.write(big, presentation_time=1)
        second = out.write(ksmusic.pack([(0, sysex)]))
        third = out.write(ksmusic.pack([(0, b"\x80\x00\x00"), (0, b"\x80\x01\x00")]))
        got = _receive(inp, len(notes) + 3)
        assert got == [*notes, sysex, b"\x80\x00\x00", b"\x80\x01\x00"]
        for request, buf_len in ((first, len(big)), (second, 65536 + 8),
                                 (third, 24)):
            assert request.wait(5) == Status.SUCCESS
            assert request.data_used == buf_len
        out.close()
        inp.close()


def test_deltas_count_from_the_presentation_time(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        out, inp = _open(c)
        start = out.time() + 1_000_000  # 100 ms ahead of the stream clock
        request = out.write(
            ksmusic.pack([(50, b"\x90\x01\x01"), (100, b"\x90\x02\x02"), (0, b"\x90\x03\x03")]),
            presentation_time=start,
        )
        assert not request.done
        got = [inp.receive(timeout=5) for _ in range(3)]
        assert [m.data[1] for m in got] == [1, 2, 3]
        offsets = [(m.stream_time - start) / 10_000 for m in got]
        print("played at stream ms after the presentation time:", offsets)
        assert offsets[0] >= 50 and offsets[1] >= 150 and offsets[2] >= 150
        assert request.wait(5) == Status.SUCCESS
        out.close()
        inp.close()


def test_stop_cancels_pending_buffers_and_keeps_order(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        out, inp = _open(c)
        played = out.write(ksmusic.pack([(0, b"\x90\x01\x01")]))
        assert played.wait(5) == Status.SUCCESS
        later = out.write(ksmusic.pack([(0, b"\x90\x02\x02")]), out.time() + 50_000_000)
        last = out.write(ksmusic.pack([(0, b"\x90\x03\x03")]))
        time.sleep(0.05)
        assert not later.done and not last.done
        out.stop()
        assert later.status == Status.CANCELLED and later.data_used == 0
        assert last.status == Status.CANCELLED
        out.run()
        after = out.write(ksmusic.pack([(0, b"\x90\x04\x04")]))
        assert after.wait(5) == Status.SUCCESS
        assert _receive(inp, 2) == [b"\x90\x01\x01", b"\x90\x04\x04"]
        out.close()
        inp.close()


def test_capture_buffers_reassemble_to_the_messages_sent(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        out, inp = _open(c)
        sysex = b"\xf0" + bytes(i % 0x80 for i in range(10_000)) + b"\xf7"
        messages = [b"\x90\x3c\x40", sysex, b"\xf8", b"\x80\x3c\x00"]
        for m in messages:
            out.send(m)
        events: list[tuple[int, bytes]] = []
        times = []
        while sum(len(d) for _, d in events) < sum(len(m) for m in messages):
            presentation, buf = inp.read(size=1024, timeout=5)
            assert len(buf) <= 1024
            times.append(presentation)
            events += ksmusic.unpack(buf)
        joined = b"".join(d for _, d in events)
        assert joined == b"".join(messages)
        assert times == sorted(times) and times[0] > 0
        out.close()
        inp.close()


def test_cancel_drops_one_buffer_and_keeps_the_rest_in_order(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        out, inp = _open(c)
        now = out.time()
        first = out.write(ksmusic.pack([(0, b"\x90\x01\x01")]), now + 2_000_000)
        stuck = out.write(ksmusic.pack([(0, b"\x90\x02\x02"), (0, b"\x90\x03\x03")]),
                          now + 600_000_000)
        out.send(b"\x90\x04\x04")
        last = out.write(ksmusic.pack([(0, b"\x90\x05\x05")]))
        assert stuck.cancel()
        assert stuck.status == Status.CANCELLED and stuck.data_used == 0
        assert not stuck.cancel()
        assert _receive(inp, 3) == [b"\x90\x01\x01", b"\x90\x04\x04", b"\x90\x05\x05"]
        assert first.wait(5) == Status.SUCCESS and last.wait(5) == Status.SUCCESS
        assert not first.cancel()
        with pytest.raises(ksclient.KsTimeoutError):
            inp.receive(timeout=0.2)
        out.close()
        inp.close()


def test_asyncio_flavour_writes_buffers_on_stream_time(loopback_kernel) -> None:
    import asyncio

    import ksclient.aio

    async def main() -> tuple[int, list[bytes]]:
        async with await ksclient.aio.connect(loopback_kernel.runtime) as k:
            await k.wait_for_filter("loopback")
            inp = await k.open_capture("loopback")
            out = await k.open_render("loopback")
            await inp.run()
            await out.run()
            request = await out.write(ksmusic.pack([(0, b"\x90\x3c\x40"), (10, b"\xf8")]),
                                      await out.time())
            status = await out.wait(request, timeout=5)
            got = [(await inp.receive(timeout=5)).data for _ in range(2)]
            await out.close()
            await inp.close()
            return status, got

    assert asyncio.run(main()) == (Status.SUCCESS, [b"\x90\x3c\x40", b"\xf8"])
