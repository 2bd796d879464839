"""DirectMusic miniports for tests (`tests.dmus_miniports:DmusLoopback`, ...).

`DmusLoopback` is an IMiniportDMus written against the public contract: its
render MXF logs every `put_message` call (the master time of the call and the
chain as it came, packages included) to `log_file` as JSON lines, holds the
events until their presentation time (a delayed service on its group) and then
plays them into its capture MXF, stamped with the master clock (whole messages,
or with `raw_capture` every byte as its own INCOMPLETE event), and gives the
render events back to the allocator. Options:

  log_file     where the put_message log goes (JSON lines); unset: no log
  prefetch     the render stream's schedule pre-fetch (100 ns), or "dont_hold"
  raw_capture  captured bytes as 1-byte DMUS_KEF_EVENT_INCOMPLETE events
  hostile      before what it captures, write malformed records straight into the
               capture ring (a short one, channel group 0, a complete record that
               is no message), as a broken host could
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ipc.dmusic import (
    DMUS_KEF_EVENT_INCOMPLETE,
    DMUS_KEF_PACKAGE_EVENT,
    DONT_HOLD_FOR_SEQUENCING,
    RECORD_FLAG_INCOMPLETE,
    DmusStreamType,
)
from ipc.ks import (
    DIRECTMUSIC_RANGE,
    KSFILTER_NODE,
    MIDI_RANGE,
    Communication,
    Connection,
    DataFlow,
    FilterDescriptor,
    PinDescriptor,
)
from miniports.contract import (
    MXF,
    AllocatorMXF,
    CaptureMXF,
    DataFormat,
    DmusKernelEvent,
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

RENDER_PIN, BRIDGE_OUT_PIN, BRIDGE_IN_PIN, CAPTURE_PIN = 0, 1, 2, 3

DESCRIPTION = FilterDescriptor(
    pins=(
        PinDescriptor("DMus Render", DataFlow.IN, data_ranges=(DIRECTMUSIC_RANGE, MIDI_RANGE)),
        PinDescriptor("Out (bridge)", DataFlow.OUT, Communication.NONE),
        PinDescriptor("In (bridge)", DataFlow.IN, Communication.NONE),
        PinDescriptor("DMus Capture", DataFlow.OUT, data_ranges=(DIRECTMUSIC_RANGE, MIDI_RANGE)),
    ),
    connections=(
        Connection(KSFILTER_NODE, RENDER_PIN, KSFILTER_NODE, BRIDGE_OUT_PIN),
        Connection(KSFILTER_NODE, BRIDGE_IN_PIN, KSFILTER_NODE, CAPTURE_PIN),
    ),
)


def describe(event: DmusKernelEvent) -> dict[str, Any]:
    out: dict[str, Any] = {"group": event.channel_group, "flags": event.flags,
                           "time": event.pres_time_100ns, "data": event.data.hex()}
    if event.flags & DMUS_KEF_PACKAGE_EVENT and event.package is not None:
        out["package"] = [describe(e) for e in event.package.chain()]
    return out


class LoopRender(MXF):
    def __init__(self, owner: DmusLoopback) -> None:
        self.owner = owner
        self.state = KsState.STOP
        self.held: list[DmusKernelEvent] = []

    def set_state(self, state: KsState) -> None:
        self.state = state
        if state == KsState.STOP:
            held, self.held = self.held, []
            for event in held:
                self.owner.allocator.put_message(event)
        elif state == KsState.RUN:
            self.owner.arm()

    def put_message(self, event: DmusKernelEvent) -> None:
        owner = self.owner
        chain = event.chain()
        owner.log({"at": owner.clock.get_time(), "events": [describe(e) for e in chain]})
        for e in chain:
            e.next_event = None
        self.held.extend(chain)
        self.held.sort(key=lambda e: e.pres_time_100ns)  # stable: same times keep order
        owner.arm()

    def connect_output(self, sink: MXF) -> None:
        raise StatusError(Status.INVALID_DEVICE_REQUEST, "a render stream has no output")

    def disconnect_output(self, sink: MXF) -> None:
        raise StatusError(Status.INVALID_DEVICE_REQUEST, "a render stream has no output")

    def close(self) -> None:
        self.set_state(KsState.STOP)
        self.owner.render = None


class LoopCapture(CaptureMXF):
    def __init__(self, owner: DmusLoopback) -> None:
        super().__init__(owner.allocator)
        self.owner = owner

    def close(self) -> None:
        self.owner.capture = None


class DmusLoopback(MiniportDMus):
    def __init__(self, log_file: str | None = None, prefetch: int | str = 200_000,
                 raw_capture: bool = False, hostile: bool = False) -> None:
        self.log_file = Path(log_file) if log_file else None
        self.prefetch = DONT_HOLD_FOR_SEQUENCING if prefetch == "dont_hold" else int(prefetch)
        self.raw_capture = raw_capture
        self.hostile = hostile
        self.render: LoopRender | None = None
        self.capture: LoopCapture | None = None
        self.allocator: AllocatorMXF
        self.clock: MasterClock
        self.port: Port | None = None
        self.group: PortServiceGroup | None = None

    def log(self, entry: dict[str, Any]) -> None:
        if self.log_file is not None:
            with self.log_file.open("a") as f:
                f.write(json.dumps(entry) + "\n")

    def get_description(self) -> FilterDescriptor:
        return DESCRIPTION

    def init(self, resources: ResourceList, port: Port) -> PortServiceGroup | None:
        self.port = port
        self.group = port.new_service_group()
        self.group.support_delayed_service()
        port.register_service_group(self.group)
        return self.group

    def new_stream(
        self, pin: int, stream_type: DmusStreamType, fmt: DataFormat,
        allocator: AllocatorMXF, master_clock: MasterClock,
    ) -> tuple[MXF, PortServiceGroup | None, int]:
        self.allocator, self.clock = allocator, master_clock
        if pin == RENDER_PIN and stream_type == DmusStreamType.MIDI_RENDER:
            if self.render is not None:
                raise StatusError(Status.INSUFFICIENT_RESOURCES, "render pin in use")
            self.render = LoopRender(self)
            return self.render, None, self.prefetch
        if pin == CAPTURE_PIN and stream_type == DmusStreamType.MIDI_CAPTURE:
            if self.capture is not None:
                raise StatusError(Status.INSUFFICIENT_RESOURCES, "capture pin in use")
            self.capture = LoopCapture(self)
            return self.capture, self.group, 0
        raise StatusError(Status.INVALID_DEVICE_REQUEST, f"pin {pin} does not stream that way")

    def arm(self) -> None:
        """Service when the earliest held event is due."""
        render, group = self.render, self.group
        if render is None or group is None or not render.held or render.state != KsState.RUN:
            return
        group.request_delayed_service(max(1, render.held[0].pres_time_100ns))

    def service(self) -> None:
        """Play the due events into the capture MXF, stamped with the master clock."""
        render = self.render
        if render is None or render.state != KsState.RUN:
            return
        now = self.clock.get_time()
        played = False
        while render.held and render.held[0].pres_time_100ns <= now:
            event = render.held.pop(0)
            data = event.data
            if event.flags & DMUS_KEF_PACKAGE_EVENT and event.package is not None:
                data = b"".join(e.data for e in event.package.chain())
            self._capture(event.channel_group, data, now)
            self.allocator.put_message(event)
            played = True
        self.arm()
        if played and self.port is not None:
            self.port.notify(self.group)

    def _capture(self, group: int, data: bytes, now: int) -> None:
        capture = self.capture
        if capture is None:
            return
        if self.hostile:
            self._garbage()
        pieces = [data[i:i + 1] for i in range(len(data))] if self.raw_capture else [data]
        for piece in pieces:
            event = self.allocator.get_message()
            event.channel_group, event.pres_time_100ns, event.data = group, now, piece
            if self.raw_capture:
                event.flags = DMUS_KEF_EVENT_INCOMPLETE
            capture.put_message(event)

    def _garbage(self) -> None:
        """What no honest host writes: straight into the capture ring, behind the port."""
        streams = getattr(self.port, "streams", {})
        for hs in streams.values():
            if hs.capture and hs.writer is not None:
                hs.writer.send(b"\x01", 1, 0)
                hs.writer.send(b"\x00\x00\x00\x00\x90\x40\x40", 1, 0)
                hs.writer.send(b"\x01\x00\x00\x00\x40\x40", 1, 0)
                hs.writer.send(b"\x01\x00\x00\x00\x40", 1, RECORD_FLAG_INCOMPLETE)


class BothKinds(DmusLoopback, MiniportMidi):
    """A class that is IMiniportDMus and IMiniportMidi: the port must take the DMus one."""

    def new_stream(  # type: ignore[override]
        self, pin: int, stream_type: Any, fmt: DataFormat, allocator: Any = None,
        master_clock: Any = None,
    ) -> Any:
        if allocator is None:
            return MiniportMidiStream(), None  # the MIDI interface: never asked for
        return super().new_stream(pin, stream_type, fmt, allocator, master_clock)


class LeakyDmusLoopback(DmusLoopback):
    """Plays like DmusLoopback but never gives its render events back to the allocator."""

    def service(self) -> None:
        allocator = self.allocator
        self.allocator = _KeepingAllocator(allocator)
        try:
            super().service()
        finally:
            self.allocator = allocator


class _KeepingAllocator(AllocatorMXF):
    """Passes everything to the real allocator except returned events (the leak)."""

    def __init__(self, inner: AllocatorMXF) -> None:
        self.inner = inner

    def get_message(self) -> DmusKernelEvent:
        return self.inner.get_message()

    def get_buffer_size(self) -> int:
        return self.inner.get_buffer_size()

    def get_buffer(self) -> bytearray:
        return self.inner.get_buffer()

    def put_buffer(self, buffer: bytearray) -> None:
        self.inner.put_buffer(buffer)

    def put_message(self, event: DmusKernelEvent) -> None:
        pass

    def set_state(self, state: KsState) -> None:
        pass

    def connect_output(self, sink: MXF) -> None:
        pass

    def disconnect_output(self, sink: MXF) -> None:
        pass


class BadPrefetchHost(DmusLoopback):
    """A hostile host: its NewStream replies carry a pre-fetch no honest host sends."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        from miniports.host import loop

        loop.prefetch_to_wire = lambda prefetch: -5  # type: ignore[assignment]


class BadKindHost(DmusLoopback):
    """A hostile host: its Init reply names a kind that does not exist."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        from miniports.host import loop

        loop.MiniportHost._kind = lambda self: "synth"  # type: ignore[method-assign]
