"""The kernel's private runtime directory and the shared clock.

One directory per kernel instance holds every IPC artefact: the ZeroMQ
`ipc://` endpoints, the ring files and doorbells, and `kernel.pid`. It is
created 0700 on tmpfs, so only its owner reaches the kernel and cleaning up
after any crash is removing one directory.

The kernel creates, uses and removes only what it made itself: its directory
carries a mark (`kernel.pid`) naming its kernel by pid, start time, PID
namespace and boot; an existing directory without that mark, or owned by
somebody else, or open to others, or a symlink, is refused and never emptied;
stale directories go only when their mark names a kernel that is provably gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import psutil

ENV_RUNTIME_DIR: Final = "PORTCLS_RUNTIME_DIR"
ENV_MINIPORT_PATH: Final = "PORTCLS_MINIPORT_PATH"
"""Directories (os.pathsep-separated) a miniport host appends to sys.path, after the
project's own packages, before it loads a miniport named as module:Class."""
PREFIX: Final = "portcls-"
PID_FILE: Final = "kernel.pid"
USER_SOCKET: Final = "user.sock"
BUS_SOCKET: Final = "bus.sock"



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


class RuntimeDirError(OSError):
    """A runtime directory this project must not use or touch; the message says why."""


@dataclass(frozen=True)
class KernelMark:
    """What `kernel.pid` says: the kernel that made the directory, by pid *and* start time,
    in which PID namespace and since which boot."""

    pid: int
    start_time: float
    pid_namespace: int
    boot_id: str

    @classmethod
    def mine(cls) -> KernelMark:
        me = psutil.Process()
        return cls(me.pid, me.create_time(), _pid_namespace(), _boot_id())

    def encode(self) -> str:
        return f"{_MAGIC}\n{self.pid} {self.start_time!r} {self.pid_namespace} {self.boot_id}\n"

    @classmethod
    def read(cls, directory: Path) -> KernelMark | None:
        """The mark in `directory`, or None if it has none (or one that is not ours)."""
        try:
            fd = os.open(directory / PID_FILE, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            text = os.read(fd, 512).decode("ascii")
        except (OSError, UnicodeDecodeError):
            return None
        finally:
            os.close(fd)
        magic, _, rest = text.partition("\n")
        fields = rest.split()
        if magic != _MAGIC or len(fields) != 4:
            return None
        try:
            return cls(int(fields[0]), float(fields[1]), int(fields[2]), fields[3])
        except ValueError:
            return None

    def is_me(self) -> bool:
        return self == KernelMark.mine()

    def alive(self) -> bool:
        """True unless this kernel is provably gone: same boot, same PID namespace, and
        its pid is free or names a process that started at another time. A kernel in
        another PID namespace cannot be proven gone, so it counts as alive."""
        if self.boot_id != _boot_id():
            return False
        if self.pid_namespace != _pid_namespace():
            return True
        try:
            started: float = psutil.Process(self.pid).create_time()
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:
            return True
        return abs(started - self.start_time) < 0.01


_MAGIC: Final = "portcls-kernel 1"


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or "-"
    except OSError:
        return "-"


def kernel_alive(directory: Path) -> bool:
    """True if `directory` is a kernel's runtime directory and that kernel may still run."""
    mark = KernelMark.read(directory)
    return mark is not None and mark.alive()


def check_runtime_dir(directory: Path) -> None:
    """Raise RuntimeDirError unless `directory` is a real directory (not a symlink),
    owned by this user and closed to everybody else (0700): a directory another user
    made could hold an impostor kernel."""
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise RuntimeDirError(f"cannot inspect runtime directory {directory}: {exc}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise RuntimeDirError(f"runtime directory {directory} is a symbolic link; refusing it")
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(f"runtime directory {directory} is not a directory")
    if st.st_uid != os.getuid():
        raise RuntimeDirError(
            f"runtime directory {directory} belongs to uid {st.st_uid}, not to you "
            f"(uid {os.getuid()}); refusing it: another user may have planted it"
        )
    if st.st_mode & 0o077:
        raise RuntimeDirError(
            f"runtime directory {directory} has mode {stat.S_IMODE(st.st_mode):04o}, not 0700; "
            "refusing it: others could reach the kernel's sockets and rings"
        )


def remove_stale_dirs(base: Path | None = None) -> list[Path]:
    """Remove `portcls-*` runtime directories in `base` that carry a kernel's mark
    naming a kernel that is provably gone, and belong to this user; return what went.

    A directory without the mark is not ours and is never touched.
    """
    removed = []
    base = base or runtime_base()
    for entry in base.glob(f"{PREFIX}*"):
        try:
            check_runtime_dir(entry)
        except OSError:
            continue
        mark = KernelMark.read(entry)
        if mark is None or mark.alive():
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def create_runtime_dir(directory: Path) -> None:
    """Create the kernel's directory 0700 (not through a symlink) and mark it as this
    kernel's with `kernel.pid`.

    An existing directory is reused only if it carries the mark of a kernel that is
    provably gone (it is emptied first); FileExistsError if a live kernel owns it;
    RuntimeDirError for anything else, which is never emptied or removed.
    """
    try:
        check_runtime_dir(directory)
    except FileNotFoundError:
        pass
    else:
        mark = KernelMark.read(directory)
        if mark is None:
            raise RuntimeDirError(
                f"{directory} exists and was not made by a portcls kernel; it is left as it "
                "is. Choose another --runtime (or $PORTCLS_RUNTIME_DIR), or remove it yourself"
            )
        if mark.alive():
            raise FileExistsError(f"a kernel is already running in {directory}")
        shutil.rmtree(directory)
    os.mkdir(directory, 0o700)
    os.chmod(directory, 0o700, follow_symlinks=False)
    check_runtime_dir(directory)
    tmp = directory / (PID_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(KernelMark.mine().encode())
    tmp.rename(directory / PID_FILE)


def remove_runtime_dir(directory: Path) -> None:
    """Remove a runtime directory, only if its mark names this process or a kernel that
    is provably gone: a directory the project did not create is never removed."""
    try:
        check_runtime_dir(directory)
    except OSError:
        return
    mark = KernelMark.read(directory)
    if mark is None or (mark.alive() and not mark.is_me()):
        return
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(directory)
