"""NTSTATUS-like status codes and the one exception that carries them.

Every contract in the project (port, miniport, client request) succeeds or
fails with one of these codes. `StatusError` is raised by kernel and miniport
code; the protocol turns it into an error reply, and the client SDK turns the
reply back into its own exception tree (`ksclient.errors`).
"""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    """The status codes used on the wire. Values are the real NTSTATUS values."""

    SUCCESS = 0x00000000
    BUFFER_OVERFLOW = 0x80000005
    UNSUCCESSFUL = 0xC0000001
    NOT_IMPLEMENTED = 0xC0000002
    INVALID_PARAMETER = 0xC000000D
    INVALID_DEVICE_REQUEST = 0xC0000010
    ACCESS_DENIED = 0xC0000022
    BUFFER_TOO_SMALL = 0xC0000023
    OBJECT_NAME_NOT_FOUND = 0xC0000034
    OBJECT_NAME_COLLISION = 0xC0000035
    INSUFFICIENT_RESOURCES = 0xC000009A
    DEVICE_NOT_READY = 0xC00000A3
    IO_TIMEOUT = 0xC00000B5
    NOT_SUPPORTED = 0xC00000BB
    CANCELLED = 0xC0000120
    FILE_CLOSED = 0xC0000128
    DEVICE_CONFIGURATION_ERROR = 0xC0000182
    INVALID_DEVICE_STATE = 0xC0000184
    IO_DEVICE_ERROR = 0xC0000185
    CONNECTION_DISCONNECTED = 0xC000020C
    NO_MATCH = 0xC0000272
    DEVICE_REMOVED = 0xC00002B6

    @classmethod
    def name_of(cls, code: int) -> str:
        """`STATUS_NO_MATCH` for a known code, `0x...` for any other."""
        try:
            return "STATUS_" + cls(code).name
        except ValueError:
            return f"0x{code & 0xFFFFFFFF:08X}"


def nt_success(code: int) -> bool:
    """True for success and informational codes (the NT_SUCCESS macro)."""
    return (code & 0xFFFFFFFF) < 0x80000000


class StatusError(Exception):
    """A failure with a status code. `str()` gives the code's name and the message."""

    def __init__(self, status: int, message: str = "") -> None:
        self.status = int(status)
        self.message = message or Status.name_of(status)
        super().__init__(self.status, self.message)

    def __str__(self) -> str:
        name = Status.name_of(self.status)
        return name if self.message == name else f"{name}: {self.message}"


class BufferTooSmall(StatusError):
    """STATUS_BUFFER_TOO_SMALL, with the size the caller's buffer needs in `needed`."""

    def __init__(self, needed: int) -> None:
        super().__init__(Status.BUFFER_TOO_SMALL, f"the buffer needs {needed} bytes")
        self.needed = needed
