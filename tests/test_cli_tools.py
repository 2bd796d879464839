"""The user tools of `portcls` (send, ping, play, record, watch, info, ls, monitor) against
real kernels, run as a user runs them: `python -m ksclient.cli ...` in a child process."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import mido
import pytest

from tests.conftest import KernelProcess

TIMEOUT = 60


def cli(
    kernel: KernelProcess, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "ksclient.cli", *args, "--runtime", str(kernel.runtime)],
        capture_output=True, text=True, timeout=TIMEOUT,
    )
    print(result.stdout, result.stderr)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@contextmanager
def background(kernel: KernelProcess, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A CLI command running beside the test, past its banner on stderr (it is ready);
    it must end by itself (--count) within TIMEOUT."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ksclient.cli", *args, "--runtime", str(kernel.runtime)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline()
        assert banner, "the command ended before it was ready"
        yield proc
        proc.wait(TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ksclient.cli", "--version"], capture_output=True, text=True,
        timeout=TIMEOUT, check=True,
    )
    name, version = result.stdout.split()
    assert name == "portcls"
    assert version[0].isdigit()


def test_send_refuses_invalid_messages(loopback_kernel: KernelProcess) -> None:
    for words in (["90", "3c"], ["note_on", "note=300"], ["foo", "bar=1"], ["zz"]):
        result = cli(loopback_kernel, "send", "loopback", *words, check=False)
        assert result.returncode == 2
        assert "not" in result.stderr and "MIDI" in result.stderr
        assert "Traceback" not in result.stderr


def test_send_and_monitor(loopback_kernel: KernelProcess) -> None:
    with background(loopback_kernel, "monitor", "loopback", "--json", "--count", "5") as mon:
        sent = cli(loopback_kernel, "send", "loopback", "note_on", "note=60", "velocity=64")
        assert "note_on channel=0 note=60 velocity=64" in sent.stdout
        cli(loopback_kernel, "send", "loopback:MIDI Out", "f0", *["11"] * 40, "f7")
        cli(loopback_kernel, "send", "loopback", "b0 07 64", "--at", "0.05", "--repeat", "3",
            "--interval", "0.02")
        out, _ = mon.communicate(timeout=TIMEOUT)
    lines = [json.loads(line) for line in out.splitlines()]
    assert [m["type"] for m in lines] == ["note_on", "sysex"] + ["control_change"] * 3
    assert lines[0]["note"] == 60 and lines[0]["velocity"] == 64
    assert lines[1]["length"] == 42
    stamps = [m["timestamp"] for m in lines[2:]]
    assert stamps == sorted(stamps)
    print("repeat intervals (ms):", [(b - a) / 10_000 for a, b in itertools.pairwise(stamps)])


def test_monitor_text_and_raw(loopback_kernel: KernelProcess) -> None:
    with background(loopback_kernel, "monitor", "loopback:3", "--count", "2") as mon:
        cli(loopback_kernel, "send", "loopback", "sysex data=(1,2,3), note_off note=61")
        out, _ = mon.communicate(timeout=TIMEOUT)
    assert "sysex 5 bytes: f0 01 02 03 f7" in out
    assert "note_off channel=0 note=61 velocity=64" in out
    with background(loopback_kernel, "monitor", "loopback", "--raw", "--count", "1") as mon:
        cli(loopback_kernel, "send", "loopback", "90 3c 40")
        out, _ = mon.communicate(timeout=TIMEOUT)
    assert out.split()[1:] == ["90", "3c", "40"]


def test_ping(loopback_kernel: KernelProcess) -> None:
    result = cli(loopback_kernel, "ping", "loopback", "--count", "50", "--json")
    figures = json.loads(result.stdout)
    assert figures["sent"] == figures["received"] == 50 and figures["lost"] == 0
    assert 0 < figures["min_us"] <= figures["p50_us"] <= figures["p99_us"] <= figures["max_us"]
    text = cli(loopback_kernel, "ping", "loopback", "--count", "10").stdout
    assert "10/10 round trips through loopback" in text
    for column in ("min", "avg", "p50", "p99", "max", "jitter"):
        assert column in text


def test_play_then_record(loopback_kernel: KernelProcess, tmp_path: Path) -> None:
    source, recorded = tmp_path / "phrase.mid", tmp_path / "recorded.mid"
    midi = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    midi.tracks.append(track)
    track.append(mido.MetaMessage("set_tempo", tempo=400_000))
    for i, note in enumerate((60, 62, 64, 65, 67)):
        track.append(mido.Message("note_on", note=note, velocity=80, time=0 if i == 0 else 60))
        track.append(mido.Message("control_change", control=1, value=note, time=30))
        track.append(mido.Message("note_off", note=note, velocity=0, time=30))
    track.append(mido.Message("sysex", data=[0x7E, 0x7F, 0x06, 0x01], time=10))
    midi.save(source)
    expected = [(m, t) for m, t in _timed(mido.MidiFile(source))]
    with background(loopback_kernel, "record", str(recorded), "--from", "loopback",
                    "--count", str(len(expected)), "--duration", "30") as rec:
        played = cli(loopback_kernel, "play", str(source), "--to", "loopback")
        assert f"played {len(expected)} messages" in played.stderr
        rec.communicate(timeout=TIMEOUT)
        assert rec.returncode == 0
    got = list(_timed(mido.MidiFile(recorded)))
    assert [m for m, _ in got] == [m for m, _ in expected]
    errors = [abs(a - b) * 1000 for (_, a), (_, b) in zip(got, expected, strict=True)]
    print(f"timing error after play -> loopback -> record: max {max(errors):.2f} ms, "
          f"mean {sum(errors) / len(errors):.2f} ms")


def _timed(midi: mido.MidiFile) -> Iterator[tuple[mido.Message, float]]:
    """Channel messages (time zeroed) and their time in seconds since the first."""
    clock, first = 0.0, None
    for msg in midi:
        clock += msg.time
        if msg.is_meta:
            continue
        first = clock if first is None else first
        yield msg.copy(time=0), clock - first


def test_watch_sees_a_removal_and_the_arrival(loopback_kernel: KernelProcess) -> None:
    with background(loopback_kernel, "watch", "--json", "--count", "2") as watch:
        with loopback_kernel.connect() as client:
            pid = client.stats()["devices"]["loopback"]["pid"]
        os.kill(pid, signal.SIGKILL)
        out, _ = watch.communicate(timeout=TIMEOUT)
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["kind"], e["filter"]) for e in events] == [
        ("removal", "loopback"), ("arrival", "loopback")
    ]
    info = json.loads(cli(loopback_kernel, "info", "loopback", "--json").stdout)
    assert info["device_state"]["restarts"] == 1


def test_info(loopback_kernel: KernelProcess) -> None:
    text = cli(loopback_kernel, "info", "loopback").stdout
    assert "running" in text and "restarts 0" in text
    for name in ("MIDI Out", "MIDI In", "render", "capture", "0/4"):
        assert name in text
    record = json.loads(cli(loopback_kernel, "info", "loopback", "--json").stdout)
    assert [p["kind"] for p in record["pins"]] == ["render", "bridge out", "bridge in", "capture"]
    assert record["pins"][3]["max_instances"] == 4
    missing = cli(loopback_kernel, "info", "nosuch", check=False)
    assert missing.returncode == 1 and "nosuch" in missing.stderr


FAILING = """
[[device]]
name = "loopback"
miniport = "loopback"

