"""Fixtures: real kernels in private runtime directories, and a leak check on every test."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

import ksclient
from ipc.runtime import runtime_base
from miniports.jackbed import JackServer, jack_missing_reason

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class KernelProcess:
    runtime: Path
    proc: subprocess.Popen[str]
    banner: str
    reader: threading.Thread | None = None

    def drain_output(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    def connect(self, **kwargs: object) -> ksclient.Client:
        return ksclient.connect(self.runtime, **kwargs)  # type: ignore[arg-type]

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("the kernel did not stop on SIGTERM") from None
        if self.reader is not None:
            self.reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def miniport_pids(self) -> list[int]:
        return [c.pid for c in psutil.Process(self.proc.pid).children()]


def _children() -> set[int]:
    return {c.pid for c in psutil.Process().children(recursive=True)}


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if it leaves a process or a runtime directory of its own behind."""
    before = _children()
    yield
    deadline = time.monotonic() + 10
    while True:
        left = {pid for pid in _children() - before if psutil.pid_exists(pid)}
        left = {
            pid for pid in left
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        }
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
    assert not left, f"processes left behind: {left}"
    prefix = getattr(request.node, "_portcls_prefix", None)
    if prefix:
        stale = sorted(runtime_base().glob(prefix + "*"))
        assert not stale, f"runtime files left behind: {stale}"


@pytest.fixture
def runtime_dir(request: pytest.FixtureRequest) -> Path:
    """A fresh runtime-directory path (not created) unique to this test."""
    prefix = f"portcls-t{uuid.uuid4().hex[:10]}"
    request.node._portcls_prefix = prefix
    return runtime_base() / prefix


@pytest.fixture
def start_kernel(
    runtime_dir: Path, tmp_path: Path
) -> Iterator[Callable[..., KernelProcess]]:
    """Start a real kernel process with a TOML configuration; stopped after the test."""
    started: list[KernelProcess] = []

    def start(
        config: str | None = None, timeout: float = 20.0, env: dict[str, str] | None = None
    ) -> KernelProcess:
        runtime = runtime_dir if not started else Path(f"{runtime_dir}-{len(started)}")
        argv = [sys.executable, "-m", "kernel", "--quiet", "--runtime", str(runtime)]
        if config is not None:
            path = tmp_path / f"kernel{len(started)}.toml"
            path.write_text(config)
            argv.append(str(path))
        env = dict(os.environ if env is None else env, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env,
            cwd=ROOT,
        )
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + timeout
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("kernel") and "ready" in line:
                break
            if time.monotonic() > deadline:
                break
        else:
            proc.wait()
            proc.stdout.close()
            raise AssertionError(f"kernel exited {proc.returncode}: {''.join(lines)}")
        kp = KernelProcess(runtime, proc, "".join(lines))
        # Keep draining stdout so the kernel never blocks on a full pipe.
        kp.reader = threading.Thread(target=kp.drain_output, daemon=True)
        kp.reader.start()
        started.append(kp)
        return kp

    yield start
    for kp in started:
        kp.stop()


LOOPBACK = """
[[device]]
name = "loopback"
miniport = "loopback"
"""


@pytest.fixture
def loopback_kernel(start_kernel: Callable[..., KernelProcess]) -> KernelProcess:
    return start_kernel(LOOPBACK)


@pytest.fixture
def jack_server() -> Iterator[JackServer]:
    """A private JACK server (dummy backend, period 64 at 48 kHz) under a unique name.

    Without jackd the test is skipped with the reason, except under CI (the
    CI environment variable set), where a missing jackd is a failure.
    """
    reason = jack_missing_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs JACK: {reason}")
        pytest.skip(reason)
    with JackServer() as server:
        yield server
