"""The kernel-streaming vocabulary shared by kernel, miniports and clients.

Filter and pin descriptors, MIDI data ranges and formats, KSSTATE, and the
GUIDs they use. These are plain data: the behaviour lives in `kernel`. Each
type converts to and from its wire form (msgpack-friendly dicts and lists);
`from_wire` validates everything, because the other side is never trusted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final

from ipc.status import Status, StatusError

KSDATAFORMAT_TYPE_MUSIC: Final = "e725d360-62cc-11cf-a5d6-28db04c10000"
KSDATAFORMAT_SUBTYPE_MIDI: Final = "1d262760-e957-11cf-a5d6-28db04c10000"
KSDATAFORMAT_SUBTYPE_MIDI_BUS: Final = "2ca15fa0-6cfe-11cf-a5d6-28db04c10000"
KSDATAFORMAT_SUBTYPE_DIRECTMUSIC: Final = "1a82f8bc-3f8b-11d2-b774-0060083316c1"
KSDATAFORMAT_SPECIFIER_NONE: Final = "0f6417d6-c318-11d0-a43f-00a0c9223196"
KSDATAFORMAT_TYPE_WILDCARD: Final = "00000000-0000-0000-0000-000000000000"

KSMUSIC_TECHNOLOGY_PORT: Final = "86c92e60-62e8-11cf-a5d6-28db04c10000"
KSMUSIC_TECHNOLOGY_SYNTH: Final = "86c92e61-62e8-11cf-a5d6-28db04c10000"
KSMUSIC_TECHNOLOGY_SQSYNTH: Final = "0ecf4380-62e9-11cf-a5d6-28db04c10000"
KSMUSIC_TECHNOLOGY_FMSYNTH: Final = "252c5c80-62e9-11cf-a5d6-28db04c10000"
KSMUSIC_TECHNOLOGY_WAVETABLE: Final = "394ec7c0-62e9-11cf-a5d6-28db04c10000"
KSMUSIC_TECHNOLOGY_SWSYNTH: Final = "37407736-3620-11d1-85d3-0000f8754380"

KSCATEGORY_AUDIO: Final = "6994ad04-93ef-11d0-a3cc-00a0c9223196"
KSCATEGORY_RENDER: Final = "65e8773e-8f56-11d0-a3b9-00a0c9223196"
KSCATEGORY_CAPTURE: Final = "65e8773d-8f56-11d0-a3b9-00a0c9223196"
KSCATEGORY_SYNTHESIZER: Final = "dff220f3-f70f-11d0-b917-00a0c9223196"
KSNODETYPE_SYNTHESIZER: Final = "dff220f3-f70f-11d0-b917-00a0c9223196"
KSNODETYPE_SPEAKER: Final = "dff21ce1-f70f-11d0-b917-00a0c9223196"
KSAUDFNAME_MIDI: Final = "185fede3-9905-11d1-95a9-00c04fb925d3"

KSFILTER_NODE: Final = -1
"""`Connection.from_node` / `to_node` value meaning "a pin of the filter itself"."""

UNLIMITED_INSTANCES: Final = 0xFFFFFFFF
"""Instance count meaning "no limit" (all ones, as in KS)."""


RENDER_FLAG_PHYSICAL_TIME: Final = 0x0100
"""Render record flag: its timestamp is a physical time on the shared clock, not a
stream time (what `ksclient.now() + delay` gives)."""
RENDER_FLAG_BUFFER_END: Final = 0x0200
"""Render record flag: the marker after a KSMUSICFORMAT buffer's records. Its payload is
the buffer's number (u64, little-endian, counted per pin handle from 0); it never
goes to the miniport: reaching it means the buffer was handed on (complete)."""
RENDER_FLAG_IN_BUFFER: Final = 0x0400
"""Render record flag: one of a buffer's records (so cancelling it knows where it starts)."""
BUFFER_MARKER: Final = struct.Struct("<Q")


class KsState(IntEnum):
    """KSSTATE. Streams walk STOP→ACQUIRE→PAUSE→RUN and back, one step at a time."""

    STOP = 0
    ACQUIRE = 1
    PAUSE = 2
    RUN = 3


class DataFlow(IntEnum):
    """KSPIN_DATAFLOW. IN: the client writes (render). OUT: the client reads (capture)."""

    IN = 1
    OUT = 2


