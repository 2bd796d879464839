"""Miniports used by the tests, loaded by spec (`tests.probe_miniports:Class`).

They are ordinary miniports written against the public contract; their
render streams take command bytes and their capture streams report what
happened as note-on messages, so a test sees the kernel's behaviour from
outside, through real processes.
"""

from __future__ import annotations

import dataclasses

from ipc.ks import (
    KSDATAFORMAT_SUBTYPE_MIDI_BUS,
    KSDATAFORMAT_TYPE_WILDCARD,
    DataFlow,
    DataRange,
    FilterDescriptor,
    PinDescriptor,
)
from ipc.runtime import now_100ns
from miniports.base import (
    DataFormat,
    KsState,
    MiniportMidi,
    MiniportMidiStream,
    Port,
    PortServiceGroup,
    ResourceList,
    ServiceSink,
    Status,
    StatusError,
)
from miniports.loopback import LoopbackMiniport, LoopbackRenderStream

DESCRIPTION = FilterDescriptor(
    pins=(PinDescriptor("Commands", DataFlow.IN), PinDescriptor("Reports", DataFlow.OUT))
)


class _Capture(MiniportMidiStream):
    def __init__(self) -> None:
        self.fifo = bytearray()

    def read(self, max_bytes: int) -> bytes:
        data = bytes(self.fifo[:max_bytes])
        del self.fifo[: len(data)]
        return data


class _Sink(ServiceSink):
    def __init__(self, probe: GroupProbe, sink_id: int) -> None:
        self.probe = probe
        self.sink_id = sink_id

    def request_service(self) -> None:
        self.probe.report(self.sink_id)


class _Commands(MiniportMidiStream):
    def __init__(self, probe: GroupProbe) -> None:
        self.probe = probe

    def write(self, data: bytes) -> int:
        for byte in data:
            self.probe.command(byte)
        return len(data)


class GroupProbe(MiniportMidi):
    """Service groups: main = [A, group_a, D]; group_a = [B, C]; capture reports on `cap`.

    Commands (render bytes): 1 request main three times; 2 delayed (20 ms) on
    group_a; 3 delayed then cancelled; 4 remove C from group_a then request it;
    5 report marker 0x55; 6 absolute delayed (30 ms) on group_a.
    """

    def get_description(self) -> FilterDescriptor:
        return DESCRIPTION

    def init(self, resources: ResourceList, port: Port) -> PortServiceGroup | None:
        self.port = port
        self.capture: _Capture | None = None
        self.main = port.new_service_group()
        self.group_a = port.new_service_group()
        self.cap = port.new_service_group()
        self.sinks = {i: _Sink(self, i) for i in (0x0A, 0x0B, 0x0C, 0x0D)}
        self.main.add_member(self.sinks[0x0A])
        self.main.add_member(self.group_a)
        self.main.add_member(self.sinks[0x0D])
        self.group_a.add_member(self.sinks[0x0B])
        self.group_a.add_member(self.sinks[0x0C])
        self.group_a.support_delayed_service()
        return None

    def new_stream(
        self, pin: int, capture: bool, fmt: DataFormat
    ) -> tuple[MiniportMidiStream, PortServiceGroup | None]:
        if capture:
            self.capture = _Capture()
            return self.capture, self.cap
        return _Commands(self), None

    def report(self, value: int) -> None:
        if self.capture is not None and self.capture.state == KsState.RUN:
            self.capture.fifo += bytes([0x90, value, 1])
            self.port.notify(self.cap)

    def command(self, byte: int) -> None:
        if byte == 1:
            for _ in range(3):
                self.main.request_service()
        elif byte == 2:
            self.group_a.request_delayed_service(-200_000)
        elif byte == 3:
            self.group_a.request_delayed_service(-2_000_000)
            self.group_a.cancel_delayed_service()
        elif byte == 4:
            self.group_a.remove_member(self.sinks[0x0C])
            self.group_a.request_service()
        elif byte == 5:
            self.report(0x55)
        elif byte == 6:
            self.group_a.request_delayed_service(now_100ns() + 300_000)


class FailingWrite(GroupProbe):
    """Every write fails with a device error."""

    def new_stream(
        self, pin: int, capture: bool, fmt: DataFormat
    ) -> tuple[MiniportMidiStream, PortServiceGroup | None]:
        stream, group = super().new_stream(pin, capture, fmt)
        if not capture:

            def broken(data: bytes) -> int:
                raise StatusError(Status.IO_DEVICE_ERROR, "the cable is unplugged")

            stream.write = broken  # type: ignore[method-assign]
        return stream, group


