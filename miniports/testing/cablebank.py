"""A bank of independent loopback cables in one filter: the scaling benchmark's device.

The loopback miniport has one render pin (one instance) whose bytes go to every
capture pin, so one device serves exactly one client that needs its own round
trip. The scaling grid of ``portcls bench`` puts up to 32 clients on as few as one
miniport process, so it needs a device with many private cables: cable ``k`` is
render pin ``2k`` ("Cable k Out") and capture pin ``2k + 1`` ("Cable k In"), one
instance each, and what is written to render pin ``2k`` comes back on capture pin
``2k + 1`` only. Apart from that it behaves like the loopback (write -> cable ->
interrupt -> ISR -> ``port.notify`` -> the port drains ``read``), so the kernel,
the port and the rings do the work they do for the loopback.

Each capture stream has a service group of its own (NewStream hands it back), and
the ISR notifies the groups of the cables that took input, as a miniport for a card
with independent ports would. With one group for every stream, as the loopback
has, each interrupt had the port service every open capture stream: 31 empty reads
in the host and 31 empty ring drains in the kernel for each round trip of the
scaling grid's 32 x 1 cell.

Written against the public miniport contract, like any third-party miniport;
configured as ``miniport = "miniports.testing.cablebank:CableBankMiniport"`` with
``options = { cables = N }`` (1 to 64).
"""

from __future__ import annotations

from ipc.ks import KSFILTER_NODE, Connection, DataFlow, FilterDescriptor, PinDescriptor
from miniports.contract import (
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

__all__ = ["MAX_CABLES", "CableBankMiniport", "capture_pin", "render_pin"]

MAX_CABLES = 64
"""A filter descriptor holds at most 256 pins; 64 cables keep well inside that."""


def render_pin(cable: int) -> int:
    """The render pin of cable ``cable``."""
    return 2 * cable


def capture_pin(cable: int) -> int:
    """The capture pin of cable ``cable``."""
    return 2 * cable + 1


class _CableCapture(FifoCaptureStream):
    def __init__(
        self, owner: CableBankMiniport, cable: int, fifo_size: int, group: PortServiceGroup
    ) -> None:
        super().__init__(owner.sync, fifo_size)
        self._owner = owner
        self.cable = cable
        self.group = group

    def close(self) -> None:
        with self._owner.sync.lock:
            self._owner.captures.pop(self.cable, None)


class _CableRender(MiniportMidiStream):
    def __init__(self, owner: CableBankMiniport, cable: int) -> None:
        self._owner = owner
        self.cable = cable

    def write(self, data: bytes) -> int:
        owner = self._owner
        return int(owner.sync.call_synchronized_routine(owner.cable_send, self.cable, data))

    def close(self) -> None:
        self._owner.renders.discard(self.cable)


class CableBankMiniport(MiniportMidi):
    """``cables`` loopback cables, each a private render -> capture pair."""

    def __init__(self, cables: int = 8, fifo_size: int = 1 << 20) -> None:
        if not isinstance(cables, int) or not 1 <= cables <= MAX_CABLES:
            raise StatusError(Status.INVALID_PARAMETER, f"cables must be 1..{MAX_CABLES}")
        if not isinstance(fifo_size, int) or fifo_size < 1:
            raise StatusError(Status.INVALID_PARAMETER, "fifo_size must be a positive int")
        self.cables = cables
        self.fifo_size = fifo_size
        self.sync = InterruptSync()
        self.captures: dict[int, _CableCapture] = {}
        self.renders: set[int] = set()
        self._input: list[_CableCapture] = []
        """Capture streams that took input since the last ISR (under the sync lock)."""
        self._port: Port | None = None
        self._group: PortServiceGroup | None = None

    def get_description(self) -> FilterDescriptor:
        pins: list[PinDescriptor] = []
        connections: list[Connection] = []
        for cable in range(self.cables):
            pins.append(PinDescriptor(f"Cable {cable} Out", DataFlow.IN))
            pins.append(PinDescriptor(f"Cable {cable} In", DataFlow.OUT))
            connections.append(
                Connection(KSFILTER_NODE, render_pin(cable), KSFILTER_NODE, capture_pin(cable))
            )
        return FilterDescriptor(pins=tuple(pins), connections=tuple(connections))

    def init(self, resources: ResourceList, port: Port) -> PortServiceGroup | None:
        self._port = port
        self._group = port.new_service_group()
        port.register_service_group(self._group)
        self.sync.register_service_routine(self._isr)
        return self._group

    def new_stream(
        self, pin: int, capture: bool, fmt: DataFormat
    ) -> tuple[MiniportMidiStream, PortServiceGroup | None]:
        cable, is_capture_pin = divmod(pin, 2)
        if not 0 <= cable < self.cables or capture != bool(is_capture_pin):
            raise StatusError(Status.INVALID_PARAMETER, f"pin {pin} cannot stream that way")
        with self.sync.lock:
            if capture:
                if cable in self.captures:
                    raise StatusError(Status.INSUFFICIENT_RESOURCES, f"cable {cable} in use")
                if self._port is None:
                    raise StatusError(Status.INVALID_DEVICE_STATE, "new_stream before init")
                group = self._port.new_service_group()
                stream = _CableCapture(self, cable, self.fifo_size, group)
                self.captures[cable] = stream
                return stream, group
            if cable in self.renders:
                raise StatusError(Status.INSUFFICIENT_RESOURCES, f"cable {cable} in use")
            self.renders.add(cable)
            return _CableRender(self, cable), None

    def cable_send(self, cable: int, data: bytes) -> int:
        """The wire of one cable: take what its capture stream has room for, interrupt."""
        stream = self.captures.get(cable)
        if stream is None:
            return len(data)  # nobody listens: the bytes fall off the end of the cable
        n = min(len(data), stream.room())
        if n <= 0:
            return 0
        if stream.hardware_input(data[:n]):
            self._input.append(stream)
        self.sync.interrupt()
        return n

    def _isr(self) -> bool:
        """Notify the group of each cable that took input since the last ISR (a group
        notified twice before its DPC runs is serviced once, as PortCls coalesces)."""
        taken, self._input = self._input, []
        port = self._port
        claimed = False
        for stream in taken:
            if self.captures.get(stream.cable) is stream and stream.has_input():
                claimed = True
                if port is not None:
                    port.notify(stream.group)
        return claimed
