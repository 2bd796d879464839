"""The kernel's private runtime directory and the shared clock.

One directory per kernel instance holds every IPC artefact: the ZeroMQ
`ipc://` endpoints, the ring files and doorbells, and `kernel.pid`. It is
created 0700 on tmpfs, so only its owner reaches the kernel and cleaning up
after any crash is removing one directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Final

import psutil

ENV_RUNTIME_DIR: Final = "PORTCLS_RUNTIME_DIR"
PREFIX: Final = "portcls-"
PID_FILE: Final = "kernel.pid"
USER_SOCKET: Final = "user.sock"
BUS_SOCKET: Final = "bus.sock"


def interrupt_channel_name(pid: int) -> str:
    """Base name (in the runtime directory) of the interrupt channel the kernel makes for
    the miniport process `pid` (see ipc.channel for the files it stands for)."""
    return f"irq-{pid}"
_YOUNG_SECONDS: Final = 30.0


def now_100ns() -> int:
    """The shared monotonic clock (CLOCK_MONOTONIC is system-wide) in 100 ns units."""
    return time.monotonic_ns() // 100


def runtime_base() -> Path:
    """Where runtime directories live: /dev/shm when it exists (tmpfs), else the temp dir."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def default_runtime_dir() -> Path:
    """$PORTCLS_RUNTIME_DIR, else `<base>/portcls-<uid>`: where clients look for a kernel."""
    env = os.environ.get(ENV_RUNTIME_DIR)
    if env:
        return Path(env)
    return runtime_base() / f"{PREFIX}{os.getuid()}"


def endpoint(runtime_dir: Path, name: str) -> str:
    return f"ipc://{runtime_dir / name}"


def _read_pid(directory: Path) -> tuple[int, float] | None:
    try:
        pid_text, _, created = (directory / PID_FILE).read_text().partition(" ")
        return int(pid_text), float(created)
    except (OSError, ValueError):
        return None


def kernel_alive(directory: Path) -> bool:
    """True if the kernel that wrote `kernel.pid` in this directory still runs."""
    entry = _read_pid(directory)
    if entry is None:
        return False
    pid, created = entry
    try:
        started: float = psutil.Process(pid).create_time()
        return abs(started - created) < 0.01
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def remove_stale_dirs(base: Path | None = None) -> list[Path]:
    """Remove runtime directories of dead kernels that belong to us; return what went.

    A directory without `kernel.pid` is left alone while it is young: another
    kernel may be between creating it and writing its pid.
    """
    removed = []
    base = base or runtime_base()
    uid = os.getuid()
    for entry in base.glob(f"{PREFIX}*"):
        try:
            st = entry.lstat()
        except OSError:
            continue
        if not entry.is_dir() or entry.is_symlink() or st.st_uid != uid:
            continue
        has_pid = _read_pid(entry) is not None
        if kernel_alive(entry) or (not has_pid and time.time() - st.st_mtime < _YOUNG_SECONDS):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def create_runtime_dir(directory: Path) -> None:
    """Create the kernel's directory 0700 and claim it with `kernel.pid`.

    Raises FileExistsError if a live kernel already owns it; a dead kernel's
    directory is removed first.
    """
    if directory.exists():
        if kernel_alive(directory):
            raise FileExistsError(f"a kernel is already running in {directory}")
        shutil.rmtree(directory)
    directory.mkdir(mode=0o700, parents=False)
    os.chmod(directory, 0o700)
    me = psutil.Process()
    tmp = directory / (PID_FILE + ".tmp")
    tmp.write_text(f"{me.pid} {me.create_time()!r}")
    tmp.rename(directory / PID_FILE)


def remove_runtime_dir(directory: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(directory)
