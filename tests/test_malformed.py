"""Malformed messages on both kernel sockets get an error reply or are dropped and counted."""

from __future__ import annotations

import msgpack
import pytest
import zmq

import ksclient
from ipc import protocol as p
from ipc.runtime import BUS_SOCKET, USER_SOCKET, endpoint
from ipc.status import Status

GARBAGE = """
[[device]]
name = "garbage"
miniport = "tests.probe_miniports:GarbageOnWrite"

[[device]]
name = "loopback"
miniport = "loopback"
"""


@pytest.fixture
def raw_socket(loopback_kernel):
    ctx = zmq.Context()
    sockets = []

    def make(name: str, identity: bytes | None = None) -> zmq.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if identity:
            sock.setsockopt(zmq.IDENTITY, identity)
        sock.connect(endpoint(loopback_kernel.runtime, name))
        sockets.append(sock)
        return sock

    yield make
    for sock in sockets:
        sock.close()
    ctx.term()


def _reply(sock: zmq.Socket) -> p.Reply:
    assert sock.poll(5000), "no reply"
    reply = p.decode(sock.recv())
    assert isinstance(reply, p.Reply)
    return reply


def test_user_socket_garbage(loopback_kernel, raw_socket) -> None:
    sock = raw_socket(USER_SOCKET)
    sock.send(p.encode_request(1, p.ListFilters()))
    reply = _reply(sock)
    assert (reply.ok, reply.status) == (False, Status.INVALID_DEVICE_REQUEST)  # hello first
    sock.send(p.encode_request(2, p.Hello(0, "raw")))
    assert _reply(sock).ok
    bad_requests = [
        msgpack.packb([0, 3, "open_pin", ["loopback", "zero", {}, 65536]]),
        msgpack.packb([0, 4, "open_pin", ["loopback", 0]]),
        msgpack.packb([0, 5, "no_such_op", []]),
        msgpack.packb([0, 6, "register", ["loopback", 1, "x", False, False, 1]]),
        msgpack.packb([0, 7, "set_state", [12345, 3]]),
        msgpack.packb([0, 8, "open_pin", ["loopback", 0, {"major": 5}, 65536]]),
        msgpack.packb([0, 9, "open_pin", ["loopback", 0, {}, 3]]),
    ]
    for frame in bad_requests:
        sock.send(frame)
        reply = _reply(sock)
        assert not reply.ok and reply.status in (
            Status.INVALID_PARAMETER, Status.INVALID_DEVICE_REQUEST
        ), reply
    for junk in [b"", b"\xc1", b"\x93\x00", msgpack.packb({"a": 1}), b"\xff" * 5000]:
        sock.send(junk)
    sock.send_multipart([b"two", b"frames"])
    sock.send(p.encode_request(10, p.ListFilters()))
    reply = _reply(sock)
    assert reply.ok and reply.result[0]["id"] == "loopback"
    with loopback_kernel.connect() as client:
        stats = client.stats()["kernel"]
        assert stats["user_malformed"] >= 9  # undecodable frames (3 answered, 6 dropped)
        assert stats["user_rejected"] >= 5  # well-formed requests refused


def test_bus_socket_garbage_from_strangers(loopback_kernel, raw_socket) -> None:
    sock = raw_socket(BUS_SOCKET, b"intruder")
    sock.send(p.encode_request(1, p.Register("intruder", 1, "loopback", False, False)))
    assert _reply(sock).status == Status.INVALID_DEVICE_REQUEST
    sock.send(p.encode_request(2, p.Register("loopback", 1, "loopback", False, False)))
    assert _reply(sock).status == Status.INVALID_DEVICE_REQUEST  # identity is not the device
    sock.send(p.encode_event(p.Interrupt([1])))
    sock.send(b"\xc1garbage")
    sock.send(p.encode_request(3, p.Init({})))
    assert _reply(sock).status == Status.INVALID_DEVICE_REQUEST
    with loopback_kernel.connect() as client:
        stats = client.stats()["kernel"]
        assert stats["bus_malformed"] >= 1 and stats["bus_unknown_sender"] >= 2
        with client.open_render("loopback") as out, client.open_capture("loopback") as inp:
            inp.run()
            out.run()
            out.send(b"\x90\x3c\x40")
            assert inp.receive(timeout=5).data == b"\x90\x3c\x40"


def test_garbage_from_a_registered_miniport_is_counted(start_kernel) -> None:
    kernel = start_kernel(GARBAGE)
    with kernel.connect() as client:
        client.wait_for_filter("garbage")
        with client.open_render("garbage") as out:
            out.run()
            out.send_raw(b"\x01")
            deadline = ksclient.now() + 50_000_000
            while ksclient.now() < deadline:
                malformed = client.stats()["devices"]["garbage"]["malformed"]
                if malformed >= 4:
                    break
            assert malformed >= 4
        # The kernel and the other device carry on.
        with client.open_render("loopback") as out, client.open_capture("loopback") as inp:
            inp.run()
            out.run()
            out.send(b"\x90\x3c\x40")
            assert inp.receive(timeout=5).data == b"\x90\x3c\x40"
        assert client.stats()["devices"]["garbage"]["state"] == "running"