[[device]]
name = "broken"
miniport = "faulty"
options = { miniport = "loopback", fault = "exit", after_seconds = 0.01 }
restart = "never"
"""


def test_ls_shows_failed_devices(start_kernel: Callable[..., KernelProcess]) -> None:
    kernel = start_kernel(FAILING)
    deadline = time.monotonic() + TIMEOUT
    while True:
        listing = json.loads(cli(kernel, "ls", "--json").stdout)
        if listing["devices"]["broken"]["state"] == "failed" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert listing["devices"]["broken"]["state"] == "failed"
    assert [f["id"] for f in listing["filters"]] == ["loopback"]
    text = cli(kernel, "ls").stdout
    assert "loopback  (device loopback" in text
    assert "broken  (device, no filter) state failed" in text


@pytest.mark.parametrize("command", [["send", "loopback", "90 3c 40"], ["ping", "loopback"]])
def test_no_kernel(command: list[str], tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ksclient.cli", *command, "--runtime", str(tmp_path / "none"),
         "--timeout", "0.2"], capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert result.returncode == 1
    assert "no kernel is running" in result.stderr


def test_play_interrupted_silences_the_device(
    loopback_kernel: KernelProcess, tmp_path: Path
) -> None:
    source = tmp_path / "long.mid"
    midi = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    midi.tracks.append(track)
    for note in range(60, 100):  # one note_on every half second: 20 s, never finished here
        track.append(mido.Message("note_on", note=note, velocity=80, time=480))
    midi.save(source)
    with background(loopback_kernel, "monitor", "loopback", "--json", "--duration", "30") as mon:
        play = subprocess.Popen(
            [sys.executable, "-m", "ksclient.cli", "play", str(source), "--to", "loopback",
             "--runtime", str(loopback_kernel.runtime)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert mon.stdout is not None
        seen = [json.loads(mon.stdout.readline())]
        assert seen[0]["type"] == "note_on"
        play.send_signal(signal.SIGINT)
        _, err = play.communicate(timeout=TIMEOUT)
        print(err)
        assert play.returncode == 130
        assert "all notes off" in err
        while sum(m["type"] == "control_change" for m in seen) < 32:
            line = mon.stdout.readline()
            assert line, "the monitor ended before the device was silenced"
            seen.append(json.loads(line))
        mon.send_signal(signal.SIGINT)
    silenced = [(m["channel"], m["control"]) for m in seen if m["type"] == "control_change"]
    assert sorted(silenced) == [(ch, cc) for ch in range(16) for cc in (120, 123)]


def test_monitor_watches_what_a_render_pin_plays_without_taking_it(
    loopback_kernel: KernelProcess,
) -> None:
    # The loopback's render pin has one instance: the client below holds it, and the
    # monitor still sees what it plays, beside what the capture pin receives.
    with loopback_kernel.connect() as c:
        out = c.open_render("loopback")
        out.run()
        with background(loopback_kernel, "monitor", "loopback", "--all", "--json",
                        "--count", "4") as mon:
            out.send(b"\x90\x3c\x40")
            out.send(b"\x80\x3c\x00")
            text, _ = mon.communicate(timeout=TIMEOUT)
    by_direction: dict[str, list[str]] = {}
    for line in text.splitlines():
        record = json.loads(line)
        by_direction.setdefault(record["direction"], []).append(record["hex"])
    assert by_direction == {"render": ["90 3c 40", "80 3c 00"],
                            "capture": ["90 3c 40", "80 3c 00"]}


def test_a_slow_monitor_never_slows_or_loses_the_pins_data(
    loopback_kernel: KernelProcess,
) -> None:
    with loopback_kernel.connect() as c:
        out, inp = c.open_render("loopback"), c.open_capture("loopback")
        inp.run()
        out.run()
        with c.open_monitor("loopback", capacity=1 << 14) as render_tap, \
                c.open_monitor("loopback", capture=True, capacity=1 << 14) as capture_tap:
            messages = [bytes([0x90, i % 128, 1 + i % 100]) for i in range(20_000)]
            got = []
            for start in range(0, len(messages), 1000):  # nobody reads the monitors
                out.send_many(messages[start:start + 1000])
                while len(got) < start + 1000:
                    got.append(inp.receive(timeout=10).data)
            assert got == messages  # the pins lost nothing and kept the order
            for tap in (render_tap, capture_tap):
                stats = tap.statistics()
                assert stats["dropped"] > 0 and stats["copied"] + stats["dropped"] == 20_000
                copies = []
                while tap.poll(0):
                    copies.append(tap.receive_nowait().data)
                assert copies == messages[:len(copies)]  # the first that fitted, in order
