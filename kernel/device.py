"""A configured device as the PnP manager keeps it: its miniport process, its port, its
published filter and its restart history; and why a miniport process ended."""

from __future__ import annotations

import collections
import signal
import subprocess
from dataclasses import dataclass, field

from ipc import protocol as p
from ipc.credentials import LaunchCredentials
from ipc.procwatch import ProcessWatch
from kernel.config import DeviceConfig
from kernel.connection import MiniportConnection
from kernel.devicestore import DeviceStore
from kernel.dpc import Timer
from kernel.filters import Filter
from kernel.port import PortMidi


def exit_reason(code: int) -> str:
    """Why a miniport process ended, in words, from its Popen return code."""
    if code == p.EXIT_MINIPORT_FAULT:
        return f"the miniport raised out of a callback (exit {code})"
    if code == p.EXIT_CONFIG_ERROR:
        return f"the miniport could not be loaded or constructed (exit {code})"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "an unknown signal"
        return f"miniport process killed by signal {-code} ({name})"
    return f"miniport process exited with {code}"


@dataclass(eq=False)
class Device:
    """A configured device: its miniport process, its port and its published filter."""

    config: DeviceConfig
    store: DeviceStore
    process: subprocess.Popen[bytes] | None = None
    watch: ProcessWatch | None = None
    conn: MiniportConnection | None = None
    port: PortMidi | None = None
    filter: Filter | None = None
    state: str = "stopped"
    restarts: collections.deque[float] = field(default_factory=collections.deque)
    restart_timer: Timer | None = None
    kill_timer: Timer | None = None
    last_exit: str = ""
    restart_due: bool = False
    """The back-off has elapsed but the failed process is still dying: start on its exit."""
    launch: LaunchCredentials | None = None
    """What the process started last must show to register (its bus identity, a secret)."""

    @classmethod
    def of(cls, config: DeviceConfig) -> Device:
        return cls(config, DeviceStore(config.name, config.miniport, config.properties))
