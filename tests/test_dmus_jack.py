"""The DirectMusic pin format through a real JACK server, with real JACK peers.

The path: a client writes DMUS_EVENTHEADER buffers to the DirectMusic UART
(`dmusuart`) on the emulated MPU-401, whose rtmidi cable is two JACK clients
("dmjack-out", "dmjack-in") that `jack_connect` wires to each other; what leaves
MIDI OUT crosses the JACK server and comes back into MIDI IN, and the client
reads it as DirectMusic buffers. A MIDI cable carries no channel groups, so
everything comes back in group 1 (the DMusUART sends every group out of its one
MIDI OUT, as Windows' does).

SysEx sizes: RtMidi's JACK output queues each message whole (with a 4-byte
length) in a 16 KiB ring buffer and silently drops a longer one; measured with
python-rtmidi 1.5.8 (RtMidi 5.0.0) between two rtmidi JACK ports, 16,379 bytes
go through and 16,380 vanish. So the rtmidi cable sends a longer SysEx in
pieces (F0 + 4,095 bytes, then 3 bytes at a time, paced), which RtMidi's JACK
input joins again: the 16,000-byte SysEx below crosses whole, the 64 KiB one
in pieces.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

import ksclient
from ksclient import dmusic
from miniports.mpu401.miniport import CAPTURE_PIN, DMUS_RENDER_PIN
from miniports.testing import toml_config
from miniports.testing.jack import JackServer
from tests.conftest import KernelProcess

pytestmark = pytest.mark.jack

CLIENT = "dmjack"
DEVICE = "uart"
MS = 10_000


JACK_SYSEX_LIMIT = (
    "a SysEx in paced pieces over JACK can lose pieces when the sending JACK client runs "
    "late (JACK drops what overflows a period): seen once in a loaded CI run; a known "
    "limit (README, rtmidi), run outside CI"
)


def sysex(data_bytes: int) -> bytes:
    return bytes([0xF0]) + bytes(i % 128 for i in range(data_bytes)) + b"\xf7"


def start_looped_uart(
    jack_server: JackServer, start_kernel: Callable[..., KernelProcess]
) -> KernelProcess:
    """A kernel with the DMusUART on a card whose rtmidi cable is wired back through JACK."""
    config = toml_config([{
        "name": DEVICE,
        "miniport": "dmusuart",
        "resources": {"io": [[0x330, 2]], "irq": [9]},
        # 1 Mbaud: the 16 KB SysEx takes 0.16 s each way instead of 5 s at 31,250.
        "options": {"cable": "rtmidi", "rtmidi_api": "jack", "rtmidi_client": CLIENT,
                    "baud": 1_000_000, "capture_ring": 1 << 17},
        "restart": {"limit": 0},
    }])
    kernel = start_kernel(config, env=jack_server.env())
    with kernel.connect() as client:
        client.wait_for_filter(DEVICE)
    jack_server.wait_for_port(f"{CLIENT}-out:out")
    jack_server.wait_for_port(f"{CLIENT}-in:in")
    jack_server.connect(f"{CLIENT}-out:out", f"{CLIENT}-in:in")
    return kernel


def read_messages(inp: ksclient.CapturePin, count: int, timeout: float = 20.0
                  ) -> list[dmusic.DmusEvent]:
    """The next `count` messages read as DirectMusic buffers, a SysEx's unstructured
    pieces (one split across reads) joined into one event."""
    messages: list[dmusic.DmusEvent] = []
    pending: dmusic.DmusEvent | None = None
    deadline = time.monotonic() + timeout
    while len(messages) < count:
        left = deadline - time.monotonic()
        try:
            _, buffer = inp.read(size=1 << 18, timeout=max(0.0, left))
        except ksclient.KsTimeoutError:
            raise AssertionError(
                f"{len(messages)} of {count} messages came back in {timeout} s; got "
                f"{[(e.channel_group, e.data[:8].hex(' '), len(e.data)) for e in messages]}"
            ) from None
        for event in dmusic.unpack(buffer):
            if event.structured:
                assert pending is None, "a structured event inside a SysEx"
                messages.append(event)
                continue
            if pending is None:
                assert event.data[:1] == b"\xf0", f"a SysEx piece without F0: {event}"
                pending = event
            else:
                assert event.channel_group == pending.channel_group
                pending = pending._replace(data=pending.data + event.data)
            if pending.data.endswith(b"\xf7"):
                messages.append(pending)
                pending = None
    return messages


def test_dmus_buffers_round_trip_through_jack_peers(
    jack_server: JackServer, start_kernel: Callable[..., KernelProcess]
) -> None:
    kernel = start_looped_uart(jack_server, start_kernel)
    short, long = sysex(1), sysex(16_000 - 2)
    assert short == b"\xf0\x00\xf7" and len(long) == 16_000
    sent = [  # (rtDelta, channel group, bytes): several groups, in time order
        (0, 1, b"\x90\x3c\x64"),
        (5 * MS, 2, b"\xb1\x07\x50"),
        (10 * MS, 7, b"\xc2\x05"),
        (15 * MS, 3, short),
        (20 * MS, 4, b"\xe3\x00\x40"),
        (25 * MS, 9, long),
        (30 * MS, 65535, b"\xf8"),
        (35 * MS, 2, b"\x80\x3c\x00"),
    ]
    buffer = dmusic.pack([dmusic.event(d, rt_delta=t, channel_group=g) for t, g, d in sent])
    with kernel.connect() as client, \
            client.open_render(DEVICE, DMUS_RENDER_PIN, dmusic.FORMAT) as out, \
            client.open_capture(DEVICE, CAPTURE_PIN, dmusic.FORMAT) as inp:
        assert out.is_directmusic and inp.is_directmusic
        inp.run()
        out.run()
        request = out.write(buffer, presentation_time=out.time())
        assert request.wait(timeout=20) == 0 and request.data_used == len(buffer)
        got = read_messages(inp, len(sent))
        # Exact bytes, in order, each structured or not as DirectMusic says, all group 1.
        assert [(e.channel_group, e.data) for e in got] == [(1, d) for _, _, d in sent]
        assert [e.structured for e in got] == [d[0] != 0xF0 for _, _, d in sent]
        # Nothing more: nothing doubled, no stray pieces.
        with pytest.raises(ksclient.KsTimeoutError):
            inp.read(timeout=0.5)


@pytest.mark.skipif(bool(os.environ.get("CI")), reason=JACK_SYSEX_LIMIT)
def test_a_64_kib_sysex_crosses_jack(
    jack_server: JackServer, start_kernel: Callable[..., KernelProcess]
) -> None:
    """Four times what RtMidi's JACK output carries whole: the cable sends it in
    pieces, the JACK input joins them, the client reads it whole, between two
    notes sent before and after it, nothing lost, doubled or reordered."""
    kernel = start_looped_uart(jack_server, start_kernel)
    big = sysex(64 * 1024 - 2)
    before, after = b"\x90\x40\x01", b"\x80\x40\x00"
    buffer = dmusic.pack([dmusic.event(before, channel_group=5),
                          dmusic.event(big, rt_delta=1 * MS, channel_group=5),
                          dmusic.event(after, rt_delta=10 * MS, channel_group=5)])
    with kernel.connect() as client, \
            client.open_render(DEVICE, DMUS_RENDER_PIN, dmusic.FORMAT) as out, \
            client.open_capture(DEVICE, CAPTURE_PIN, dmusic.FORMAT) as inp:
        inp.run()
        out.run()
        assert out.write(buffer, presentation_time=out.time()).wait(timeout=20) == 0
        got = read_messages(inp, 3)
        assert [(e.channel_group, len(e.data)) for e in got] == [
            (1, len(before)), (1, len(big)), (1, len(after))]
        assert [e.data for e in got] == [before, big, after]
        with pytest.raises(ksclient.KsTimeoutError):
            inp.read(timeout=0.5)
