"""The SDK's exception tree: one root carrying the status code.

    KsError                      every failure; .status is the NTSTATUS code
    ├── ClosedError              you closed the pin or the client (your doing)
    ├── BrokenError              something else broke it (not your doing)
    │   ├── DeviceRemovedError   the device went away (STATUS_DEVICE_REMOVED)
    │   └── KernelGoneError      the kernel is not there any more
    ├── DeviceError              the device failed I/O (STATUS_IO_DEVICE_ERROR)
    ├── NoMatchError             no data range matches the format (STATUS_NO_MATCH)
    ├── InvalidStateError        wrong KSSTATE for the call, or a skipped step
    ├── NotFoundError            no such filter or pin
    ├── InstancesExhaustedError  the pin has all its instances open
    ├── WouldBlock               a *_nowait call found nothing to do
    └── KsTimeoutError           a blocking call timed out (also a TimeoutError)
"""

from __future__ import annotations

from ipc.status import Status, StatusError


class KsError(StatusError):
    """Root of every SDK error; `status` is the NTSTATUS code."""


class ClosedError(KsError):
    def __init__(self, message: str = "closed") -> None:
        super().__init__(Status.FILE_CLOSED, message)


class BrokenError(KsError):
    """Broken by something other than the caller."""


class DeviceRemovedError(BrokenError):
    pass


class KernelGoneError(BrokenError):
    def __init__(self, message: str = "the kernel is gone") -> None:
        super().__init__(Status.CONNECTION_DISCONNECTED, message)


class DeviceError(KsError):
    pass


class NoMatchError(KsError):
    pass


class InvalidStateError(KsError):
    pass


class NotFoundError(KsError):
    pass


class InstancesExhaustedError(KsError):
    pass


class WouldBlock(KsError):
    def __init__(self, message: str = "would block") -> None:
        super().__init__(Status.DEVICE_NOT_READY, message)


class AccessDeniedError(KsError, PermissionError):
    """The runtime directory is not safe to use (another user's, open to others, a
    symlink): whatever answers there cannot be trusted."""

    def __init__(self, message: str) -> None:
        KsError.__init__(self, Status.ACCESS_DENIED, message)


class KsTimeoutError(KsError, TimeoutError):
    def __init__(self, message: str = "timed out") -> None:
        KsError.__init__(self, Status.IO_TIMEOUT, message)


_BY_STATUS: dict[int, type[KsError]] = {
    Status.DEVICE_REMOVED: DeviceRemovedError,
    Status.IO_DEVICE_ERROR: DeviceError,
    Status.NO_MATCH: NoMatchError,
    Status.INVALID_DEVICE_STATE: InvalidStateError,
    Status.OBJECT_NAME_NOT_FOUND: NotFoundError,
    Status.INSUFFICIENT_RESOURCES: InstancesExhaustedError,
}


def from_status(status: int, message: str = "") -> KsError:
    """The SDK exception for a status code from the kernel."""
    if status == Status.FILE_CLOSED:
        return ClosedError(message)
    if status == Status.CONNECTION_DISCONNECTED:
        return KernelGoneError(message)
    if status == Status.IO_TIMEOUT:
        return KsTimeoutError(message)
    return _BY_STATUS.get(status, KsError)(status, message)


def wrap(exc: StatusError) -> KsError:
    return exc if isinstance(exc, KsError) else from_status(exc.status, exc.message)
