"""A client's pin rings are sealed memfds handed over fds.sock: nobody can shrink a ring
the kernel maps, and no other process can obtain them."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time

import pytest

from ipc import protocol as p
from ipc.channel import ChannelReader, ChannelWriter, create_sealed_channel
from ipc.fdpass import FD_SOCKET, fetch_fds
from ipc.ks import DataFormat
from ipc.ring import RingCorrupt
from ipc.status import Status

REFUSE_SCRIPT = """
import socket, sys
with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
    s.settimeout(5)
    s.connect(sys.argv[1])
    s.sendall(bytes.fromhex(sys.argv[2]))
    msg, fds, _, _ = socket.recv_fds(s, 1, 3)
print(len(msg), len(fds))
"""


def _kernel_stat(kernel, key: str) -> int:
    with kernel.connect() as c:
        return int(c.stats()["kernel"].get(key, 0))


def test_a_sealed_ring_cannot_be_resized_by_its_peer() -> None:
    owner, fds = create_sealed_channel(1 << 14, owner_writes=True)
    peer = ChannelReader.from_fds(fds)
    try:
        for size in (0, 100, 1 << 20):
            with pytest.raises(OSError) as caught:
                os.ftruncate(peer.ring.fileno(), size)
            assert caught.value.errno == errno.EPERM
        assert owner.send(b"\x90\x3c\x40")
        assert [r.data for r in peer.receive_many()] == [b"\x90\x3c\x40"]
    finally:
        owner.close()
        peer.close()


def test_an_unsealed_descriptor_is_refused() -> None:
    fd = os.memfd_create("unsealed", os.MFD_CLOEXEC)
    os.ftruncate(fd, 1 << 16)
    r, w = os.pipe()
    with pytest.raises(RingCorrupt, match="not sealed"):
        ChannelWriter.from_fds([fd, w, r])


def test_a_client_truncating_its_ring_gets_eperm_and_the_kernel_lives(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        c.wait_for_filter("loopback")
        out, inp = c.open_render("loopback"), c.open_capture("loopback")
        mon = c.open_monitor("loopback")
        inp.run()
        out.run()
        for pin in (out, inp, mon):
            with pytest.raises(OSError) as caught:
                os.ftruncate(pin._channel.ring.fileno(), 0)
            assert caught.value.errno == errno.EPERM
        out._channel._data_bell.ring()  # wake the kernel as a send would
        out.send(b"\x90\x3c\x40")
        assert inp.receive(timeout=5).data == b"\x90\x3c\x40"
        assert mon.receive(timeout=5).data == b"\x90\x3c\x40"
        assert loopback_kernel.alive()
        # No ring or doorbell of a client pin or monitor is a file anyone could open.
        assert not list(loopback_kernel.runtime.glob("*client*"))
        assert not list(loopback_kernel.runtime.glob("mon*"))
        mon.close()


def test_the_rings_the_kernel_maps_cannot_be_shrunk_by_anyone(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        c.wait_for_filter("loopback")
        out = c.open_render("loopback")
        out.run()
        kpid = loopback_kernel.proc.pid
        memfds = [
            fd for fd in os.listdir(f"/proc/{kpid}/fd")
            if os.readlink(f"/proc/{kpid}/fd/{fd}").startswith("/memfd:")
        ]
        assert memfds, "the kernel maps no memfd ring"
        for fd in memfds:
            # Reopening the kernel's own descriptor gives the same memfd, seals included.
            mine = os.open(f"/proc/{kpid}/fd/{fd}", os.O_RDWR)
            try:
                with pytest.raises(OSError) as caught:
                    os.ftruncate(mine, 0)
                assert caught.value.errno == errno.EPERM
            finally:
                os.close(mine)
        out.send(b"\x90\x3c\x40")
        assert loopback_kernel.alive()


def test_a_wrong_token_or_another_process_is_refused_and_counted(loopback_kernel) -> None:
    sock_path = loopback_kernel.runtime / FD_SOCKET
    assert sock_path.stat().st_mode & 0o777 == 0o600
    before = _kernel_stat(loopback_kernel, "fd_refused")
    with loopback_kernel.connect() as c:
        c.wait_for_filter("loopback")
        with pytest.raises(ConnectionError):
            fetch_fds(loopback_kernel.runtime, "00" * 16, 3, timeout=5)
        # A pin opened by hand: the token is in the reply, nothing fetched it yet.
        pin = c.filter("loopback").find_pin(False)
        result = c._call(p.OpenPin("loopback", pin, DataFormat().to_wire(), 1 << 16, 0))
        token = result["token"]
        thief = subprocess.run(
            [sys.executable, "-c", REFUSE_SCRIPT, str(sock_path), token],
            capture_output=True, text=True, timeout=30,
        )
        assert thief.stdout.split() == ["0", "0"], thief.stderr  # closed without fds
        # The owner still gets them: a refused attempt does not use up the token.
        fds = fetch_fds(loopback_kernel.runtime, token, 3, timeout=5)
        channel = (ChannelWriter.from_fds(fds) if not result["capture"]
                   else ChannelReader.from_fds(fds))
        channel.close()
        # Now it is used up.
        with pytest.raises(ConnectionError):
            fetch_fds(loopback_kernel.runtime, token, 3, timeout=5)
        c._call(p.ClosePin(int(result["handle"])))
    assert _kernel_stat(loopback_kernel, "fd_refused") >= before + 3


def test_descriptors_not_fetched_in_time_are_withdrawn(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        c.wait_for_filter("loopback")
        pin = c.filter("loopback").find_pin(False)
        result = c._call(p.OpenPin("loopback", pin, DataFormat().to_wire(), 1 << 16, 0))
        event = c.next_event(timeout=15)
        assert (event.kind, event.status) == ("pin_error", Status.IO_DEVICE_ERROR)
        assert "not fetched" in event.reason
        with pytest.raises(ConnectionError):
            fetch_fds(loopback_kernel.runtime, result["token"], 3, timeout=5)
        c._call(p.ClosePin(int(result["handle"])))
    assert _kernel_stat(loopback_kernel, "fd_expired") >= 1


def test_a_silent_connection_is_dropped(loopback_kernel) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(15)
        s.connect(str(loopback_kernel.runtime / FD_SOCKET))
        start = time.monotonic()
        assert s.recv(16) == b""  # closed by the kernel
        assert time.monotonic() - start < 12
    assert loopback_kernel.alive()
