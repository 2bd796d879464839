"""The kernel process: one loop that hosts port drivers, service groups, filters and pins.

Sockets (in the private runtime directory):
  user.sock  ROUTER for clients ("user mode"): list filters, open pins, set state, close
  bus.sock   ROUTER for miniport hosts ("the bus"): register, interrupts, groups, replies

Each loop turn waits in one poll (timeout: the next timer), then handles, in
this order, what arrived on the bus (interrupts queue DPCs), due timers and
the DPC queue, the data-plane doorbells, and last the clients' requests, the
way IRQL lets interrupts and DPCs pre-empt passive-level work. Nothing here
waits for a peer: calls to a miniport carry a continuation and a timeout.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import zmq

from ipc import protocol as p
from ipc.channel import create_channel_files
from ipc.ks import DataFormat, KsState
from ipc.procwatch import ProcessWatch
from ipc.runtime import (
    BUS_SOCKET,
    USER_SOCKET,
    create_runtime_dir,
    endpoint,
    interrupt_channel_name,
    now_100ns,
    remove_runtime_dir,
    remove_stale_dirs,
)
from ipc.status import Status, StatusError
from ipc.waiter import Waiter
from kernel.config import DeviceConfig, KernelConfig
from kernel.dpc import Dpc, Scheduler, Timer
from kernel.hotplug import HotplugManager
from kernel.pins import Filter, KernelStream
from kernel.port import (
    CLSID_PortMidi,
    MiniportConnection,
    PortMidi,
    pc_new_port,
)
from kernel.registry import DeviceStore
from kernel.servicegroup import ServiceGroup

log = logging.getLogger("portcls.kernel")

BUS_BUDGET: Final = 512
USER_BUDGET: Final = 64
SAFETY_POLL_MS: Final = 1000
MIN_PIN_CAPACITY: Final = 1 << 14
MAX_PIN_CAPACITY: Final = 1 << 26
SUBDEVICE: Final = "midi"
PENDING: Final = object()
"""A client handler's result meaning "the reply will be sent later"."""


def exit_reason(code: int) -> str:
    """Why a miniport process ended, in words, from its Popen return code."""
    if code == p.EXIT_MINIPORT_FAULT:
        return f"the miniport raised out of a callback (exit {code})"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "an unknown signal"
        return f"miniport process killed by signal {-code} ({name})"
    return f"miniport process exited with {code}"


@dataclass(eq=False)
class ClientSession:
    identity: bytes
    pid: int
    name: str
    watch: ProcessWatch | None = None
    streams: dict[int, KernelStream] = field(default_factory=dict)


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


