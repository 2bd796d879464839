"""DirectMusic vocabulary the kernel, the miniport hosts and the SDK agree on.

Values are those of dmusicks.h and dmusbuff.h:

* `DmusStreamType`: DMUS_STREAM_TYPE (what IMiniportDMus::NewStream is asked for).
* `DMUS_KEF_*`: DMUS_KERNEL_EVENT.usFlags.
* `DMUS_EVENT_STRUCTURED`: DMUS_EVENTHEADER.dwFlags (a whole MIDI message).
* `DONT_HOLD_FOR_SEQUENCING`: a schedule pre-fetch meaning "hand me every event
  at once, I sequence them myself" (what Windows' DMusUART returns).
* `EVENT_HEADER`: DMUS_EVENTHEADER {cbEvent u32, dwChannelGroup u32, rtDelta i64
  (100 ns), dwFlags u32}, packed to 4 (20 bytes); each event, header and data,
  is padded to 8 bytes (`event_size`, DMUS_EVENT_SIZE).

How DirectMusic events travel in this emulator's rings (the record layout, one
for every ring that carries DirectMusic data):

* A record's payload is `GROUP_PREFIX` (the channel group, u32 little-endian)
  followed by the event's bytes. That is the layout of the client's ring of a
  pin opened with KSDATAFORMAT_SUBTYPE_DIRECTMUSIC, and of the kernel-miniport
  ring of every stream of a DirectMusic miniport (IMiniportDMus). A MIDI pin's
  or a MIDI miniport's rings carry plain MIDI bytes, as before; the kernel adds
  or strips the prefix between the two (a MIDI side is channel group 1).
* Channel groups are 1..`MAX_CHANNEL_GROUP` (DMUS_KERNEL_EVENT.usChannelGroup is
  a USHORT); 0 is refused (it is no group).
* `RECORD_FLAG_INCOMPLETE` on a record a DirectMusic miniport's host writes to
  the kernel is DMUS_KEF_EVENT_INCOMPLETE: raw capture bytes (or a SysEx
  fragment) the port must parse. Records without it hold whole messages.
* Timestamps on a DirectMusic miniport's rings are master-clock times (the
  shared monotonic clock, 100 ns): the presentation time of a render event, the
  stamp of a captured one.

The DirectMusic buffer (what a client reads and writes on such a pin,
dmusbuff.h) is a sequence of events, each an `EVENT_HEADER` and cbEvent data
bytes, the pair zero-padded to 8 bytes (`event_size`). `DmusEvent` is one event,
`pack_buffer` and `unpack_buffer` the one encoder and the one validating decoder:

* rtDelta counts (100 ns) from the buffer's start time, not from the event
  before (unlike KSMUSICFORMAT's TimeDeltaMs); it is never negative.
* A structured event (DMUS_EVENT_STRUCTURED) is exactly one MIDI 1.0 message that
  is not a SysEx (`ipc.midi.check_message`): DirectMusic packs structured events
  from a channel message DWORD, and SysEx as unstructured bytes.
* An unstructured event holds SysEx bytes: a whole SysEx (F0, data bytes 00-7F,
  F7) or a piece of one, for a SysEx longer than one buffer has room for: F0
  only as its first byte, F7 only as its last, data bytes between. A piece
  without F0 continues the SysEx of the stream's event before it (this grammar
  checks each event alone, so a long SysEx may be split across buffers).
* dwFlags has no other bits; dwChannelGroup is 1..MAX_CHANNEL_GROUP.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from enum import IntEnum
from typing import Final, NamedTuple

from ipc.midi import SYSEX_END, SYSEX_START, InvalidMessage, check_message

__all__ = [
    "DMUS_EVENT_STRUCTURED",
    "DMUS_KEF_EVENT_COMPLETE",
    "DMUS_KEF_EVENT_INCOMPLETE",
    "DMUS_KEF_PACKAGE_EVENT",
    "DONT_HOLD_FOR_SEQUENCING",
    "EVENT_FLAGS",
    "EVENT_HEADER",
    "GROUP_PREFIX",
    "MAX_CHANNEL_GROUP",
    "RECORD_FLAG_INCOMPLETE",
    "DmusEvent",
    "DmusFramingError",
    "DmusStreamType",
    "check_event",
    "event_size",
    "join_group",
    "pack_buffer",
    "split_group",
    "unpack_buffer",
]


class DmusStreamType(IntEnum):
    """DMUS_STREAM_TYPE."""

    MIDI_INVALID = -1
    MIDI_RENDER = 0
    MIDI_CAPTURE = 1
    WAVE_SINK = 2


DMUS_KEF_EVENT_COMPLETE: Final = 0x0000
"""The whole message is in this event's data."""
DMUS_KEF_EVENT_INCOMPLETE: Final = 0x0001
"""The message goes on past this event: a SysEx fragment, or raw capture bytes."""
DMUS_KEF_PACKAGE_EVENT: Final = 0x0002
"""The event is a package: its `package` chain is handled atomically."""

