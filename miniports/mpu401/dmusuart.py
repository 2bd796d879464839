"""The built-in DirectMusic UART miniport (PcNewMiniport with CLSID_MiniportDriverDMusUART
or ...DMusUARTCapture; registered as "dmusuart").

An IMiniportDMus driving the same emulated MPU-401 through the same hardware
code as the MIDI UART miniport (`miniports.mpu401.miniport`: init, the ISR,
the transmit loop under the interrupt-sync lock), as Windows' DMusUART and UART
miniports are one implementation. Written against the public contract.

Render (pins 0 and 1): the port hands each event over `prefetch` ahead of its
presentation time; the stream keeps them in time order and sends each when the
master clock reaches its time, on a delayed service of a group of its own (a
FIFO that fills is retried 1 ms later, as the MIDI miniport's short writes
are). Every channel group goes out of the one MIDI OUT (a UART has no groups on
the wire); a package's fragments go out as one message. Each event goes back to
the allocator once sent, or at STOP.

Capture (pin 4): the ISR keeps input while the stream is in RUN or PAUSE (the
DirectMusic rule), stamped with the master time of its first byte; the port's
service (`service`, run first in the group's DPC) puts what it kept into the
port's sink as one DMUS_KEF_EVENT_INCOMPLETE event of channel group 1, which
the port parses.

Options: those of the MIDI UART miniport (cable, baud, fifos, fault, ...), and
  prefetch   the render streams' schedule pre-fetch in 100 ns (default 100,000 =
             10 ms), or "dont_hold" (DONT_HOLD_FOR_SEQUENCING: the port hands
             every event on at once and this miniport sequences them all)
  clsid      CLSID_MiniportDriverDMusUART (default) or ...DMusUARTCapture
"""

from __future__ import annotations

from typing import Any, Final

from ipc.dmusic import (
    DMUS_KEF_EVENT_INCOMPLETE,
    DMUS_KEF_PACKAGE_EVENT,
    DONT_HOLD_FOR_SEQUENCING,
    DmusStreamType,
)
from miniports.contract import (
    MXF,
    AllocatorMXF,
    CaptureMXF,
    DataFormat,
    DmusKernelEvent,
    FilterDescriptor,
    KsState,
    MasterClock,
    MiniportDMus,
    Port,
    PortServiceGroup,
    ResourceList,
    ServiceSink,
    Status,
    StatusError,
)
from miniports.mpu401.miniport import (
    CAPTURE_PIN,
    DMUS_RENDER_PIN,
    MAX_ZERO_WRITES,
    RENDER_PIN,
    CLSID_MiniportDriverDMusUART,
    CLSID_MiniportDriverUart,
    MessageTracker,
    UartMiniport,
)

__all__ = ["DEFAULT_PREFETCH", "RETRY_100NS", "DMusUartMiniport", "DmusUartCapture",
           "DmusUartRender"]

DEFAULT_PREFETCH: Final = 100_000
"""10 ms in 100 ns: how far ahead of its time the port hands an event over."""
RETRY_100NS: Final = 10_000
"""A full transmit FIFO is tried again 1 ms later."""


class _Hardware(UartMiniport):
    """The MIDI UART miniport's hardware half, keeping input by the DirectMusic rule."""

    def __init__(self, owner: DMusUartMiniport, **options: Any) -> None:
        super().__init__(**options)
        self.owner = owner

    def keeping_input(self) -> bool:
        capture = self.owner.capture
        return capture is not None and capture.state in (KsState.RUN, KsState.PAUSE)


