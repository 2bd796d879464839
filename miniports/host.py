"""The miniport host: the process that runs one miniport for the kernel.

It registers with the kernel's bus, answers the port's calls (init, new_stream,
set_state, ...) by calling the miniport, and plays the port's part inside the
process: it feeds render streams' `write` from the kernel's ring (keeping what
a short write left, retrying after ~1 ms or on the next notify), and when the
miniport's ISR calls `notify` it drains every running capture stream's `read`
into the capture ring, then raises the interrupt on the bus.

One thread runs the loop; `notify` may come from any thread (an rtmidi
callback, an emulated card) and wakes the loop through a pipe.

Run as: python -m miniports.host --runtime DIR --device NAME --miniport SPEC
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from ipc import protocol as p
from ipc.channel import ChannelReader, ChannelWriter
from ipc.ks import DataFormat, DataRange, KsState
from ipc.procwatch import ProcessWatch
from ipc.ring import RingError
from ipc.rpc import RpcEndpoint
from ipc.runtime import BUS_SOCKET, endpoint, now_100ns
from ipc.status import BufferTooSmall, Status, StatusError
from ipc.waiter import Waiter
from miniports import registry
from miniports.base import (
    MiniportMidi,
    MiniportMidiStream,
    Port,
    PortServiceGroup,
    RegistryKey,
    ResourceList,
    ServiceSink,
)

RETRY_SECONDS = 0.001
READ_CHUNK = 4096
RENDER_BATCH_BYTES = 1 << 16
EXIT_MINIPORT_FAULT = p.EXIT_MINIPORT_FAULT


class MiniportFault(Exception):
    """The miniport broke its contract or raised out of a callback."""


@dataclass(eq=False)
class HostStream:
    sid: int
    pin: int
    capture: bool
    stream: MiniportMidiStream
    writer: ChannelWriter | None = None
    reader: ChannelReader | None = None
    state: KsState = KsState.STOP
    pending: bytes = b""
    retry_at: float | None = None
    held: bytes | None = None
    isr_time: int = 0
    waiting_space: bool = False


class _Group(PortServiceGroup):
    def __init__(self, host: MiniportHost, gid: int) -> None:
        self.host = host
        self.gid = gid

    def _member(self, sink: ServiceSink | PortServiceGroup) -> tuple[int | None, int | None]:
        if isinstance(sink, _Group):
            return sink.gid, None
        if isinstance(sink, ServiceSink):
            return None, self.host.sink_id(sink)
        raise StatusError(Status.INVALID_PARAMETER, "a member is a ServiceSink or a service group")

    def add_member(self, sink: ServiceSink | PortServiceGroup) -> None:
        self.host.post(p.GroupAddMember(self.gid, *self._member(sink)))

    def remove_member(self, sink: ServiceSink | PortServiceGroup) -> None:
        self.host.post(p.GroupRemoveMember(self.gid, *self._member(sink)))

    def request_service(self) -> None:
        self.host.post(p.GroupRequestService(self.gid))

    def support_delayed_service(self) -> None:
        self.host.post(p.GroupSupportDelayed(self.gid))

    def request_delayed_service(self, due_time: int) -> None:
        self.host.post(p.GroupRequestDelayed(self.gid, int(due_time)))

    def cancel_delayed_service(self) -> None:
        self.host.post(p.GroupCancelDelayed(self.gid))


class _RegistryKey(RegistryKey):
    def __init__(self, host: MiniportHost, key_type: int, path: str) -> None:
        self.host, self.key_type, self.path = host, key_type, path

    def _call(self, action: str, name: str = "", value: Any = None) -> Any:
        self.host.flush_events()
        return self.host.rpc.call(p.Registry(self.key_type, self.path, action, name, value))

    def query_value(self, name: str) -> Any:
        return self._call("query", name)

    def set_value(self, name: str, value: Any) -> None:
        self._call("set", name, value)

    def delete_value(self, name: str) -> None:
        self._call("delete", name)

    def enumerate_values(self) -> dict[str, Any]:
        return dict(self._call("enumerate"))

    def new_sub_key(self, name: str) -> RegistryKey:
        path = f"{self.path}\\{name}" if self.path else name
        self.host.rpc.call(p.Registry(self.key_type, path, "create", "", None))
        return _RegistryKey(self.host, self.key_type, path)

    def delete_key(self) -> None:
        self._call("delete_key")


class MiniportHost(Port):
    """Runs one miniport object; see the module docstring."""

    def __init__(
        self,
        runtime_dir: Path,
        device: str,
        miniport_name: str,
        options: dict[str, Any],
        heartbeat: float = 1.0,
    ) -> None:
        self.runtime_dir = runtime_dir
        self.device = device
        self.miniport_name = miniport_name
        cls = registry.load(miniport_name)
        self.miniport: MiniportMidi = cls(**options)
        self.heartbeat = heartbeat
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.rpc = RpcEndpoint(self.ctx, endpoint(runtime_dir, BUS_SOCKET), device.encode())
        self.waiter = Waiter()
        self.waiter.add_socket(self.rpc.socket, lambda: self.rpc.activity)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.waiter.watch(self._wake_r)
        self._thread = threading.get_ident()
        self._lock = threading.Lock()
        self._outbox: collections.deque[Any] = collections.deque()
        self._events: list[bytes] = []
        self._irq_groups: set[int] = set()
        self._irq_time: int | None = None
        self._gids = iter(range(1, 1 << 62))
        self._sinks: dict[int, ServiceSink] = {}
        self._sink_ids: dict[int, int] = {}
        self.streams: dict[int, HostStream] = {}
        self._fd_streams: dict[int, HostStream] = {}
        self._initialised = False
        self.running = True
        self._kernel_watch: ProcessWatch | None = None
        self._kernel_fd: int | None = None
        self._interrupts: ChannelWriter | None = None

    def post(self, body: Any) -> None:
        """Queue an event for the kernel from any thread; sent in call order, in one batch
        per callback (see `flush_events`)."""
        if threading.get_ident() == self._thread:
            self._events.append(p.encode_event(body))
            return
        with self._lock:
            self._outbox.append(body)
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"!")

    def flush_events(self) -> None:
        """Send what the miniport posted as one frame, before any reply or call."""
        if self._outbox:
            with self._lock:
                bodies = list(self._outbox)
                self._outbox.clear()
            self._events += [p.encode_event(b) for b in bodies]
        events = self._events
        if not events:
            return
        self._events = []
        if len(events) == 1:
            self.rpc.socket.send(events[0])
        else:
            self.rpc.send_event(p.Batch(events))

    def sink_id(self, sink: ServiceSink) -> int:
        key = id(sink)
        if key not in self._sink_ids:
            sid = next(self._gids)
            self._sink_ids[key] = sid
            self._sinks[sid] = sink
        return self._sink_ids[key]

    def notify(self, group: PortServiceGroup | None = None) -> None:
        gid = group.gid if isinstance(group, _Group) else -1
        with self._lock:
            self._irq_groups.add(gid)
            if self._irq_time is None:
                self._irq_time = now_100ns()
        if threading.get_ident() != self._thread:
            self._wake()

    def register_service_group(self, group: PortServiceGroup) -> None:
        if not isinstance(group, _Group):
            raise StatusError(Status.INVALID_PARAMETER, "not a group made by new_service_group")
        self.post(p.RegisterServiceGroup(group.gid))

    def new_service_group(self) -> PortServiceGroup:
        group = _Group(self, next(self._gids))
        self.post(p.GroupNew(group.gid))
        return group

    def get_device_property(self, prop: int, length: int) -> bytes:
        self.flush_events()
        value = self.rpc.call(p.DeviceProperty(int(prop), int(length)))
        if not isinstance(value, bytes):
            raise StatusError(Status.UNSUCCESSFUL, "kernel sent a non-bytes property")
        if length < len(value):
            raise BufferTooSmall(len(value))
        return value

    def new_registry_key(self, key_type: int, path: str = "") -> RegistryKey:
        self.flush_events()
        self.rpc.call(p.Registry(int(key_type), path, "create", "", None))
        return _RegistryKey(self, int(key_type), path)

    def run(self) -> int:
        reply = self.rpc.call(
            p.Register(
                self.device,
                os.getpid(),
                self.miniport_name,
                type(self.miniport).service is not MiniportMidi.service,
                type(self.miniport).data_range_intersection
                is not MiniportMidi.data_range_intersection,
            ),
            timeout=10.0,
        )
        self.heartbeat = float(reply.get("heartbeat", self.heartbeat))
        channel = reply.get("interrupt_channel")
        if isinstance(channel, str) and Path(channel).parent == self.runtime_dir:
            # Without it (an older kernel) interrupts go as bus messages.
            with contextlib.suppress(OSError, RingError):
                self._interrupts = ChannelWriter.open(channel)
        # The kernel's death ends this process at once (a readable watch), not at a timeout.
        with contextlib.suppress(OSError, KeyError, TypeError, ValueError):
            self._kernel_watch = ProcessWatch(int(reply["kernel_pid"]))
            self._kernel_fd = self._kernel_watch.fileno()
            self.waiter.watch(self._kernel_fd)
        next_beat = time.monotonic() + self.heartbeat
        try:
            while self.running:
                now = time.monotonic()
                deadline = next_beat
                for hs in self.streams.values():
                    if hs.retry_at is not None:
                        deadline = min(deadline, hs.retry_at)
                timeout = max(0, int((deadline - now) * 1000 + 0.999))
                if self._outbox or self._events or self._irq_groups or self.rpc.backlog:
                    timeout = 0
                sockets, fds = self.waiter.wait(timeout)
                if sockets:
                    self.rpc.receive_pending()
                for fd in fds:
                    self._on_ready(fd)
                self.flush_events()
                self._handle_backlog()
                now = time.monotonic()
                if now >= next_beat:
                    self.post(p.Heartbeat())
                    next_beat = now + self.heartbeat
                    # Rescue a wake-up lost to store reordering (Python cannot fence).
                    for hs in list(self.streams.values()):
                        self._pump_render(hs)
                for hs in list(self.streams.values()):
                    if hs.retry_at is not None and now >= hs.retry_at:
                        hs.retry_at = None
                        self._pump_render(hs)
                self._service_interrupts()
                self.flush_events()
        except MiniportFault:
            traceback.print_exc()
            return EXIT_MINIPORT_FAULT
        finally:
            self._shutdown()
        return 0

    def _on_ready(self, sock: int) -> None:
        if sock == self._wake_r:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        elif sock == self._kernel_fd:
            self.running = False
        else:
            hs = self._fd_streams.get(sock)
            if hs is None:
                return
            if hs.capture:
                assert hs.writer is not None
                hs.waiting_space = False
                self.waiter.unwatch(sock)
                del self._fd_streams[sock]
                hs.writer.end_wait_for_space()
                if self._drain_capture(hs):
                    self._send_interrupt([-1])
            else:
                assert hs.reader is not None
                hs.reader.end_sleep()
                self._pump_render(hs)

    def _handle_backlog(self) -> None:
        while self.rpc.backlog and self.running:
            frame = self.rpc.backlog.popleft()
            if isinstance(frame, p.Request):
                try:
                    result = self._request(frame.body)
                except StatusError as exc:
                    self.flush_events()
                    self.rpc.reply_exception(frame.rid, exc)
                except Exception as exc:
                    self.flush_events()
                    self.rpc.reply_exception(frame.rid, exc)
                    raise MiniportFault(f"{frame.op} raised") from exc
                else:
                    self.flush_events()
                    self.rpc.reply(frame.rid, result)
            elif isinstance(frame, p.Event):
                self._event(frame.body)

    def _event(self, body: Any) -> None:
        try:
            if isinstance(body, p.Service):
                self.miniport.service()
            elif isinstance(body, p.SinkService):
                sink = self._sinks.get(body.sink)
                if sink is not None:
                    sink.request_service()
        except Exception as exc:
            raise MiniportFault(f"{body.OP} raised") from exc

    def _stream(self, sid: int) -> HostStream:
        hs = self.streams.get(sid)
        if hs is None:
            raise StatusError(Status.INVALID_PARAMETER, f"no stream {sid}")
        return hs

    def _request(self, body: Any) -> Any:
        if isinstance(body, p.Init):
            if self._initialised:
                return {"group": None, "again": True}
            group = self.miniport.init(ResourceList.from_wire(body.resources), self)
            self._initialised = True
            return {"group": group.gid if isinstance(group, _Group) else None}
        if isinstance(body, p.GetDescription):
            desc = self.miniport.get_description()
            desc.validate()
            return desc.to_wire()
        if isinstance(body, p.DataRangeIntersection):
            fmt = self.miniport.data_range_intersection(
                body.pin,
                DataFormat.from_wire(body.client_format),
                DataRange.from_wire(body.miniport_range),
            )
            return fmt.to_wire()
        if isinstance(body, p.NewStream):
            return self._new_stream(body)
        if isinstance(body, p.StreamSetState):
            hs = self._stream(body.stream)
            state = KsState(body.state)
            hs.stream.set_state(state)
            hs.state = state
            if state == KsState.STOP:
                hs.pending = b""
                hs.held = None
                hs.retry_at = None
                if hs.reader is not None:
                    hs.reader.discard_all()
            elif state == KsState.RUN and not hs.capture:
                self._pump_render(hs)
            return None
        if isinstance(body, p.StreamSetFormat):
            self._stream(body.stream).stream.set_format(DataFormat.from_wire(body.format))
            return None
        if isinstance(body, p.CloseStream):
            if body.stream in self.streams:
                self._close_stream(self.streams.pop(body.stream))
            return None
        if isinstance(body, p.Unload):
            self.running = False
            return None
        raise StatusError(Status.INVALID_DEVICE_REQUEST, f"a miniport host does not do {body.OP}")

    def _new_stream(self, body: p.NewStream) -> Any:
        if body.stream in self.streams:
            raise StatusError(Status.OBJECT_NAME_COLLISION, f"stream {body.stream} exists")
        channel = Path(body.channel)
        if channel.parent != self.runtime_dir:
            raise StatusError(Status.INVALID_PARAMETER, "channel outside the runtime directory")
        stream, group = self.miniport.new_stream(
            body.pin, body.capture, DataFormat.from_wire(body.format)
        )
        hs = HostStream(body.stream, body.pin, body.capture, stream)
        try:
            if body.capture:
                hs.writer = ChannelWriter.open(channel)
            else:
                hs.reader = ChannelReader.open(channel)
                self._fd_streams[hs.reader.data_fileno()] = hs
                self.waiter.watch(hs.reader.data_fileno())
        except Exception:
            with contextlib.suppress(Exception):
                stream.close()
            raise
        self.streams[body.stream] = hs
        return {"group": group.gid if isinstance(group, _Group) else None}

    def _close_stream(self, hs: HostStream) -> None:
        for channel, fd in (
            (hs.reader, hs.reader.data_fileno() if hs.reader else None),
            (hs.writer, hs.writer.space_fileno() if hs.writer else None),
        ):
            if fd is not None and fd in self._fd_streams:
                self.waiter.unwatch(fd)
                del self._fd_streams[fd]
            if channel is not None:
                channel.close()
        try:
            hs.stream.close()
        except Exception as exc:
            raise MiniportFault("close raised") from exc

    def _pump_render(self, hs: HostStream) -> None:
        """Offer rendered bytes to the stream's write until it is short or the ring is empty."""
        reader = hs.reader
        if reader is None or hs.state != KsState.RUN:
            return
        while True:
            data = hs.pending
            if not data:
                records = reader.receive_many(max_bytes=RENDER_BATCH_BYTES)
                if not records:
                    if reader.prepare_to_sleep():
                        return
                    continue
                data = b"".join(r.data for r in records)
                if not data:
                    continue
            try:
                taken = hs.stream.write(data)
            except StatusError as exc:
                hs.pending = b""
                reader.discard_all()
                self.post(
                    p.StreamError(hs.sid, exc.status, f"{exc.message} ({len(data)} bytes lost)")
                )
                return
            except Exception as exc:
                raise MiniportFault("write raised") from exc
            if type(taken) is not int or not 0 <= taken <= len(data):
                raise MiniportFault(f"write returned {taken!r} for {len(data)} bytes")
            if taken < len(data):
                # Only a short write copies: the rest waits for the retry.
                hs.pending = data[taken:]
                hs.retry_at = time.monotonic() + RETRY_SECONDS
                return
            hs.pending = b""
            if reader.prepare_to_sleep():
                return

    def _drain_capture(self, hs: HostStream) -> bool:
        """Read the stream until it says "nothing now" or the ring is full; True if data moved."""
        writer = hs.writer
        if writer is None or hs.waiting_space:
            return False
        moved = False
        chunk = min(READ_CHUNK, writer.ring.max_payload)
        while True:
            data = hs.held
            hs.held = None
            if data is None:
                try:
                    data = hs.stream.read(chunk)
                except StatusError as exc:
                    self.post(p.StreamError(hs.sid, exc.status, exc.message))
                    return moved
                except Exception as exc:
                    raise MiniportFault("read raised") from exc
                if type(data) not in (bytes, bytearray) or len(data) > chunk:
                    raise MiniportFault(f"read returned {type(data).__name__} of bad size")
                if not data:
                    return moved
            if not writer.send(bytes(data), hs.isr_time, 0):
                hs.held = bytes(data)
                if writer.prepare_to_wait_for_space(len(data)):
                    hs.waiting_space = True
                    self._fd_streams[writer.space_fileno()] = hs
                    self.waiter.watch(writer.space_fileno())
                    return moved
                continue
            moved = True

    def _service_interrupts(self) -> None:
        if not self._irq_groups:
            return
        with self._lock:
            groups = sorted(self._irq_groups)
            isr_time = self._irq_time or now_100ns()
            self._irq_groups.clear()
            self._irq_time = None
        for hs in self.streams.values():
            if hs.capture and hs.state == KsState.RUN:
                if not hs.held:
                    hs.isr_time = isr_time
                self._drain_capture(hs)
            elif not hs.capture and hs.pending:
                hs.retry_at = None
                self._pump_render(hs)
        self._send_interrupt(groups, isr_time)

    def _send_interrupt(self, groups: list[int], isr_time: int = 0) -> None:
        # Events the miniport posted first (a new group, a stream error) travel on the
        # bus; the interrupt follows them there so that the kernel sees them in order.
        channel = self._interrupts
        if (
            channel is not None
            and not self._events
            and not self._outbox
            and channel.send(p.encode_interrupt(groups), isr_time)
        ):
            return
        self.post(p.Interrupt(groups))

    def _shutdown(self) -> None:
        for hs in list(self.streams.values()):
            with contextlib.suppress(Exception):
                self._close_stream(hs)
        self.streams.clear()
        with contextlib.suppress(Exception):
            self.miniport.close()
        # The Unload reply must reach the kernel before the socket goes (libzmq#4660).
        self.rpc.socket.close(linger=1000)
        self.ctx.term()
        self.waiter.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._kernel_watch is not None:
            self._kernel_watch.close()
        if self._interrupts is not None:
            self._interrupts.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miniports.host")
    parser.add_argument("--runtime", required=True, type=Path)
    parser.add_argument("--device", required=True)
    parser.add_argument("--miniport", required=True)
    parser.add_argument("--options", default="{}", help="JSON object of constructor options")
    args = parser.parse_args(argv)
    try:
        options = json.loads(args.options)
        if not isinstance(options, dict):
            raise ValueError("options must be a JSON object")
        host = MiniportHost(args.runtime, args.device, args.miniport, options)
    except (StatusError, ValueError, TypeError) as exc:
        print(f"miniport host {args.device}: {exc}", file=sys.stderr)
        return 2
    return host.run()


if __name__ == "__main__":
    sys.exit(main())
