"""KSMUSICFORMAT stream buffers: what a KS MIDI pin reads and writes.

A buffer is a sequence of events, each a header `{TimeDeltaMs: u32, ByteCount:
u32}` (little-endian) followed by ByteCount bytes of MIDI, the whole padded with
zeros to a multiple of 4. The first delta counts from the buffer's presentation
time, each later one from the event before it.

    >>> buf = pack([(0, b"\\x90\\x3c\\x40"), (500, b"\\x80\\x3c\\x00")])
    >>> unpack(buf)
    [(0, b'\\x90<@'), (500, b'\\x80<\\x00')]
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final

from ipc.status import Status
from ksclient import errors

__all__ = ["HEADER", "MAX_DELTA_MS", "FramingError", "pack", "padded_size", "unpack"]

HEADER: Final = struct.Struct("<II")
MAX_DELTA_MS: Final = 0xFFFFFFFF


class FramingError(errors.KsError, ValueError):
    """A buffer whose KSMUSICFORMAT framing is malformed (STATUS_INVALID_PARAMETER)."""

    def __init__(self, message: str) -> None:
        super().__init__(Status.INVALID_PARAMETER, message)


def padded_size(byte_count: int) -> int:
    """The bytes one event of `byte_count` MIDI bytes takes, header and padding included."""
    return HEADER.size + ((byte_count + 3) & ~3)


def pack(events: Iterable[tuple[int, bytes | bytearray | memoryview]]) -> bytes:
    """A buffer from `(delta_ms, midi_bytes)` pairs.

    Raises FramingError for a delta outside 0..2**32-1 or an empty event.
    """
    out = bytearray()
    for delta, data in events:
        if not 0 <= delta <= MAX_DELTA_MS:
            raise FramingError(f"TimeDeltaMs {delta} is not a u32")
        n = len(data)
        if n == 0:
            raise FramingError("an event without bytes")
        out += HEADER.pack(delta, n)
        out += data
        out += bytes(-n & 3)
    return bytes(out)


def unpack(buffer: bytes | bytearray | memoryview) -> list[tuple[int, bytes]]:
    """The `(delta_ms, midi_bytes)` events of a buffer.

    Raises FramingError (and returns nothing) when a header is cut short, a
    ByteCount runs past the end, an event is empty, or padding is missing or
    not zero.
    """
    view = memoryview(buffer).cast("B")
    size = len(view)
    events: list[tuple[int, bytes]] = []
    pos = 0
    while pos < size:
        if size - pos < HEADER.size:
            raise FramingError(f"{size - pos} stray bytes at offset {pos}, not a header")
        delta, count = HEADER.unpack_from(view, pos)
        start = pos + HEADER.size
        if count == 0:
            raise FramingError(f"an event without bytes at offset {pos}")
        if count > size - start:
            raise FramingError(
                f"ByteCount {count} at offset {pos} runs past the end ({size - start} left)"
            )
        end = start + count
        padded = start + ((count + 3) & ~3)
        if padded > size:
            raise FramingError(f"the event at offset {pos} is not padded to 4 bytes")
        if any(view[end:padded]):
            raise FramingError(f"non-zero padding after the event at offset {pos}")
        events.append((delta, bytes(view[start:end])))
        pos = padded
    return events
