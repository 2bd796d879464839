"""User mode: the kernel's ROUTER for clients, their sessions, and their requests.

A client says hello (its process is then watched, so a session ends when the
client dies without goodbye), lists filters, queries pin properties, opens
pins, steps their KSSTATE and closes them. This handler checks each request
and forwards it: the port driver owns its streams (intersection, NewStream,
the state walk, close). Requests are dispatched through one table; each gets
exactly one reply, sent later when the port must first ask the miniport.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import zmq

from ipc import protocol as p
from ipc.ks import DataFormat, KsState
from ipc.procwatch import ProcessWatch
from ipc.runtime import USER_SOCKET
from ipc.status import Status, StatusError
from kernel import activity
from kernel.fdserver import FdServer
from kernel.filters import Filter, FilterInstance
from kernel.loop import KernelLoop
from kernel.monitor import Monitors
from kernel.pins import Pin
from kernel.pnp import PnpManager
from kernel.properties import PENDING, KsPropertyRequests
from kernel.router import Router
from kernel.sessions import ClientSession, PinInstance

log = logging.getLogger("portcls.kernel")

USER_BUDGET: Final = 64
MIN_PIN_CAPACITY: Final = 1 << 14
MAX_PIN_CAPACITY: Final = 1 << 26
MAX_FILTER_INSTANCES: Final = 1024
"""Filter instances one client may hold open."""
MAX_SESSIONS: Final = 1024
MAX_SESSIONS_PER_PID: Final = 64
"""A client's sessions cost the kernel a process watch each (a descriptor)."""
MAX_PINS_PER_SESSION: Final = 128


UserHandler = Callable[[ClientSession, int, Any], Any]


