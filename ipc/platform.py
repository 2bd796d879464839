"""What the project needs of the machine it runs on, checked once at start.

It runs on Linux only: the loop waits in epoll, processes are watched through
pidfds, and the rings live on /dev/shm. And its four top-level packages must
be this project's own: PyPI has unrelated distributions called `kernel` and
`ipc`, and one installed beside this project would be imported instead.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Final

OWN_PACKAGES: Final = ("ipc", "kernel", "miniports", "ksclient")


class PlatformError(RuntimeError):
    """The machine or the installation cannot run the project; the message says why."""


def require_linux() -> None:
    if not sys.platform.startswith("linux"):
        raise PlatformError(
            f"portcls-emu runs on Linux only (it uses epoll, pidfds and /dev/shm); "
            f"this is {sys.platform}"
        )


def check_own_packages() -> None:
    """PlatformError if one of the project's top-level packages is found somewhere else
    than beside this one (another distribution of the same name shadows it)."""
    home = Path(__file__).resolve().parent.parent
    # As the project's child processes see it (python -P): without the implicit first
    # entry (the working directory for -m and -c, the script's directory), so a
    # kernel.py lying there is not "the" kernel package; PYTHONPATH entries stay.
    saved = sys.path[:]
    if not sys.flags.safe_path and saved:
        sys.path[:] = saved[1:]
    try:
        origins = {}
        for name in OWN_PACKAGES:
            module = sys.modules.get(name)
            if module is not None:
                origins[name] = getattr(module, "__file__", None)
            else:
                spec = importlib.util.find_spec(name)
                origins[name] = spec.origin if spec is not None else None
    finally:
        sys.path[:] = saved
    for name, origin in origins.items():
        where = Path(origin).resolve().parent.parent if origin else None
        if where != home:
            raise PlatformError(
                f"the package {name!r} is imported from {origin or 'nowhere'}, not from this "
                f"project ({home / name}): another installed distribution of that name "
                "shadows it; uninstall it or use a separate virtual environment"
            )


def check_platform() -> None:
    require_linux()
    check_own_packages()
