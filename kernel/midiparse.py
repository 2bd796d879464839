"""Turn a raw MIDI 1.0 byte stream, captured in arbitrary fragments, into whole messages.

This is the capture-side parser of the kernel's MIDI port driver.  A miniport hands over
whatever bytes its ISR collected, stamped with the ISR time (an int in 100 ns units); the
parser reassembles them into complete messages the way the MIDI 1.0 specification describes:

* Channel voice messages (0x80-0xEF) with running status.  Every emitted channel message
  carries its status byte, whether or not the wire carried it.
* System common messages (F1, F2, F3, F6).  They, SysEx, the undefined F4/F5 and a stray F7
  cancel running status.
* System real-time bytes (F8-FF, including the undefined F9 and FD) are emitted at once as
  one-byte messages wherever they appear, without disturbing the message in progress.
* System Exclusive (F0 ... F7) is delivered in bounded chunks, flagged with ``FLAG_SYSEX*``.

Records come out in the order in which they became complete in the stream, so a real-time
byte that interrupts a message is emitted before that message.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "FLAG_SYSEX",
    "FLAG_SYSEX_ABORTED",
    "FLAG_SYSEX_MORE",
    "MidiStreamParser",
]

FLAG_SYSEX: Final = 0x0001
"""The record is (part of) a System Exclusive message."""
FLAG_SYSEX_MORE: Final = 0x0002
"""More chunks of this SysEx follow."""
FLAG_SYSEX_ABORTED: Final = 0x0004
"""This SysEx was cut short by a status byte before F7; this is its last chunk."""

_SYSEX_START: Final = 0xF0
_SYSEX_END: Final = 0xF7
_TUNE_REQUEST: Final = 0xF6
_REALTIME_FIRST: Final = 0xF8

_FLAGS_MORE: Final = FLAG_SYSEX | FLAG_SYSEX_MORE
_FLAGS_ABORTED: Final = FLAG_SYSEX | FLAG_SYSEX_ABORTED


def _message_length(status: int) -> int:
    """Whole-message length for status bytes with a fixed length, 0 for the others."""
    if 0xC0 <= status <= 0xDF:
        return 2
    if 0x80 <= status <= 0xEF:
        return 3
    return {0xF1: 2, 0xF2: 3, 0xF3: 2, 0xF6: 1}.get(status, 1 if status >= 0xF8 else 0)


# Indexed by byte value so that the hot loop does one tuple lookup instead of range tests.
_LENGTH: Final[tuple[int, ...]] = tuple(_message_length(b) for b in range(256))
# One-byte bytes objects, shared by every record that needs one (real-time messages and the
# status byte prepended to running-status messages), so those cost no allocation.
_SINGLE: Final[tuple[bytes, ...]] = tuple(bytes((b,)) for b in range(256))
# Lets the C regex engine, not a Python loop, skip over SysEx payload.
_STATUS_BYTE: Final = re.compile(rb"[\x80-\xff]")


class MidiStreamParser:
    """Stateful parser from a fragmented MIDI byte stream to timestamped messages.

    One instance per capture stream.  ``feed`` is called with each captured fragment and
    returns ``(timestamp, flags, message_bytes)`` records in stream order.  ``flags`` is 0
    for everything except SysEx chunks.

    Counters (never reset, not even by :meth:`reset`):

    * ``stray_bytes``: input bytes the parser dropped: data bytes with no status to attach
      to, F4, F5, stray F7, and the input bytes of a partial channel or system common message
      abandoned because another non-real-time status byte arrived.
    * ``messages``: records returned so far (complete messages, real-time bytes and SysEx
      chunks, including empty aborting chunks).

    Once nothing is pending (e.g. after a complete message or F6), every input byte is either
    in exactly one returned record or counted in ``stray_bytes``; the only returned bytes not
    taken from the input are the status bytes prepended to running-status messages.
    """

    __slots__ = (
        "_buf",
        "_chunk",
        "_have",
        "_in_sysex",
        "_msg_ts",
        "_need",
        "_running",
        "_sysex",
        "messages",
        "stray_bytes",
    )

    def __init__(self, sysex_chunk: int = 4096) -> None:
        """Create a parser whose SysEx chunks hold at most ``sysex_chunk`` bytes.

        Raises ``ValueError`` if ``sysex_chunk`` is below 2.
        """
        if sysex_chunk < 2:
            raise ValueError(f"sysex_chunk must be at least 2, got {sysex_chunk}")
        self._chunk = sysex_chunk
        self.stray_bytes = 0
        self.messages = 0
        # Channel status for running status, 0 when there is none.
        self._running = 0
        # Partial channel / system common message: bytes so far (status first), data bytes
        # still needed (0 when no message is in progress), how many of the buffered bytes
        # came from the input (the status of a running-status message did not), and the
        # timestamp of its first input byte.
        self._buf = bytearray()
        self._need = 0
        self._have = 0
        self._msg_ts = 0
        # SysEx in progress and its bytes not yet emitted; kept shorter than _chunk between
        # calls so that appending the F7 can never overflow a chunk.
        self._in_sysex = False
        self._sysex = bytearray()

    def reset(self) -> None:
        """Forget running status and any partial message or SysEx (for a stream going to STOP).

        Bytes discarded this way are not counted in ``stray_bytes``, and an interrupted SysEx
        gets no aborting chunk: the consumer is being reset too.
        """
        self._running = 0
        self._buf.clear()
        self._need = 0
        self._have = 0
        self._in_sysex = False
        self._sysex.clear()

    def feed(
        self, data: bytes | bytearray | memoryview, timestamp: int
    ) -> list[tuple[int, int, bytes]]:
        """Parse the next fragment, captured at ``timestamp``; return the records it completes.

        Each record is ``(timestamp, flags, message_bytes)``.  A message is stamped with the
        timestamp of the fragment that delivered its first byte (its status byte, or its first
        data byte under running status); a real-time message with its own fragment's.  SysEx
        bytes still pending at the end of the fragment are emitted as a ``FLAG_SYSEX |
        FLAG_SYSEX_MORE`` chunk, so every SysEx chunk's bytes, and hence its timestamp, come
        from the fragment that returns it; an empty aborting chunk carries the timestamp of the
        fragment holding the status byte that aborted the SysEx.
        """
        if type(data) is not bytes:
            data = bytes(data)
        out: list[tuple[int, int, bytes]] = []
        n = len(data)
        i = 0
        while i < n:
            if self._in_sysex:
                i = self._scan_sysex(data, i, n, timestamp, out)
                continue
            if not self._need:
                i = self._scan_whole(data, i, n, timestamp, out)
                if i == n:
                    break
            self._feed_byte(data[i], timestamp, out)
            i += 1
        if self._sysex:
            out.append((timestamp, _FLAGS_MORE, bytes(self._sysex)))
            self._sysex.clear()
        self.messages += len(out)
        return out

    def _scan_whole(
        self, data: bytes, i: int, n: int, ts: int, out: list[tuple[int, int, bytes]]
    ) -> int:
        """Emit the run of complete channel / real-time messages starting at boundary ``i``.

        Returns the index of the first byte it could not handle as part of such a run (the
        start of a message split by the fragment end or by a real-time byte, or any other
        status byte); the caller takes that byte through the general path.
        """
        append = out.append
        length = _LENGTH
        running = self._running
        while i < n:
            b = data[i]
            if b < 0x80:
                if not running:
                    break
                j = i + length[running] - 1
                if j > n or (j - i == 2 and data[i + 1] >= 0x80):
                    break
                append((ts, 0, _SINGLE[running] + data[i:j]))
                i = j
            elif b < 0xF0:
                j = i + length[b]
                if j > n or data[i + 1] >= 0x80 or (j - i == 3 and data[i + 2] >= 0x80):
                    break
                append((ts, 0, data[i:j]))
                running = b
                i = j
            elif b >= _REALTIME_FIRST:
                append((ts, 0, _SINGLE[b]))
                i += 1
            else:
                break
        self._running = running
        return i

    def _feed_byte(self, b: int, ts: int, out: list[tuple[int, int, bytes]]) -> None:
        """Process one byte outside a SysEx: the general (slow) path of the state machine."""
        if b < 0x80:
            if self._need:
                self._buf.append(b)
                self._have += 1
                self._need -= 1
                if not self._need:
                    out.append((self._msg_ts, 0, bytes(self._buf)))
            elif self._running:
                running = self._running
                need = _LENGTH[running] - 2
                if need:
                    self._buf[:] = (running, b)
                    self._have = 1
                    self._need = need
                    self._msg_ts = ts
                else:
                    out.append((ts, 0, _SINGLE[running] + _SINGLE[b]))
            else:
                self.stray_bytes += 1
            return
        if b >= _REALTIME_FIRST:
            out.append((ts, 0, _SINGLE[b]))
            return
        if self._need:
            self.stray_bytes += self._have
            self._need = 0
        length = _LENGTH[b]
        if b < 0xF0:
            self._running = b
        else:
            self._running = 0
            if b == _SYSEX_START:
                self._in_sysex = True
                self._sysex.append(b)
                return
            if b == _TUNE_REQUEST:
                out.append((ts, 0, _SINGLE[b]))
                return
            if not length:
                self.stray_bytes += 1
                return
        self._buf[:] = _SINGLE[b]
        self._have = 1
        self._need = length - 1
        self._msg_ts = ts

    def _scan_sysex(
        self, data: bytes, i: int, n: int, ts: int, out: list[tuple[int, int, bytes]]
    ) -> int:
        """Consume SysEx payload from ``i`` up to and including the next status byte.

        Returns the index to continue at.  A status byte other than real-time or F7 ends the
        SysEx as aborted and is left unconsumed for the general path.
        """
        sysex = self._sysex
        chunk = self._chunk
        match = _STATUS_BYTE.search(data, i)
        end = n if match is None else match.start()
        while i < end:
            room = chunk - len(sysex)
            if end - i < room:
                sysex += data[i:end]
                i = end
                break
            if sysex:
                sysex += data[i : i + room]
                out.append((ts, _FLAGS_MORE, bytes(sysex)))
                sysex.clear()
            else:
                # Skip the staging buffer when a whole chunk is available (long dumps).
                out.append((ts, _FLAGS_MORE, data[i : i + room]))
            i += room
        if i == n:
            return n
        b = data[i]
        if b >= _REALTIME_FIRST:
            out.append((ts, 0, _SINGLE[b]))
            return i + 1
        self._in_sysex = False
        if b == _SYSEX_END:
            sysex.append(b)
            out.append((ts, FLAG_SYSEX, bytes(sysex)))
            sysex.clear()
            return i + 1
        out.append((ts, _FLAGS_ABORTED, bytes(sysex)))
        sysex.clear()
        return i
