"""The loopback miniport: what is rendered comes back on the capture pins.

Written against the public contract exactly as a third-party miniport would
be. A render stream's `write` puts the bytes on the "cable"; the cable raises
an interrupt, whose service routine finds input and calls `port.notify`, and
the port then drains each running capture stream's `read`.

Options (keyword arguments, from the device's configuration):
  max_write    accept at most this many bytes per write (partial writes)
  busy_writes  after every accepted write, refuse the next N writes (return 0)
  fifo_size    bytes a capture stream buffers; a write takes only what fits
               in every running capture stream (back-pressure, nothing dropped)
  capture_instances  how many capture pins may be open at once
"""

from __future__ import annotations

import threading

from ipc.ks import (
    KSFILTER_NODE,
    Communication,
    Connection,
    DataFlow,
    FilterDescriptor,
    PinDescriptor,
)
from miniports.contract import (
    DataFormat,
    FifoCaptureStream,
    InterruptSync,
    KsState,
    MiniportMidi,
    MiniportMidiStream,
    Port,
    PortServiceGroup,
    ResourceList,
    Status,
    StatusError,
)

RENDER_PIN = 0
BRIDGE_OUT_PIN = 1
BRIDGE_IN_PIN = 2
CAPTURE_PIN = 3


class LoopbackCaptureStream(FifoCaptureStream):
    def __init__(self, owner: LoopbackMiniport, fifo_size: int) -> None:
        super().__init__(owner.sync, fifo_size)
        self._owner = owner

    def close(self) -> None:
        self._owner.captures.remove(self)


class LoopbackRenderStream(MiniportMidiStream):
    def __init__(self, owner: LoopbackMiniport) -> None:
        self._owner = owner
        self._busy_left = 0

    def write(self, data: bytes) -> int:
        owner = self._owner
        if self._busy_left > 0:
            self._busy_left -= 1
            return 0
        taken = owner.sync.call_synchronized_routine(owner.cable_send, data)
        if taken:
            self._busy_left = owner.busy_writes
        return int(taken)

    def set_state(self, state: KsState) -> None:
        self.state = state
        if state == KsState.STOP:
            self._busy_left = 0

    def close(self) -> None:
        self._owner.render_open = False


class LoopbackMiniport(MiniportMidi):
    """A MIDI cable from the render pin to every capture pin."""

    def __init__(
        self,
        max_write: int | None = None,
        busy_writes: int = 0,
        fifo_size: int = 1 << 20,
        capture_instances: int = 4,
    ) -> None:
        for name, value, low in (
            ("busy_writes", busy_writes, 0),
            ("fifo_size", fifo_size, 1),
            ("capture_instances", capture_instances, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise StatusError(Status.INVALID_PARAMETER, f"{name} must be an int >= {low}")
        if max_write is not None and (not isinstance(max_write, int) or max_write < 1):
            raise StatusError(Status.INVALID_PARAMETER, "max_write must be a positive int")
        self.max_write = max_write
        self.busy_writes = busy_writes
        self.fifo_size = fifo_size
        self.capture_instances = capture_instances
        self.sync = InterruptSync()
        self.captures: list[LoopbackCaptureStream] = []
        self.render_open = False
        self._port: Port | None = None
        self._group: PortServiceGroup | None = None
        self._lock = threading.Lock()

    def get_description(self) -> FilterDescriptor:
        return FilterDescriptor(
            pins=(
                PinDescriptor("MIDI Out", DataFlow.IN),
                PinDescriptor("Bridge Out", DataFlow.OUT, Communication.NONE, ()),
                PinDescriptor("Bridge In", DataFlow.IN, Communication.NONE, ()),
                PinDescriptor(
                    "MIDI In",
                    DataFlow.OUT,
                    max_global_instances=self.capture_instances,
                    max_filter_instances=self.capture_instances,
                ),
            ),
            connections=(
                Connection(KSFILTER_NODE, RENDER_PIN, KSFILTER_NODE, BRIDGE_OUT_PIN),
                Connection(KSFILTER_NODE, BRIDGE_IN_PIN, KSFILTER_NODE, CAPTURE_PIN),
            ),
        )

    def init(self, resources: ResourceList, port: Port) -> PortServiceGroup | None:
        self._port = port
        self._group = port.new_service_group()
        port.register_service_group(self._group)
        self.sync.register_service_routine(self._isr)
        return self._group

    def new_stream(
        self, pin: int, capture: bool, fmt: DataFormat
    ) -> tuple[MiniportMidiStream, PortServiceGroup | None]:
        if capture != (pin == CAPTURE_PIN) or pin not in (RENDER_PIN, CAPTURE_PIN):
            raise StatusError(Status.INVALID_PARAMETER, f"pin {pin} cannot stream that way")
        if capture:
            if len(self.captures) >= self.capture_instances:
                raise StatusError(Status.INSUFFICIENT_RESOURCES, "all capture streams in use")
            stream = LoopbackCaptureStream(self, self.fifo_size)
            self.captures.append(stream)
            return stream, self._group
        if self.render_open:
            raise StatusError(Status.INSUFFICIENT_RESOURCES, "the render stream is in use")
        self.render_open = True
        return LoopbackRenderStream(self), None

    def cable_send(self, data: bytes) -> int:
        """The wire: take what every running capture stream has room for, then interrupt."""
        n = len(data)
        if self.max_write is not None and self.max_write < n:
            n = self.max_write
        captures = self.captures
        for stream in captures:
            room = stream.room()
            if room < n:
                n = room
        if n <= 0:
            return 0
        chunk = data[:n]
        for stream in captures:
            stream.hardware_input(chunk)
        self.sync.interrupt()
        return n

    def _isr(self) -> bool:
        for stream in self.captures:
            if stream.has_input():
                if self._port is not None:
                    self._port.notify(self._group)
                return True
        return False
