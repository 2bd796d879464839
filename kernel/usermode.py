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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import zmq

from ipc import protocol as p
from ipc.ks import DataFormat, KsState
from ipc.procwatch import ProcessWatch
from ipc.runtime import USER_SOCKET, endpoint
from ipc.status import Status, StatusError
from kernel.filters import Filter
from kernel.loop import KernelLoop
from kernel.pins import Pin
from kernel.pnp import PnpManager

log = logging.getLogger("portcls.kernel")

SEND_HWM: Final = 1000
USER_BUDGET: Final = 64
MIN_PIN_CAPACITY: Final = 1 << 14
MAX_PIN_CAPACITY: Final = 1 << 26
MAX_SESSIONS: Final = 1024
MAX_SESSIONS_PER_PID: Final = 64
"""A client's sessions cost the kernel a process watch each (a descriptor)."""
MAX_PINS_PER_SESSION: Final = 128
PENDING: Final = object()
"""A handler's result meaning "the reply will be sent later"."""


@dataclass(eq=False)
class PinInstance:
    """A pin a client opened, and the filter it was opened on."""

    pin: Pin
    filter: Filter


@dataclass(eq=False)
class ClientSession:
    identity: bytes
    pid: int
    name: str
    watch: ProcessWatch | None = None
    pins: dict[int, PinInstance] = field(default_factory=dict)


UserHandler = Callable[[ClientSession, int, Any], Any]


class UserMode:
    """Receives clients' requests, keeps their sessions, sends replies and events."""

    def __init__(
        self, loop: KernelLoop, ctx: zmq.Context[Any], runtime_dir: Path, pnp: PnpManager
    ) -> None:
        self.loop = loop
        self.pnp = pnp
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # A peer that never reads its replies costs at most SEND_HWM frames; more are
        # dropped and counted (ROUTER_MANDATORY makes the drop visible as EAGAIN).
        self.sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_FRAME)
        self.sock.bind(endpoint(runtime_dir, USER_SOCKET))
        (runtime_dir / USER_SOCKET).chmod(0o600)
        self.sessions: dict[bytes, ClientSession] = {}
        self._handles = itertools.count(1)
        self._handlers: dict[type, UserHandler] = {
            p.ListFilters: lambda s, rid, body: [f.to_wire() for f in pnp.filters.values()],
            p.PinProperty: lambda s, rid, body: self._filter(body.filter).pin_property(
                body.pin, body.property),
            p.OpenPin: self._open_pin,
            p.SetState: self._set_state,
            p.GetState: lambda s, rid, body: int(self._pin(s, body.handle).pin.state),
            p.ClosePin: self._close_pin,
            p.Stats: lambda s, rid, body: self._stats(s),
            p.Goodbye: self._goodbye,
        }
        pnp.on_event = self.broadcast
        loop.add_socket(self.sock, self.drain, interrupt=False)

    def send(self, identity: bytes, frame: bytes) -> None:
        try:
            self.sock.send_multipart([identity, frame], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.loop.stats["user_send_dropped"] += 1
        except zmq.ZMQError:  # the peer is gone (EHOSTUNREACH)
            self.loop.stats["user_send_unroutable"] += 1
        self.loop.waiter.touched(self.sock)

    def broadcast(self, body: Any) -> None:
        frame = p.encode_event(body)
        for identity in self.sessions:
            self.send(identity, frame)

    def drain(self) -> None:
        for _ in range(USER_BUDGET):
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            if len(parts) != 2:
                self.loop.stats["user_malformed"] += 1
                continue
            try:
                self._on_frame(parts[0], parts[1])
            except Exception:  # a bug must cost one frame, not the kernel or the drain
                self.loop.stats["user_handler_errors"] += 1
                log.exception("user frame handler raised")
        self.loop.waiter.touched(self.sock)  # the budget ran out: more may wait

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
        log.debug("session %s ended: %s", session.name, why)

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

    def _open_pin(self, session: ClientSession, rid: int, body: p.OpenPin) -> Any:
        if len(session.pins) >= MAX_PINS_PER_SESSION:
            raise StatusError(Status.INSUFFICIENT_RESOURCES,
                              f"a session holds at most {MAX_PINS_PER_SESSION} pins")
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
        filter_.take_instance(body.pin)
        handle = next(self._handles)

        def opened(result: Pin | StatusError) -> None:
            if isinstance(result, StatusError):
                if session.pins.pop(handle, None) is not None:
                    filter_.give_back_instance(body.pin)
                self.send(session.identity, p.encode_exception(rid, result))
                return
            self.send(session.identity, p.encode_ok(rid, {
                "handle": handle,
                "channel": str(result.client_base),
                "capture": result.capture,
                "format": result.format.to_wire(),
            }))

        def pin_error(pin: Pin, error: StatusError) -> None:
            self.send(session.identity,
                      p.encode_event(p.PinError(pin.handle, error.status, error.message)))

        try:
            pin = filter_.port.open_stream(
                handle, filter_.fid, body.pin, desc, fmt, body.capacity, pin_error, opened
            )
        except BaseException:
            filter_.give_back_instance(body.pin)
            raise
        # A removed pin stays the client's until it closes it (its I/O fails meanwhile).
        if not pin.released:
            session.pins[handle] = PinInstance(pin, filter_)
        else:  # failed at once: `opened` has answered already
            filter_.give_back_instance(body.pin)
        return PENDING

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
            frame = p.encode_ok(rid) if error is None else p.encode_exception(rid, error)
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
        if session.pins.pop(pin.handle, None) is not None:
            instance.filter.give_back_instance(pin.pin_id)
        instance.filter.port.close_stream(pin, done)

    def _stats(self, session: ClientSession) -> Any:
        scheduler = self.loop.scheduler
        return {
            "kernel": dict(self.loop.stats),
            "dpcs_run": scheduler.dpcs_run,
            "dpc_errors": scheduler.dpc_errors,
            "devices": self.pnp.statistics(),
            "pins": [instance.pin.info() for instance in session.pins.values()],
        }

    def close(self) -> None:
        for session in tuple(self.sessions.values()):
            self.end_session(session, "kernel shutdown")
        self.sock.close(linger=0)
