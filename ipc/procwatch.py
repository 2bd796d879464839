"""Knowing from a poll loop that another process has exited.

A `ProcessWatch` is a file descriptor that polls readable once the watched
process is gone, so a loop waits for it in the same `poll()` as its sockets
instead of checking every so often. On Linux it is a pidfd (`os.pidfd_open`).
Where that is missing or refused (old kernel, another OS, a seccomp filter),
a daemon thread blocks until the process ends (`Popen.wait` for a child,
`psutil.Process.wait` otherwise) and then writes to a pipe the loop watches.

Setting the environment variable PORTCLS_NO_PIDFD=1 forces the fallback,
which is how the tests exercise it on Linux.

`stop_process` is the one way a process here stops a child it started: a stop
signal, a grace period, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
from multiprocessing.process import BaseProcess
from typing import Any, Final

import psutil

ENV_NO_PIDFD: Final = "PORTCLS_NO_PIDFD"


def _pidfd(pid: int) -> int | None:
    if os.environ.get(ENV_NO_PIDFD) or not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError as exc:
        if isinstance(exc, ProcessLookupError):
            raise
        return None


class ProcessWatch:
    """A descriptor that becomes readable when process `pid` exits.

    `child` (the Popen of `pid`, if this process started it) lets the fallback
    thread wait without polling; the Popen then holds the exit status as
    usual. Raises ProcessLookupError if `pid` does not exist.
    """

    def __init__(self, pid: int, child: subprocess.Popen[Any] | None = None) -> None:
        self.pid = pid
        self._write_fd: int | None = None
        fd = _pidfd(pid)
        if fd is not None:
            self.kind = "pidfd"
            self._fd = fd
            return
        if child is None and not psutil.pid_exists(pid):
            raise ProcessLookupError(pid)
        self.kind = "thread"
        self._fd, self._write_fd = os.pipe()
        os.set_blocking(self._fd, False)
        thread = threading.Thread(
            target=self._wait, args=(child, self._write_fd), name=f"watch-{pid}", daemon=True
        )
        thread.start()

    def _wait(self, child: subprocess.Popen[Any] | None, write_fd: int) -> None:
        try:
            if child is not None:
                child.wait()
            else:
                with contextlib.suppress(psutil.NoSuchProcess):
                    psutil.Process(self.pid).wait()
            with contextlib.suppress(OSError):
                os.write(write_fd, b"x")
        finally:
            # The thread owns the write end, so `close` never frees a descriptor
            # number this thread could still write to.
            with contextlib.suppress(OSError):
                os.close(write_fd)

    def fileno(self) -> int:
        return self._fd

    def exited(self) -> bool:
        """True once the process has exited (never blocks)."""
        return bool(select.select([self._fd], [], [], 0)[0])

    def close(self) -> None:
        """Stop watching. Idempotent. A fallback thread ends when the process does."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


def stop_process(
    process: subprocess.Popen[Any] | BaseProcess, grace: float, signum: int = signal.SIGTERM
) -> bool:
    """Stop a child process: send `signum` (SIGTERM), wait up to `grace` seconds, then
    SIGKILL it and wait until it is gone, so that it is reaped either way.

    Takes a `subprocess.Popen` or a `multiprocessing` process. Returns True if the
    process ended without SIGKILL (it had already, or it obeyed the signal), False if
    it had to be killed. Afterwards its `returncode` / `exitcode` is set.
    """
    if isinstance(process, subprocess.Popen):
        if process.poll() is not None:
            return True
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)
        try:
            process.wait(grace)
            return True
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
            return False
    if process.exitcode is not None or process.pid is None:
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signum)
    process.join(grace)
    if process.exitcode is not None:
        return True
    process.kill()
    process.join()
    return False
