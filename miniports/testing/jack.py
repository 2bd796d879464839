"""A private JACK server for tests and benchmarks: Debian's `jackd` with the dummy backend.

Each `JackServer` runs under its own server name, so parallel test workers never
share one. A process talks to it by having `JACK_DEFAULT_SERVER` set to that
name (`server.env()`), which is how python-rtmidi's JACK API, the kernel's
miniport hosts and the `jack_*` tools all find it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from types import TracebackType
from typing import IO, Self

from ipc.procwatch import stop_process

__all__ = ["JackServer", "JackUnavailable", "jack_missing_reason", "running_jack"]


class JackUnavailable(RuntimeError):
    """jackd is not installed or would not start."""


def jack_missing_reason() -> str | None:
    """Why the JACK tools cannot be used here, or None when they can."""
    for tool in ("jackd", "jack_connect", "jack_lsp", "jack_midi_dump"):
        if shutil.which(tool) is None:
            return (
                f"{tool} is not installed (Debian: apt-get install jackd2; "
                "scripts/run-tests installs it when it runs as root)"
            )
    return None


class JackServer:
    """`jackd -n NAME -d dummy -r RATE -p PERIOD`, started and stopped by its owner."""

    def __init__(
        self, name: str | None = None, period: int = 64, rate: int = 48000,
        realtime: bool | None = None,
    ) -> None:
        self.name = name or f"portcls-{uuid.uuid4().hex[:10]}"
        # Realtime scheduling (where allowed: root, or rtprio limits) keeps JACK's
        # process threads from being descheduled mid-cycle on a loaded machine,
        # which loses events; without it the server still runs, less reliably.
        self.realtime = os.geteuid() == 0 if realtime is None else realtime
        self.period = period
        self.rate = rate
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def period_seconds(self) -> float:
        return self.period / self.rate

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment in which JACK clients reach this server."""
        env = dict(os.environ if base is None else base)
        env["JACK_DEFAULT_SERVER"] = self.name
        env["JACK_NO_AUDIO_RESERVATION"] = "1"
        env["JACK_NO_START_SERVER"] = "1"
        return env

    def start(self, timeout: float = 10.0) -> Self:
        reason = jack_missing_reason()
        if reason is not None:
            raise JackUnavailable(reason)
        argv = [
            "jackd", *([] if self.realtime else ["--no-realtime"]), "-n", self.name,
            "-d", "dummy", "-r", str(self.rate), "-p", str(self.period),
            "-C", "0", "-P", "0",
        ]
        # A file, not a pipe: nobody reads jackd's chatter while it runs.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as jackd
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=self.env(),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.log()
                self._close_log()
                if self.realtime:
                    # No realtime scheduling here (a container without CAP_SYS_NICE, say).
                    self.realtime = False
                    return self.start(timeout)
                raise JackUnavailable(f"jackd exited with {self.process.returncode}: {err[-800:]}")
            probe = subprocess.run(
                ["jack_lsp", "-s", self.name], env=self.env(), capture_output=True, timeout=timeout
            )
            if probe.returncode == 0:
                return self
            time.sleep(0.05)
        self.stop()
        raise JackUnavailable(f"jackd {self.name} did not answer within {timeout} s")

    def ports(self) -> list[str]:
        """Every port name the server has (`jack_lsp`)."""
        out = subprocess.run(
            ["jack_lsp", "-s", self.name], env=self.env(), capture_output=True, text=True,
            timeout=10, check=True,
        )
        return [line.strip() for line in out.stdout.splitlines() if line.strip()]

    def wait_for_port(self, name: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while name not in self.ports():
            if time.monotonic() > deadline:
                raise TimeoutError(f"JACK port {name!r} did not appear; have {self.ports()}")
            time.sleep(0.05)

    def connect(self, source: str, destination: str) -> None:
        """`jack_connect source destination` (an output port to an input port)."""
        subprocess.run(
            ["jack_connect", "-s", self.name, source, destination], env=self.env(),
            capture_output=True, timeout=10, check=True,
        )

    def stop(self, timeout: float = 10.0) -> None:
        process = self.process
        if process is None:
            return
        stop_process(process, timeout)
        self._close_log()
        self.process = None

    def log(self) -> str:
        """What jackd printed so far."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def running_jack(period: int = 64, rate: int = 48000) -> Iterator[JackServer]:
    """A started server, stopped on exit."""
    with JackServer(period=period, rate=rate) as server:
        yield server
