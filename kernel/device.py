"""A configured device as the PnP manager keeps it: its process, the ports its adapter
bound and their published filters, its restart history; and why its process ended."""

from __future__ import annotations

import collections
import signal
import subprocess
from dataclasses import dataclass, field
from typing import Any

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
class Subdevice:
    """One port the device's adapter bound: its miniport host's connection, the port,
    and (once PcRegisterSubdevice named it) its published filter."""

    conn: MiniportConnection
    clsid: str = ""
    """The port's class id (PcNewPort), as the host registered it."""
    resources: Any = None
    """What the adapter gave `port.init`; None: the device's configured resources."""
    port: PortMidi | None = None
    filter: Filter | None = None


@dataclass(eq=False)
class Device:
    """A configured device: its process, and per port its adapter bound (`subdevices`,
    by the host's bus identity, in the order they registered) the connection, port and
    published filter."""

    config: DeviceConfig
    store: DeviceStore
    process: subprocess.Popen[bytes] | None = None
    watch: ProcessWatch | None = None
    subdevices: dict[bytes, Subdevice] = field(default_factory=dict)
    state: str = "stopped"
    restarts: collections.deque[float] = field(default_factory=collections.deque)
    restart_timer: Timer | None = None
    kill_timer: Timer | None = None
    start_timer: Timer | None = None
    last_exit: str = ""
    restart_due: bool = False
    """The back-off has elapsed but the failed process is still dying: start on its exit."""
    started: bool = False
    """The adapter's start_device has returned in the current process (DeviceStarted)."""
    launch: LaunchCredentials | None = None
    """What the process started last must show to register (its bus identity, a secret)."""

    @classmethod
    def of(cls, config: DeviceConfig) -> Device:
        driver = config.miniport or config.adapter
        return cls(config, DeviceStore(config.name, driver, config.properties))

    @property
    def filters(self) -> list[Filter]:
        """The device's published filters, in the order they were registered."""
        return [s.filter for s in self.subdevices.values() if s.filter is not None]

    @property
    def conns(self) -> list[MiniportConnection]:
        return [s.conn for s in self.subdevices.values()]

    @property
    def ports(self) -> list[PortMidi]:
        return [s.port for s in self.subdevices.values() if s.port is not None]