class Communication(IntEnum):
    """KSPIN_COMMUNICATION. Streaming pins are SINK; bridge pins are NONE."""

    NONE = 0
    SINK = 1
    SOURCE = 2
    BOTH = 3
    BRIDGE = 4


def _bad(what: str) -> StatusError:
    return StatusError(Status.INVALID_PARAMETER, what)


def _str(obj: Any, key: str, limit: int = 256) -> str:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, str) or len(value) > limit:
        raise _bad(f"{key!r} must be a string of at most {limit} characters")
    return value


def _int(obj: Any, key: str, lo: int, hi: int) -> int:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise _bad(f"{key!r} must be an integer in [{lo}, {hi}]")
    return value


def _list(obj: Any, key: str, limit: int) -> list[Any]:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, list) or len(value) > limit:
        raise _bad(f"{key!r} must be a list of at most {limit} items")
    return value


@dataclass(frozen=True, slots=True)
class DataFormat:
    """KSDATAFORMAT for a music stream: what a client asks for when it opens a pin."""

    major_format: str = KSDATAFORMAT_TYPE_MUSIC
    sub_format: str = KSDATAFORMAT_SUBTYPE_MIDI
    specifier: str = KSDATAFORMAT_SPECIFIER_NONE

    def to_wire(self) -> dict[str, Any]:
        return {"major": self.major_format, "sub": self.sub_format, "spec": self.specifier}

    @classmethod
    def from_wire(cls, obj: Any) -> DataFormat:
        return cls(_str(obj, "major", 64), _str(obj, "sub", 64), _str(obj, "spec", 64))


@dataclass(frozen=True, slots=True)
class DataRange:
    """KSDATARANGE_MUSIC: the formats a pin accepts."""

    major_format: str = KSDATAFORMAT_TYPE_MUSIC
    sub_format: str = KSDATAFORMAT_SUBTYPE_MIDI
    specifier: str = KSDATAFORMAT_SPECIFIER_NONE
    technology: str = KSMUSIC_TECHNOLOGY_PORT
    channels: int = 0
    notes: int = 0
    channel_mask: int = 0xFFFF

    def matches(self, fmt: DataFormat) -> bool:
        """The port's default intersection: major, sub and specifier agree (or are wildcards)."""

        def same(ours: str, theirs: str) -> bool:
            return ours == theirs or KSDATAFORMAT_TYPE_WILDCARD in (ours, theirs)

        return (
            same(self.major_format, fmt.major_format)
            and same(self.sub_format, fmt.sub_format)
            and same(self.specifier, fmt.specifier)
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "major": self.major_format,
            "sub": self.sub_format,
            "spec": self.specifier,
            "technology": self.technology,
            "channels": self.channels,
            "notes": self.notes,
            "channel_mask": self.channel_mask,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> DataRange:
        return cls(
            _str(obj, "major", 64),
            _str(obj, "sub", 64),
            _str(obj, "spec", 64),
            _str(obj, "technology", 64),
            _int(obj, "channels", 0, 0xFFFFFFFF),
            _int(obj, "notes", 0, 0xFFFFFFFF),
            _int(obj, "channel_mask", 0, 0xFFFFFFFF),
        )


MIDI_RANGE: Final = DataRange()
"""The standard KSDATARANGE_MUSIC for a MIDI port (all 16 channels)."""

DIRECTMUSIC_RANGE: Final = DataRange(sub_format=KSDATAFORMAT_SUBTYPE_DIRECTMUSIC)


@dataclass(frozen=True, slots=True)
class PinDescriptor:
    """One pin of a filter. Its id is its index in `FilterDescriptor.pins`."""

    name: str
    dataflow: DataFlow
    communication: Communication = Communication.SINK
    data_ranges: tuple[DataRange, ...] = (MIDI_RANGE,)
    max_global_instances: int = 1
    max_filter_instances: int = 1
    min_instances: int = 0
    category: str = KSAUDFNAME_MIDI

    @property
    def streaming(self) -> bool:
        """Clients can open only streaming (SINK) pins; bridge pins are topology."""
        return self.communication in (Communication.SINK, Communication.BOTH)

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dataflow": int(self.dataflow),
            "communication": int(self.communication),
            "data_ranges": [r.to_wire() for r in self.data_ranges],
            "max_global": self.max_global_instances,
            "max_filter": self.max_filter_instances,
            "min": self.min_instances,
            "category": self.category,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> PinDescriptor:
        dataflow = _int(obj, "dataflow", 1, 2)
        communication = _int(obj, "communication", 0, 4)
        return cls(
            name=_str(obj, "name"),
            dataflow=DataFlow(dataflow),
            communication=Communication(communication),
            data_ranges=tuple(DataRange.from_wire(r) for r in _list(obj, "data_ranges", 64)),
            max_global_instances=_int(obj, "max_global", 0, UNLIMITED_INSTANCES),
            max_filter_instances=_int(obj, "max_filter", 0, UNLIMITED_INSTANCES),
            min_instances=_int(obj, "min", 0, UNLIMITED_INSTANCES),
            category=_str(obj, "category", 64),
        )


@dataclass(frozen=True, slots=True)
class NodeDescriptor:
    """A topology node inside a filter (a synth, a volume, ...)."""

    node_type: str
    name: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.node_type, "name": self.name}

    @classmethod
    def from_wire(cls, obj: Any) -> NodeDescriptor:
        return cls(_str(obj, "type", 64), _str(obj, "name"))


