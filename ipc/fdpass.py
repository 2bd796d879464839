"""The client's half of fetching a pin's descriptors from the kernel's ``fds.sock``.

The kernel (kernel/fdserver.py) offers a pin's ring and doorbell descriptors under a
one-time token that its OpenPin reply carries; the client connects, sends the token
and receives the descriptors with SCM_RIGHTS (one message: the byte ``OK`` and the
descriptors). The kernel refuses an unknown token or a process other than the
session's by closing the connection.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Final

__all__ = ["FD_SOCKET", "OK", "fetch_fds"]

FD_SOCKET: Final = "fds.sock"
OK: Final = b"\x01"


def fetch_fds(runtime_dir: Path, token: str, count: int, timeout: float) -> list[int]:
    """Fetch the ``count`` descriptors offered under ``token``; the caller owns them.

    ConnectionError if the kernel refused (or sent something else), TimeoutError
    if it did not answer within ``timeout`` seconds, OSError otherwise.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        sock.connect(str(runtime_dir / FD_SOCKET))
        sock.sendall(bytes.fromhex(token))
        msg, fds, _, _ = socket.recv_fds(sock, len(OK), count)
    if msg != OK or len(fds) != count:
        for fd in fds:
            socket.close(fd)
        raise ConnectionError(f"the kernel refused the descriptors ({msg!r}, {len(fds)} fds)")
    return fds
