"""The PnP manager: devices' processes started, watched, restarted, published.

Supervisor → device → process, as circus keeps arbiter, watcher and process:
`PnpManager` starts each configured device's process, where its adapter's
`start_device` runs; each port the adapter binds is a miniport host that
registers on the bus, and the kernel does that port's half of the PortCls
flow (PcNewPort, IPort::Init, PcRegisterSubdevice, PcRegisterPhysicalConnection:
see `kernel.adapters`). It watches the process through a pidfd and each
connection through heartbeats, and on any fault removes the device (surprise
removal: all its filters go, its pins fail with STATUS_DEVICE_REMOVED) and
restarts it with back-off within the restart limit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ipc import protocol as p
from ipc.credentials import LaunchCredentials
from ipc.procwatch import ProcessWatch
from ipc.runtime import now_100ns
from ipc.status import Status, StatusError
from kernel import adapters
from kernel.config import DeviceConfig, KernelConfig
from kernel.connection import ConnectionLimits, MiniportConnection
from kernel.device import Device, Subdevice, exit_reason
from kernel.dpc import Dpc, Timer
from kernel.filters import Filter
from kernel.loop import KernelLoop
from kernel.port import PortMidi

log = logging.getLogger("portcls.kernel")


class PnpManager(adapters.AdapterCalls):
    """Every device of one kernel, from configuration to published filter and back."""

    def __init__(
        self,
        loop: KernelLoop,
        runtime_dir: Path,
        config: KernelConfig,
        send_bus: Callable[[bytes, bytes], None],
    ) -> None:
        self.loop = loop
        self.runtime_dir = runtime_dir
        self.config = config
        self._send_bus = send_bus
        self.devices: dict[str, Device] = {d.name: Device.of(d) for d in config.devices}
        self.filters: dict[str, Filter] = {}
        self.on_event: Callable[[Any], None] = lambda body: None
        """Arrival and removal events for every client."""
        self.on_ready: Callable[[], None] | None = None
        self._ready_reported = False
        self._limits = ConnectionLimits(
            config.call_timeout, config.malformed_limit, config.malformed_window
        )
        self._heartbeat_timer = Timer(Dpc(self._check_heartbeats))
        loop.idle_sweeps.append(self._safety_sweep)

    def start(self) -> None:
        for device in self.devices.values():
            self._start_device(device)
        self._arm_heartbeat_check()
        self.check_ready()

    def add_device(self, config: DeviceConfig) -> None:
        """Start a device at run time (hot plug); a removed device of that name comes back."""
        device = self.devices.get(config.name)
        if device is not None and (
            device.process is not None or device.state not in ("failed", "stopped", "unplugged")
        ):
            raise StatusError(Status.OBJECT_NAME_COLLISION, f"device {config.name} is present")
        if device is None:
            device = Device.of(config)
            self.devices[config.name] = device
        else:
            device.config = config
            device.restarts.clear()
            device.last_exit = ""
        self._start_device(device)

    def unplug_device(self, name: str, reason: str) -> None:
        """The hardware went away: surprise removal with `reason`, and no restart."""
        device = self.devices.get(name)
        if device is None or device.state == "unplugged":
            return
        if device.restart_timer is not None:
            self.loop.scheduler.cancel_timer(device.restart_timer)
        self._fail_device(device, reason, restart=False)
        device.state = "unplugged"

    # Registration and binding.

    def connection(self, identity: bytes) -> MiniportConnection | None:
        """The registered connection that `identity` speaks for, if any (the identity is
        one of the launch's, which no other process knows)."""
        sub = self._subdevice_of(identity)
        return sub.conn if sub is not None else None

    def _subdevice_of(self, identity: bytes) -> Subdevice | None:
        device = self.devices.get(identity.partition(b"\0")[0].decode("utf-8", "replace"))
        return device.subdevices.get(identity) if device is not None else None

    def subdevice(self, conn: MiniportConnection) -> Subdevice:
        """The subdevice `conn` is the host of; INVALID_DEVICE_STATE once it is gone."""
        sub = self._subdevice_of(conn.identity)
        if sub is None or sub.conn is not conn:
            raise StatusError(Status.INVALID_DEVICE_STATE, "the subdevice is gone")
        return sub

    def port_of(self, conn: MiniportConnection) -> PortMidi | None:
        sub = self._subdevice_of(conn.identity)
        return sub.port if sub is not None and sub.conn is conn else None

    def _is_launch(self, device: Device | None, identity: bytes, pid: int, secret: bytes) -> bool:
        """Whether this comes from the process started last for `device` (its pid, its bus
        identity, its secret); an impostor is counted."""
        process, launch = (device.process, device.launch) if device else (None, None)
        ok = process is not None and process.pid == pid and launch is not None \
            and launch.admits(identity, secret)
        self.loop.stats["bus_impostors"] += not ok
        return ok

    def accept(self, identity: bytes, reg: p.Register) -> tuple[MiniportConnection, Any]:
        """The register handshake: the connection and the reply; StatusError if refused."""
        device = self.devices.get(reg.device)
        problem = None
        if device is None:
            problem = f"no device {reg.device!r} is configured"
        elif not self._is_launch(device, identity, reg.pid, reg.secret):
            problem = "the registering process is not the one the kernel started"
        elif device.state not in ("starting", "running") or identity in device.subdevices:
            problem = f"device {reg.device!r} is not waiting for this miniport"
        elif reg.version != p.PROTOCOL_VERSION:
            problem = f"protocol version {reg.version}, kernel speaks {p.PROTOCOL_VERSION}"
        if problem is not None or device is None:
            raise StatusError(Status.INVALID_DEVICE_REQUEST, problem or "")
        clsid = adapters.port_clsid(reg.port_clsid)
        conn = MiniportConnection(self.loop, self._send_bus, self._limits, reg, identity)
        conn.on_fault = self.miniport_fault
        device.subdevices[identity] = Subdevice(conn, clsid=clsid, resources=reg.resources)
        interrupt_channel = None
        try:
            interrupt_channel = conn.open_interrupt_channel()
        except (OSError, ValueError) as exc:
            # Interrupts still work as bus messages; only slower.
            log.warning("device %s: no interrupt channel: %s", reg.device, exc)
        reply: dict[str, Any] = {
            "heartbeat": self.config.heartbeat_interval, "kernel_pid": os.getpid()
        }
        if interrupt_channel is not None:
            reply["interrupt_channel"] = interrupt_channel
        return conn, reply

    def load_failed(self, identity: bytes, report: p.LoadFailed) -> None:
        """The device's host could not load or construct its miniport: a configuration
        error of that device, reported once with the reason, not restarted."""
        device = self.devices.get(report.device)
        if (
            not self._is_launch(device, identity, report.pid, report.secret)
            or device is None or device.state != "starting" or device.subdevices
        ):
            raise StatusError(Status.INVALID_DEVICE_REQUEST, "not a device that is starting")
        reason = f"configuration error: {report.reason}"
        log.error("device %s: %s", report.device, reason)
        device.last_exit = reason
        device.state = "failed"
        self.check_ready()

    def check_ready(self) -> None:
        """Report the kernel ready once every device has started (its start_device
        returned, DeviceStarted) or failed."""
        if self._ready_reported or any(
            d.state == "starting" or (d.state == "running" and not d.started)
            for d in self.devices.values()
        ):
            return
        self._ready_reported = True
        if self.on_ready is not None:
            self.on_ready()

    # Processes.

    def _start_device(self, device: Device) -> None:
        cfg = device.config
        driver = ["--adapter", cfg.adapter] if cfg.adapter else ["--miniport", cfg.miniport]
        args = [
            sys.executable, "-P", "-m", "miniports.host",
            "--runtime", str(self.runtime_dir),
            "--device", cfg.name,
            *driver,
            "--options", json.dumps(cfg.options),
            "--resources", json.dumps(cfg.resources),
        ]
        device.state = "starting"
        device.started = False
        device.launch = LaunchCredentials.new(cfg.name)
        # Its own process group: a Ctrl-C at the terminal reaches the kernel alone, which
        # then stops its miniports in order (one traceback per miniport otherwise).
        with device.launch.hand_over() as fd:
            device.process = subprocess.Popen(
                [*args, "--launch-fd", str(fd)], stdin=subprocess.DEVNULL, close_fds=True,
                pass_fds=(fd,), process_group=0)
        device.watch = ProcessWatch(device.process.pid, device.process)
        self.loop.watch_process(device.watch, lambda: self._on_process_exit(device))
        self._arm_start_timer(device)
        log.info("device %s: %s %s started, pid %d", cfg.name,
                 "adapter" if cfg.adapter else "miniport", cfg.adapter or cfg.miniport,
                 device.process.pid)

    def _on_process_exit(self, device: Device) -> None:
        process = device.process
        if process is None or process.poll() is None:
            return
        reason = exit_reason(process.returncode)
        self.loop.stop_watching(device.watch)
        device.watch = None
        device.process = None
        if device.kill_timer is not None:
            self.loop.scheduler.cancel_timer(device.kill_timer)
        if process.returncode == p.EXIT_CONFIG_ERROR and not device.last_exit:
            device.last_exit = "configuration error (the miniport host said why on stderr)"
            device.state = "failed"
            log.error("device %s: %s", device.config.name, device.last_exit)
        # "restarting": a fault already removed the device and scheduled its restart.
        expected = (
            device.state in ("stopping", "failed", "unplugged", "restarting")
            or self.loop.stopping
        )
        device.last_exit = device.last_exit or reason
        self._remove_device(device, reason)
        if expected:
            if device.state == "stopping":
                device.state = "stopped"
            elif device.state == "restarting" and device.restart_due and not self.loop.stopping:
                device.restart_due = False
                device.last_exit = ""
                self._start_device(device)
            self.check_ready()
            return
        log.warning("device %s: surprise removal: %s", device.config.name, reason)
        self._schedule_restart(device)

    def miniport_fault(self, conn: MiniportConnection, reason: str) -> None:
        """A miniport broke the contract (hung, garbage): remove it and kill its process."""
        device = self.devices.get(conn.device)
        sub = device.subdevices.get(conn.identity) if device is not None else None
        if device is None or sub is None or sub.conn is not conn:
            return
        log.warning("device %s: fault: %s", conn.device, reason)
        self._fail_device(device, reason, restart=True)

    def _fail_device(self, device: Device, reason: str, restart: bool) -> None:
        device.last_exit = reason
        self._remove_device(device, reason)
        device.state = "failed" if not restart else "restarting"
        self._kill(device)
        if restart:
            self._schedule_restart(device)
        else:
            self.check_ready()

    def _kill(self, device: Device) -> None:
        """Stop the device's process: SIGTERM, then SIGKILL after the configured grace."""
        process = device.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()

        def hard_kill() -> None:
            if device.process is process and process.poll() is None:
                log.warning("device %s: pid %d ignored SIGTERM; killing it",
                            device.config.name, process.pid)
                self.loop.stats["hard_kills"] += 1
                with contextlib.suppress(ProcessLookupError):
                    process.kill()

        device.kill_timer = Timer(Dpc(hard_kill))
        grace = self.config.stop_grace
        self.loop.scheduler.set_timer(device.kill_timer, now_100ns() + int(grace * 1e7))

    def _remove_device(self, device: Device, reason: str) -> None:
        """Surprise (or orderly) removal: withdraw every filter of the device (a removal
        event each), fail their pins, drop their groups and connections."""
        removed = StatusError(Status.DEVICE_REMOVED, f"device {device.config.name}: {reason}")
        subdevices = list(device.subdevices.values())
        device.subdevices.clear()
        for sub in subdevices:
            filter_ = sub.filter
            if filter_ is not None:
                del self.filters[filter_.fid]
                sub.filter = None
                log.info("device %s: filter withdrawn: %s", filter_.fid, reason)
                self.on_event(p.DeviceRemoval(filter_.fid, reason))
        for sub in subdevices:
            if sub.port is not None:
                sub.port.remove_streams(removed)
                sub.port.release()
                sub.port = None
            sub.conn.close()

    def _schedule_restart(self, device: Device) -> None:
        policy = device.config.restart
        now = self.loop.clock_seconds()
        while device.restarts and now - device.restarts[0] > policy.window:
            device.restarts.popleft()
        if self.loop.stopping or len(device.restarts) >= policy.limit:
            device.state = "failed"
            log.error("device %s: not restarted (%d restarts in %.0f s)", device.config.name,
                      len(device.restarts), policy.window)
            self.check_ready()
            return
        delay = min(policy.max_backoff, policy.backoff * (2 ** len(device.restarts)))
        device.restarts.append(now)
        device.state = "restarting"

        def restart() -> None:
            if device.state == "restarting" and not self.loop.stopping:
                if device.process is not None:
                    # Never two processes for one device: wait for the old one to go.
                    device.restart_due = True
                    return
                device.last_exit = ""
                self._start_device(device)

        device.restart_timer = Timer(Dpc(restart))
        self.loop.scheduler.set_timer(device.restart_timer, now_100ns() + int(delay * 1e7))

    def _arm_heartbeat_check(self) -> None:
        self.loop.scheduler.set_timer(
            self._heartbeat_timer, now_100ns() + int(self.config.heartbeat_interval * 1e7)
        )

    def _check_heartbeats(self) -> None:
        # Hosts write their heartbeats into the interrupt ring without a doorbell: take
        # them first (and any interrupt behind them, as the safety sweep would).
        self._take_all_interrupts()
        now = self.loop.clock_seconds()
        for device in tuple(self.devices.values()):
            for conn in device.conns:
                if now - conn.last_seen > self.config.heartbeat_timeout:
                    self.miniport_fault(conn, f"no heartbeat for {now - conn.last_seen:.1f} s")
                    break
        self._arm_heartbeat_check()

    def _take_all_interrupts(self) -> None:
        """Read every settled host's interrupt ring unasked (see `conn.settled`)."""
        for device in tuple(self.devices.values()):
            for conn in device.conns:
                if conn.settled:
                    conn.take_interrupts()

    def _safety_sweep(self) -> None:
        # A wake-up lost to store reordering (Python cannot fence) is rescued here.
        self._take_all_interrupts()
        self.loop.scheduler.run_dpcs()
        for device in tuple(self.devices.values()):
            for port in device.ports:
                for pin in tuple(port.streams.values()):
                    pin.request_service()

    def shutdown(self, grace: float) -> None:
        """Unload every miniport (explicit ack), stop the processes, wait for them."""
        for device in self.devices.values():
            if device.restart_timer is not None:
                self.loop.scheduler.cancel_timer(device.restart_timer)
            if device.subdevices:
                device.state = "stopping"
                for conn in device.conns:
                    conn.call(p.Unload(), lambda _: None, timeout=grace)
            elif device.process is not None:
                device.state = "stopping"
                self._kill(device)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and not self.loop.hurry and any(
            d.process is not None for d in self.devices.values()
        ):
            self.loop.turn(max_timeout_ms=50)
        for device in self.devices.values():
            if device.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    device.process.kill()
                device.process.wait()
                self._on_process_exit(device)
        for device in self.devices.values():
            for port in device.ports:
                port.release()

    def statistics(self) -> dict[str, Any]:
        return {
            name: {
                "state": d.state,
                "pid": d.process.pid if d.process else None,
                "restarts": len(d.restarts),
                "last_exit": d.last_exit,
                "malformed": sum(c.malformed for c in d.conns),
                "services": sum(port.services for port in d.ports),
                "filters": [f.fid for f in d.filters],
            }
            for name, d in self.devices.items()
        }
