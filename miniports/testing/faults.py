"""Fault injection: a miniport that wraps another one and breaks it on purpose.

`FaultInjector` (registered as the built-in miniport "faulty") runs any
miniport, built-in or `module:Class`, with its options, and passes every call
through, until a fault fires. It exists so tests and miniport authors can
prove that a broken miniport takes down nothing but its own device.

    [[device]]
    name = "flaky"
    miniport = "faulty"
    options = { miniport = "loopback", options = { max_write = 3 },
                fault = "segv", after_bytes = 3000 }

Faults (`FAULTS`):
  kill        the process sends itself SIGKILL
  exit        the process exits at once with status 1 (no clean-up)
  segv        a real segmentation fault (a read of address 1 through ctypes)
  exception   the next callback (read, write or service) raises: an exception
              out of the ISR path, so the host exits with status 70
  hang        the next read or write never returns, with SIGTERM ignored, so
              the kernel must notice the silence and escalate to SIGKILL
  hang_write  the same, only in write
  hang_read   the same, only in read
  corrupt     garbage in the process's shared memory: a record with an
              impossible kind and length in its capture ring (or, without a
              capture stream, an impossible read index in its render ring)
  flood       thousands of undecodable frames on the bus to the kernel

When a fault fires:
  after_bytes    once this many bytes went through write and read in total
  after_seconds  this long after `init`
  at run time    `trigger_fault(pid, runtime_dir, fault)` from another process
                 (the crash-test tool does this): it writes a small command
                 file into the kernel's runtime directory and sends SIGUSR1;
                 nothing polls, so an idle injector costs no CPU.
A fault configured without a trigger fires on the first byte moved. The
kernel restarts the device with the same options, so a configured fault fires
again in each incarnation until the restart limit stops it.

"exception", "hang", "corrupt" and "flood" need the host's thread, so a
trigger from a signal or a timer only arms them and raises an interrupt; the
next callback on the host's thread (read, write or service) fires them.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import mmap
import os
import signal
import struct
import threading
import time
from pathlib import Path
from typing import Any, Final

import zmq

from ipc.dmusic import DmusStreamType
from miniports import registry
from miniports.contract import (
    MXF,
    AllocatorMXF,
    DataFormat,
    DataRange,
    DmusKernelEvent,
    FilterDescriptor,
    KsState,
    MasterClock,
    MiniportDMus,
    MiniportMidi,
    MiniportMidiStream,
    Port,
    PortServiceGroup,
    ResourceList,
    Status,
    StatusError,
)

__all__ = [
    "FAULTS",
    "FLOOD_FRAMES",
    "PROCESS_FAULTS",
    "TRIGGER_SIGNAL",
    "DmusFaultInjector",
    "FaultInjector",
    "InjectedFault",
    "command_path",
    "trigger_fault",
]

FAULTS: Final = (
    "kill", "exit", "segv", "exception", "hang", "hang_write", "hang_read", "corrupt", "flood",
)
PROCESS_FAULTS: Final = frozenset({"kill", "exit", "segv"})
TRIGGER_SIGNAL: Final = signal.SIGUSR1
FLOOD_FRAMES: Final = 20_000

# The ring file layout of ipc.ring (documented there): capacity in the prefix,
# the indices at fixed offsets in native byte order, the data area after them.
_RING_PREFIX: Final = struct.Struct("<8sIIQ")
_OFF_WRITE: Final = 64
_OFF_READ: Final = 128
_RING_HEADER: Final = 384
_U64: Final = struct.Struct("@Q")
_GARBAGE_RECORD: Final = struct.pack("<qIHH", 0, 0xFFFF_FFF0, 0, 0xDEAD)


class InjectedFault(RuntimeError):
    """The exception the "exception" fault raises out of a miniport callback."""


def command_path(runtime_dir: Path, pid: int) -> Path:
    """Where `trigger_fault` leaves the command for the injector in process `pid`."""
    return runtime_dir / f"fault-{pid}.json"


def trigger_fault(pid: int, runtime_dir: str | os.PathLike[str], fault: str) -> None:
    """Make the fault injector in miniport host `pid` fire `fault` now.

    ValueError for an unknown fault; ProcessLookupError if `pid` is gone (the
    command file is removed again then).
    """
    if fault not in FAULTS:
        raise ValueError(f"no fault {fault!r} (known: {', '.join(FAULTS)})")
    path = command_path(Path(runtime_dir), pid)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"fault": fault}))
    tmp.rename(path)
    try:
        os.kill(pid, TRIGGER_SIGNAL)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        raise


def _segfault() -> None:
    # A genuine SIGSEGV, as a bug in a C extension would give, not a Python exception.
    # Address 1, not 0: string_at(0, n) is taken as "make n uninitialised bytes".
    ctypes.string_at(1, 1)


class _FaultyStream(MiniportMidiStream):
    def __init__(self, owner: FaultInjector, inner: MiniportMidiStream, capture: bool) -> None:
        self._owner = owner
        self._inner = inner
        self._capture = capture

    def set_format(self, fmt: DataFormat) -> None:
        self._inner.set_format(fmt)

    def set_state(self, state: KsState) -> None:
        self._inner.set_state(state)
        self.state = state

    def write(self, data: bytes) -> int:
        self._owner.checkpoint("write")
        taken = self._inner.write(data)
        self._owner.moved(taken if isinstance(taken, int) else 0, "write")
        return taken

    def read(self, max_bytes: int) -> bytes:
        self._owner.checkpoint("read")
        data = self._inner.read(max_bytes)
        self._owner.moved(len(data), "read")
        return data

    def close(self) -> None:
        self._inner.close()
        self._owner.streams.remove(self)


def _load_inner(
    miniport: Any, options: Any, fault: Any, after_bytes: Any, after_seconds: Any,
) -> MiniportMidi | MiniportDMus:
    """Check an injector's options and construct the miniport it wraps;
    StatusError(INVALID_PARAMETER) for bad options."""
    if not isinstance(miniport, str) or not miniport:
        raise StatusError(Status.INVALID_PARAMETER, "miniport must be a name or module:Class")
    if registry.available().get(miniport, miniport).startswith(__name__ + ":"):
        raise StatusError(Status.INVALID_PARAMETER, "the fault injector cannot wrap itself")
    if options is not None and not isinstance(options, dict):
        raise StatusError(Status.INVALID_PARAMETER, "options must be a table")
    if fault is not None and fault not in FAULTS:
        raise StatusError(
            Status.INVALID_PARAMETER, f"no fault {fault!r} (known: {', '.join(FAULTS)})"
        )
    if after_bytes is not None and (
        isinstance(after_bytes, bool) or not isinstance(after_bytes, int) or after_bytes < 0
    ):
        raise StatusError(Status.INVALID_PARAMETER, "after_bytes must be an int >= 0")
    if after_seconds is not None and (
        isinstance(after_seconds, bool)
        or not isinstance(after_seconds, (int, float))
        or after_seconds < 0
    ):
        raise StatusError(Status.INVALID_PARAMETER, "after_seconds must be a number >= 0")
    if (after_bytes is not None or after_seconds is not None) and fault is None:
        raise StatusError(Status.INVALID_PARAMETER, "a trigger needs a fault")
    return registry.load(miniport)(**(options or {}))


class _Faults:
    """The fault machinery both injectors share: triggers, arming, firing; and the calls
    both pass through to the miniport they wrap (`inner`) unchanged."""

    inner: MiniportMidi | MiniportDMus
    _port: Port | None

    def get_description(self) -> FilterDescriptor:
        return self.inner.get_description()

    def data_range_intersection(
        self, pin: int, client_format: DataFormat, miniport_range: DataRange
    ) -> DataFormat:
        return self.inner.data_range_intersection(pin, client_format, miniport_range)

    def init(self, resources: ResourceList, port: Port) -> PortServiceGroup | None:
        self._port = port
        group = self.inner.init(resources, port)
        self._start_faults(port)
        return group

    def close(self) -> None:
        self._stop_faults()
        self.inner.close()


    def _setup_faults(
        self, fault: str | None, after_bytes: int | None, after_seconds: float | None,
        control: bool,
    ) -> None:
        self.fault = fault
        self.after_bytes = 0 if fault is not None and after_seconds is None else after_bytes
        self.after_seconds = after_seconds
        self.control = bool(control)
        self.bytes_moved = 0
        self._armed: str | None = None
        self._port = None
        self._thread = threading.get_ident()
        self._timer: threading.Timer | None = None
        self._command: Path | None = None

    def _start_faults(self, port: Port) -> None:
        """At init: listen for run-time triggers, start the timed one."""
        self._port = port
        self._thread = threading.get_ident()
        runtime_dir = getattr(port, "runtime_dir", None)
        if self.control and isinstance(runtime_dir, Path):
            self._command = command_path(runtime_dir, os.getpid())
            signal.signal(TRIGGER_SIGNAL, self._on_trigger_signal)
        if self.after_seconds is not None and self.fault is not None:
            self._timer = threading.Timer(self.after_seconds, self.fire, (self.fault,))
            self._timer.daemon = True
            self._timer.start()

    def _stop_faults(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _on_trigger_signal(self, signum: int, frame: Any) -> None:
        if self._command is None:
            return
        try:
            command = json.loads(self._command.read_text())
            self._command.unlink()
        except (OSError, ValueError):
            return
        fault = command.get("fault") if isinstance(command, dict) else None
        if fault in FAULTS:
            self.fire(fault)

    def fire(self, fault: str) -> None:
        """Fire `fault`: process faults at once from any thread; the others on the host's
        thread now, or at its next callback (armed, with an interrupt to bring that on)."""
        if fault in PROCESS_FAULTS:
            self._crash(fault)
        self._armed = fault
        port = self._port
        if port is not None:
            # From a signal handler or a timer: notify from a thread of its own is the
            # thread-safe way to wake the host's loop, which then calls read or service.
            threading.Thread(target=port.notify, daemon=True).start()

    def moved(self, n: int, where: str) -> None:
        self.bytes_moved += n
        if (
            self.fault is not None
            and self.after_bytes is not None
            and self.bytes_moved >= self.after_bytes
            and n > 0
        ):
            fault, self.fault = self.fault, None
            if fault in PROCESS_FAULTS:
                self._crash(fault)
            self._armed = fault
            self.checkpoint(where)

    def checkpoint(self, where: str) -> None:
        """Called on the host's thread at each callback: fire an armed fault that fits."""
        fault = self._armed
        if fault is None:
            return
        if (fault == "hang_write" and where != "write") or (
            fault in ("hang_read", "hang") and where not in ("read", "write")
        ):
            return
        if fault == "corrupt" and not self._scribble():
            return
        self._armed = None
        if fault == "exception":
            raise InjectedFault(f"injected fault: exception in {where}")
        if fault in ("hang", "hang_write", "hang_read"):
            self._hang()
        elif fault == "flood":
            self._flood()

    def _crash(self, fault: str) -> None:
        if fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif fault == "exit":
            os._exit(1)
        _segfault()
        os.abort()  # not reached: the read of address 0 ends the process

    def _hang(self) -> None:
        with contextlib.suppress(ValueError):  # only the main thread may set handlers
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(3600)

    def _flood(self) -> None:
        rpc = getattr(self._port, "rpc", None)
        sock = getattr(rpc, "socket", None)
        if not isinstance(sock, zmq.Socket):
            raise InjectedFault("flood: the port has no bus socket to flood")
        for i in range(FLOOD_FRAMES):
            try:
                sock.send(b"\xc1 garbage " + i.to_bytes(4, "little"), zmq.NOBLOCK)
            except zmq.Again:
                break

    def _rings(self) -> list[tuple[bool, Path]]:
        """(capture?, ring file) of each stream the host runs for this miniport."""
        found = []
        for hs in dict(getattr(self._port, "streams", {}) or {}).values():
            channel = getattr(hs, "writer", None) or getattr(hs, "reader", None)
            ring = getattr(channel, "ring", None)
            fileno = getattr(ring, "fileno", None)
            if callable(fileno):
                # A sealed memfd: reached through this process's own descriptor.
                path = Path(f"/proc/self/fd/{fileno()}")
                found.append((bool(getattr(hs, "capture", False)), path))
        found.sort(key=lambda entry: not entry[0])
        return found

    def _scribble(self) -> bool:
        """Write garbage the kernel must catch into a ring; False if there is none yet."""
        for capture, path in self._rings():
            with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
                capacity = _RING_PREFIX.unpack_from(mm, 0)[3]
                write = _U64.unpack_from(mm, _OFF_WRITE)[0]
                read = _U64.unpack_from(mm, _OFF_READ)[0]
                pos = write & (capacity - 1)
                if capture and capacity - (write - read) >= 16 and capacity - pos >= 16:
                    # We are the producer: a record of an unknown kind and impossible
                    # length, published by a valid index, so only the reader sees it.
                    mm[_RING_HEADER + pos : _RING_HEADER + pos + 16] = _GARBAGE_RECORD
                    mm[_OFF_WRITE : _OFF_WRITE + 8] = _U64.pack(write + 16)
                elif not capture:
                    # We are the consumer: a read index past the write index.
                    mm[_OFF_READ : _OFF_READ + 8] = _U64.pack(write + 4 * capacity + 8)
                else:
                    continue
            if self._port is not None:
                self._port.notify()
            return True
        return False


