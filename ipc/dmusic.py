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
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Final

__all__ = [
    "DMUS_EVENT_STRUCTURED",
    "DMUS_KEF_EVENT_COMPLETE",
    "DMUS_KEF_EVENT_INCOMPLETE",
    "DMUS_KEF_PACKAGE_EVENT",
    "DONT_HOLD_FOR_SEQUENCING",
    "EVENT_HEADER",
    "GROUP_PREFIX",
    "MAX_CHANNEL_GROUP",
    "RECORD_FLAG_INCOMPLETE",
    "DmusStreamType",
    "event_size",
    "join_group",
    "split_group",
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