class DmusUartRender(MXF, ServiceSink):
    """A render stream: events in time order, each sent when the master clock reaches it."""

    def __init__(self, owner: DMusUartMiniport, pin: int) -> None:
        self.owner = owner
        self.pin = pin
        self.state = KsState.STOP
        self.queue: list[DmusKernelEvent] = []
        self.sent = 0
        """Bytes of the head event already on the wire."""
        self.tracker = MessageTracker()
        self.zero_writes = 0
        self.group: PortServiceGroup | None = None

    def put_message(self, event: DmusKernelEvent) -> None:
        chain = event.chain()
        for e in chain:
            e.next_event = None
        queue = self.queue
        floor = 1 if self.sent else 0  # a head half on the wire stays the head
        for e in chain:
            # After every event of the same or an earlier time: equal times keep order.
            i = len(queue)
            while i > floor and queue[i - 1].pres_time_100ns > e.pres_time_100ns:
                i -= 1
            queue.insert(i, e)
        if self.state == KsState.RUN:
            self.play()

    def set_state(self, state: KsState) -> None:
        leaving_run = self.state == KsState.RUN and state != KsState.RUN
        self.state = state
        if state == KsState.RUN:
            self.play()
        elif self.group is not None:
            self.group.cancel_delayed_service()
        if state == KsState.STOP:
            self._give_back()
            self.tracker.reset()
            self.zero_writes = 0
        if leaving_run:
            self.owner.hw.publish_statistics()

    def _give_back(self) -> None:
        queue, self.queue = self.queue, []
        self.sent = 0
        for event in queue:
            self.owner.allocator.put_message(event)

    def request_service(self) -> None:
        """The delayed service of the stream's group: send what is due."""
        if self.state == KsState.RUN:
            self.play()

    def play(self) -> None:
        """Send every due event in order; arm the timer for the next (or a retry)."""
        owner, hw, queue = self.owner, self.owner.hw, self.queue
        group = self.group
        now = owner.clock.get_time()
        while queue and queue[0].pres_time_100ns <= now:
            event = queue[0]
            data = _data_of(event)[self.sent:]
            taken = hw.sync.call_synchronized_routine(hw.send_bytes, data, self.tracker)
            self.sent += taken
            if taken < len(data):
                hw.stats["short_writes" if taken else "zero_writes"] += 1
                self.zero_writes = 0 if taken else self.zero_writes + 1
                if self.zero_writes >= MAX_ZERO_WRITES:
                    # The card takes nothing: this event is lost, the rest may yet go.
                    self.zero_writes = 0
                    self.sent = 0
                    hw.stats["events_lost"] += 1
                    owner.allocator.put_message(queue.pop(0))
                    continue
                if group is not None:
                    group.request_delayed_service(-RETRY_100NS)
                return
            self.zero_writes = 0
            self.sent = 0
            owner.allocator.put_message(queue.pop(0))
        if queue and group is not None:
            group.request_delayed_service(max(1, queue[0].pres_time_100ns))

    def connect_output(self, sink: MXF) -> None:
        raise StatusError(Status.INVALID_DEVICE_REQUEST, "a render stream has no output")

    def disconnect_output(self, sink: MXF) -> None:
        raise StatusError(Status.INVALID_DEVICE_REQUEST, "a render stream has no output")

    def close(self) -> None:
        self.set_state(KsState.STOP)
        if self.group is not None:
            self.group.remove_member(self)
        self.owner.renders.pop(self.pin, None)


class DmusUartCapture(CaptureMXF):
    """The capture stream: what the ISR kept, put into the port's sink by `service`."""

    def __init__(self, owner: DMusUartMiniport) -> None:
        super().__init__(owner.allocator)
        self.owner = owner

    def set_state(self, state: KsState) -> None:
        hw = self.owner.hw
        leaving_run = self.state == KsState.RUN and state != KsState.RUN
        with hw.sync.lock:
            self.state = state
            if state in (KsState.STOP, KsState.ACQUIRE):
                hw.ring.clear()
        if leaving_run:
            hw.publish_statistics()

    def close(self) -> None:
        hw = self.owner.hw
        with hw.sync.lock:
            self.owner.capture = None
            hw.ring.clear()


