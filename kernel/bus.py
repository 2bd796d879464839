"""The bus: the kernel's ROUTER for miniport hosts.

Every frame is decoded by the one validating decoder; a `Register` goes to
the PnP manager's handshake; anything else must come from a registered
connection and is dispatched through one table by record type. Replies to
the port's calls go back to the connection that made them. A refused or
malformed message is answered with an error status (if it was a request),
counted against the miniport, and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import zmq

from ipc import protocol as p
from ipc.runtime import BUS_SOCKET
from ipc.status import Status, StatusError
from kernel.connection import MiniportConnection
from kernel.loop import KernelLoop
from kernel.pnp import PnpManager
from kernel.port import PortMidi
from kernel.router import Router

log = logging.getLogger("portcls.kernel")

BUS_BUDGET: Final = 512

BusHandler = Callable[[MiniportConnection, Any], Any]


class Bus:
    """Receives from and sends to miniport hosts; dispatches by record type."""

    def __init__(
        self, loop: KernelLoop, ctx: zmq.Context[Any], runtime_dir: Path, pnp: PnpManager
    ) -> None:
        self.loop = loop
        self.pnp = pnp
        self.router = Router(loop, ctx, runtime_dir, BUS_SOCKET, "bus", BUS_BUDGET,
                             self._on_frame, interrupt=True)
        self._handlers: dict[type, BusHandler] = {
            p.Batch: self._batch,
            p.Interrupt: lambda conn, body: conn.interrupt(body.groups),
            p.Heartbeat: lambda conn, body: None,
            p.GroupNew: lambda conn, body: conn.new_group(body.group),
            p.GroupAddMember: lambda conn, body: conn.group(body.group).add_member(
                conn.member(body.member_group, body.sink)),
            p.GroupRemoveMember: lambda conn, body: conn.group(body.group).remove_member(
                conn.member(body.member_group, body.sink)),
            p.GroupRelease: lambda conn, body: conn.release_group(body.group),
            p.RegisterServiceGroup: self._register_service_group,
            p.StreamError: self._stream_error,
            p.DeviceProperty: self._device_property,
            p.Registry: self._registry,
            p.RegisterSubdevice: lambda conn, body: pnp.register_subdevice(conn, body.name),
            p.RegisterPhysicalConnection: pnp.register_physical_connection,
        }

    def send(self, identity: bytes, frame: bytes) -> None:
        self.router.send(identity, frame)

    def _on_frame(self, identity: bytes, frame: bytes) -> None:
        pnp = self.pnp
        conn = pnp.connection(identity)
        try:
            msg = p.decode(frame)
        except p.ProtocolError as exc:
            self.loop.stats["bus_malformed"] += 1
            if conn is not None:
                conn.count_malformed()
            if exc.rid:
                self.send(identity, p.encode_exception(exc.rid, exc))
            return
        if isinstance(msg, p.Request) and isinstance(msg.body, p.Register):
            self._register(pnp, identity, msg.rid, msg.body)
            return
        if isinstance(msg, p.Request) and isinstance(msg.body, (p.LoadFailed, p.DeviceStarted)):
            # The device's process itself, under its launch identity: no connection.
            try:
                if isinstance(msg.body, p.LoadFailed):
                    pnp.load_failed(identity, msg.body)
                else:
                    pnp.device_started(identity, msg.body)
            except StatusError as exc:
                self.loop.stats["bus_rejected"] += 1
                self.send(identity, p.encode_exception(msg.rid, exc))
                return
            self.send(identity, p.encode_ok(msg.rid))
            return
        if conn is None:
            self.loop.stats["bus_unknown_sender"] += 1
            if isinstance(msg, p.Request):
                self.send(identity, p.encode_error(
                    msg.rid, Status.INVALID_DEVICE_REQUEST, "register first"))
            return
        conn.last_seen = self.loop.clock_seconds()
        conn.peer_settled()  # it has opened its interrupt channel, or never will
        if isinstance(msg, p.Reply):
            conn.on_reply(msg)
            return
        try:
            result = self.dispatch(conn, msg.body)
        except StatusError as exc:
            self.loop.stats["bus_rejected"] += 1
            conn.count_malformed()
            if isinstance(msg, p.Request):
                self.send(identity, p.encode_exception(msg.rid, exc))
            return
        if isinstance(msg, p.Request):
            self.send(identity, p.encode_ok(msg.rid, result))

    def _register(self, pnp: PnpManager, identity: bytes, rid: int, reg: p.Register) -> None:
        try:
            conn, reply = pnp.accept(identity, reg)
        except StatusError as exc:
            self.loop.stats["bus_rejected"] += 1
            self.send(identity, p.encode_exception(rid, exc))
            return
        self.send(identity, p.encode_ok(rid, reply))
        pnp.bind(conn)

    def dispatch(self, conn: MiniportConnection, body: Any) -> Any:
        handler = self._handlers.get(type(body))
        if handler is None:
            raise StatusError(Status.INVALID_DEVICE_REQUEST, f"{body.OP} is not a bus message")
        return handler(conn, body)

    def _batch(self, conn: MiniportConnection, batch: p.Batch) -> None:
        for frame in batch.events:
            if conn.closed:
                return
            try:
                msg = p.decode(frame)
                if not isinstance(msg, p.Event) or isinstance(msg.body, p.Batch):
                    raise StatusError(Status.INVALID_PARAMETER, "a batch holds plain events")
                self.dispatch(conn, msg.body)
            except StatusError:
                self.loop.stats["bus_rejected"] += 1
                conn.count_malformed()

    def _port(self, conn: MiniportConnection, initialised: bool = False) -> PortMidi:
        port = self.pnp.port_of(conn)
        if initialised and (port is None or not port.init_started):
            raise StatusError(Status.UNSUCCESSFUL, "the port is not initialised")
        if port is None:
            raise StatusError(Status.INVALID_DEVICE_STATE, "no port yet")
        return port

    def _register_service_group(self, conn: MiniportConnection, body: Any) -> None:
        self._port(conn).register_service_group(conn.group(body.group))

    def _stream_error(self, conn: MiniportConnection, body: Any) -> None:
        port = self.pnp.port_of(conn)
        pin = port.streams.get(body.stream) if port is not None else None
        if pin is None:
            raise StatusError(Status.INVALID_PARAMETER, f"no stream {body.stream}")
        pin.stats["device_errors"] += 1
        pin.on_error(pin, StatusError(body.status, body.message))

    def _device_property(self, conn: MiniportConnection, body: Any) -> Any:
        self._port(conn, initialised=True)
        return self.pnp.devices[conn.device].store.get_property(body.property)

    def _registry(self, conn: MiniportConnection, body: Any) -> Any:
        self._port(conn, initialised=True)
        store = self.pnp.devices[conn.device].store
        return store.registry(body.key_type, body.path, body.action, body.name, body.value)

    def close(self) -> None:
        self.router.close()
