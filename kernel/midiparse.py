"""The kernel's capture parser: a raw MIDI 1.0 byte stream, captured in arbitrary fragments,
into whole timestamped messages.

A miniport hands over whatever bytes its ISR collected, stamped with the ISR
time (an int in 100 ns units); the parser reassembles them by the one MIDI 1.0
grammar of `ipc.midi` (see its docstring for the rules), and delivers every
real-time byte, the undefined F9 and FD included: the client is the receiver
and decides what to ignore. SysEx comes in bounded chunks flagged with
``FLAG_SYSEX*``; a SysEx cut short by a status byte ends with a
``FLAG_SYSEX_ABORTED`` chunk.

Captured MIDI is mostly whole three-byte channel messages, each with its status
byte (note on/off, control change, pitch bend, poly pressure). The parser takes
a run of those at the start of a fragment as one regular-expression match and
slices it into messages in one comprehension, and a fragment that is exactly
one such message without a Python loop at all; whatever follows the run (or a
fragment that starts otherwise, or any fragment while a message or a SysEx is
pending) goes through `MessageAssembler.feed`. The output, counters included,
is the assembler's (tests/test_midiparse.py checks it against the assembler on
random streams).
"""

from __future__ import annotations

import re
from typing import Final

from ipc.midi import (
    FLAG_SYSEX,
    FLAG_SYSEX_ABORTED,
    FLAG_SYSEX_MORE,
    MESSAGE_LENGTH,
    MessageAssembler,
    Record,
)

_THREE_BYTE_RUN: Final = re.compile(rb"(?:[\x80-\xbf\xe0-\xef][\x00-\x7f][\x00-\x7f])+")
"""Whole channel messages of three bytes, each with its status byte, back to back."""

__all__ = [
    "FLAG_SYSEX",
    "FLAG_SYSEX_ABORTED",
    "FLAG_SYSEX_MORE",
    "MidiStreamParser",
]


class MidiStreamParser(MessageAssembler):
    """Stateful parser from a fragmented MIDI byte stream to timestamped messages.

    One instance per capture stream. ``feed(data, timestamp)`` is called with
    each captured fragment and returns ``(timestamp, flags, message_bytes)``
    records in stream order; ``reset()`` forgets a partial message when the
    stream stops. Counters `stray_bytes`, `undefined_bytes`, `aborted_sysex`
    and `messages` are `MessageAssembler`'s.
    """

    __slots__ = ()

    def __init__(self, sysex_chunk: int = 4096) -> None:
        """Create a parser whose SysEx chunks hold at most `sysex_chunk` bytes.

        Raises ValueError if `sysex_chunk` is below 2.
        """
        super().__init__(sysex_chunk, deliver_undefined_realtime=True)

    def feed(self, data: bytes | bytearray | memoryview, timestamp: int = 0) -> list[Record]:
        """As `MessageAssembler.feed`, the same records and counts; whole three-byte
        channel messages at the start of a fragment take the fast path."""
        if type(data) is not bytes:
            data = bytes(data)
        if self._need or self._in_sysex:
            return super().feed(data, timestamp)
        n = len(data)
        if n == 3:
            status = data[0]
            if (0x80 <= status < 0xF0 and MESSAGE_LENGTH[status] == 3
                    and data[1] < 0x80 and data[2] < 0x80):
                self._running = status
                self.messages += 1
                return [(timestamp, 0, data)]
            return super().feed(data, timestamp)
        match = _THREE_BYTE_RUN.match(data)
        if match is None:
            return super().feed(data, timestamp)
        end = match.end()
        out = [(timestamp, 0, data[i : i + 3]) for i in range(0, end, 3)]
        self._running = data[end - 3]
        self.messages += len(out)
        if end < n:
            out += super().feed(data[end:], timestamp)
        return out