class FaultInjector(_Faults, MiniportMidi):
    """Any miniport, passed through until a fault fires; see the module docstring.

    Options: `miniport` (name or module:Class, default "loopback"), `options`
    (its keyword arguments), `fault` (one of FAULTS or None), `after_bytes`,
    `after_seconds`, `control` (accept run-time triggers, default True).
    StatusError(INVALID_PARAMETER) for bad options; a DirectMusic miniport is
    wrapped by `DmusFaultInjector` ("faulty_dmus") instead (NOT_SUPPORTED here).
    """

    def __init__(
        self,
        miniport: str = "loopback",
        options: dict[str, Any] | None = None,
        fault: str | None = None,
        after_bytes: int | None = None,
        after_seconds: float | None = None,
        control: bool = True,
    ) -> None:
        inner = _load_inner(miniport, options, fault, after_bytes, after_seconds)
        if not isinstance(inner, MiniportMidi):
            raise StatusError(Status.NOT_SUPPORTED,
                              f"{miniport!r} is a DirectMusic miniport: use faulty_dmus")
        self.inner: MiniportMidi = inner
        self.streams: list[_FaultyStream] = []
        self._setup_faults(fault, after_bytes, after_seconds, control)

    def new_stream(
        self, pin: int, capture: bool, fmt: DataFormat
    ) -> tuple[MiniportMidiStream, PortServiceGroup | None]:
        inner, group = self.inner.new_stream(pin, capture, fmt)
        stream = _FaultyStream(self, inner, capture)
        self.streams.append(stream)
        return stream, group

    def service(self) -> None:
        self.checkpoint("service")
        self.inner.service()



