"""The `portcls` command line: demo, ls, up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT

CLI = [sys.executable, "-m", "ksclient.cli"]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def test_demo_runs_and_exits_zero() -> None:
    result = subprocess.run([*CLI, "demo"], capture_output=True, text=True, env=ENV, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "demo ok" in result.stdout
    assert result.stdout.count(" us") == 9


def test_ls_lists_filters_and_pins(loopback_kernel) -> None:
    result = subprocess.run(
        [*CLI, "ls", "--runtime", str(loopback_kernel.runtime)],
        capture_output=True, text=True, env=ENV, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "loopback" in result.stdout
    assert "pin 0: MIDI Out" in result.stdout and "capture" in result.stdout


def test_ls_without_kernel_fails_clearly(runtime_dir: Path) -> None:
    result = subprocess.run(
        [*CLI, "ls", "--runtime", str(runtime_dir), "--timeout", "0.2"],
        capture_output=True, text=True, env=ENV, timeout=30,
    )
    assert result.returncode == 1 and "no kernel" in result.stderr


def test_up_stops_cleanly_on_sigterm(runtime_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[[device]]\nname = 'x'\n")
    result = subprocess.run([*CLI, "up", str(bad), "--runtime", str(runtime_dir)],
                            capture_output=True, text=True, env=ENV, timeout=30)
    assert result.returncode == 2 and "needs a miniport" in result.stderr
    proc = subprocess.Popen(
        [*CLI, "up", "--runtime", str(runtime_dir)], stdout=subprocess.PIPE, text=True, env=ENV
    )
    assert proc.stdout is not None
    banner = [proc.stdout.readline() for _ in range(3)]
    assert "ready" in banner[0] and "loopback" in banner[1]
    children = __import__("psutil").Process(proc.pid).children(recursive=True)
    miniports = [c for c in children if "miniports.host" in c.cmdline()]
    assert len(miniports) == 2  # the default: a loopback and an MPU-401
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait(15) == 0
    proc.stdout.close()
    assert "mpu401 (mpu401" in rest and "kernel stopped" in rest
    assert not runtime_dir.exists()
    time.sleep(0.1)
    assert not any(child.is_running() for child in children)


def test_crashtest_runs_and_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = subprocess.run(
        [*CLI, "crashtest", "--iterations", "1", "--faults", "kill", "--seed", "1",
         "--json", str(out)],
        capture_output=True, text=True, env=ENV, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout
    assert json.loads(out.read_text())["summary"]["faults"] == 1


def test_crashtest_refuses_a_null_option_by_name() -> None:
    result = subprocess.run(
        [*CLI, "crashtest", "--options", '{"port": null}'],
        capture_output=True, text=True, env=ENV, timeout=60,
    )
    assert result.returncode == 2
    assert "options.options.port is None" in result.stderr
