"""Hot plug: rtmidi ports that come and go become devices that arrive and are removed.

For each rtmidi API a `[[hotplug]]` rule names, the PnP manager runs a port
watcher process (`python -m miniports.rtmidi.watch`; the kernel never imports
rtmidi) and reads the port lists it prints. A port matching a rule gets a
device driven by the rtmidi miniport, started like any configured device (so
clients hear of its arrival); a port that disappears takes its device with it
as a surprise removal, with the reason, and the device is not restarted. When
the port comes back, so does the device, under the same name.

Ports of this kernel's own rtmidi clients (named `portcls-...`) are never
matched, so a device's own connection port cannot spawn another device.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from kernel.config import DeviceConfig, HotplugRule
from kernel.dpc import Dpc, Timer
from kernel.loop import KernelLoop
from kernel.pnp import PnpManager

log = logging.getLogger("portcls.kernel.hotplug")

OWN_CLIENT_PREFIX = "portcls-"
WATCHER_RESTART_SECONDS = 1.0
MAX_LINE = 1 << 20


def device_name(prefix: str, port: str) -> str:
    """A device name for a port: characters a name cannot hold become "-"."""
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]+", "-", port).strip("-.") or "port"
    return f"{prefix}-{cleaned}"[:64]


@dataclass(eq=False)
class _Watcher:
    api: str
    interval: float
    process: subprocess.Popen[bytes] | None = None
    buffer: bytes = b""
    restart_timer: Timer | None = None
    ports: dict[str, list[str]] = field(default_factory=dict)


class HotplugManager:
    """Keeps one device per matching port, for as long as the port exists."""

    def __init__(
        self, loop: KernelLoop, pnp: PnpManager, rules: tuple[HotplugRule, ...]
    ) -> None:
        self.loop = loop
        self.pnp = pnp
        self.rules = rules
        self.watchers: dict[str, _Watcher] = {}
        for rule in rules:
            watcher = self.watchers.setdefault(rule.api, _Watcher(rule.api, rule.interval))
            watcher.interval = min(watcher.interval, rule.interval)
        self.present: dict[str, str] = {}
        """Device name -> the port it drives, for devices present now."""
        self.owned: set[str] = set()
        """Every device name this manager ever added (a returning port reuses it)."""
        self.stopped = False

    def start(self) -> None:
        for watcher in self.watchers.values():
            self._spawn(watcher)

    def _spawn(self, watcher: _Watcher) -> None:
        argv = [sys.executable, "-P", "-m", "miniports.rtmidi.watch", "--api", watcher.api,
                "--interval", str(watcher.interval)]
        watcher.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, close_fds=True,
            process_group=0,
        )
        assert watcher.process.stdout is not None
        fd = watcher.process.stdout.fileno()
        os.set_blocking(fd, False)
        watcher.buffer = b""
        self.loop.watch_fd(fd, lambda: self._on_output(watcher))
        log.info("hotplug: watching %s ports (pid %d)", watcher.api, watcher.process.pid)

    def _on_output(self, watcher: _Watcher) -> None:
        process = watcher.process
        if process is None or process.stdout is None:
            return
        fd = process.stdout.fileno()
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self._watcher_gone(watcher)
            return
        watcher.buffer += chunk
        if len(watcher.buffer) > MAX_LINE:
            log.warning("hotplug %s: the watcher sent an over-long line; dropped", watcher.api)
            watcher.buffer = b""
        *lines, watcher.buffer = watcher.buffer.split(b"\n")
        if lines:
            ports = self._parse(watcher, lines[-1])
            if ports is not None:
                watcher.ports = ports
                self.reconcile()

    def _parse(self, watcher: _Watcher, line: bytes) -> dict[str, list[str]] | None:
        try:
            data: Any = json.loads(line)
        except ValueError:
            data = None
        if not (
            isinstance(data, dict)
            and all(isinstance(data.get(k), list) for k in ("inputs", "outputs"))
            and all(isinstance(n, str) for k in ("inputs", "outputs") for n in data[k])
        ):
            self.loop.stats["hotplug_malformed"] += 1
            log.warning("hotplug %s: malformed port list dropped", watcher.api)
            return None
        return {"inputs": data["inputs"], "outputs": data["outputs"]}

    def wanted(self) -> dict[str, tuple[str, DeviceConfig]]:
        """Device name -> (port, configuration) for every port some rule matches now."""
        found: dict[str, tuple[str, DeviceConfig]] = {}
        for rule in self.rules:
            ports = self.watchers[rule.api].ports
            for key, option in (("inputs", "input"), ("outputs", "output")):
                if rule.direction not in (option, "both"):
                    continue
                for port in ports.get(key, []):
                    if port.startswith(OWN_CLIENT_PREFIX) or not fnmatch.fnmatchcase(
                        port, rule.match
                    ):
                        continue
                    name = device_name(rule.prefix, port)
                    if name in found or (
                        name in self.pnp.devices and name not in self.owned
                    ):
                        continue  # a configured device or an earlier rule owns the name
                    options = {"api": rule.api, option: port, **rule.options,
                               "client_name": f"{OWN_CLIENT_PREFIX}{name}"}
                    found[name] = (port, DeviceConfig(
                        name=name, miniport="rtmidi", options=options, restart=rule.restart))
        return found

    def reconcile(self) -> None:
        """Add devices for new ports, remove those whose port went away."""
        if self.stopped:
            return
        wanted = self.wanted()
        for name, port in list(self.present.items()):
            if name not in wanted:
                del self.present[name]
                log.info("hotplug: port %s is gone: removing %s", port, name)
                self.pnp.unplug_device(name, f"port {port} disappeared")
        for name, (port, config) in wanted.items():
            if name in self.present:
                continue
            self.present[name] = port
            self.owned.add(name)
            log.info("hotplug: port %s appeared: starting %s", port, name)
            self.pnp.add_device(config)

    def _watcher_gone(self, watcher: _Watcher) -> None:
        process = watcher.process
        if process is None:
            return
        assert process.stdout is not None
        self.loop.unwatch_fd(process.stdout.fileno())
        process.stdout.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(1.0)
        watcher.process = None
        if self.stopped:
            return
        log.warning("hotplug %s: the port watcher exited (%s); restarting it", watcher.api,
                    process.returncode)

        def again() -> None:
            if not self.stopped and watcher.process is None:
                self._spawn(watcher)

        watcher.restart_timer = Timer(Dpc(again))
        self.loop.scheduler.set_timer(
            watcher.restart_timer,
            self.loop.scheduler.clock() + int(WATCHER_RESTART_SECONDS * 1e7),
        )

    def stop(self) -> None:
        """Stop the watchers; the devices go down with the kernel's other devices."""
        self.stopped = True
        for watcher in self.watchers.values():
            if watcher.restart_timer is not None:
                self.loop.scheduler.cancel_timer(watcher.restart_timer)
            process = watcher.process
            if process is None:
                continue
            assert process.stdout is not None
            self.loop.unwatch_fd(process.stdout.fileno())
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                process.wait(2.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stdout.close()
            watcher.process = None
