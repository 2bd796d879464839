"""The runtime directory: the kernel creates, uses and removes only what it made itself,
and neither the kernel nor the SDK trusts a directory somebody else could have planted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ksclient
from ipc.runtime import (
    PID_FILE,
    KernelMark,
    RuntimeDirError,
    create_runtime_dir,
    remove_runtime_dir,
    remove_stale_dirs,
)
from tests.conftest import ROOT


def _user_files(directory: Path) -> dict[str, str]:
    directory.mkdir(mode=0o700)
    files = {"notes.txt": "mine", "sub/deep.txt": "also mine"}
    for name, text in files.items():
        (directory / name).parent.mkdir(exist_ok=True)
        (directory / name).write_text(text)
    return files


def _still_there(directory: Path, files: dict[str, str]) -> bool:
    return all((directory / n).read_text() == t for n, t in files.items())


def test_an_existing_directory_that_is_not_ours_is_refused_and_left_alone(
    tmp_path: Path,
) -> None:
    target = tmp_path / "portcls-rt"
    files = _user_files(target)
    with pytest.raises(RuntimeDirError, match="not made by a portcls kernel"):
        create_runtime_dir(target)
    remove_runtime_dir(target)
    assert _still_there(target, files)


def test_portcls_up_refuses_a_user_folder_and_deletes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "rt"
    files = _user_files(target)
    neighbour = tmp_path / "portcls-emu"  # a checkout beside it, matching the old sweep
    neighbour_files = _user_files(neighbour)
    os.utime(neighbour, (0, 0))
    proc = subprocess.run(
        [sys.executable, "-m", "kernel", "--runtime", str(target)],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 1, proc.stderr
    assert "not made by a portcls kernel" in proc.stderr
    assert _still_there(target, files)
    assert _still_there(neighbour, neighbour_files)


def test_the_sweep_removes_only_marked_directories_of_gone_kernels(tmp_path: Path) -> None:
    unmarked = tmp_path / "portcls-old"
    files = _user_files(unmarked)
    os.utime(unmarked, (0, 0))
    dead = tmp_path / "portcls-dead"
    create_runtime_dir(dead)
    # A mark naming a kernel that is provably gone: this pid, another start time.
    mark = KernelMark.mine()
    gone = KernelMark(mark.pid, mark.start_time - 1000.0, mark.pid_namespace, mark.boot_id)
    (dead / PID_FILE).write_text(gone.encode())
    other_ns = tmp_path / "portcls-otherns"
    create_runtime_dir(other_ns)
    foreign = KernelMark(1, 0.0, mark.pid_namespace + 1, mark.boot_id)
    (other_ns / PID_FILE).write_text(foreign.encode())
    live = tmp_path / "portcls-live"
    create_runtime_dir(live)  # marked by this (live) process
    removed = remove_stale_dirs(tmp_path)
    assert removed == [dead]
    assert _still_there(unmarked, files)
    assert other_ns.is_dir() and live.is_dir()
    for d in (other_ns, live):
        (d / PID_FILE).write_text(gone.encode())
        remove_runtime_dir(d)
        assert not d.exists()


@pytest.mark.parametrize("flaw", ["mode", "symlink"])
def test_kernel_and_sdk_refuse_an_unsafe_directory(tmp_path: Path, flaw: str) -> None:
    real = tmp_path / "real"
    create_runtime_dir(real)
    (real / "user.sock").touch()  # what a kernel would show
    target = real
    if flaw == "mode":
        real.chmod(0o755)
        reason = "mode 0755"
    else:
        target = tmp_path / "portcls-link"
        target.symlink_to(real)
        reason = "symbolic link"
    with pytest.raises(RuntimeDirError, match=reason):
        create_runtime_dir(target)
    with pytest.raises(ksclient.AccessDeniedError, match=reason):
        ksclient.connect(target, timeout=1)
    real.chmod(0o700)
    remove_runtime_dir(real)
    assert not real.exists()


@pytest.mark.skipif(os.getuid() != 0, reason="making a directory another user owns needs root")
def test_a_directory_planted_by_another_user_is_refused(tmp_path: Path) -> None:
    planted = tmp_path / "portcls-victim"
    planted.mkdir(mode=0o700)
    (planted / "user.sock").touch()
    os.chown(planted, 65534, 65534)
    with pytest.raises(RuntimeDirError, match="belongs to uid 65534"):
        create_runtime_dir(planted)
    with pytest.raises(ksclient.AccessDeniedError, match="another user may have planted it"):
        ksclient.connect(planted, timeout=1)
    assert (planted / "user.sock").exists()
    os.chown(planted, 0, 0)