class Kernel:
    def __init__(self, runtime_dir: Path, config: KernelConfig) -> None:
        self.runtime_dir = runtime_dir
        self.config = config
        self.scheduler = Scheduler()
        self.scheduler.on_dpc_error = self._dpc_error
        self.devices: dict[str, Device] = {
            d.name: Device(d, DeviceStore(d.name, d.miniport, d.properties))
            for d in config.devices
        }
        self.filters: dict[str, Filter] = {}
        self.sessions: dict[bytes, ClientSession] = {}
        self.streams: dict[int, KernelStream] = {}
        self.stats = collections.Counter[str]()
        self._handles = itertools.count(1)
        self._fd_handlers: dict[int, Callable[[], None]] = {}
        self._interrupt_fds: set[int] = set()
        self.stopping = False
        self.on_ready: Callable[[Kernel], None] | None = None
        self._ready_reported = False
        self.ctx: zmq.Context[Any] | None = None
        self.waiter = Waiter()
        self.hotplug: HotplugManager | None = None

    def clock_seconds(self) -> float:
        return time.monotonic()

    def watch_fd(self, fd: int, handler: Callable[[], None]) -> None:
        if fd not in self._fd_handlers:
            self.waiter.watch(fd)
        self._fd_handlers[fd] = handler

    def watch_interrupt_fd(self, fd: int, handler: Callable[[], None]) -> None:
        """Like `watch_fd`, but handled at interrupt level: with the bus, before DPCs."""
        self.watch_fd(fd, handler)
        self._interrupt_fds.add(fd)

    def unwatch_fd(self, fd: int) -> None:
        self._interrupt_fds.discard(fd)
        if self._fd_handlers.pop(fd, None) is not None:
            self.waiter.unwatch(fd)

    def _stop_watching(self, watch: ProcessWatch | None) -> None:
        if watch is not None:
            self.unwatch_fd(watch.fileno())
            watch.close()

    def send_bus(self, identity: bytes, frame: bytes) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.bus.send_multipart([identity, frame], flags=zmq.NOBLOCK, copy=False)
        self.waiter.touched(self.bus)

    def send_user(self, identity: bytes, frame: bytes) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.user.send_multipart([identity, frame], flags=zmq.NOBLOCK, copy=False)
        self.waiter.touched(self.user)

    def broadcast(self, body: Any) -> None:
        frame = p.encode_event(body)
        for identity in self.sessions:
            self.send_user(identity, frame)

    def _dpc_error(self, dpc: Dpc, exc: BaseException) -> None:
        log.error("DPC raised", exc_info=exc)

    def open(self) -> None:
        """Create the runtime directory and bind the sockets."""
        remove_stale_dirs(self.runtime_dir.parent)
        create_runtime_dir(self.runtime_dir)
        self.ctx = zmq.Context()
        self.user = self.ctx.socket(zmq.ROUTER)
        self.bus = self.ctx.socket(zmq.ROUTER)
        for sock, name in ((self.user, USER_SOCKET), (self.bus, BUS_SOCKET)):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
            sock.setsockopt(zmq.SNDHWM, 100_000)
            sock.bind(endpoint(self.runtime_dir, name))
            os.chmod(self.runtime_dir / name, 0o600)
        self.waiter.add_socket(self.bus)
        self.waiter.add_socket(self.user)
        self._signal_r, signal_w = os.pipe()
        os.set_blocking(self._signal_r, False)
        os.set_blocking(signal_w, False)
        self._signal_w = signal_w
        self.watch_fd(self._signal_r, self._on_signal)
        self._heartbeat_timer = Timer(Dpc(self._check_heartbeats))
        self._arm_heartbeat_check()

    def install_signal_handlers(self) -> None:
        signal.set_wakeup_fd(self._signal_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)

    def _on_signal(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._signal_r, 64)
        if not self.stopping:
            log.info("stop signal: shutting down")
            self.stopping = True

    def run(self) -> None:
        """Start the configured devices and serve until a stop signal."""
        for device in self.devices.values():
            self._start_device(device)
        if self.config.hotplug:
            self.hotplug = HotplugManager(self, self.config.hotplug)
            self.hotplug.start()
        self._check_ready()
        while not self.stopping:
            self.turn()
        self.shutdown()

    def add_device(self, config: DeviceConfig) -> None:
        """Start a device at run time (hot plug); a removed device of that name comes back."""
        device = self.devices.get(config.name)
        if device is not None and (
            device.process is not None or device.state not in ("failed", "stopped", "unplugged")
        ):
            raise StatusError(Status.OBJECT_NAME_COLLISION, f"device {config.name} is present")
        if device is None:
            device = Device(config, DeviceStore(config.name, config.miniport, config.properties))
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
            self.scheduler.cancel_timer(device.restart_timer)
        self._fail_device(device, reason, restart=False)
        device.state = "unplugged"

    def turn(self, max_timeout_ms: int = SAFETY_POLL_MS) -> None:
        """One loop turn: wait, then IRQ work, DPCs, doorbells, passive requests."""
        sched = self.scheduler
        timeout = max_timeout_ms
        if sched.pending:
            timeout = 0
        else:
            deadline = sched.next_deadline()
            if deadline is not None:
                timeout = min(timeout, max(0, -(-(deadline - sched.clock()) // 10_000)))
        sockets, fds = self.waiter.wait(timeout)
        if not sockets and not fds and timeout == max_timeout_ms:
            self._safety_sweep()
        busy_user = self.user in sockets
        if self.bus in sockets:
            self._drain_bus()
        passive: list[int] = []
        for fd in fds:
            if fd in self._interrupt_fds:
                self._run_fd_handler(fd)
            else:
                passive.append(fd)
        sched.fire_due_timers()
        sched.run_dpcs()
        for fd in passive:
            self._run_fd_handler(fd)
        sched.run_dpcs()
        if busy_user:
            self._drain_user()
            sched.run_dpcs()

    def _run_fd_handler(self, fd: int) -> None:
        handler = self._fd_handlers.get(fd)
        if handler is not None:
            try:
                handler()
            except Exception:  # a bug must not take the kernel down; counted
                self.stats["handler_errors"] += 1
                log.exception("handler for fd %d raised", fd)

    def _safety_sweep(self) -> None:
        # A wake-up lost to store reordering (Python cannot fence) is rescued here.
        for device in tuple(self.devices.values()):
            if device.conn is not None:
                device.conn.take_interrupts()
        self.scheduler.run_dpcs()
        for stream in tuple(self.streams.values()):
            stream.request_service()

    def _drain_bus(self) -> None:
        for _ in range(BUS_BUDGET):
            try:
                identity, frame = self.bus.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            except ValueError:
                self.stats["bus_malformed"] += 1
                continue
            self._on_bus(identity, frame)
        self.waiter.touched(self.bus)  # the budget ran out: more may wait

    def _drain_user(self) -> None:
        for _ in range(USER_BUDGET):
            try:
                parts = self.user.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            if len(parts) != 2:
                self.stats["user_malformed"] += 1
                continue
            self._on_user(parts[0], parts[1])
        self.waiter.touched(self.user)  # the budget ran out: more may wait

    # The bus: miniport hosts.

    def _conn_of(self, identity: bytes) -> MiniportConnection | None:
        device = self.devices.get(identity.decode("utf-8", "replace"))
        if device is None or device.conn is None or device.conn.identity != identity:
            return None
        return device.conn

    def _on_bus(self, identity: bytes, frame: bytes) -> None:
        conn = self._conn_of(identity)
        try:
            msg = p.decode(frame)
        except p.ProtocolError as exc:
            self.stats["bus_malformed"] += 1
            if conn is not None:
                self.count_malformed(conn)
            if exc.rid:
                self.send_bus(identity, p.encode_exception(exc.rid, exc))
            return
        if isinstance(msg, p.Request) and isinstance(msg.body, p.Register):
            self._on_register(identity, msg.rid, msg.body)
            return
        if conn is None:
            self.stats["bus_unknown_sender"] += 1
            if isinstance(msg, p.Request):
                self.send_bus(
                    identity,
                    p.encode_error(msg.rid, Status.INVALID_DEVICE_REQUEST, "register first"),
                )
            return
        conn.last_seen = self.clock_seconds()
        if isinstance(msg, p.Reply):
            conn.on_reply(msg)
            return
        try:
            result = self._bus_message(conn, msg.body)
        except StatusError as exc:
            self.stats["bus_rejected"] += 1
            self.count_malformed(conn)
            if isinstance(msg, p.Request):
                self.send_bus(identity, p.encode_exception(msg.rid, exc))
            return
        if isinstance(msg, p.Request):
            self.send_bus(identity, p.encode_ok(msg.rid, result))

    def _bus_batch(self, conn: MiniportConnection, batch: p.Batch) -> None:
        for frame in batch.events:
            if conn.closed:
                return
            try:
                msg = p.decode(frame)
                if not isinstance(msg, p.Event) or isinstance(msg.body, p.Batch):
                    raise StatusError(Status.INVALID_PARAMETER, "a batch holds plain events")
                self._bus_message(conn, msg.body)
            except StatusError:
                self.stats["bus_rejected"] += 1
                self.count_malformed(conn)

    def interrupt(self, conn: MiniportConnection, groups: list[int]) -> None:
        """The miniport's ISR ran: `port.notify` each group (-1: every group)."""
        self.stats["interrupts"] += 1
        port = conn.port
        if port is None:
            raise StatusError(Status.INVALID_DEVICE_STATE, "interrupt before init")
        for gid in groups:
            port.notify(None if gid == -1 else conn.group(gid))

    def count_malformed(self, conn: MiniportConnection) -> None:
        """Count a malformed or refused message; too many in the window is a fault."""
        conn.malformed += 1
        limit, window = self.config.malformed_limit, self.config.malformed_window
        if not limit or conn.closed:
            return
        now = self.clock_seconds()
        recent = conn.recent_malformed
        recent.append(now)
        while recent and now - recent[0] > window:
            recent.popleft()
        if len(recent) >= limit:
            self.miniport_fault(conn, f"{len(recent)} malformed messages in {window:g} s")

    def _bus_message(self, conn: MiniportConnection, body: Any) -> Any:
        port = conn.port
        if isinstance(body, p.Batch):
            self._bus_batch(conn, body)
        elif isinstance(body, p.Interrupt):
            self.interrupt(conn, body.groups)
        elif isinstance(body, p.Heartbeat):
            pass
        elif isinstance(body, p.GroupNew):
            if body.group in conn.groups:
                raise StatusError(Status.OBJECT_NAME_COLLISION, f"group {body.group} exists")
            if len(conn.groups) >= 4096:
                raise StatusError(Status.INSUFFICIENT_RESOURCES, "too many service groups")
            conn.groups[body.group] = ServiceGroup(self.scheduler, f"{conn.device}:{body.group}")
        elif isinstance(body, p.GroupAddMember):
            conn.group(body.group).add_member(conn.member(body.member_group, body.sink))
        elif isinstance(body, p.GroupRemoveMember):
            conn.group(body.group).remove_member(conn.member(body.member_group, body.sink))
        elif isinstance(body, p.GroupRelease):
            conn.groups.pop(body.group, conn.group(body.group)).release()
        elif isinstance(body, p.RegisterServiceGroup):
            if port is None:
                raise StatusError(Status.INVALID_DEVICE_STATE, "no port yet")
            port.register_service_group(conn.group(body.group))
        elif isinstance(body, p.StreamError):
            stream = port.streams.get(body.stream) if port else None
            if stream is None:
                raise StatusError(Status.INVALID_PARAMETER, f"no stream {body.stream}")
            stream.stats["device_errors"] += 1
            self.notify_pin_error(stream, StatusError(body.status, body.message))
        elif isinstance(body, p.DeviceProperty):
            if port is None or not port.init_started:
                raise StatusError(Status.UNSUCCESSFUL, "the port is not initialised")
            return self.devices[conn.device].store.get_property(body.property)
        elif isinstance(body, p.Registry):
            if port is None or not port.init_started:
                raise StatusError(Status.UNSUCCESSFUL, "the port is not initialised")
            store = self.devices[conn.device].store
            return store.registry(body.key_type, body.path, body.action, body.name, body.value)
        else:
            raise StatusError(Status.INVALID_DEVICE_REQUEST, f"{body.OP} is not a bus message")
        return None

    def _on_register(self, identity: bytes, rid: int, reg: p.Register) -> None:
        device = self.devices.get(reg.device)
        problem = None
        if device is None or identity != reg.device.encode():
            problem = f"no device {reg.device!r} is configured"
        elif device.state != "starting" or device.conn is not None:
            problem = f"device {reg.device!r} is not waiting for a miniport"
        elif device.process is None or device.process.pid != reg.pid:
            problem = "the registering process is not the one the kernel started"
        elif reg.version != p.PROTOCOL_VERSION:
            problem = f"protocol version {reg.version}, kernel speaks {p.PROTOCOL_VERSION}"
        if problem is not None or device is None:
            self.stats["bus_rejected"] += 1
            self.send_bus(
                identity, p.encode_error(rid, Status.INVALID_DEVICE_REQUEST, problem or "")
            )
            return
        conn = MiniportConnection(self, reg.device, identity, reg.pid, reg)
        device.conn = conn
        interrupt_base = self.runtime_dir / interrupt_channel_name(reg.pid)
        try:
            conn.open_interrupt_channel(interrupt_base)
        except (OSError, ValueError) as exc:
            # Interrupts still work as bus messages; only slower.
            log.warning("device %s: no interrupt channel: %s", reg.device, exc)
        reply: dict[str, Any] = {
            "heartbeat": self.config.heartbeat_interval, "kernel_pid": os.getpid()
        }
        if conn.interrupts is not None:
            reply["interrupt_channel"] = str(interrupt_base)
        self.send_bus(identity, p.encode_ok(rid, reply))
        # PnP start: PcNewPort, port.init (miniport.init + get_description), PcRegisterSubdevice.
        port = pc_new_port(self, CLSID_PortMidi)
        device.port = port

        def bound(error: StatusError | None) -> None:
            if device.conn is not conn:
                return
            if error is not None:
                log.error("device %s failed to start: %s", reg.device, error)
                device.last_exit = f"init failed: {error}"
                self._fail_device(device, f"init failed: {error}", restart=False)
                return
            self.pc_register_subdevice(device, SUBDEVICE, port)

        port.init(conn, device.config.resources, bound)

    def pc_register_subdevice(self, device: Device, name: str, port: PortMidi) -> None:
        """Publish the port's filter; every client hears of its arrival."""
        fid = device.config.name
        if fid in self.filters:
            raise StatusError(Status.OBJECT_NAME_COLLISION, f"filter {fid} exists")
        filter_ = Filter(fid, device.config.name, name, port)
        self.filters[fid] = filter_
        device.filter = filter_
        device.state = "running"
        log.info("device %s: filter published", fid)
        self.broadcast(p.DeviceArrival(fid))
        self._check_ready()

    def _check_ready(self) -> None:
        if self._ready_reported or any(d.state == "starting" for d in self.devices.values()):
            return
        self._ready_reported = True
        if self.on_ready is not None:
            self.on_ready(self)

    # PnP: starting, watching and removing miniport processes.

    def _start_device(self, device: Device) -> None:
        cfg = device.config
        args = [
            sys.executable,
            "-m",
            "miniports.host",
            "--runtime",
            str(self.runtime_dir),
            "--device",
            cfg.name,
            "--miniport",
            cfg.miniport,
            "--options",
            json.dumps(cfg.options),
        ]
        device.state = "starting"
        device.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, close_fds=True)
        device.watch = ProcessWatch(device.process.pid, device.process)
        self.watch_fd(device.watch.fileno(), lambda: self._on_process_exit(device))
        log.info("device %s: miniport %s started, pid %d", cfg.name, cfg.miniport,
                 device.process.pid)

    def _on_process_exit(self, device: Device) -> None:
        process = device.process
        if process is None or process.poll() is None:
            return
        reason = exit_reason(process.returncode)
        self._stop_watching(device.watch)
        device.watch = None
        device.process = None
        if device.kill_timer is not None:
            self.scheduler.cancel_timer(device.kill_timer)
        # "restarting": a fault already removed the device and scheduled its restart.
        expected = (
            device.state in ("stopping", "failed", "unplugged", "restarting") or self.stopping
        )
        device.last_exit = device.last_exit or reason
        self._remove_device(device, reason)
        if expected:
            if device.state == "stopping":
                device.state = "stopped"
            elif device.state == "restarting" and device.restart_due and not self.stopping:
                device.restart_due = False
                device.last_exit = ""
                self._start_device(device)
            self._check_ready()
            return
        log.warning("device %s: surprise removal: %s", device.config.name, reason)
        self._schedule_restart(device)

    def miniport_fault(self, conn: MiniportConnection, reason: str) -> None:
        """A miniport broke the contract (hung, garbage): remove it and kill its process."""
        device = self.devices.get(conn.device)
        if device is None or device.conn is not conn:
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
            self._check_ready()

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
                self.stats["hard_kills"] += 1
                with contextlib.suppress(ProcessLookupError):
                    process.kill()

        device.kill_timer = Timer(Dpc(hard_kill))
        grace = self.config.stop_grace
        self.scheduler.set_timer(device.kill_timer, now_100ns() + int(grace * 1e7))

    def _remove_device(self, device: Device, reason: str) -> None:
        """Surprise (or orderly) removal: withdraw the filter, fail its pins, drop its groups."""
        removed = StatusError(Status.DEVICE_REMOVED, f"device {device.config.name}: {reason}")
        filter_ = device.filter
        if filter_ is not None:
            del self.filters[filter_.fid]
            device.filter = None
            self.broadcast(p.DeviceRemoval(filter_.fid, reason))
        if device.port is not None:
            for stream in tuple(device.port.streams.values()):
                stream.remove(removed)
            device.port.release()
            device.port = None
        if device.conn is not None:
            device.conn.close()
            device.conn = None

    def _schedule_restart(self, device: Device) -> None:
        policy = device.config.restart
        now = self.clock_seconds()
        while device.restarts and now - device.restarts[0] > policy.window:
            device.restarts.popleft()
        if self.stopping or len(device.restarts) >= policy.limit:
            device.state = "failed"
            log.error("device %s: not restarted (%d restarts in %.0f s)", device.config.name,
                      len(device.restarts), policy.window)
            self._check_ready()
            return
        delay = min(policy.max_backoff, policy.backoff * (2 ** len(device.restarts)))
        device.restarts.append(now)
        device.state = "restarting"

        def restart() -> None:
            if device.state == "restarting" and not self.stopping:
                if device.process is not None:
                    # Never two processes for one device: wait for the old one to go.
                    device.restart_due = True
                    return
                device.last_exit = ""
                self._start_device(device)

        device.restart_timer = Timer(Dpc(restart))
        self.scheduler.set_timer(device.restart_timer, now_100ns() + int(delay * 1e7))

    def _arm_heartbeat_check(self) -> None:
        self.scheduler.set_timer(
            self._heartbeat_timer, now_100ns() + int(self.config.heartbeat_interval * 1e7)
        )

    def _check_heartbeats(self) -> None:
        now = self.clock_seconds()
        for device in tuple(self.devices.values()):
            conn = device.conn
            if conn is not None and now - conn.last_seen > self.config.heartbeat_timeout:
                self.miniport_fault(conn, f"no heartbeat for {now - conn.last_seen:.1f} s")
        self._arm_heartbeat_check()

    # User mode: clients.

    def _on_user(self, identity: bytes, frame: bytes) -> None:
        try:
            msg = p.decode(frame)
        except p.ProtocolError as exc:
            self.stats["user_malformed"] += 1
            if exc.rid:
                self.send_user(identity, p.encode_exception(exc.rid, exc))
            return
        if not isinstance(msg, p.Request):
            self.stats["user_malformed"] += 1
            return
        session = self.sessions.get(identity)
        try:
            if isinstance(msg.body, p.Hello):
                result = self._hello(identity, msg.body)
            elif session is None:
                raise StatusError(Status.INVALID_DEVICE_REQUEST, "say hello first")
            else:
                result = self._user_request(session, msg.rid, msg.body)
        except StatusError as exc:
            self.stats["user_rejected"] += 1
            self.send_user(identity, p.encode_exception(msg.rid, exc))
            return
        if result is not PENDING:
            self.send_user(identity, p.encode_ok(msg.rid, result))

    def _hello(self, identity: bytes, body: p.Hello) -> Any:
        if body.version != p.PROTOCOL_VERSION:
            raise StatusError(Status.NOT_SUPPORTED, f"protocol version {body.version}")
        if identity in self.sessions:
            raise StatusError(Status.OBJECT_NAME_COLLISION, "this connection said hello already")
        session = ClientSession(identity, body.pid, body.name)
        with contextlib.suppress(OSError):
            if body.pid > 0:
                session.watch = ProcessWatch(body.pid)
        self.sessions[identity] = session
        if session.watch is not None:
            self.watch_fd(
                session.watch.fileno(), lambda: self._end_session(session, "client exited")
            )
        return {"kernel_pid": os.getpid(), "version": p.PROTOCOL_VERSION}

    def _end_session(self, session: ClientSession, why: str) -> None:
        if self.sessions.get(session.identity) is not session:
            return
        del self.sessions[session.identity]
        self._stop_watching(session.watch)
        session.watch = None
        for stream in tuple(session.streams.values()):
            self._close_stream(stream, lambda: None)
        log.debug("session %s ended: %s", session.name, why)

    def _filter(self, fid: str) -> Filter:
        filter_ = self.filters.get(fid)
        if filter_ is None:
            raise StatusError(Status.OBJECT_NAME_NOT_FOUND, f"no filter {fid!r}")
        return filter_

    def _stream(self, session: ClientSession, handle: int) -> KernelStream:
        stream = session.streams.get(handle)
        if stream is None:
            raise StatusError(Status.INVALID_PARAMETER, f"no open pin {handle}")
        return stream

    def _user_request(self, session: ClientSession, rid: int, body: Any) -> Any:
        if isinstance(body, p.ListFilters):
            return [f.to_wire() for f in self.filters.values()]
        if isinstance(body, p.PinProperty):
            return self._filter(body.filter).pin_property(body.pin, body.property)
        if isinstance(body, p.OpenPin):
            return self._open_pin(session, rid, body)
        if isinstance(body, p.SetState):
            return self._set_state(session, rid, body)
        if isinstance(body, p.GetState):
            return int(self._stream(session, body.handle).state)
        if isinstance(body, p.ClosePin):
            stream = self._stream(session, body.handle)
            self._close_stream(stream, lambda: self.send_user(session.identity, p.encode_ok(rid)))
            return PENDING
        if isinstance(body, p.Stats):
            return self._stats(session)
        if isinstance(body, p.Goodbye):
            self.send_user(session.identity, p.encode_ok(rid))
            self._end_session(session, "goodbye")
            return PENDING
        raise StatusError(Status.INVALID_DEVICE_REQUEST, f"{body.OP} is not a client request")

    def _stats(self, session: ClientSession) -> Any:
        return {
            "kernel": dict(self.stats),
            "dpcs_run": self.scheduler.dpcs_run,
            "dpc_errors": self.scheduler.dpc_errors,
            "devices": {
                name: {
                    "state": d.state,
                    "pid": d.process.pid if d.process else None,
                    "restarts": len(d.restarts),
                    "last_exit": d.last_exit,
                    "malformed": d.conn.malformed if d.conn else 0,
                    "services": d.port.services if d.port else 0,
                }
                for name, d in self.devices.items()
            },
            "pins": [s.info() for s in session.streams.values()],
        }

    def _open_pin(self, session: ClientSession, rid: int, body: p.OpenPin) -> Any:
        filter_ = self._filter(body.filter)
        desc = filter_.pin(body.pin)
        if not desc.streaming:
            raise StatusError(Status.INVALID_DEVICE_REQUEST, f"pin {body.pin} is a bridge pin")
        if not MIN_PIN_CAPACITY <= body.capacity <= MAX_PIN_CAPACITY or (
            body.capacity & (body.capacity - 1)
        ):
            raise StatusError(
                Status.INVALID_PARAMETER,
                f"capacity must be a power of two in [{MIN_PIN_CAPACITY}, {MAX_PIN_CAPACITY}]",
            )
        fmt = DataFormat.from_wire(body.format)
        ranges = [r for r in desc.data_ranges if r.matches(fmt)]
        port = filter_.port
        conn = port.conn
        if not ranges and not (conn is not None and conn.custom_intersection):
            raise StatusError(Status.NO_MATCH, "the format matches none of the pin's data ranges")
        limit = filter_.instance_limit(body.pin)
        if filter_.open_counts[body.pin] >= limit:
            raise StatusError(
                Status.INSUFFICIENT_RESOURCES,
                f"pin {body.pin} has all {limit} instance(s) open",
            )
        if conn is None:
            raise StatusError(Status.DEVICE_REMOVED, "the device is going away")
        handle = next(self._handles)
        client_base = self.runtime_dir / f"pin{handle}-client"
        miniport_base = self.runtime_dir / f"pin{handle}-miniport"
        create_channel_files(client_base, body.capacity)
        create_channel_files(miniport_base, body.capacity)
        stream = KernelStream(
            self, handle, filter_, body.pin, session, fmt, client_base, miniport_base
        )
        filter_.open_counts[body.pin] += 1
        port.streams[handle] = stream
        session.streams[handle] = stream
        self.streams[handle] = stream

        def fail(exc: StatusError) -> None:
            self._forget_stream(stream)
            stream.release()
            self.send_user(session.identity, p.encode_exception(rid, exc))

        def created(reply: p.Reply) -> None:
            try:
                result = reply.unwrap()
                stream.open_channels()
                gid = result.get("group") if isinstance(result, dict) else None
                if gid is not None and conn is not None:
                    stream.set_group(conn.group(gid))
            except StatusError as exc:
                fail(exc)
                if reply.ok and conn is not None:
                    conn.call(p.CloseStream(handle), lambda _: None)
                return
            if stream.removed is not None:
                fail(stream.removed)
                return
            self.send_user(
                session.identity,
                p.encode_ok(
                    rid,
                    {
                        "handle": handle,
                        "channel": str(client_base),
                        "capture": stream.capture,
                        "format": fmt.to_wire(),
                    },
                ),
            )

        def intersected(reply: p.Reply) -> None:
            nonlocal fmt
            if not reply.ok and reply.status != Status.NOT_IMPLEMENTED:
                fail(StatusError(reply.status, reply.message))
                return
            if reply.ok:
                try:
                    fmt = DataFormat.from_wire(reply.result)
                except StatusError as exc:
                    fail(exc)
                    return
            elif not ranges:
                fail(StatusError(Status.NO_MATCH, "no data range matches"))
                return
            assert conn is not None
            conn.call(
                p.NewStream(handle, body.pin, stream.capture, fmt.to_wire(), str(miniport_base)),
                created,
            )

        if conn.custom_intersection:
            target = ranges[0] if ranges else desc.data_ranges[0]
            conn.call(
                p.DataRangeIntersection(body.pin, fmt.to_wire(), target.to_wire()), intersected
            )
        else:
            intersected(p.Reply(0, False, status=Status.NOT_IMPLEMENTED))
        return PENDING

    def _set_state(self, session: ClientSession, rid: int, body: p.SetState) -> Any:
        stream = self._stream(session, body.handle)
        if stream.removed is not None:
            raise stream.removed
        try:
            target = KsState(body.state)
        except ValueError:
            raise StatusError(Status.INVALID_PARAMETER, f"no KSSTATE {body.state}") from None
        if stream.changing:
            raise StatusError(Status.INVALID_DEVICE_STATE, "a state change is in progress")
        if target == stream.state:
            return None
        if abs(target - stream.state) != 1:
            raise StatusError(
                Status.INVALID_DEVICE_STATE,
                f"{stream.state.name} -> {target.name} skips a step; go one state at a time",
            )
        conn = stream.filter.port.conn
        if conn is None:
            raise StatusError(Status.DEVICE_REMOVED, "the device is gone")
        stream.changing = True

        def done(reply: p.Reply) -> None:
            stream.changing = False
            if not reply.ok:
                self.send_user(session.identity, p.encode_error(rid, reply.status, reply.message))
                return
            stream.state_changed(target)
            self.send_user(session.identity, p.encode_ok(rid))

        conn.call(p.StreamSetState(stream.handle, int(target)), done)
        return PENDING

    def _forget_stream(self, stream: KernelStream) -> None:
        self.streams.pop(stream.handle, None)
        stream.session.streams.pop(stream.handle, None)
        counts = stream.filter.open_counts
        counts[stream.pin_id] = max(0, counts[stream.pin_id] - 1)

    def _close_stream(self, stream: KernelStream, done: Callable[[], None]) -> None:
        """Walk the miniport stream down to STOP, close it, release everything, then `done`."""
        conn = stream.filter.port.conn
        self._forget_stream(stream)

        def finish(_: p.Reply | None = None) -> None:
            stream.release()
            done()

        if conn is None or conn.closed:
            finish()
            return
        steps = [KsState(s) for s in range(int(stream.state) - 1, -1, -1)]

        def step(_: p.Reply | None = None) -> None:
            if steps:
                state = steps.pop(0)
                stream.state = state
                conn.call(p.StreamSetState(stream.handle, int(state)), step)
            else:
                conn.call(p.CloseStream(stream.handle), finish)

        step()

    def notify_pin_error(self, stream: KernelStream, error: StatusError) -> None:
        self.send_user(
            stream.session.identity, p.encode_event(p.PinError(stream.handle, error.status,
                                                               error.message))
        )

    # Shutdown.

    def shutdown(self, grace: float = 3.0) -> None:
        """Unload every miniport (explicit ack), stop the processes, remove the directory."""
        self.stopping = True
        if self.hotplug is not None:
            self.hotplug.stop()
        self.broadcast(p.KernelShutdown())
        for device in self.devices.values():
            if device.restart_timer is not None:
                self.scheduler.cancel_timer(device.restart_timer)
            if device.conn is not None:
                device.state = "stopping"
                device.conn.call(p.Unload(), lambda _: None, timeout=grace)
            elif device.process is not None:
                device.state = "stopping"
                self._kill(device)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(
            d.process is not None for d in self.devices.values()
        ):
            self.turn(max_timeout_ms=50)
        for device in self.devices.values():
            if device.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    device.process.kill()
                device.process.wait()
                self._on_process_exit(device)
        for stream in tuple(self.streams.values()):
            stream.release()
        for session in tuple(self.sessions.values()):
            self._end_session(session, "kernel shutdown")
        self.close()

    def close(self) -> None:
        for sock in (getattr(self, "user", None), getattr(self, "bus", None)):
            if sock is not None:
                sock.close(linger=0)
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None
        self.waiter.close()
        with contextlib.suppress(Exception):
            signal.set_wakeup_fd(-1)
        for fd in (getattr(self, "_signal_r", None), getattr(self, "_signal_w", None)):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        remove_runtime_dir(self.runtime_dir)