class GarbageOnWrite(GroupProbe):
    """Each write sends malformed frames to the kernel over the miniport's own bus socket."""

    def new_stream(
        self, pin: int, capture: bool, fmt: DataFormat
    ) -> tuple[MiniportMidiStream, PortServiceGroup | None]:
        stream, group = super().new_stream(pin, capture, fmt)
        if not capture:
            port = self.port

            def garbage(data: bytes) -> int:
                sock = port.rpc.socket  # type: ignore[attr-defined]
                sock.send(b"\xc1 not msgpack")
                sock.send(b"\x94\x00\x07\xa9interrupt\x91\xa3bad")  # [0, 7, "interrupt", ["bad"]]
                sock.send(b"\x94\x03\x00\xa5nope!\x90")
                sock.send(b"\x94\x03\x00\xa9interrupt\x91\x91\xcd\x03\xe7")  # unknown group 999
                return len(data)

            stream.write = garbage  # type: ignore[method-assign]
        return stream, group


class FailingInit(GroupProbe):
    def init(self, resources: ResourceList, port: Port) -> PortServiceGroup | None:
        raise StatusError(Status.IO_DEVICE_ERROR, "no ACK from the hardware")


class RegistryProbe(GroupProbe):
    """Command 7 reports device properties and registry round trips as a SysEx of JSON."""

    def command(self, byte: int) -> None:
        if byte != 7:
            super().command(byte)
            return
        import json

        from ipc.status import BufferTooSmall

        result: dict[str, object] = {}
        try:
            self.port.get_device_property(9, 2)
        except BufferTooSmall as exc:
            result["needed"] = exc.needed
        name = self.port.get_device_property(9, 256)
        result["friendly_name"] = name.decode("utf-16-le").rstrip("\0")
        key = self.port.new_registry_key(1, "Settings")
        key.set_value("Volume", 90)
        key.set_value("Names", ["a", "b"])
        sub = key.new_sub_key("Deeper")
        sub.set_value("Blob", b"\x01\x02")
        result["volume"] = key.query_value("VOLUME")
        result["values"] = sorted(key.enumerate_values())
        try:
            key.delete_key()
        except StatusError as exc:
            result["delete_with_subkey"] = exc.status
        sub.delete_key()
        key.delete_value("Names")
        try:
            key.query_value("Names")
        except StatusError as exc:
            result["deleted"] = exc.status
        try:
            self.port.get_device_property(999, 10)
        except StatusError as exc:
            result["unknown"] = exc.status
        if self.capture is not None:
            self.capture.fifo += b"\xf0" + json.dumps(result).encode() + b"\xf7"
            self.port.notify(self.cap)


class DroppingLoopback(LoopbackMiniport):
    """Breaks the contract: a write of more than 64 bytes says "all taken" and loses them."""

    def cable_send(self, data: bytes) -> int:
        if len(data) > 64:
            return len(data)
        return super().cable_send(data)


class _PickyRenderStream(LoopbackRenderStream):
    def set_format(self, fmt: DataFormat) -> None:
        if fmt.sub_format == KSDATAFORMAT_SUBTYPE_MIDI_BUS:
            raise StatusError(Status.NOT_SUPPORTED, "this stream plays MIDI only")


class FormatProbe(LoopbackMiniport):
    """A loopback whose render pin also lists MIDI_BUS, which its stream's set_format
    refuses, and with its own DataRangeIntersection: a DirectMusic range does not
    match, a wildcard sub-format is left to the port's default (NOT_IMPLEMENTED)."""

    def get_description(self) -> FilterDescriptor:
        desc = super().get_description()
        bus = DataRange(sub_format=KSDATAFORMAT_SUBTYPE_MIDI_BUS)
        render = dataclasses.replace(desc.pins[0], data_ranges=(DataRange(), bus))
        return dataclasses.replace(desc, pins=(render, *desc.pins[1:]))

    def data_range_intersection(
        self, pin: int, client_format: DataFormat, miniport_range: DataRange
    ) -> DataFormat:
        if client_format.sub_format == KSDATAFORMAT_TYPE_WILDCARD:
            raise StatusError(Status.NOT_IMPLEMENTED)
        if client_format.sub_format != miniport_range.sub_format:
            raise StatusError(Status.NO_MATCH)
        return DataFormat(sub_format=miniport_range.sub_format)

    def new_stream(
        self, pin: int, capture: bool, fmt: DataFormat
    ) -> tuple[MiniportMidiStream, PortServiceGroup | None]:
        stream, group = super().new_stream(pin, capture, fmt)
        if isinstance(stream, LoopbackRenderStream):
            stream.__class__ = _PickyRenderStream
        return stream, group


class InstanceProbe(LoopbackMiniport):
    """A loopback whose capture pin allows 3 instances in all but 2 per filter instance."""

    def __init__(self) -> None:
        super().__init__(capture_instances=3)

    def get_description(self) -> FilterDescriptor:
        desc = super().get_description()
        capture = dataclasses.replace(desc.pins[3], max_global_instances=3,
                                      max_filter_instances=2)
        return dataclasses.replace(desc, pins=(*desc.pins[:3], capture))