@dataclass(frozen=True, slots=True)
class Connection:
    """A topology edge; a node of KSFILTER_NODE means a pin of the filter itself."""

    from_node: int
    from_pin: int
    to_node: int
    to_pin: int

    def to_wire(self) -> list[int]:
        return [self.from_node, self.from_pin, self.to_node, self.to_pin]

    @classmethod
    def from_wire(cls, obj: Any) -> Connection:
        if (
            not isinstance(obj, list)
            or len(obj) != 4
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in obj)
        ):
            raise _bad("a connection is [from_node, from_pin, to_node, to_pin]")
        return cls(*obj)


@dataclass(frozen=True, slots=True)
class FilterDescriptor:
    """What `MiniportMidi.get_description()` returns: pins, nodes, connections, categories."""

    pins: tuple[PinDescriptor, ...]
    nodes: tuple[NodeDescriptor, ...] = ()
    connections: tuple[Connection, ...] = ()
    categories: tuple[str, ...] = field(
        default=(KSCATEGORY_AUDIO, KSCATEGORY_RENDER, KSCATEGORY_CAPTURE)
    )

    def validate(self) -> None:
        """Raise StatusError(INVALID_PARAMETER) unless the topology is self-consistent."""
        if not self.pins:
            raise _bad("a filter needs at least one pin")
        for pin in self.pins:
            if pin.streaming and not pin.data_ranges:
                raise _bad(f"streaming pin {pin.name!r} has no data ranges")
            if pin.max_filter_instances != UNLIMITED_INSTANCES and (
                pin.max_global_instances != UNLIMITED_INSTANCES
                and pin.max_filter_instances > pin.max_global_instances
            ):
                raise _bad(f"pin {pin.name!r}: more instances per filter than globally")
        for c in self.connections:
            for node, pin_id in ((c.from_node, c.from_pin), (c.to_node, c.to_pin)):
                if node == KSFILTER_NODE:
                    if not 0 <= pin_id < len(self.pins):
                        raise _bad(f"connection names filter pin {pin_id}, which does not exist")
                elif not 0 <= node < len(self.nodes):
                    raise _bad(f"connection names node {node}, which does not exist")

    def to_wire(self) -> dict[str, Any]:
        return {
            "pins": [p.to_wire() for p in self.pins],
            "nodes": [n.to_wire() for n in self.nodes],
            "connections": [c.to_wire() for c in self.connections],
            "categories": list(self.categories),
        }

    @classmethod
    def from_wire(cls, obj: Any) -> FilterDescriptor:
        categories = _list(obj, "categories", 32)
        if not all(isinstance(c, str) and len(c) <= 64 for c in categories):
            raise _bad("categories must be GUID strings")
        desc = cls(
            pins=tuple(PinDescriptor.from_wire(p) for p in _list(obj, "pins", 256)),
            nodes=tuple(NodeDescriptor.from_wire(n) for n in _list(obj, "nodes", 256)),
            connections=tuple(
                Connection.from_wire(c) for c in _list(obj, "connections", 1024)
            ),
            categories=tuple(categories),
        )
        desc.validate()
        return desc