DMUS_EVENT_STRUCTURED: Final = 0x00000001
"""DMUS_EVENTHEADER.dwFlags: the event is one whole (parsable) MIDI message."""

DONT_HOLD_FOR_SEQUENCING: Final = 0x8000000000000000
"""A schedule pre-fetch: the port hands every event on at once, unsequenced."""

EVENT_HEADER: Final = struct.Struct("<IIqI")
"""DMUS_EVENTHEADER (pshpack4): cbEvent, dwChannelGroup, rtDelta, dwFlags."""

GROUP_PREFIX: Final = struct.Struct("<I")
"""The channel group in front of every DirectMusic record's bytes."""

MAX_CHANNEL_GROUP: Final = 0xFFFF

RECORD_FLAG_INCOMPLETE: Final = 0x0800
"""Record flag (DirectMusic miniport → kernel): DMUS_KEF_EVENT_INCOMPLETE bytes."""


def event_size(cb_event: int) -> int:
    """DMUS_EVENT_SIZE: bytes one event with `cb_event` data bytes takes in a buffer."""
    return (EVENT_HEADER.size + cb_event + 7) & ~7


def join_group(channel_group: int, data: bytes | bytearray | memoryview) -> bytes:
    """A DirectMusic record's payload: `channel_group` then `data`.

    ValueError for a group outside 1..MAX_CHANNEL_GROUP.
    """
    if not 1 <= channel_group <= MAX_CHANNEL_GROUP:
        raise ValueError(f"channel group {channel_group} is not in 1..{MAX_CHANNEL_GROUP}")
    return GROUP_PREFIX.pack(channel_group) + bytes(data)


def split_group(payload: bytes | bytearray | memoryview) -> tuple[int, bytes]:
    """`(channel_group, data)` of a DirectMusic record's payload.

    ValueError (and nothing else) for a payload shorter than the prefix or a group
    outside 1..MAX_CHANNEL_GROUP: what a peer wrote is checked before it is used.
    """
    if len(payload) < GROUP_PREFIX.size:
        raise ValueError(f"a {len(payload)}-byte record has no channel group")
    (group,) = GROUP_PREFIX.unpack_from(payload)
    if not 1 <= group <= MAX_CHANNEL_GROUP:
        raise ValueError(f"channel group {group} is not in 1..{MAX_CHANNEL_GROUP}")
    return group, bytes(payload[GROUP_PREFIX.size:])


# The schedule pre-fetch on the wire (added after the vocabulary above).
__all__ += ["DONT_HOLD_ON_WIRE", "MAX_WIRE_PREFETCH", "prefetch_from_wire", "prefetch_to_wire"]

DONT_HOLD_ON_WIRE: Final = -1
"""DONT_HOLD_FOR_SEQUENCING in a NewStream reply's "prefetch": the wire's ints are
+-2**53 (ipc.protocol INT_BOUNDS), and no real pre-fetch is negative."""
MAX_WIRE_PREFETCH: Final = 1 << 53
"""The largest pre-fetch a reply carries (28 years): longer ones are sent as this."""


def prefetch_to_wire(prefetch: int) -> int:
    """A schedule pre-fetch for a reply: DONT_HOLD_FOR_SEQUENCING as DONT_HOLD_ON_WIRE,
    anything longer than MAX_WIRE_PREFETCH as that."""
    if prefetch == DONT_HOLD_FOR_SEQUENCING:
        return DONT_HOLD_ON_WIRE
    return min(prefetch, MAX_WIRE_PREFETCH)


def prefetch_from_wire(value: object) -> int:
    """A schedule pre-fetch from a reply: an int 0 <= x < 2**63, or DONT_HOLD_ON_WIRE /
    DONT_HOLD_FOR_SEQUENCING (both give DONT_HOLD_FOR_SEQUENCING). ValueError otherwise."""
    if type(value) is not int:
        raise ValueError(f"a schedule pre-fetch is an int, not {type(value).__name__}")
    if value in (DONT_HOLD_ON_WIRE, DONT_HOLD_FOR_SEQUENCING):
        return DONT_HOLD_FOR_SEQUENCING
    if not 0 <= value < 1 << 63:
        raise ValueError(f"bad schedule pre-fetch {value}")
    return value


EVENT_FLAGS: Final = DMUS_EVENT_STRUCTURED
"""Every DMUS_EVENTHEADER.dwFlags bit this grammar knows; others are refused."""
MAX_RT_DELTA: Final = (1 << 63) - 1
MAX_EVENT_BYTES: Final = 0xFFFFFFFF
"""cbEvent is a DWORD."""

_SYSEX_BODY: Final = re.compile(rb"^\xf0?[\x00-\x7f]*\xf7?$")


class DmusFramingError(ValueError):
    """A DirectMusic buffer or event that breaks the grammar.

    `offset` is where the faulty event starts in the buffer (for `pack_buffer`:
    where it would have started), `reason` what is wrong; `str()` says both.
    """

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"event at offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason


