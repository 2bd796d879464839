"""Starting a private kernel process, and writing its configuration.

`start_kernel` runs `python -m kernel` in a runtime directory of its own and
returns once the kernel says it is ready (every device started or failed), within
a deadline that holds even if the kernel prints nothing at all. The
`KernelProcess` it returns connects clients to that kernel and stops it.
`toml_config` writes a kernel configuration from plain dicts, `kernel_command`
is the kernel's command line.

    from ksclient.launch import start_kernel, toml_config

    config = toml_config([{"name": "loopback", "miniport": "loopback"}])
    with start_kernel(config) as kernel, kernel.connect() as client:
        client.wait_for_filter("loopback")
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self

import psutil

from ipc.procwatch import stop_process
from ipc.runtime import remove_runtime_dir, runtime_base
from ksclient.client import Client, connect

__all__ = [
    "READY_TIMEOUT",
    "STOP_GRACE",
    "KernelProcess",
    "KernelStartError",
    "kernel_command",
    "start_kernel",
    "toml_config",
]

READY_TIMEOUT: Final = 20.0
"""Seconds a kernel gets, by default, to say it is ready."""
STOP_GRACE: Final = 15.0
"""Seconds a kernel gets, by default, to stop its miniports and exit on SIGTERM."""
_POLL_SECONDS: Final = 0.05
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")


def toml_config(
    devices: Iterable[Mapping[str, Any]], kernel: Mapping[str, Any] | None = None
) -> str:
    """A kernel configuration (TOML text): `kernel` is its [kernel] table, each of
    `devices` a [[device]].

    Values may be bool, int, float, str, lists or tuples of values, and mappings
    (written as inline tables). ValueError for None (TOML has no null), naming the
    key; TypeError for a value of another type or a key that is not a str.
    """
    lines = []
    if kernel:
        lines.append("[kernel]")
        lines += [_toml_pair(key, value, "kernel") for key, value in kernel.items()]
    for index, device in enumerate(devices):
        name = device.get("name")
        where = f"device {name!r}" if isinstance(name, str) else f"device {index}"
        lines.append("\n[[device]]")
        lines += [_toml_pair(key, value, where) for key, value in device.items()]
    return "\n".join(lines) + "\n"


def _toml_pair(key: Any, value: Any, where: str, path: str = "") -> str:
    if not isinstance(key, str):
        raise TypeError(f"toml_config: {where}: key {key!r} is not a str")
    return f"{_toml_key(key)} = {_toml_value(value, where, f'{path}{key}')}"


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    escaped = "".join(
        "\\" + ch if ch in '"\\'
        else f"\\u{ord(ch):04x}" if ch < " " or ch == "\x7f"
        else ch
        for ch in text
    )
    return f'"{escaped}"'


def _toml_value(value: Any, where: str, path: str) -> str:
    if value is None:
        raise ValueError(
            f"toml_config: {where}: {path} is None, which TOML cannot write "
            "(leave the key out instead)"
        )
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(float(value))
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(
            _toml_value(item, where, f"{path}[{i}]") for i, item in enumerate(value)
        ) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(
            _toml_pair(key, item, where, f"{path}.") for key, item in value.items()
        ) + "}"
    raise TypeError(f"toml_config: {where}: {path}: cannot write {type(value).__name__} to TOML")


def kernel_command(
    config_path: Path | None = None,
    *,
    runtime: Path | None = None,
    quiet: bool = False,
    cpus: str | None = None,
) -> list[str]:
    """The command line of a kernel process run by this Python: `python -P -m kernel
    [--runtime DIR] [--quiet] [--cpus LIST] [CONFIG]`."""
    # -P: this project's packages, never a kernel.py (or ipc/) that happens to be in the
    # working directory.
    argv = [sys.executable, "-P", "-m", "kernel"]
    if runtime is not None:
        argv += ["--runtime", str(runtime)]
    if quiet:
        argv.append("--quiet")
    if cpus:
        argv += ["--cpus", cpus]
    if config_path is not None:
        argv.append(str(config_path))
    return argv


class KernelStartError(RuntimeError):
    """The kernel exited, or was not ready in time, while it started (it is stopped).

    `returncode` is its exit status (None if it had to be stopped), `output` what
    it printed on stdout; the message carries both.
    """

    def __init__(self, message: str, returncode: int | None, output: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.output = output


class KernelProcess:
    """A kernel process this process started (`start_kernel`), in its own runtime
    directory.

    `runtime` is that directory (what `ksclient.connect` takes), `process` the
    Popen, `env` the environment of the kernel and its miniport hosts, `banner`
    what the kernel printed up to its ready line. Its stdout is read all along, so
    the kernel never blocks on a full pipe. A context manager: leaving it stops
    the kernel.
    """

    def __init__(
        self, process: subprocess.Popen[str], runtime: Path, env: dict[str, str],
        config_dir: Path | None = None,
    ) -> None:
        self.process = process
        self.runtime = runtime
        self.env = env
        self.banner = ""
        self.killed = False
        """True once `stop` had to SIGKILL the kernel."""
        self._config_dir = config_dir
        self._lines: list[str] = []
        self._ready = False
        self._settled = threading.Event()
        """Set on the ready line or the end of the output, whichever comes first."""
        self._reader = threading.Thread(
            target=self._read, name=f"kernel-{process.pid}-stdout", daemon=True
        )
        self._reader.start()

    @classmethod
    def start(
        cls,
        config: str | None = None,
        *,
        config_path: Path | None = None,
        runtime: Path | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = READY_TIMEOUT,
        stderr: int | IO[Any] | None = None,
    ) -> Self:
        """What `start_kernel` does; a subclass gets an instance of itself."""
        if config is not None and config_path is not None:
            raise ValueError("pass config (TOML text) or config_path, not both")
        runtime = runtime or runtime_base() / f"portcls-k{uuid.uuid4().hex[:10]}"
        config_dir = None
        if config is not None:
            config_dir = Path(tempfile.mkdtemp(prefix="portcls-config-"))
            config_path = config_dir / "kernel.toml"
            config_path.write_text(config)
        full_env = dict(os.environ if env is None else env)
        # The kernel and its miniport hosts see this process's sys.path, so a miniport
        # importable here (`module:Class`) is importable in its host too.
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        try:
            process = subprocess.Popen(
                kernel_command(config_path, runtime=runtime, quiet=True),
                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=stderr, text=True,
                env=full_env,
            )
        except BaseException:
            if config_dir is not None:
                shutil.rmtree(config_dir, ignore_errors=True)
            raise
        kernel = cls(process, runtime, full_env, config_dir)
        try:
            kernel._wait_until_ready(timeout)
        except BaseException:
            # Failed, or interrupted (Ctrl-C, SIGTERM as SystemExit) while it starts:
            # nobody else holds the kernel to stop it.
            kernel._shut_down(STOP_GRACE)
            raise
        # A ready kernel has read its configuration: the file goes now, so an owner
        # killed later (a test's timeout, SIGKILL) leaves nothing behind in /tmp.
        kernel._remove_config()
        return kernel

    def _remove_config(self) -> None:
        if self._config_dir is not None:
            shutil.rmtree(self._config_dir, ignore_errors=True)
            self._config_dir = None

    def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        with contextlib.suppress(ValueError, OSError):
            for line in stdout:
                self._lines.append(line)
                if not self._ready and line.startswith("kernel") and "ready" in line:
                    self.banner = "".join(self._lines)
                    self._ready = True
                    self._settled.set()
        self._settled.set()

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        # Waiting on the reader alone would miss a kernel that prints nothing (the
        # deadline) and one that exits while its miniport hosts hold the pipe (poll).
        while not self._settled.wait(_POLL_SECONDS):
            if self.process.poll() is not None or time.monotonic() >= deadline:
                break
        if self._ready:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(max(0.0, deadline - time.monotonic()))
        code = self.process.poll()
        if code is not None:
            self._settled.wait(1.0)  # its last lines
            message = f"the kernel exited with {code}: {self.output()}"
        else:
            message = f"the kernel was not ready in {timeout} s: {self.output()}"
        raise KernelStartError(message, code, self.output())

    def connect(self, **kwargs: Any) -> Client:
        """`ksclient.connect` to this kernel; keyword arguments as there."""
        return connect(self.runtime, **kwargs)

    def alive(self) -> bool:
        return self.process.poll() is None

    def miniport_pids(self) -> list[int]:
        """The kernel's child processes: its miniport hosts (and port watchers)."""
        with contextlib.suppress(psutil.NoSuchProcess):
            return [c.pid for c in psutil.Process(self.process.pid).children()]
        return []

    def output(self) -> str:
        """Everything the kernel printed on stdout so far."""
        return "".join(self._lines)

    def stop(self, grace: float = STOP_GRACE) -> int:
        """Stop the kernel: SIGTERM, then up to `grace` s for it to stop its miniports
        and exit, then SIGKILL (`killed` says so). Returns its exit status, negative
        for a signal. Idempotent."""
        self._shut_down(grace)
        return self.process.returncode

    def _shut_down(self, grace: float) -> None:
        try:
            if not stop_process(self.process, grace):
                self.killed = True
        finally:
            self._reader.join(5)
            if self.process.stdout is not None:
                self.process.stdout.close()
            self._remove_config()
            # A kernel that had to be killed left its directory; it carries the mark of
            # a kernel that is gone now, so this removes it (and nothing else).
            remove_runtime_dir(self.runtime)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_kernel(
    config: str | None = None,
    *,
    config_path: Path | None = None,
    runtime: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = READY_TIMEOUT,
    stderr: int | IO[Any] | None = None,
) -> KernelProcess:
    """Start `python -m kernel --quiet` and wait until it is ready.

    `config` is the configuration as TOML text (see `toml_config`), written to a
    private file removed when the kernel stops; or `config_path` names a file;
    neither: the kernel's default devices. `runtime` is its runtime directory (by
    default a fresh one under the runtime base); `env` the environment of the
    kernel and its miniport hosts (by default this one), with PYTHONPATH set to
    this process's sys.path; `stderr` where their stderr goes (by default here;
    `subprocess.DEVNULL` silences it).

    Raises KernelStartError if the kernel exits first or is not ready within
    `timeout` seconds, also when it prints nothing; the kernel is stopped then.
    """
    return KernelProcess.start(
        config, config_path=config_path, runtime=runtime, env=env, timeout=timeout,
        stderr=stderr,
    )
