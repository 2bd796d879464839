"""What binds a miniport host to the launch the kernel made of it.

Any process of the kernel's user can connect to the bus. So the kernel makes,
for each process it starts, a `LaunchCredentials`: a bus identity no one can
guess (the device's name and a random token, so no one can take over the
route to the real host) and a 32-byte secret the host proves it holds in
`Register` or `LoadFailed`. They reach the child through a pipe it inherits
(`--launch-fd`), read once at start: never argv, which `ps` shows to
everyone, nor the environment, which /proc/<pid>/environ keeps for the life
of the process.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

SECRET_BYTES = 32
MAX_IDENTITY = 255
"""ZeroMQ's limit on a routing identity."""


@dataclass(frozen=True)
class LaunchCredentials:
    identity: bytes
    secret: bytes

    @classmethod
    def new(cls, device: str) -> LaunchCredentials:
        identity = device.encode()[: MAX_IDENTITY - 34] + b"\0" + secrets.token_hex(16).encode()
        return cls(identity, secrets.token_bytes(SECRET_BYTES))

    @property
    def device(self) -> str:
        """The device name the identity starts with."""
        return self.identity.partition(b"\0")[0].decode("utf-8", "replace")

    def admits(self, identity: bytes, secret: bytes) -> bool:
        """Whether a peer with this bus identity and secret is this launch (the secret is
        compared in constant time)."""
        return identity == self.identity and hmac.compare_digest(self.secret, secret)

    @contextlib.contextmanager
    def hand_over(self) -> Iterator[int]:
        """A pipe's read end holding the credentials, for a child started in the `with`
        block to inherit (`pass_fds`); closed here afterwards."""
        read_fd, write_fd = os.pipe()
        try:
            try:
                payload = {"identity": self.identity.hex(), "secret": self.secret.hex()}
                os.write(write_fd, json.dumps(payload).encode())  # < PIPE_BUF: never blocks
            finally:
                os.close(write_fd)
            yield read_fd
        finally:
            os.close(read_fd)

    @classmethod
    def receive(cls, fd: int) -> LaunchCredentials:
        """Read the credentials the kernel handed over on `fd`, and close it.
        ValueError if what is there is not credentials."""
        chunks = []
        try:
            while chunk := os.read(fd, 4096):
                chunks.append(chunk)
                if sum(map(len, chunks)) > 4096:
                    raise ValueError("launch credentials too long")
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
        try:
            data = json.loads(b"".join(chunks))
            return cls(bytes.fromhex(data["identity"]), bytes.fromhex(data["secret"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad launch credentials: {exc}") from exc