def _data_of(event: DmusKernelEvent) -> bytes:
    if event.flags & DMUS_KEF_PACKAGE_EVENT and event.package is not None:
        return b"".join(e.data for e in event.package.chain())
    return event.data


class DMusUartMiniport(MiniportDMus):
    """IMiniportDMus for an MPU-401 in UART mode. See the module docstring."""

    def __init__(self, prefetch: int | str = DEFAULT_PREFETCH,
                 clsid: str = CLSID_MiniportDriverDMusUART, **options: Any) -> None:
        if prefetch == "dont_hold":
            prefetch = DONT_HOLD_FOR_SEQUENCING
        valid = type(prefetch) is int and (
            0 <= prefetch < 1 << 63 or prefetch == DONT_HOLD_FOR_SEQUENCING)
        if not valid:
            raise StatusError(Status.INVALID_PARAMETER,
                              'prefetch must be an integer >= 0 (100 ns) or "dont_hold"')
        self.prefetch: int = int(prefetch)
        self.hw = _Hardware(self, clsid=clsid, **options)
        if self.hw.clsid == CLSID_MiniportDriverUart:
            raise StatusError(Status.INVALID_PARAMETER, "that is the MIDI UART's clsid")
        self.clsid = self.hw.clsid
        self.capture: DmusUartCapture | None = None
        self.renders: dict[int, DmusUartRender] = {}
        self.allocator: AllocatorMXF
        self.clock: MasterClock
        self._port: Port | None = None
        self._group: PortServiceGroup | None = None

    def get_description(self) -> FilterDescriptor:
        return self.hw.get_description()

    def init(self, resources: ResourceList, port: Port) -> PortServiceGroup | None:
        self._group = self.hw.init(resources, port)
        self._port = port
        return self._group

    def new_stream(
        self, pin: int, stream_type: DmusStreamType, fmt: DataFormat,
        allocator: AllocatorMXF, master_clock: MasterClock,
    ) -> tuple[MXF, PortServiceGroup | None, int]:
        self.allocator, self.clock = allocator, master_clock
        if stream_type == DmusStreamType.MIDI_CAPTURE and pin == CAPTURE_PIN:
            if self.capture is not None:
                raise StatusError(Status.INSUFFICIENT_RESOURCES, "the capture stream is in use")
            with self.hw.sync.lock:
                self.hw.ring.clear()
                self.capture = DmusUartCapture(self)
            return self.capture, self._group, 0
        if stream_type == DmusStreamType.MIDI_RENDER and pin in (RENDER_PIN, DMUS_RENDER_PIN):
            if pin in self.renders:
                raise StatusError(Status.INSUFFICIENT_RESOURCES, f"render pin {pin} is in use")
            if self._port is None:
                raise StatusError(Status.INVALID_DEVICE_STATE, "new_stream before init")
            stream = DmusUartRender(self, pin)
            group = self._port.new_service_group()
            group.support_delayed_service()
            group.add_member(stream)
            stream.group = group
            self.renders[pin] = stream
            return stream, None, self.prefetch
        raise StatusError(Status.INVALID_DEVICE_REQUEST, f"pin {pin} cannot stream that way")

    def service(self) -> None:
        """The port's sink in the ISR's group: what the ISR kept goes to the capture sink
        as one INCOMPLETE event, stamped with the time of its first byte."""
        capture, hw = self.capture, self.hw
        if capture is None:
            return
        with hw.sync.lock:
            data, when = bytes(hw.ring), hw.ring_time
            hw.ring.clear()
        if not data:
            return
        try:
            event = self.allocator.get_message()
        except StatusError:
            hw.stats["capture_overflows"] += len(data)
            return
        event.channel_group, event.pres_time_100ns = 1, when
        event.flags, event.data = DMUS_KEF_EVENT_INCOMPLETE, data
        capture.put_message(event)

    def statistics(self) -> dict[str, int]:
        return self.hw.statistics()

    def close(self) -> None:
        self.hw.close()
