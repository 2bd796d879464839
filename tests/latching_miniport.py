"""A loopback whose ISR only latches input and whose `service()` moves it into the FIFO.

That is a common PortCls pattern: the ISR reads the hardware into a latch and
notifies; the DPC that follows calls the miniport's `Service()` (the latch
goes into the FIFO) and then `Read` until 0. Data reaches the client on the
interrupt that brought it only if the port reads after `Service()`, in the same
DPC.

Two loops, in two service groups:
  pin 0 "Main Out" → pin 1 "Main In": latched by the ISR, moved by `service()`,
      notified on the miniport's group (the one the port registered in);
  pin 2 "Side Out" → pin 3 "Side In": the ISR puts the bytes straight into the
      FIFO and notifies the side group, which the port's sink is not in.

The render streams' `write` hands the bytes to a "wire" thread, which raises
the interrupt, so `notify` comes from a thread of its own, as from hardware.

Options:
  log         a file to append one line per event to: "isr main", "isr side",
              "service", "read main N", "read side N" (N bytes read)
  interrupt   how the ISR asks for service on its path's group: "notify"
              (notify(group), the default), "notify_all" (notify(None)),
              "request_service" (group.request_service()) or "delayed"
              (group.request_delayed_service, DELAY from now)
"""

from __future__ import annotations

import queue
import threading

from ipc.ks import DataFlow, FilterDescriptor, PinDescriptor
from miniports.base import (
    DataFormat,
    FifoCaptureStream,
    InterruptSync,
    MiniportMidi,
    MiniportMidiStream,
    Port,
    PortServiceGroup,
    ResourceList,
    Status,
    StatusError,
)

MAIN_OUT, MAIN_IN, SIDE_OUT, SIDE_IN = range(4)
FIFO_SIZE = 1 << 20
DELAY = 200_000
"""100 ns units: 20 ms."""
INTERRUPTS = ("notify", "notify_all", "request_service", "delayed")

DESCRIPTION = FilterDescriptor(
    pins=(
        PinDescriptor("Main Out", DataFlow.IN),
        PinDescriptor("Main In", DataFlow.OUT),
        PinDescriptor("Side Out", DataFlow.IN),
        PinDescriptor("Side In", DataFlow.OUT),
    )
)


class _Capture(FifoCaptureStream):
    def __init__(self, owner: LatchingLoopback, path: str) -> None:
        super().__init__(owner.sync, FIFO_SIZE)
        self.owner, self.path = owner, path

    def read(self, max_bytes: int) -> bytes:
        data = super().read(max_bytes)
        self.owner.log(f"read {self.path} {len(data)}")
        return data

    def close(self) -> None:
        self.owner.captures.pop(self.path, None)


class _Render(MiniportMidiStream):
    def __init__(self, owner: LatchingLoopback, path: str) -> None:
        self.owner, self.path = owner, path

    def write(self, data: bytes) -> int:
        self.owner.wire.put((self.path, bytes(data)))
        return len(data)

    def close(self) -> None:
        self.owner.renders.discard(self.path)


class LatchingLoopback(MiniportMidi):
    """See the module docstring."""

    def __init__(self, log: str | None = None, interrupt: str = "notify") -> None:
        if interrupt not in INTERRUPTS:
            raise StatusError(Status.INVALID_PARAMETER, f"interrupt is one of {INTERRUPTS}")
        self.log_path = log
        self.interrupt = interrupt
        self.sync = InterruptSync()
        self.latch = bytearray()
        self.captures: dict[str, _Capture] = {}
        self.renders: set[str] = set()
        self.wire: queue.SimpleQueue[tuple[str, bytes] | None] = queue.SimpleQueue()
        self._log_lock = threading.Lock()
        self._thread = threading.Thread(target=self._wire, name="wire", daemon=True)

    def log(self, line: str) -> None:
        if self.log_path is not None:
            with self._log_lock, open(self.log_path, "a") as f:
                f.write(line + "\n")

    def get_description(self) -> FilterDescriptor:
        return DESCRIPTION

    def init(self, resources: ResourceList, port: Port) -> PortServiceGroup | None:
        self.port = port
        self.main = port.new_service_group()
        port.register_service_group(self.main)
        self.side = port.new_service_group()
        for group in (self.main, self.side):
            group.support_delayed_service()
        self._thread.start()
        return self.main

    def new_stream(
        self, pin: int, capture: bool, fmt: DataFormat
    ) -> tuple[MiniportMidiStream, PortServiceGroup | None]:
        if pin not in range(4) or capture != (pin in (MAIN_IN, SIDE_IN)):
            raise StatusError(Status.INVALID_PARAMETER, f"pin {pin} cannot stream that way")
        path = "main" if pin in (MAIN_OUT, MAIN_IN) else "side"
        if path in (self.captures if capture else self.renders):
            raise StatusError(Status.INSUFFICIENT_RESOURCES, f"the {path} stream is in use")
        if not capture:
            self.renders.add(path)
            return _Render(self, path), None
        stream = self.captures[path] = _Capture(self, path)
        return stream, self.main if path == "main" else self.side

    def _wire(self) -> None:
        while (item := self.wire.get()) is not None:
            self._isr(*item)

    def _isr(self, path: str, data: bytes) -> None:
        """The interrupt: main input only goes into the latch; side input into its FIFO."""
        with self.sync.lock:
            self.log(f"isr {path}")
            if path == "main":
                self.latch += data
            elif (side := self.captures.get("side")) is not None:
                side.hardware_input(data)
        group = self.main if path == "main" else self.side
        if self.interrupt == "notify":
            self.port.notify(group)
        elif self.interrupt == "notify_all":
            self.port.notify(None)
        elif self.interrupt == "request_service":
            group.request_service()
        else:
            group.request_delayed_service(-DELAY)

    def service(self) -> None:
        """The DPC: what the ISR latched goes into the main capture FIFO."""
        with self.sync.lock:
            self.log("service")
            if self.latch and (main := self.captures.get("main")) is not None:
                main.hardware_input(bytes(self.latch))
            self.latch.clear()

    def close(self) -> None:
        self.wire.put(None)
        if self._thread.is_alive():
            self._thread.join(5)