class _FaultyMxf(MXF):
    """A DirectMusic stream passed through; put_message is a checkpoint ("write")."""

    def __init__(self, owner: DmusFaultInjector, inner: MXF) -> None:
        self._owner = owner
        self._inner = inner

    def set_state(self, state: KsState) -> None:
        self._inner.set_state(state)

    def put_message(self, event: DmusKernelEvent) -> None:
        self._owner.checkpoint("write")
        moved = sum(len(e.data) for e in event.chain())
        self._inner.put_message(event)
        self._owner.moved(moved, "write")

    def connect_output(self, sink: MXF) -> None:
        self._inner.connect_output(sink)

    def disconnect_output(self, sink: MXF) -> None:
        self._inner.disconnect_output(sink)

    def close(self) -> None:
        self._inner.close()


class DmusFaultInjector(_Faults, MiniportDMus):
    """`FaultInjector` for a DirectMusic miniport (registered as "faulty_dmus"): the same
    options and faults; a render stream's put_message counts as a write, the port's
    service as a read point ("hang_read" and "hang" fire in either)."""

    def __init__(
        self,
        miniport: str = "dmusuart",
        options: dict[str, Any] | None = None,
        fault: str | None = None,
        after_bytes: int | None = None,
        after_seconds: float | None = None,
        control: bool = True,
    ) -> None:
        inner = _load_inner(miniport, options, fault, after_bytes, after_seconds)
        if not isinstance(inner, MiniportDMus):
            raise StatusError(Status.NOT_SUPPORTED, f"{miniport!r} is not a DirectMusic miniport")
        self.inner: MiniportDMus = inner
        self._setup_faults(fault, after_bytes, after_seconds, control)

    def new_stream(
        self, pin: int, stream_type: DmusStreamType, fmt: DataFormat,
        allocator: AllocatorMXF, master_clock: MasterClock,
    ) -> tuple[MXF, PortServiceGroup | None, int]:
        mxf, group, prefetch = self.inner.new_stream(pin, stream_type, fmt, allocator,
                                                     master_clock)
        return _FaultyMxf(self, mxf), group, prefetch

    def service(self) -> None:
        self.checkpoint("read")
        self.inner.service()

