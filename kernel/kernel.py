"""The kernel process's composition root: the loop, the bus, user mode and PnP.

Sockets (in the private runtime directory):
  user.sock  ROUTER for clients ("user mode"): list filters, open pins, set state, close
  bus.sock   ROUTER for miniport hosts ("the bus"): register, interrupts, groups, replies
  fds.sock   SOCK_SEQPACKET: hands a client its pin's sealed ring and doorbells (SCM_RIGHTS)

`KernelLoop` (kernel/loop.py) runs everything in IRQL order: the bus and the
interrupt rings first, then timers and DPCs, then the data-plane doorbells,
then clients' requests. Nothing here waits for a peer: calls to a miniport
carry a continuation and a timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from ipc import protocol as p
from ipc.runtime import create_runtime_dir, remove_runtime_dir, remove_stale_dirs
from kernel.bus import Bus
from kernel.config import KernelConfig
from kernel.device import Device
from kernel.flood import FloodWatch
from kernel.hotplug import HotplugManager
from kernel.loop import KernelLoop
from kernel.pnp import PnpManager
from kernel.usermode import UserMode

log = logging.getLogger("portcls.kernel")


class Kernel:
    """One kernel instance: owns its runtime directory, sockets, loop and devices."""

    def __init__(self, runtime_dir: Path, config: KernelConfig) -> None:
        self.runtime_dir = runtime_dir
        self.config = config
        self.loop = KernelLoop()
        self.pnp = PnpManager(self.loop, runtime_dir, config, self._send_bus)
        self.on_ready: Callable[[Kernel], None] | None = None
        self.pnp.on_ready = lambda: self.on_ready(self) if self.on_ready else None
        self.ctx: zmq.Context[Any] | None = None
        self.bus: Bus | None = None
        self.user: UserMode | None = None
        self.hotplug: HotplugManager | None = None

    @property
    def devices(self) -> dict[str, Device]:
        return self.pnp.devices

    def _send_bus(self, identity: bytes, frame: bytes) -> None:
        if self.bus is not None:
            self.bus.send(identity, frame)

    def open(self) -> None:
        """Create the runtime directory and bind the sockets."""
        remove_stale_dirs(self.runtime_dir.parent)
        create_runtime_dir(self.runtime_dir)
        self.ctx = zmq.Context()
        self.bus = Bus(self.loop, self.ctx, self.runtime_dir, self.pnp)
        self.user = UserMode(self.loop, self.ctx, self.runtime_dir, self.pnp)
        FloodWatch(self.loop, self.pnp, self.user)
        self.loop.open_signals()

    def install_signal_handlers(self) -> None:
        self.loop.install_signal_handlers()

    def run(self) -> None:
        """Start the configured devices and serve until a stop signal."""
        self.pnp.start()
        if self.config.hotplug:
            self.hotplug = HotplugManager(self.loop, self.pnp, self.config.hotplug)
            self.hotplug.start()
        while not self.loop.stopping:
            self.loop.turn()
        self.shutdown()

    def shutdown(self, grace: float = 3.0) -> None:
        """Unload every miniport (explicit ack), stop the processes, end the sessions."""
        self.loop.stopping = True
        if self.hotplug is not None:
            self.hotplug.stop()
        if self.user is not None:
            self.user.broadcast(p.KernelShutdown())
        started = time.monotonic()
        self.pnp.shutdown(grace)
        log.debug("devices stopped in %.2f s", time.monotonic() - started)
        self.close()

    def close(self) -> None:
        """Close the sockets and the loop, and remove the runtime directory. Idempotent."""
        if self.user is not None:
            self.user.close()
            self.user = None
        if self.bus is not None:
            self.bus.close()
            self.bus = None
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None
        self.loop.close()
        remove_runtime_dir(self.runtime_dir)
