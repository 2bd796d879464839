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

Packed records (`ipc.midi.FLAG_PACKED`, one ring record for many channel messages
with one timestamp): `feed_packed` gives such a run as ONE record, so the kernel
does no Python step per message on the way to the client; `check_render` checks
the packed records a client wrote before the kernel uses them; `unpacked` splits
them for monitors, which see one record per message as before.
"""

from __future__ import annotations

import collections
import re
from typing import Final

from ipc.midi import (
    FLAG_PACKED,
    FLAG_SYSEX,
    FLAG_SYSEX_ABORTED,
    FLAG_SYSEX_MORE,
    MESSAGE_LENGTH,
    MessageAssembler,
    Record,
    is_packed_run,
    split_packed,
)
from ipc.ring import Record as RingRecord

_THREE_BYTE_RUN: Final = re.compile(rb"(?:[\x80-\xbf\xe0-\xef][\x00-\x7f][\x00-\x7f])+")
"""Whole channel messages of three bytes, each with its status byte, back to back."""

__all__ = [
    "FLAG_SYSEX",
    "FLAG_SYSEX_ABORTED",
    "FLAG_SYSEX_MORE",
    "MidiStreamParser",
    "check_render",
    "packed_count",
    "unpacked",
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
        if self._need and not self._in_sysex:
            finished = self._finish_pending(data, timestamp)
            if finished is None:
                return super().feed(data, timestamp)
            head, rest = finished
            return head + self.feed(rest, timestamp) if rest else head
        if self._in_sysex:
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

    def _finish_pending(self, data: bytes, timestamp: int) -> tuple[list[Record], bytes] | None:
        """If `data` starts with the data bytes the message a fragment cut still needs,
        complete it the general way and return its record and the rest of `data` (which
        then starts at a message boundary); else None, nothing taken. (A status
        or real-time byte among them stays with the rest, so that the general path
        sees it with what follows, as `feed` of the whole fragment would.)"""
        need = self._need
        if len(data) < need or max(data[:need]) >= 0x80:
            return None
        return super().feed(data[:need], timestamp), data[need:]

    def feed_packed(self, data: bytes | bytearray | memoryview, timestamp: int = 0,
                    limit: int = 3072) -> tuple[list[Record], int]:
        """As `feed`, but a leading run of two or more whole three-byte channel messages
        comes back as FLAG_PACKED records of at most `limit` bytes (at least one
        message each). Returns the records and how many messages they hold (the
        counters count messages, as `feed`'s do)."""
        if len(data) < 6:
            # No run of two to pack: `feed` (whose fast path takes one whole 3-byte
            # message, the most common fragment of all) does every check below itself.
            out = self.feed(data, timestamp)
            return out, len(out)
        if type(data) is not bytes:
            data = bytes(data)
        if self._need and not self._in_sysex:
            # The message the last fragment cut goes the general way; what follows it
            # takes the fast path again (a capture read of 4096 bytes cuts every 3-byte
            # message run, and the whole next fragment went per message).
            finished = self._finish_pending(data, timestamp)
            if finished is None:
                out = super().feed(data, timestamp)
                return out, len(out)
            head, rest = finished
            if not rest:
                return head, len(head)
            tail, count = self.feed_packed(rest, timestamp, limit)
            return head + tail, len(head) + count
        if self._in_sysex:
            out = self.feed(data, timestamp)
            return out, len(out)
        match = _THREE_BYTE_RUN.match(data)
        if match is None or match.end() < 6:
            out = self.feed(data, timestamp)
            return out, len(out)
        end = match.end()
        count = end // 3
        self._running = data[end - 3]
        self.messages += count
        if end <= limit:
            records: list[Record] = [
                (timestamp, FLAG_PACKED, data[:end] if end < len(data) else data)]
        else:
            step = max(3, limit // 3 * 3)
            run = data[:end]
            records = [(timestamp, FLAG_PACKED, run[i : i + step]) for i in range(0, end, step)]
        if end < len(data):
            after = self.feed(data[end:], timestamp)
            records += after
            count += len(after)
        return records, count


def packed_count(record: Record) -> int:
    """The messages a record the kernel made holds: a packed one's 3-byte messages."""
    return len(record[2]) // 3 if record[1] & FLAG_PACKED else 1


def unpacked(records: list[Record]) -> list[Record]:
    """One record per message (what monitors get): packed records split. The records
    were checked (`check_render`) or made by the kernel's parser."""
    if not any(r[1] & FLAG_PACKED for r in records):
        return records
    out: list[Record] = []
    for ts, flags, data in records:
        if flags & FLAG_PACKED:
            flags &= ~FLAG_PACKED
            out += [(ts, flags, m) for m in split_packed(data) or ()]
        else:
            out.append((ts, flags, data))
    return out


def check_render(records: list[RingRecord], stats: collections.Counter[str],
                 split: bool) -> list[RingRecord]:
    """The records a client wrote to a render ring with each FLAG_PACKED one checked:
    one that is not whole channel messages back to back is dropped and counted in
    `stats["malformed"]` (it came from another process). `split`: a packed record is
    replaced by one record per message (for DirectMusic, whose records are one
    message each), the records it became beyond one counted in `stats["split_extra"]`."""
    for r in records:
        if r[1] & FLAG_PACKED:
            break
    else:
        return records  # nothing to check (no generator: this runs for every batch)
    out: list[RingRecord] = []
    for record in records:
        if not record.flags & FLAG_PACKED:
            out.append(record)
            continue
        if not split:
            if not is_packed_run(record.data):
                stats["malformed"] += 1
            else:
                out.append(record)
            continue
        messages = split_packed(record.data)
        if messages is None:
            stats["malformed"] += 1
        else:
            flags = record.flags & ~FLAG_PACKED
            out += [RingRecord(record.timestamp, flags, m) for m in messages]
            # The client counts the record it wrote once: what it became beyond one
            # record, so that its loss accounting (released + flushed) still adds up.
            stats["split_extra"] += len(messages) - 1
    return out
