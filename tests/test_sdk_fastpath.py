"""The SDK's short paths (issue #16): `send` of one channel message, `receive` of plain
records, and the waiter's one-doorbell wake-up give what the generic paths gave, and
refuse what they refused, with the same errors."""

from __future__ import annotations

import asyncio
import itertools
import os
import select
import signal
import time

import pytest
import zmq

import ksclient
import ksclient.aio
from ipc.midi import MESSAGE_LENGTH, InvalidMessage, check_message
from ipc.waiter import Waiter
from ksclient.client import _is_channel_message

NOTE = bytes([0x90, 60, 100])


def _pins(c: ksclient.Client) -> tuple[ksclient.RenderPin, ksclient.CapturePin]:
    c.wait_for_filter("loopback")
    return c.open_render("loopback"), c.open_capture("loopback")


def test_every_channel_message_comes_back_whole_with_its_stream_time(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        out, inp = _pins(c)
        inp.run()
        out.run()
        sent = []
        for status in range(0x80, 0xF0):
            message = bytes([status, status & 0x7F, 0x7F])[: 2 if 0xC0 <= status < 0xE0 else 3]
            sent.append(message)
            # bytes through send, a list of ints through send_nowait (what aio uses).
            if status & 1:
                out.send(message)
            else:
                out.send_nowait(list(message))
            got = inp.receive(timeout=5.0)
            assert got.data == message
            assert isinstance(got, ksclient.MidiMessage) and isinstance(got.data, bytes)
            assert (got.flags, got.channel_group, got.is_sysex) == (0, 1, False)
            # The inline stream time is the one the pin's clock history gives.
            assert got.stream_time == inp.stream_time_at(got.timestamp) > 0
        assert out.statistics()["stats"]["released"] >= len(sent)


BAD = [
    b"\x90\x80\x00",  # a status byte where a data byte goes
    b"\x90\x00",  # one byte short
    b"\xc0\x00\x00",  # a program change is 2 bytes
    b"\x90\x00\x00\x00",  # two messages' worth
    b"\x3c\x00\x00",  # no status byte
    b"\xf4\x00\x00",  # undefined
]


@pytest.mark.parametrize("send", ["send", "send_nowait"])
def test_what_the_short_path_does_not_take_is_refused_as_before(loopback_kernel, send) -> None:
    with loopback_kernel.connect() as c:
        out, inp = _pins(c)
        inp.run()
        out.run()
        for bad in BAD:
            with pytest.raises(InvalidMessage) as raised:
                getattr(out, send)(bad)
            with pytest.raises(InvalidMessage) as expected:
                check_message(bad)
            assert str(raised.value) == str(expected.value)
            with pytest.raises(InvalidMessage, match="byte 2 is 300"):
                getattr(out, send)([*bad[:2], 300])
            with pytest.raises(InvalidMessage) as raised:
                getattr(out, send)(list(bad))
            assert str(raised.value) == str(expected.value)
        with pytest.raises(ValueError, match="channel group 2 on a MIDI pin"):
            getattr(out, send)(NOTE, channel_group=2)
        # Nothing of the refused went out: the next message is the first to come back.
        out.send(NOTE)
        assert inp.receive(timeout=5.0).data == NOTE
        with pytest.raises(ksclient.KsTimeoutError):
            inp.receive(timeout=0.2)


def test_a_pin_not_ready_refuses_a_plain_message(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        out, inp = _pins(c)
        with pytest.raises(ksclient.InvalidStateError):
            out.send(NOTE)
        with pytest.raises(ksclient.InvalidStateError):
            out.send_nowait(NOTE)
        out.run()
        out.close()
        with pytest.raises(ksclient.ClosedError):
            out.send(NOTE)
        with pytest.raises(ksclient.ClosedError):
            out.send_nowait(NOTE)
        inp.close()
        with pytest.raises(ksclient.ClosedError):
            inp.receive(timeout=1.0)
        with pytest.raises(ksclient.ClosedError):
            inp.receive(timeout=0)


def test_a_full_ring_blocks_send_and_refuses_send_nowait(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        c.wait_for_filter("loopback")
        # The kernel takes a render ring's records only in RUN: in PAUSE it fills.
        out = c.open_render("loopback", capacity=16384)
        out.pause()
        sent = 0
        with pytest.raises(ksclient.WouldBlock, match="full"):
            while True:
                out.send_nowait(NOTE)
                sent += 1
        assert sent > 10
        with pytest.raises(ksclient.KsTimeoutError):
            out.send(NOTE, timeout=0.1)


def test_sysex_and_real_time_between_notes_keep_their_order(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        out, inp = _pins(c)
        inp.run()
        out.run()
        sysex = bytes([0xF0, *range(100), 0xF7])
        messages = [NOTE, sysex, bytes([0x80, 60, 0]), b"\xf8", bytes([0xC0, 5]), sysex, NOTE]
        for m in messages:
            out.send(m)
        got = []
        while len(got) < len(messages):
            got += inp.receive_many(timeout=5.0)
        assert [m.data for m in got] == messages
        assert [m.is_sysex for m in got] == [False, True, False, False, False, True, False]
        assert all(m.stream_time == inp.stream_time_at(m.timestamp) for m in got)


def test_receive_takes_what_receive_batch_left_first(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        out, inp = _pins(c)
        inp.run()
        out.run()
        notes = [bytes([0x90, n, 1]) for n in range(6)]
        sysex = bytes([0xF0, 1, 2, 3, 0xF7])
        # Three records: a run of notes, the SysEx, a run of notes.
        out.send_batch(b"".join(notes[:3]))
        out.send(sysex)
        out.send_batch(b"".join(notes[3:]))
        time.sleep(0.3)  # all three captured: receive_batch reads them together
        first = inp.receive_batch(max_records=1, timeout=5.0)
        assert [b.data for b in first] == [b"".join(notes[:3])]
        # What receive_batch read and did not return comes first, in order.
        assert [inp.receive(timeout=5.0).data for _ in range(4)] == [sysex, *notes[3:]]


def test_a_poll_leaves_packed_records_whole_for_receive_batch(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        out, inp = _pins(c)
        inp.run()
        out.run()
        notes = [bytes([0x90, n, 1]) for n in range(64)]
        for _ in range(2):
            out.send_batch(b"".join(notes))
        time.sleep(0.3)  # both runs captured before the poll reads them
        assert inp.poll(5.0)
        batches = inp.receive_batch(timeout=5.0)
        # As records, not a batch a message (which a poll that made messages gave).
        assert b"".join(b.data for b in batches) == b"".join(notes) * 2
        assert len(batches) < 16
        # And a poll then receive gives messages as receive alone does.
        out.send_batch(b"".join(notes[:3]))
        out.send(NOTE)
        assert inp.poll(5.0)
        got = [inp.receive(timeout=5.0) for _ in range(4)]
        assert [m.data for m in got] == [*notes[:3], NOTE]
        for m in got:
            assert m.stream_time == inp.stream_time_at(m.timestamp) > 0
            assert (m.flags, m.channel_group) == (0, 1)


def test_a_call_that_does_not_wait_does_not_have_the_kernel_ring(loopback_kernel) -> None:
    """Arming the data doorbell is for a sleep: a zero-timeout call that armed it had
    the kernel write the doorbell for data the next call takes without sleeping."""
    with loopback_kernel.connect() as c:
        out, inp = _pins(c)
        inp.run()
        out.run()
        channel = inp._channel
        arming = channel.prepare_to_sleep
        armed = []

        def counted() -> bool:
            armed.append(1)
            return arming()

        channel.prepare_to_sleep = counted  # type: ignore[method-assign]
        assert inp.receive_batch(timeout=0) == []
        assert not inp.poll(0)
        with pytest.raises(ksclient.WouldBlock):
            inp.receive_nowait()
        assert armed == []
        out.send(NOTE)
        time.sleep(0.3)  # captured by now
        assert select.select([inp._data_fd], [], [], 0)[0] == []
        assert inp.receive(timeout=5.0).data == NOTE


def test_a_stream_time_after_pause_and_run_counts_only_the_runs(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        out, inp = _pins(c)
        inp.run()
        out.run()
        out.send(NOTE)
        before = inp.receive(timeout=5.0)
        inp.pause()
        inp.run()
        out.send(NOTE)
        after = inp.receive(timeout=5.0)
        assert after.stream_time == inp.stream_time_at(after.timestamp)
        assert after.stream_time - before.stream_time < after.timestamp - before.timestamp


def test_the_waiter_tells_a_doorbell_from_a_socket_message() -> None:
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://waiter-test")
    b.connect("inproc://waiter-test")
    r, w = os.pipe()
    used = [0]
    waiter = Waiter()
    try:
        waiter.watch(r)
        waiter.add_socket(b, lambda: used[0])
        assert waiter.wait(0) == ([], [])
        os.write(w, b"x")
        assert waiter.wait(1000) == ([], [r])
        a.send(b"m")
        sockets, fds = waiter.wait(1000)
        assert (sockets, fds) == ([b], [r])
        os.read(r, 1)
        assert b.recv() == b"m"
        # The owner counts its use of the socket (the use may have taken the socket's
        # signal for a message waiting): the waiter then looks at the socket itself.
        used[0] += 1
        a.send(b"n")
        assert waiter.wait(1000) == ([b], [])
        assert b.recv() == b"n"
        used[0] += 1
        assert waiter.wait(0) == ([], [])
    finally:
        waiter.close()
        os.close(r)
        os.close(w)
        a.close(linger=0)
        b.close(linger=0)
        ctx.term()


def test_the_short_path_takes_only_what_check_message_accepts() -> None:
    # Every status byte, and data bytes at the edges of their range, 0 to 4 bytes long.
    values = [*range(0x80, 0x100), 0x00, 0x01, 0x40, 0x7F]
    taken = 0
    for length in range(5):
        for message in itertools.product(values, repeat=min(length, 1)):
            for rest in itertools.product([0x00, 0x7F, 0x80, 0xF7], repeat=max(0, length - 1)):
                data = bytes(message + rest)
                if not _is_channel_message(data):
                    continue
                taken += 1
                check_message(data)  # accepted by the generic check too
                assert 0x80 <= data[0] < 0xF0
    # Every channel status with in-range data bytes (2 or 3 bytes as it takes) is taken.
    assert taken == 64 * 4 + 32 * 2 + 16 * 4


def test_an_async_receive_waiting_after_a_round_trip_sees_the_device_go(start_kernel) -> None:
    kernel = start_kernel('[[device]]\nname = "loopback"\nminiport = "loopback"\n')

    async def main() -> None:
        async with await ksclient.aio.connect(kernel.runtime) as k:
            await k.wait_for_filter("loopback")
            inp = await k.open_capture("loopback")
            out = await k.open_render("loopback")
            await inp.run()
            await out.run()
            # The last wait of each receive ends with the data doorbell, after which the
            # next one does not look at the kernel's messages first.
            for n in range(20):
                await out.send(bytes([0x90, n, 1]))
                assert (await inp.receive(timeout=5)).data == bytes([0x90, n, 1])
            waiting = asyncio.ensure_future(inp.receive(timeout=20))
            await asyncio.sleep(0.1)
            stats = await k._run(k.sync.stats)
            os.kill(stats["devices"]["loopback"]["pid"], signal.SIGKILL)
            with pytest.raises(ksclient.DeviceRemovedError):
                await waiting
            await out.close()
            await inp.close()

    asyncio.run(main())


def test_the_mido_port_decodes_a_captured_message_as_a_mido_parser_would() -> None:
    import mido

    from ksclient.mido_backend import _decode

    captured = [bytes([s, 0x12, 0x7F])[: max(1, MESSAGE_LENGTH[s])] for s in range(0x80, 0x100)]
    # Whole SysEx, and one cut short (an aborted SysEx comes without its F7).
    captured += [b"\xf0\xf7", b"\xf0\x01\x02\xf7", b"\xf0\x01\x02", b"\xf0"]
    decoded = 0
    for data in captured:
        parser = mido.Parser()
        parser.feed(data)
        expected = list(parser)
        assert _decode(data) == expected, data.hex()
        decoded += len(expected)
    # Not decoded: F4 F5 F9 FD (undefined), a lone F0 or F7, and the two cut short.
    assert decoded == len(captured) - 8
