"""One miniport host (one port of the device): its loop, the kernel's requests,
heartbeats, shutdown. The device's process runs one per port its adapter binds
(miniports.host.device), each on its own thread with its own bus connection.

One thread runs the loop. It waits in one epoll (`Waiter`) on the bus socket,
the stream rings' doorbells, a wake-up pipe (for `notify` and events posted
from other threads) and the kernel's process; it answers the port's calls
(init, new_stream, set_state, ...) by calling the miniport, sends a heartbeat,
retries short writes, fires delayed services, and runs the miniport's half of
each requested group's DPC (`miniports.host.dpc`) before it raises the
interrupt on which the kernel runs the other half.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import zmq

from ipc import protocol as p
from ipc.credentials import LaunchCredentials
from ipc.dmusic import DmusStreamType, prefetch_to_wire
from ipc.ks import DataFormat, DataRange, KsState
from ipc.procwatch import ProcessWatch
from ipc.runtime import ENV_MINIPORT_PATH, now_100ns
from ipc.status import Status, StatusError
from ipc.waiter import Waiter
from miniports import registry
from miniports.contract import MiniportDMus, MiniportMidi, ResourceList, overrides
from miniports.host.bus import KernelBus
from miniports.host.calls import MiniportFault, call_miniport, call_miniport_hook
from miniports.host.dmus import DmusHostStream, DmusSupport
from miniports.host.dpc import NOTIFY_ALL, HostServiceGroup, ServiceGroups
from miniports.host.port import HostPort
from miniports.host.streams import HostStream, StreamTable

__all__ = ["EXIT_MINIPORT_FAULT", "MiniportHost"]

EXIT_MINIPORT_FAULT = p.EXIT_MINIPORT_FAULT


def _group(group: Any) -> HostServiceGroup | None:
    """A group the miniport returned: one of ours, or None (anything else counts as none,
    as a NULL group does in PortCls)."""
    return group if isinstance(group, HostServiceGroup) else None


class MiniportHost:
    """Runs one miniport object for the kernel; see the module docstring.

    One host serves one port the device's adapter bound (`port_clsid`, `resources`:
    what the adapter gave PcNewPort and port.init; see miniports.host.device). Other
    threads reach it only through `wait_init`, `call_kernel` and `stop`.
    """

    dmus: DmusSupport | None = None
    """A DirectMusic miniport's allocator, master clock and counts (set by `_init`)."""

    def __init__(
        self,
        runtime_dir: Path,
        device: str,
        miniport_name: str,
        miniport: MiniportMidi | MiniportDMus,
        heartbeat: float = 1.0,
        launch: LaunchCredentials | None = None,
        port_clsid: str = "",
        resources: dict[str, Any] | None = None,
    ) -> None:
        self.runtime_dir = runtime_dir
        self.launch = launch
        self.device = device
        self.port_clsid = port_clsid
        self.resources = resources
        self._init_done = threading.Event()
        self._init_error: StatusError | None = None
        self._jobs: collections.deque[tuple[Any, Future[Any]]] = collections.deque()
        self._jobs_lock = threading.Lock()
        self.miniport_name = miniport_name
        self.miniport = miniport
        self.heartbeat = heartbeat
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.waiter = Waiter()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.waiter.watch(self._wake_r)
        identity = launch.identity if launch is not None else device.encode()
        self.bus = KernelBus(self.ctx, runtime_dir, identity, self._wake)
        # A C-level getter: the waiter calls it on every turn.
        self.waiter.add_socket(
            self.bus.rpc.socket, functools.partial(getattr, self.bus.rpc, "activity"))
        self.streams = StreamTable(self.waiter, runtime_dir, self.bus.post)
        self.groups = ServiceGroups(self.bus.post_call, self._wake, self._service_port)
        self.port = HostPort(self.bus, self.streams.by_id, runtime_dir, self.groups)
        self._has_service = overrides(self.miniport, "service")
        self._lone_captures: tuple[HostStream, ...] = ()
        """The capture streams in no group: the port's sink reads them."""
        self._initialised = False
        self.running = True
        self._kernel_watch: ProcessWatch | None = None
        self._kernel_fd: int | None = None
        self._requests: dict[type[Any], Callable[[Any], Any]] = {
            p.Init: self._init,
            p.GetDescription: self._get_description,
            p.DataRangeIntersection: self._data_range_intersection,
            p.NewStream: self._new_stream,
            p.StreamSetState: self._set_state,
            p.StreamSetFormat: self._set_format,
            p.CloseStream: self._close_stream,
            p.Unload: self._unload,
            p.InitComplete: self._init_complete,
        }

    def _wake(self) -> None:
        fd = self._wake_w
        if fd >= 0:
            with contextlib.suppress(BlockingIOError):
                os.write(fd, b"!")

    def run(self) -> int:
        """Register with the kernel, then serve it until unloaded or it dies; the exit status.
        StatusError if the kernel refuses the registration. Call it on the thread that
        made the host."""
        try:
            return self._serve()
        finally:
            self._end_waits()

    def _serve(self) -> int:
        reply = self.bus.call(
            p.Register(
                self.device,
                os.getpid(),
                self.miniport_name,
                self._has_service,
                overrides(self.miniport, "data_range_intersection"),
                secret=self.launch.secret if self.launch is not None else b"",
                port_clsid=self.port_clsid,
                resources=self.resources,
            ),
            timeout=10.0,
        )
        self.heartbeat = float(reply.get("heartbeat", self.heartbeat))
        kernel_pid = reply.get("kernel_pid")
        if isinstance(kernel_pid, int) and not isinstance(kernel_pid, bool):
            self.streams.kernel_pid = kernel_pid
        self.bus.open_interrupt_channel(reply.get("interrupt_channel"), kernel_pid)
        # The kernel's death ends this process at once (a readable watch), not at a timeout.
        with contextlib.suppress(OSError, KeyError, TypeError, ValueError):
            self._kernel_watch = ProcessWatch(int(reply["kernel_pid"]))
            self._kernel_fd = self._kernel_watch.fileno()
            self.waiter.watch(self._kernel_fd)
        next_beat = time.monotonic() + self.heartbeat
        try:
            while self.running:
                next_beat = self._turn(next_beat)
        except MiniportFault:
            traceback.print_exc()
            return EXIT_MINIPORT_FAULT
        finally:
            self._shutdown()
        return 0

    def _turn(self, next_beat: float) -> float:
        """One loop turn: wait, then requests, heartbeat, retries, DPCs; the next beat."""
        streams, groups, bus = self.streams, self.groups, self.bus
        rpc = bus.rpc
        if bus.has_unsent or groups.pending or rpc.backlog:
            timeout = 0
        else:
            now = time.monotonic()
            deadline = next_beat
            # Only what is pending is looked at: on the data path, no stream waits for a
            # retry and no delayed service is set.
            if streams.retrying:
                retry = streams.next_retry()
                if retry is not None:
                    deadline = min(deadline, retry)
            if groups.armed:
                due = groups.next_due()
                if due is not None:
                    deadline = min(deadline, due / 1e7)  # the shared clock is time.monotonic's
            timeout = max(0, int((deadline - now) * 1000 + 0.999))
        sockets, fds = self.waiter.wait(timeout)
        if sockets:
            rpc.receive_pending()
        for fd in fds:
            self._on_ready(fd)
        bus.flush()
        if rpc.backlog:
            self._handle_backlog()
        if self._jobs:
            self._run_jobs()
        now = time.monotonic()
        if now >= next_beat:
            # Once a beat, read the bus socket's real state whatever its signal said: a
            # safety net under the waiter's edge rule (as the kernel's sweep is for rings).
            self.waiter.touched(rpc.socket)
            self.bus.heartbeat()
            next_beat = now + self.heartbeat
            self.streams.pump_all()
        if streams.retrying:
            streams.retry_due(now)
        if groups.armed:
            groups.fire_due_timers(now_100ns())
        self._run_dpcs()
        bus.flush()
        return next_beat

    def _on_ready(self, fd: int) -> None:
        if fd == self._wake_r:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        elif fd == self._kernel_fd:
            self.running = False
        elif (hs := self.streams.on_ready(fd)) is not None:
            # What waited for room is in the ring now: the kernel's half of its group.
            group = self.groups.stream_group(hs.sid)
            self.bus.raise_interrupt([NOTIFY_ALL if group is None else group.gid])

    def _handle_backlog(self) -> None:
        rpc = self.bus.rpc
        while rpc.backlog and self.running:
            frame = rpc.backlog.popleft()
            if isinstance(frame, p.Request):
                self._request(frame)
            # The kernel sends no events to a host: every service request starts here.

    def _request(self, frame: p.Request) -> None:
        """Answer one request of the port's: a StatusError is the miniport's answer;
        anything else raised is its fault, answered and then fatal."""
        handler = self._requests.get(type(frame.body))
        try:
            if handler is None:
                raise StatusError(
                    Status.INVALID_DEVICE_REQUEST, f"a miniport host does not do {frame.op}"
                )
            result = call_miniport(frame.op, handler, frame.body)
        except StatusError as exc:
            self.bus.reply_exception(frame.rid, exc)
        except MiniportFault as exc:
            self.bus.reply_exception(frame.rid, exc.__cause__ or exc)
            raise
        else:
            self.bus.reply(frame.rid, result)

    def _init(self, body: p.Init) -> Any:
        """IPort::Init: the miniport is asked for IMiniportDMus first, then IMiniportMidi
        (else STATUS_INVALID_PARAMETER); the reply's "kind" says which ("dmus", "midi")."""
        if self._initialised:
            return {"group": None, "again": True, "kind": self._kind()}
        kind = self._kind()
        if kind == "dmus" and self.dmus is None:
            self.dmus = DmusSupport()
        group = _group(self.miniport.init(ResourceList.from_wire(body.resources), self.port))
        self._initialised = True
        self.groups.port_init_returned(group)
        return {"group": None if group is None else group.gid, "kind": kind}

    def _kind(self) -> str:
        if isinstance(self.miniport, MiniportDMus):
            return "dmus"
        if isinstance(self.miniport, MiniportMidi):
            return "midi"
        raise StatusError(Status.INVALID_PARAMETER, "neither IMiniportDMus nor IMiniportMidi")

    def _get_description(self, body: p.GetDescription) -> Any:
        desc = self.miniport.get_description()
        desc.validate()
        return desc.to_wire()

    def _data_range_intersection(self, body: p.DataRangeIntersection) -> Any:
        fmt = self.miniport.data_range_intersection(
            body.pin,
            DataFormat.from_wire(body.client_format),
            DataRange.from_wire(body.miniport_range),
        )
        return fmt.to_wire()

    def _new_stream(self, body: p.NewStream) -> Any:
        """NewStream; a DirectMusic stream's reply also carries its "prefetch" (100 ns)."""
        channel = self.streams.check_new(body.stream, body.channel)
        fmt = DataFormat.from_wire(body.format)
        reply: dict[str, Any] = {}
        hs: HostStream
        if isinstance(self.miniport, MiniportDMus):
            if self.dmus is None:
                self.dmus = DmusSupport()
            dmus = self.dmus
            kind = DmusStreamType.MIDI_CAPTURE if body.capture else DmusStreamType.MIDI_RENDER
            mxf, group, prefetch = dmus.check_new_stream(self.miniport.new_stream(
                body.pin, kind, fmt, dmus.allocator, dmus.master_clock))
            reply["prefetch"] = prefetch_to_wire(prefetch)
            hs = DmusHostStream.create(body.stream, body.pin, body.capture, mxf, dmus.allocator)
            if hs.sink is not None:
                try:
                    mxf.connect_output(hs.sink)
                except StatusError:
                    call_miniport_hook("close", mxf.close)
                    raise
        else:
            stream, group = self.miniport.new_stream(body.pin, body.capture, fmt)
            hs = HostStream(body.stream, body.pin, body.capture, stream)
        self.streams.add(hs, channel)
        group = _group(group)
        if group is not None:
            sink = self._read if hs.capture else self._offer_again
            self.groups.add_stream(hs.sid, group, functools.partial(sink, hs))
        elif hs.capture:
            self._lone_captures = (*self._lone_captures, hs)
        return {"group": None if group is None else group.gid, **reply}

    def _set_state(self, body: p.StreamSetState) -> None:
        hs = self.streams.get(body.stream)
        hs.set_state(KsState(body.state))
        if hs.state == KsState.RUN and not hs.capture:
            self.streams.pump_render(hs)
        if hs.state == KsState.STOP and self.dmus is not None:
            self.dmus.publish(self.port, self._dmus_streams())

    def _dmus_streams(self) -> list[DmusHostStream]:
        return [hs for hs in self.streams if isinstance(hs, DmusHostStream)]

    def _set_format(self, body: p.StreamSetFormat) -> None:
        self.streams.get(body.stream).stream.set_format(DataFormat.from_wire(body.format))

    def _close_stream(self, body: p.CloseStream) -> None:
        self.groups.remove_stream(body.stream)
        self._lone_captures = tuple(c for c in self._lone_captures if c.sid != body.stream)
        hs = self.streams.remove(body.stream)
        if isinstance(hs, DmusHostStream) and self.dmus is not None:
            hs.close_stream()
            self.dmus.stream_closed(hs)
            self.dmus.publish(self.port, self._dmus_streams())

    def _unload(self, body: p.Unload) -> None:
        self.running = False

    def _init_complete(self, body: p.InitComplete) -> None:
        """The kernel ran IPort::Init for this port: `wait_init` returns (or raises) now."""
        if not self._init_done.is_set():
            if body.status != Status.SUCCESS:
                self._init_error = StatusError(body.status, body.message)
            self._init_done.set()

    # What other threads (the adapter's) may call.

    def wait_init(self, timeout: float) -> None:
        """Block until the kernel ran IPort::Init for this host's port; raise its failure,
        DEVICE_REMOVED if the host ended first, IO_TIMEOUT after `timeout` seconds."""
        if not self._init_done.wait(timeout):
            raise StatusError(Status.IO_TIMEOUT, f"IPort::Init did not end in {timeout:g} s")
        if self._init_error is not None:
            raise self._init_error

    def call_kernel(self, body: Any, timeout: float = 10.0) -> Any:
        """Make a request to the kernel from another thread: the loop thread sends it
        between two turns (the socket is the loop's). Its result, or the StatusError it
        failed with; DEVICE_REMOVED once the host has ended."""
        future: Future[Any] = Future()
        with self._jobs_lock:
            if not self.running:
                raise StatusError(Status.DEVICE_REMOVED, "the miniport host has ended")
            self._jobs.append((body, future))
        self._wake()
        try:
            return future.result(timeout)
        except FutureTimeout:
            raise StatusError(Status.IO_TIMEOUT, f"no answer to {body.OP}") from None

    def stop(self) -> None:
        """End the loop at its next turn (from any thread)."""
        with self._jobs_lock:
            self.running = False
            self._wake()

    def _run_jobs(self) -> None:
        while self._jobs:
            with self._jobs_lock:
                body, future = self._jobs.popleft()
            try:
                result = self.bus.call(body)
            except StatusError as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def _end_waits(self) -> None:
        """The host ends: whoever waits for its init or a call hears DEVICE_REMOVED."""
        gone = StatusError(Status.DEVICE_REMOVED, "the miniport host has ended")
        with self._jobs_lock:
            self.running = False
            jobs, self._jobs = self._jobs, collections.deque()
        for _, future in jobs:
            future.set_exception(gone)
        if not self._init_done.is_set():
            self._init_error = gone
            self._init_done.set()

    def _run_dpcs(self) -> None:
        """Run the miniport's half of the requested groups' DPCs, then raise the interrupt
        on which the kernel runs its half of the same groups."""
        ran = self.groups.run()
        if not ran:
            return
        streams = self.streams
        if streams.retrying:
            # The miniport interrupted: a short write may go through now.
            for hs in streams:
                if not hs.capture and hs.pending:
                    hs.retry_at = None
                    streams.pump_render(hs)
        self.bus.raise_interrupt(list(ran), min(ran.values()))

    def _service_port(self, when: int) -> None:
        """The port's sink in a group's run: the miniport's `service()`; then the capture
        streams that joined no group (only the port's sink can reach them)."""
        if self._has_service:
            call_miniport_hook("service", self.miniport.service)
        for hs in self._lone_captures:
            self._read(hs, when)

    def _offer_again(self, hs: HostStream, when: int) -> None:
        """A render stream's sink in its group's run: its short write offered again."""
        if hs.pending:
            hs.retry_at = None
            self.streams.pump_render(hs)

    def _read(self, hs: HostStream, when: int) -> None:
        """A capture stream's part of a DPC (its sink in its group's run, or the port's
        sink's for a stream in no group): read until b"" in one of `hs.moving` (RUN; a
        DirectMusic stream: RUN or PAUSE)."""
        if not hs.reading:
            return
        if not hs.held:
            hs.isr_time = when
        self.streams.drain_capture(hs)

    def _shutdown(self) -> None:
        self.streams.close_all()
        with contextlib.suppress(Exception):
            self.miniport.close()
        self.bus.close()
        self.ctx.term()
        self.waiter.close()
        with self._jobs_lock:  # `stop` from another thread must not write to a reused fd
            fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._kernel_watch is not None:
            self._kernel_watch.close()


def _extend_path() -> None:
    """Where the user's own miniports (module:Class) are found: appended after the
    project's packages, which are imported already, so nothing there can shadow them."""
    for entry in os.environ.get(ENV_MINIPORT_PATH, "").split(os.pathsep):
        if entry and entry not in sys.path:
            sys.path.append(entry)


def load_miniport(spec: str, options_json: str) -> MiniportMidi | MiniportDMus:
    """The miniport `spec` names, constructed with the JSON `options`; StatusError
    (DEVICE_CONFIGURATION_ERROR) with the reason if it cannot be loaded or constructed."""
    try:
        options = json.loads(options_json)
        if not isinstance(options, dict):
            raise ValueError("options must be a JSON object")
        cls = registry.load(spec)
        return cls(**options)
    except StatusError as exc:
        raise StatusError(Status.DEVICE_CONFIGURATION_ERROR, exc.message) from exc
    except Exception as exc:  # the miniport's constructor may raise anything
        raise StatusError(
            Status.DEVICE_CONFIGURATION_ERROR, f"{spec}: {type(exc).__name__}: {exc}"
        ) from exc
