"""DirectMusic buffers: what a pin opened with KSDATAFORMAT_SUBTYPE_DIRECTMUSIC reads and
writes.

A buffer is a sequence of events, each a DMUS_EVENTHEADER `{cbEvent: u32,
dwChannelGroup: u32, rtDelta: i64, dwFlags: u32}` (little-endian, 20 bytes)
followed by cbEvent bytes, header and data zero-padded to 8 bytes together.
rtDelta (100 ns) counts from the buffer's start time, not from the event before
(unlike KSMUSICFORMAT, `ksclient.ksmusic`). A structured event
(DMUS_EVENT_STRUCTURED) is one MIDI message that is not a SysEx; an unstructured
one holds SysEx bytes, whole or a piece of a longer one (see `ipc.dmusic`).

    >>> buf = pack([event(b"\\x90\\x3c\\x40", channel_group=2),
    ...             event(b"\\x80\\x3c\\x00", rt_delta=5_000_000, channel_group=2)])
    >>> [(e.channel_group, e.rt_delta, e.data) for e in unpack(buf)]
    [(2, 0, b'\\x90<@'), (2, 5000000, b'\\x80<\\x00')]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final, TypeAlias

from ipc import dmusic as grammar
from ipc.dmusic import (
    DMUS_EVENT_STRUCTURED,
    EVENT_HEADER,
    MAX_CHANNEL_GROUP,
    DmusEvent,
    event_size,
)
from ipc.ks import KSDATAFORMAT_SUBTYPE_DIRECTMUSIC, DataFormat
from ipc.midi import SYSEX_END, SYSEX_START
from ipc.status import Status
from ksclient import errors

__all__ = [
    "DMUS_EVENT_STRUCTURED",
    "EVENT_HEADER",
    "FORMAT",
    "MAX_CHANNEL_GROUP",
    "Captured",
    "DmusEvent",
    "FramingError",
    "event",
    "event_size",
    "frame_captured",
    "pack",
    "unpack",
]

FORMAT: Final = DataFormat(sub_format=KSDATAFORMAT_SUBTYPE_DIRECTMUSIC)
"""The data format to open a pin with to exchange DirectMusic buffers."""


class FramingError(errors.KsError, ValueError):
    """A malformed DirectMusic buffer or event (STATUS_INVALID_PARAMETER).

    `offset`: where the faulty event starts in the buffer.
    """

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(Status.INVALID_PARAMETER, message)
        self.offset = offset

    @classmethod
    def from_grammar(cls, exc: grammar.DmusFramingError) -> FramingError:
        return cls(str(exc), exc.offset)


def _bytes(data: Any) -> bytes:
    try:
        return bytes(data)
    except (TypeError, ValueError) as exc:
        raise FramingError(f"event data {data!r} is not bytes") from exc


def event(data: Any, rt_delta: int = 0, channel_group: int = 1) -> DmusEvent:
    """One event: structured for a MIDI message, unstructured for SysEx bytes (F0 ... F7,
    or a piece of a SysEx).

    `data`: bytes or a list of ints. FramingError if it breaks the grammar.
    """
    raw = _bytes(data)
    # SysEx bytes (F0 ..., or a piece of one: data bytes, or the closing F7) are unstructured.
    sysex = bool(raw) and (raw[0] in (SYSEX_START, SYSEX_END) or raw[0] < 0x80)
    flags = 0 if sysex else DMUS_EVENT_STRUCTURED
    made = DmusEvent(channel_group, rt_delta, flags, raw)
    try:
        grammar.check_event(*made)
    except grammar.DmusFramingError as exc:
        raise FramingError.from_grammar(exc) from None
    return made


def pack(events: Iterable[tuple[int, int, int, Any]]) -> bytes:
    """A buffer from `DmusEvent`s (or `(channel_group, rt_delta, flags, data)` tuples).

    FramingError (STATUS_INVALID_PARAMETER), and no buffer, if any event breaks
    the grammar.
    """
    try:
        return grammar.pack_buffer(
            (group, delta, flags, _bytes(data)) for group, delta, flags, data in events)
    except grammar.DmusFramingError as exc:
        raise FramingError.from_grammar(exc) from None


def unpack(buffer: bytes | bytearray | memoryview) -> list[DmusEvent]:
    """The events of a buffer, in buffer order.

    FramingError (STATUS_INVALID_PARAMETER), and nothing returned, for a header
    cut short, cbEvent 0 or past the end, missing or non-zero padding, unknown
    dwFlags bits, a channel group outside 1..65535, a negative rtDelta, or data
    that is not what its flags say.
    """
    try:
        return grammar.unpack_buffer(buffer)
    except grammar.DmusFramingError as exc:
        raise FramingError.from_grammar(exc) from None


Captured: TypeAlias = tuple[int, bytes, int]
"""A captured message for `frame_captured`: (stream time, bytes, channel group)."""


def frame_captured(
    size: int, take: Callable[[], Captured | None]
) -> tuple[int | None, bytes, Captured | None, int]:
    """Frame captured messages into one DirectMusic buffer of at most `size` bytes, as a
    capture pin's `read` does: `(first time, buffer, rest, dropped)`.

    `take()` gives the next message, None when none is waiting. The first
    message's time is the buffer's (None: nothing framed); each rtDelta counts
    from it. MIDI messages become structured events, SysEx bytes unstructured;
    a SysEx that does not fit goes in as far as it does and `rest` is the
    remainder (give it back first next time). A message the grammar cannot carry
    (say an undefined real-time byte) is dropped and counted in `dropped`.
    `size` must hold the smallest event (`event_size(1)`, 24 bytes), which every
    MIDI message (at most 3 bytes) fits, so only a SysEx is ever split.
    """
    smallest = event_size(1)
    if size < smallest:
        raise ValueError(f"a DirectMusic buffer needs at least {smallest} bytes")
    out = bytearray()
    first: int | None = None
    dropped = 0
    rest: Captured | None = None
    while rest is None and size - len(out) >= smallest:
        message = take()
        if message is None:
            break
        stamp, data, group = message
        if not data:
            dropped += 1
            continue
        room = ((size - len(out)) & ~7) - EVENT_HEADER.size
        if len(data) > room:
            data, rest = data[:room], (stamp, data[room:], group)
        sysex = data[0] in (SYSEX_START, SYSEX_END) or data[0] < 0x80
        delta = 0 if first is None else max(0, stamp - first)
        try:
            out += grammar.pack_buffer(
                [(group, delta, 0 if sysex else DMUS_EVENT_STRUCTURED, data)])
        except grammar.DmusFramingError:
            dropped += 1
            rest = None
            continue
        if first is None:
            first = stamp
    return first, bytes(out), rest, dropped