class UserMode(KsPropertyRequests):
    """Receives clients' requests, keeps their sessions, sends replies and events."""

    def __init__(
        self, loop: KernelLoop, ctx: zmq.Context[Any], runtime_dir: Path, pnp: PnpManager
    ) -> None:
        self.loop = loop
        self.pnp = pnp
        self.sessions: dict[bytes, ClientSession] = {}
        self.fds = FdServer(loop, runtime_dir)
        self.monitors = Monitors(self.fds)
        self._handles = itertools.count(1)
        self._handlers: dict[type, UserHandler] = {
            p.ListFilters: lambda s, rid, body: [f.to_wire() for f in pnp.filters.values()],
            p.PinProperty: self._pin_property,
            p.ConnectionProperty: self._connection_property,
            p.CancelBuffer: self._cancel_buffer,
            p.EnableEvent: lambda s, rid, body: self._pin(s, body.handle).pin.events.enable(
                body.kind, body.cookie, body.time, body.interval),
            p.DisableEvent: lambda s, rid, body: self._pin(s, body.handle).pin.events.disable(
                body.cookie),
            p.OpenPin: self._open_pin,
            p.OpenFilter: lambda s, rid, body: {"instance": self._new_instance(
                s, self._filter(body.filter)).id},
            p.CloseFilter: self._close_filter,
            p.SetState: self._set_state,
            p.GetState: lambda s, rid, body: int(self._pin(s, body.handle).pin.state),
            p.ClosePin: self._close_pin,
            p.ClockTime: lambda s, rid, body: self._pin(s, body.handle).pin.clock.to_wire(),
            p.Stats: lambda s, rid, body: self._stats(s),
            p.DeviceRegistry: lambda s, rid, body: self._device_registry(body.device),
            p.Goodbye: self._goodbye,
            p.OpenMonitor: self._open_monitor,
            p.CloseMonitor: lambda s, rid, body: self.monitors.close(s.identity, body.handle),
        }
        self.router = Router(loop, ctx, runtime_dir, USER_SOCKET, "user", USER_BUDGET,
                             self._on_frame, interrupt=False)
        pnp.on_event = self.broadcast

    def send(self, identity: bytes, frame: bytes) -> None:
        self.router.send(identity, frame)

    def broadcast(self, body: Any) -> None:
        frame = p.encode_event(body)
        for identity in self.sessions:
            self.send(identity, frame)

    def _on_frame(self, identity: bytes, frame: bytes) -> None:
        try:
            msg = p.decode(frame)
        except p.ProtocolError as exc:
            self.loop.stats["user_malformed"] += 1
            if exc.rid:
                self.send(identity, p.encode_exception(exc.rid, exc))
            return
        if not isinstance(msg, p.Request):
            self.loop.stats["user_malformed"] += 1
            return
        session = self.sessions.get(identity)
        try:
            if isinstance(msg.body, p.Hello):
                result = self._hello(identity, msg.body)
            elif session is None:
                raise StatusError(Status.INVALID_DEVICE_REQUEST, "say hello first")
            else:
                handler = self._handlers.get(type(msg.body))
                if handler is None:
                    raise StatusError(Status.INVALID_DEVICE_REQUEST,
                                      f"{msg.body.OP} is not a client request")
                result = handler(session, msg.rid, msg.body)
        except StatusError as exc:
            self.loop.stats["user_rejected"] += 1
            self.send(identity, p.encode_exception(msg.rid, exc))
            return
        if result is not PENDING:
            self.send(identity, p.encode_ok(msg.rid, result))

    def _hello(self, identity: bytes, body: p.Hello) -> Any:
        if body.version != p.PROTOCOL_VERSION:
            raise StatusError(Status.NOT_SUPPORTED, f"protocol version {body.version}")
        if identity in self.sessions:
            raise StatusError(Status.OBJECT_NAME_COLLISION, "this connection said hello already")
        if len(self.sessions) >= MAX_SESSIONS or sum(
            s.pid == body.pid for s in self.sessions.values()
        ) >= MAX_SESSIONS_PER_PID:
            self.loop.stats["user_sessions_refused"] += 1
            raise StatusError(Status.INSUFFICIENT_RESOURCES, "too many sessions")
        session = ClientSession(identity, body.pid, body.name)
        with contextlib.suppress(OSError, OverflowError, ValueError):
            if body.pid > 0:
                session.watch = ProcessWatch(body.pid)
        self.sessions[identity] = session
        if session.watch is not None:
            self.loop.watch_process(
                session.watch, lambda: self.end_session(session, "client exited")
            )
        activity.client_hello(body.name, body.pid)
        return {"kernel_pid": os.getpid(), "version": p.PROTOCOL_VERSION}

    def _goodbye(self, session: ClientSession, rid: int, body: Any) -> Any:
        self.send(session.identity, p.encode_ok(rid))
        self.end_session(session, "goodbye")
        return PENDING

    def end_session(self, session: ClientSession, why: str) -> None:
        if self.sessions.get(session.identity) is not session:
            return
        del self.sessions[session.identity]
        self.loop.stop_watching(session.watch)
        session.watch = None
        for instance in tuple(session.pins.values()):
            self._close(session, instance, lambda: None)
        self.monitors.close_all(session.identity)
        activity.client_goodbye(session.name, session.pid, why)

    def _filter(self, fid: str) -> Filter:
        filter_ = self.pnp.filters.get(fid)
        if filter_ is None:
            raise StatusError(Status.OBJECT_NAME_NOT_FOUND, f"no filter {fid!r}")
        return filter_

    def _pin(self, session: ClientSession, handle: int) -> PinInstance:
        instance = session.pins.get(handle)
        if instance is None:
            raise StatusError(Status.INVALID_PARAMETER, f"no open pin {handle}")
        return instance

    def _new_instance(self, session: ClientSession, filter_: Filter) -> FilterInstance:
        if len(session.filters) >= MAX_FILTER_INSTANCES:
            raise StatusError(Status.INSUFFICIENT_RESOURCES,
                              f"{MAX_FILTER_INSTANCES} filter instances open")
        instance = FilterInstance(next(self._handles), filter_)
        session.filters[instance.id] = instance
        return instance

    def _filter_instance(self, session: ClientSession, filter_: Filter,
                         instance_id: int, create: bool = True) -> FilterInstance | None:
        """The filter instance `instance_id` of `filter_` (0: the session's default one,
        made on first use; a default left over from a removed device is replaced)."""
        if instance_id:
            instance = session.filters.get(instance_id)
            if instance is None:
                raise StatusError(Status.INVALID_PARAMETER,
                                  f"no open filter instance {instance_id}")
            if instance.factory is not filter_:
                raise StatusError(Status.INVALID_PARAMETER,
                                  f"filter instance {instance_id} is not of {filter_.fid}")
            return instance
        instance = session.default_filters.get(filter_.fid)
        if (instance is None or instance.factory is not filter_) and create:
            instance = self._new_instance(session, filter_)
            session.default_filters[filter_.fid] = instance
        return instance

    def _close_filter(self, session: ClientSession, rid: int, body: p.CloseFilter) -> Any:
        instance = session.filters.pop(body.instance, None)
        if instance is None:
            raise StatusError(Status.INVALID_PARAMETER, f"no open filter instance {body.instance}")
        if session.default_filters.get(instance.factory.fid) is instance:
            del session.default_filters[instance.factory.fid]
        on_it = [i for i in session.pins.values() if i.instance is instance]
        remaining = [len(on_it)]

        def closed() -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                self.send(session.identity, p.encode_ok(rid))

        if not on_it:
            return None
        for pin_instance in on_it:
            self._close(session, pin_instance, closed)
        return PENDING

    def _open_pin(self, session: ClientSession, rid: int, body: p.OpenPin) -> Any:
        if len(session.pins) >= MAX_PINS_PER_SESSION:
            raise StatusError(Status.INSUFFICIENT_RESOURCES,
                              f"a session holds at most {MAX_PINS_PER_SESSION} pins")
        filter_ = self._filter(body.filter)
        desc = filter_.pin(body.pin)
        instance = self._filter_instance(session, filter_, body.instance)
        assert instance is not None
        if not desc.streaming:
            raise StatusError(Status.INVALID_DEVICE_REQUEST, f"pin {body.pin} is a bridge pin")
        self._check_capacity(body.capacity)
        fmt = DataFormat.from_wire(body.format)
        filter_.take_instance(body.pin, instance)
        handle = next(self._handles)

        def opened(result: Pin | StatusError) -> None:
            if isinstance(result, StatusError):
                if session.pins.pop(handle, None) is not None:
                    filter_.give_back_instance(body.pin, instance)
                self.send(session.identity, p.encode_exception(rid, result))
                return
            activity.pin_opened(session.name, handle, filter_.fid, body.pin, result.capture,
                                result.format)
            pin = result
            pin.fd_token = self.fds.offer(session.pid, pin.take_client_fds(), lambda: pin.remove(
                StatusError(Status.IO_DEVICE_ERROR, "the pin's rings were not fetched in time")))
            self.send(session.identity, p.encode_ok(rid, {
                "handle": handle,
                "token": pin.fd_token,
                "capture": result.capture,
                "format": result.format.to_wire(),
            }))

        def to_client(body: Any) -> None:
            self.send(session.identity, p.encode_event(body))

        def pin_error(pin: Pin, error: StatusError) -> None:
            self.send(session.identity,
                      p.encode_event(p.PinError(pin.handle, error.status, error.message)))

        try:
            pin = filter_.port.open_stream(
                handle, filter_.fid, body.pin, desc, fmt, body.capacity, pin_error, opened
            )
        except BaseException:
            filter_.give_back_instance(body.pin, instance)
            raise
        pin.notify_client, pin.taps = to_client, filter_.taps[body.pin]
        # A removed pin stays the client's until it closes it (its I/O fails meanwhile).
        if not pin.released:
            session.pins[handle] = PinInstance(pin, filter_, instance)
        else:  # failed at once: `opened` has answered already
            filter_.give_back_instance(body.pin, instance)
        return PENDING

    @staticmethod
    def _check_capacity(capacity: int) -> None:
        if not MIN_PIN_CAPACITY <= capacity <= MAX_PIN_CAPACITY or capacity & (capacity - 1):
            raise StatusError(
                Status.INVALID_PARAMETER,
                f"capacity must be a power of two in [{MIN_PIN_CAPACITY}, {MAX_PIN_CAPACITY}]",
            )

    def _open_monitor(self, session: ClientSession, rid: int, body: p.OpenMonitor) -> Any:
        filter_ = self._filter(body.filter)
        if not filter_.pin(body.pin).streaming:
            raise StatusError(Status.INVALID_DEVICE_REQUEST, f"pin {body.pin} is a bridge pin")
        self._check_capacity(body.capacity)
        tap = self.monitors.open(session.identity, session.pid, next(self._handles), filter_.fid,
                                 body.pin, filter_.taps[body.pin], body.capacity)
        return {"handle": tap.handle, "token": tap.token}

    def _set_state(self, session: ClientSession, rid: int, body: p.SetState) -> Any:
        instance = self._pin(session, body.handle)
        pin = instance.pin
        if pin.removed is not None:
            raise pin.removed
        try:
            target = KsState(body.state)
        except ValueError:
            raise StatusError(Status.INVALID_PARAMETER, f"no KSSTATE {body.state}") from None

        def done(error: StatusError | None) -> None:
            if error is None:
                activity.pin_state(pin.handle, target)
            # Success answers the correlated stream time at the change.
            frame = (p.encode_ok(rid, pin.clock.to_wire()) if error is None
                     else p.encode_exception(rid, error))
            self.send(session.identity, frame)

        instance.filter.port.set_stream_state(pin, target, done)
        return PENDING

    def _close_pin(self, session: ClientSession, rid: int, body: p.ClosePin) -> Any:
        instance = self._pin(session, body.handle)
        self._close(session, instance, lambda: self.send(session.identity, p.encode_ok(rid)))
        return PENDING

    def _close(self, session: ClientSession, instance: PinInstance,
               done: Callable[[], None]) -> None:
        # Forgotten at once: the handle is gone for the client while the port walks
        # the miniport stream down.
        pin = instance.pin
        if pin.fd_token is not None:
            self.fds.withdraw(pin.fd_token)
        if session.pins.pop(pin.handle, None) is not None:
            instance.filter.give_back_instance(pin.pin_id, instance.instance)
            activity.pin_closed(pin.handle, dict(pin.stats))
        instance.filter.port.close_stream(pin, done)

    def _stats(self, session: ClientSession) -> Any:
        scheduler = self.loop.scheduler
        return {
            "kernel": self.loop.stats_snapshot(),
            "dpcs_run": scheduler.dpcs_run,
            "dpc_errors": scheduler.dpc_errors,
            "devices": self.pnp.statistics(),
            "pins": [instance.pin.info() for instance in session.pins.values()],
            "monitors": self.monitors.info(session.identity),
        }

    def close(self) -> None:
        for session in tuple(self.sessions.values()):
            self.end_session(session, "kernel shutdown")
        self.fds.close()
        self.router.close()
