"""The mido backend: unchanged mido programs and mido's own console scripts against a kernel."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import mido
import pytest

from ipc.status import Status
from ksclient.mido_backend import PortError
from tests.conftest import ROOT, KernelProcess

BACKEND = "ksclient.mido_backend"


def _env(kernel: KernelProcess) -> dict[str, str]:
    # mido's console scripts do not have the current directory on sys.path: name this
    # tree so that they import the ksclient under test.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {
        **os.environ, "MIDO_BACKEND": BACKEND, "PORTCLS_RUNTIME_DIR": str(kernel.runtime),
        "PYTHONPATH": path,
    }


def _script(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(f"mido's {name} is not installed beside {sys.executable}")
    return found


def test_mido_ports_lists_the_pins(loopback_kernel: KernelProcess) -> None:
    out = subprocess.run(
        [_script("mido-ports")], env=_env(loopback_kernel), capture_output=True, text=True,
        timeout=60, check=True,
    ).stdout
    print(out)
    assert "'loopback:MIDI In'" in out
    assert "'loopback:MIDI Out'" in out
    assert BACKEND in out


def test_get_devices(start_kernel: Callable[..., KernelProcess]) -> None:
    kernel = start_kernel()  # the default: loopback and an MPU-401 looped back
    with kernel.connect() as client:
        for name in ("loopback", "mpu401"):
            client.wait_for_filter(name)
    backend = mido.Backend(BACKEND, load=True)
    devices = backend.module.get_devices(runtime_dir=kernel.runtime)
    names = {d["name"]: (d["is_input"], d["is_output"]) for d in devices}
    assert names["loopback:MIDI Out"] == (False, True)
    assert names["loopback:MIDI In"] == (True, False)
    assert names["loopback"] == (True, True)
    assert names["mpu401:MIDI Render"] == (False, True)
    assert names["mpu401:MIDI Capture"] == (True, False)
    assert sorted(backend.get_ioport_names(runtime_dir=kernel.runtime)) == ["loopback", "mpu401"]


PROGRAM = """
import mido

with mido.open_input("loopback:MIDI In") as inp, mido.open_output("loopback:MIDI Out") as out:
    assert inp.poll() is None
    sent = [mido.Message("note_on", note=i % 128, velocity=1 + i % 127, channel=i % 16)
            for i in range(100)]
    sysex = mido.Message("sysex", data=list(range(100)) * 3)
    for msg in sent:
        out.send(msg)
    out.send(sysex)
    got = [inp.receive() for _ in range(50)]
    while len(got) < 101:
        got.extend(inp.iter_pending())
    assert got == sent + [sysex], got
    out.reset()
    reset = [inp.receive() for _ in range(32)]
    assert all(m.type == "control_change" for m in reset)
    out.panic()
    msg = None
    while msg is None:
        msg = inp.poll()
    assert msg.control == 120
    print("received", len(got), "and", len(reset), "reset messages")
print("closed", inp.closed, out.closed)
"""


def test_unchanged_mido_program(loopback_kernel: KernelProcess) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM], env=_env(loopback_kernel), capture_output=True,
        text=True, timeout=60,
    )
    print(result.stdout, result.stderr)
    assert result.returncode == 0
    assert "received 101 and 32 reset messages" in result.stdout
    assert "closed True True" in result.stdout


def test_ioport_callback_and_errors(loopback_kernel: KernelProcess) -> None:
    backend = mido.Backend(BACKEND, load=True)
    runtime = loopback_kernel.runtime
    with pytest.raises(OSError, match="unknown"):
        backend.open_input("nosuch:MIDI In", runtime_dir=runtime)
    got: list[mido.Message] = []
    done = threading.Event()

    def on_message(msg: mido.Message) -> None:
        got.append(msg)
        if len(got) == 3:
            done.set()

    with backend.open_ioport("loopback", runtime_dir=runtime) as port:
        assert port.name == "loopback"
        port.send(mido.Message("note_on", note=1))
        assert port.receive() == mido.Message("note_on", note=1)
        port.callback = on_message
        for note in (2, 3):
            port.send(mido.Message("note_on", note=note))
        port.send(mido.Message("sysex", data=[1, 2, 3]))
        assert done.wait(10)
        port.callback = None
        assert got[2].type == "sysex"
    assert port.closed


def test_removed_device_is_an_oserror(loopback_kernel: KernelProcess) -> None:
    backend = mido.Backend(BACKEND, load=True)
    runtime = loopback_kernel.runtime
    with loopback_kernel.connect() as client:
        pid = client.stats()["devices"]["loopback"]["pid"]
    out = backend.open_output("loopback:MIDI Out", runtime_dir=runtime)
    inp = backend.open_input("loopback:MIDI In", runtime_dir=runtime)
    try:
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(OSError) as raised:
            while True:  # until the removal reaches this client
                inp.receive()
        assert isinstance(raised.value, PortError)
        assert raised.value.status == Status.DEVICE_REMOVED
        with pytest.raises(PortError, match="DEVICE_REMOVED"):
            for _ in range(100):
                out.send(mido.Message("note_on"))
                time.sleep(0.05)
    finally:
        out.close()
        inp.close()
    assert out.closed and inp.closed


def test_mido_play_through_the_loopback(
    loopback_kernel: KernelProcess, tmp_path: Path
) -> None:
    path = tmp_path / "small.mid"
    midi = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    midi.tracks.append(track)
    notes = [60, 64, 67, 72]
    for note in notes:
        track.append(mido.Message("note_on", note=note, velocity=90, time=0))
        track.append(mido.Message("note_off", note=note, velocity=0, time=48))
    midi.save(path)
    backend = mido.Backend(BACKEND, load=True)
    with backend.open_input("loopback:MIDI In", runtime_dir=loopback_kernel.runtime) as inp:
        result = subprocess.run(
            [_script("mido-play"), "-o", "loopback:MIDI Out", str(path)],
            env=_env(loopback_kernel), capture_output=True, text=True, timeout=60,
        )
        print(result.stdout, result.stderr)
        assert result.returncode == 0
        assert "Using output 'loopback:MIDI Out'" in result.stdout
        got = []
        while True:
            got.append(inp.receive())
            if len(got) == 32 + 8 + 32:  # reset(), the file, reset()
                break
    played = [m for m in got if m.type in ("note_on", "note_off")]
    assert [(m.type, m.note) for m in played] == [
        (kind, n) for n in notes for kind in ("note_on", "note_off")
    ]
    assert sum(m.type == "control_change" for m in got) == 64  # reset() before and after