class DmusEvent(NamedTuple):
    """One event of a DirectMusic buffer.

    `channel_group` (1..MAX_CHANNEL_GROUP), `rt_delta` (100 ns from the buffer's
    start time), `flags` (dwFlags: DMUS_EVENT_STRUCTURED or 0), `data` (the
    message, or SysEx bytes when unstructured).
    """

    channel_group: int
    rt_delta: int
    flags: int
    data: bytes

    @property
    def structured(self) -> bool:
        return bool(self.flags & DMUS_EVENT_STRUCTURED)


def check_event(
    channel_group: int, rt_delta: int, flags: int, data: bytes | bytearray | memoryview,
    offset: int = 0,
) -> None:
    """DmusFramingError (naming `offset`) unless the event follows the grammar (see the
    module docstring): a group in 1..MAX_CHANNEL_GROUP, 0 <= rt_delta < 2**63, no
    unknown flag bits, 1..2**32-1 data bytes that are one non-SysEx MIDI message
    when structured, SysEx bytes (whole or a piece) when not."""
    if not 1 <= channel_group <= MAX_CHANNEL_GROUP:
        raise DmusFramingError(
            offset, f"channel group {channel_group} is not in 1..{MAX_CHANNEL_GROUP}")
    if not 0 <= rt_delta <= MAX_RT_DELTA:
        raise DmusFramingError(offset, f"rtDelta {rt_delta} is negative or past 2**63-1")
    if flags & ~EVENT_FLAGS or flags < 0:
        raise DmusFramingError(offset, f"unknown dwFlags bits {flags & ~EVENT_FLAGS:#x}")
    size = len(data)
    if size == 0:
        raise DmusFramingError(offset, "cbEvent is 0: an event without data")
    if size > MAX_EVENT_BYTES:
        raise DmusFramingError(offset, f"{size} data bytes do not fit cbEvent (a DWORD)")
    if flags & DMUS_EVENT_STRUCTURED:
        if data[0] == SYSEX_START:
            raise DmusFramingError(
                offset, "a structured event holds a SysEx: SysEx travels unstructured")
        try:
            check_message(bytes(data))
        except InvalidMessage as exc:
            raise DmusFramingError(offset, f"structured event: {exc}") from None
        return
    if _SYSEX_BODY.match(data) is None:
        raise DmusFramingError(offset, _not_sysex(bytes(data)))


def _not_sysex(data: bytes) -> str:
    """Why `data` is not SysEx bytes (F0 first or not at all, F7 last or not at all)."""
    last = len(data) - 1
    for i, byte in enumerate(data):
        if byte < 0x80 or (byte == SYSEX_START and i == 0) or (byte == SYSEX_END and i == last):
            continue
        return (f"unstructured byte {i} is {byte:#04x}: an unstructured event holds SysEx "
                "bytes (F0 first, F7 last, 00-7f between)")
    return "an unstructured event holds SysEx bytes"  # pragma: no cover - the regex agrees


def pack_buffer(events: Iterable[tuple[int, int, int, bytes | bytearray | memoryview]]) -> bytes:
    """A DirectMusic buffer from `DmusEvent`s (or `(channel_group, rt_delta, flags, data)`
    tuples), each header + data zero-padded to 8 bytes.

    DmusFramingError (and no buffer) if any event breaks the grammar (`check_event`).
    """
    out = bytearray()
    for channel_group, rt_delta, flags, data in events:
        check_event(channel_group, rt_delta, flags, data, len(out))
        size = len(data)
        out += EVENT_HEADER.pack(size, channel_group, rt_delta, flags)
        out += data
        out += bytes(event_size(size) - EVENT_HEADER.size - size)
    return bytes(out)


def unpack_buffer(buf: bytes | bytearray | memoryview) -> list[DmusEvent]:
    """The events of a DirectMusic buffer, in buffer order.

    DmusFramingError naming the offset, and nothing returned, for a header cut
    short, cbEvent 0, cbEvent past the end, padding missing or not zero, or an
    event that breaks the grammar (`check_event`).
    """
    view = memoryview(buf).cast("B")
    size = len(view)
    events: list[DmusEvent] = []
    pos = 0
    header = EVENT_HEADER
    while pos < size:
        if size - pos < header.size:
            raise DmusFramingError(
                pos, f"the header is cut short ({size - pos} of {header.size} bytes)")
        cb_event, group, rt_delta, flags = header.unpack_from(view, pos)
        start = pos + header.size
        if cb_event == 0:
            raise DmusFramingError(pos, "cbEvent is 0: an event without data")
        if cb_event > size - start:
            raise DmusFramingError(
                pos, f"cbEvent {cb_event} runs past the end ({size - start} bytes left)")
        end = start + cb_event
        padded = pos + event_size(cb_event)
        if padded > size:
            raise DmusFramingError(pos, f"the event is not padded to 8 bytes "
                                        f"({padded - size} padding bytes missing)")
        if any(view[end:padded]):
            raise DmusFramingError(pos, "non-zero padding after the event")
        data = bytes(view[start:end])
        check_event(group, rt_delta, flags, data, pos)
        events.append(DmusEvent(group, rt_delta, flags, data))
        pos = padded
    return events
