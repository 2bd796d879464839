"""What a careless (not hostile) user runs into: typos, Ctrl-C, a shadowing package."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ipc.status import Status, StatusError
from kernel.config import load, parse
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[kernel]\nheartbeat_intervall = 2.0\n", "line 2: [kernel]: unknown keys "
         "'heartbeat_intervall' (did you mean 'heartbeat_interval'?)"),
        ('[[device]]\nname = "a"\nminiport = "loopback"\nrestart = { limt = 3 }\n',
         "line 4: device 'a': restart: unknown keys 'limt' (did you mean 'limit'?)"),
        ('[[device]]\nname = "a"\nminiport = "loopback"\noptons = {}\n',
         "line 4: device 'a': unknown keys 'optons' (did you mean 'options'?)"),
        ("[kernel]\n\ncall_timeout = -1\n", "line 3: call_timeout must be a number"),
    ],
)
def test_configuration_mistakes_name_the_file_the_line_and_the_closest_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "kernel.toml"
    path.write_text(text)
    with pytest.raises(StatusError) as info:
        load(path)
    assert info.value.status == Status.DEVICE_CONFIGURATION_ERROR
    assert f"{path}, {expected}" in info.value.message


def test_the_kernel_refuses_a_misspelled_key_at_start(tmp_path: Path) -> None:
    path = tmp_path / "kernel.toml"
    path.write_text("[kernel]\nstop_grase = 1\n")
    proc = subprocess.run([sys.executable, "-m", "kernel", "--runtime", str(tmp_path / "rt"),
                           str(path)], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "did you mean 'stop_grace'?" in proc.stderr
    assert not (tmp_path / "rt").exists()


def test_every_known_key_is_accepted() -> None:
    config = parse({
        "kernel": {"heartbeat_interval": 1.0, "heartbeat_timeout": 5.0, "call_timeout": 5.0,
                   "ring_capacity": 4096, "malformed_limit": 5, "malformed_window": 1.0,
                   "stop_grace": 0.5},
        "device": [{"name": "d", "miniport": "loopback", "options": {}, "resources": {},
                    "properties": {}, "restart": {"limit": 1, "window": 1.0, "backoff": 0.1,
                                                  "max_backoff": 1.0}}],
    })
    assert config.ring_capacity == 4096 and config.devices[0].restart.limit == 1


def test_ctrl_c_at_the_terminal_stops_everything_quietly(runtime_dir: Path) -> None:
    # The terminal sends SIGINT to the whole foreground process group: here, a group of
    # the kernel's own, so this test's process is not hit.
    proc = subprocess.Popen(
        [sys.executable, "-m", "kernel", "--runtime", str(runtime_dir)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        process_group=0,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "ready in" in line:
                break
        else:
            pytest.fail(f"the kernel did not start: {proc.stderr.read() if proc.stderr else ''}")
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "kernel stopped" in out
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert not runtime_dir.exists()


def test_a_package_that_shadows_the_projects_is_named_at_start(tmp_path: Path) -> None:
    impostor = tmp_path / "site" / "ipc"
    impostor.mkdir(parents=True)
    (impostor / "__init__.py").write_text("")
    (impostor / "platform.py").write_text(
        (ROOT / "ipc" / "platform.py").read_text()  # the check itself, found in the impostor
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    proc = subprocess.run(
        [sys.executable, "-c", "from ipc.platform import check_platform; check_platform()"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode != 0
    assert "another installed distribution of that name shadows it" in proc.stderr


DROP_WITHOUT_CLOSE = """
import gc, sys, time, ksclient
def use():
    c = ksclient.connect(sys.argv[1])
    out, inp = c.open_render("loopback"), c.open_capture("loopback")
    out.run(); inp.run()
    out.send([0x90, 60, 1])
