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
MAX_SUBDEVICES = 64
"""Subdevice hosts one launch may run (identities "<launch>/0" .. "<launch>/63")."""
_SUFFIX = 3


@dataclass(frozen=True)
class LaunchCredentials:
    identity: bytes
    secret: bytes

    @classmethod
    def new(cls, device: str) -> LaunchCredentials:
        name = device.encode()[: MAX_IDENTITY - 34 - _SUFFIX]
        identity = name + b"\0" + secrets.token_hex(16).encode()
        return cls(identity, secrets.token_bytes(SECRET_BYTES))

    def for_subdevice(self, index: int) -> LaunchCredentials:
        """The credentials of this launch's subdevice host `index` (one bus connection
        per port the adapter binds): the launch's identity + "/<index>", the same secret.
        ValueError outside 0 .. MAX_SUBDEVICES - 1."""
        if not 0 <= index < MAX_SUBDEVICES:
            raise ValueError(f"subdevice index {index} outside 0..{MAX_SUBDEVICES - 1}")
        return LaunchCredentials(self.identity + b"/%d" % index, self.secret)

    @property
    def device(self) -> str:
        """The device name the identity starts with."""
        return self.identity.partition(b"\0")[0].decode("utf-8", "replace")

    def admits(self, identity: bytes, secret: bytes) -> bool:
        """Whether a peer with this bus identity and secret is this launch or one of its
        subdevice hosts (`for_subdevice`); the secret is compared in constant time."""
        return self.subdevice_index(identity) is not None and hmac.compare_digest(
            self.secret, secret)

    def subdevice_index(self, identity: bytes) -> int | None:
        """-1 for the launch's own identity, the index for one of its subdevice hosts',
        None for any other identity (no secret checked)."""
        if identity == self.identity:
            return -1
        head, sep, index = identity.rpartition(b"/")
        if head != self.identity or not sep or not index.isdigit() or len(index) > 2:
            return None
        value = int(index)
        return value if value < MAX_SUBDEVICES and index == b"%d" % value else None

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
