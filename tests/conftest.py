"""Fixtures: real kernels in private runtime directories, and a leak check on every test."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from ipc.runtime import runtime_base
from miniports.testing import KernelUnderTest
from miniports.testing import start_kernel as start_kernel_process
from miniports.testing.jack import JackServer, jack_missing_reason

ROOT = Path(__file__).resolve().parent.parent


KernelProcess = KernelUnderTest
"""A kernel started for a test: `.runtime`, `.proc`, `.banner`, `.connect()`, `.stop()`."""


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
        kp = start_kernel_process(config, runtime=runtime, env=env, timeout=timeout)
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
