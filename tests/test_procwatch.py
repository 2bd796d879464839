"""stop_process: the one way to stop a child (stop signal, grace, SIGKILL)."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import sys
import time
from multiprocessing.connection import Connection

from ipc.procwatch import stop_process

SLEEPER = "import signal, time; {setup}; print('ready', flush=True); time.sleep(60)"


def _child(setup: str = "pass") -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SLEEPER.format(setup=setup)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.stdout.close()
    return proc


def test_a_child_that_obeys_sigterm_is_not_killed() -> None:
    proc = _child()
    assert stop_process(proc, 10.0) is True
    assert proc.returncode == -signal.SIGTERM


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    proc = _child("signal.signal(signal.SIGTERM, signal.SIG_IGN)")
    started = time.monotonic()
    assert stop_process(proc, 0.3) is False
    assert proc.returncode == -signal.SIGKILL
    assert 0.3 <= time.monotonic() - started < 10


def test_another_stop_signal_and_an_ended_child() -> None:
    proc = _child()
    assert stop_process(proc, 10.0, signal.SIGINT) is True
    assert proc.returncode == -signal.SIGINT
    assert stop_process(proc, 10.0) is True  # already gone: nothing is sent
    assert proc.returncode == -signal.SIGINT


def _ignore_sigterm(ready: Connection) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.send(True)
    time.sleep(60)


def test_a_multiprocessing_child() -> None:
    # fork: spawn and forkserver would leave their helper processes behind.
    ctx = multiprocessing.get_context("fork")
    ready, child_end = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_ignore_sigterm, args=(child_end,))
    proc.start()
    try:
        assert ready.poll(30) and ready.recv()
        assert stop_process(proc, 0.3) is False
        assert proc.exitcode == -signal.SIGKILL
    finally:
        stop_process(proc, 0)
        ready.close()
        child_end.close()
    assert stop_process(ctx.Process(target=time.sleep, args=(1,)), 0.1) is True  # never started
