"""The host's end of the bus and ZeroMQ's edge rule (ipc.waiter): a send can take the
signal of a request already waiting, so every use of the socket must be told to the
waiter, or the request sits until the kernel gives up on it ("no reply to ...")."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import zmq

from ipc import protocol as p
from ipc.runtime import BUS_SOCKET, endpoint
from ipc.waiter import Waiter
from miniports.host.bus import KernelBus


def test_a_request_waiting_while_the_host_sends_one_event_still_wakes_it(
    tmp_path: Path,
) -> None:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(endpoint(tmp_path, BUS_SOCKET))
    bus = KernelBus(ctx, tmp_path, b"host-1", lambda: None)
    waiter = Waiter()
    waiter.add_socket(bus.rpc.socket, functools.partial(getattr, bus.rpc, "activity"))
    try:
        bus.post(p.Heartbeat())
        bus.flush()
        identity, _ = router.recv_multipart()  # the router knows the host now
        assert waiter.wait(0) == ([], [])
        router.send_multipart([identity, p.encode_event(p.Heartbeat())])
        time.sleep(0.2)  # in the host's pipe, its signal pending on ZMQ_FD
        bus.post(p.Heartbeat())
        bus.flush()  # one event, sent alone: the send takes that signal
        sockets, _ = waiter.wait(2000)
        assert sockets == [bus.rpc.socket]
    finally:
        waiter.close()
        bus.rpc.socket.close(linger=0)
        router.close(linger=0)
        ctx.term()