use()
started = time.monotonic()
gc.collect()
print(f"collected in {time.monotonic() - started:.3f} s", flush=True)
"""


def test_a_client_dropped_without_close_releases_its_pins(loopback_kernel, tmp_path: Path) -> None:
    script = tmp_path / "drop.py"
    script.write_text(DROP_WITHOUT_CLOSE)
    proc = subprocess.run([sys.executable, str(script), str(loopback_kernel.runtime)],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "collected in" in proc.stdout
    with loopback_kernel.connect() as c:
        deadline = time.monotonic() + 5
        while any(any(f.open_counts) for f in c.filters()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(not any(f.open_counts) for f in c.filters())
        # The render pin (one instance) can be opened again at once.
        c.open_render("loopback").close()


def test_a_removed_render_pin_counts_what_the_miniport_never_took(loopback_kernel) -> None:
    import ksclient

    with loopback_kernel.connect() as c:
        out = c.open_render("loopback")
        out.run()
        pid = c.stats()["devices"]["loopback"]["pid"]
        os.kill(pid, signal.SIGSTOP)  # nothing in flight: it takes nothing from now on
        sent = 3000  # more than the miniport's ring holds: some wait in the client's ring
        out.send_many([bytes([0x90, i % 128, 1]) for i in range(sent)])
        deadline = time.monotonic() + 10
        while c.stats()["pins"][0]["stats"].get("released", 0) == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            event = c.next_event(max(0.01, deadline - time.monotonic()))
            if event.kind == "removal":
                break
        with pytest.raises(ksclient.DeviceRemovedError):
            out.send(b"\x90\x3c\x40")
        assert out.lost == sent
        out.close()


def test_code_in_the_working_directory_does_not_hijack_the_kernel(
    tmp_path: Path, runtime_dir: Path
) -> None:
    (tmp_path / "kernel.py").write_text("print('HIJACKED', flush=True)\n")
    (tmp_path / "miniports.py").write_text("print('HIJACKED', flush=True)\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ksclient.cli", "up", "--runtime", str(runtime_dir)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, process_group=0,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "ready in" in line or "HIJACKED" in line:
                break
        assert not any("HIJACKED" in line for line in seen), seen
        assert any("ready in" in line for line in seen), seen
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C at the terminal
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "HIJACKED" not in out
    assert "Traceback" not in err, err


def _leftovers() -> set[Path]:
    """Crash-test runtime directories whose kernel is gone (a concurrent test's live
    kernel is not a leftover)."""
    from ipc.runtime import kernel_alive, runtime_base

    def dead() -> set[Path]:
        return {d for d in runtime_base().glob("portcls-crashtest-*") if not kernel_alive(d)}

    found = dead()
    if found:
        time.sleep(1.0)  # one being created or removed right now
        found &= dead()
    return found


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--miniport", "nosuch"], "no miniport 'nosuch' (known:"),
        (["--miniport", "nosuchpkg:Cls"], "No module named 'nosuchpkg'"),
        (["--miniport", "loopback", "--options", '{"colour": "red"}'],
         "unexpected keyword argument 'colour'"),
        (["--miniport", "loopback", "--options", "{not json"], "--options is not JSON"),
    ],
)
def test_crashtest_of_a_miniport_that_cannot_start_ends_at_once_with_the_reason(
    args: list[str], expected: str
) -> None:
    before = _leftovers()
    proc = subprocess.run(
        [sys.executable, "-m", "ksclient.cli", "crashtest", *args, "--iterations", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _leftovers() <= before


@pytest.mark.slow
def test_crashtest_of_the_mpu401_with_its_resources(tmp_path: Path) -> None:
    before = _leftovers()
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "ksclient.cli", "crashtest", "--miniport", "mpu401",
         "--options", '{"cable": "loopback"}', "--resources", '{"io": [[816, 2]], "irq": [9]}',
         "--iterations", "2", "--faults", "kill,exception", "--json", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "crashtest: streaming; injecting 2 faults" in proc.stdout  # progress is shown
    assert "PASS" in proc.stdout
    assert report.exists()
    assert _leftovers() <= before


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ([0x90, 200, 100], "byte 1 is 0xc8, not a data byte"),
        ([256], "byte 0 is 256, not a byte"),
        ([0x90, 60], "note_on (0x90) is 3 bytes, not 2"),
        ([0x90, 60, 100, 62, 101], "note_on (0x90) is 3 bytes, not 5"),
        ([60, 100], "byte 0 is 0x3c, a data byte"),
        ([0xF0, 1, 2], "a SysEx must end with 0xf7"),
        ([0xF7], "the end of a SysEx that never started"),
        ([0xF0, 1, 0x90, 2, 0xF7], "byte 2 is 0x90, a status byte inside a SysEx"),
        ([0xF4], "undefined status byte"),
        ([], "an empty message"),
    ],
)
def test_send_refuses_what_is_not_one_valid_midi_message(
    loopback_kernel, message: list[int], reason: str
) -> None:
    import ksclient

    with loopback_kernel.connect() as c:
        out, inp = c.open_render("loopback"), c.open_capture("loopback")
        inp.run()
        out.run()
        with pytest.raises(ksclient.InvalidMessage, match=reason.replace("(", r"\(")
                           .replace(")", r"\)")):
            out.send(message)
        with pytest.raises(ksclient.InvalidMessage):
            out.send_many([b"\x90\x3c\x40", message])  # one bad message sends none
        out.send(b"\x80\x3c\x00")
        assert inp.receive(timeout=5).data == b"\x80\x3c\x00"  # nothing else came first
        out.send_raw(bytes([0x90, 60, 100, 62, 101]))  # the explicit raw path
        assert [inp.receive(timeout=5).data for _ in range(2)] == [
            b"\x90\x3c\x64", b"\x90\x3e\x65"]


def test_ls_hardware_keeps_the_c_libraries_stderr_out_of_the_terminal(tmp_path: Path) -> None:
    # No JACK server under this name and (here) no ALSA sequencer: both libraries
    # complain on file descriptor 2; the reason belongs in the listing, once.
    env = {**os.environ, "JACK_DEFAULT_SERVER": f"portcls-none-{os.getpid()}"}
    proc = subprocess.run([sys.executable, "-m", "ksclient.cli", "ls", "--hardware"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.stderr == ""
    assert "jack:" in proc.stdout
