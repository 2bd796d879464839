"""The MIDI 1.0 byte grammar, once, for the kernel, the miniports and the SDK.

* `SPECS` is the message table, as data (mido keeps one spec table; so do we):
  each kind of message with its status byte, its mido name and its length.
  `MESSAGE_LENGTH` is the same table indexed by byte value, for hot loops.
* `FLAG_SYSEX`, `FLAG_SYSEX_MORE`, `FLAG_SYSEX_ABORTED` are the flags a SysEx
  chunk carries on the wire (capture records, the capture ring, the SDK).
* `is_status`, `is_realtime`, `message_length`, `data_length`, ... answer
  single-byte questions from the table.
* `MessageAssembler` turns a byte stream, arriving in arbitrary fragments,
  into whole messages. Everything that parses MIDI bytes uses it: the
  kernel's capture parser (`kernel.midiparse`), the render re-framers that
  send whole messages (`miniports.midibytes`: the rtmidi miniport and the
  MPU-401's rtmidi cable). The MPU-401 miniport's MessageTracker, which only
  needs to know whether a message is unfinished, reads the table.

The rules the assembler applies:

* Channel voice messages (80-EF) with running status; every message it
  emits carries its status byte, whether or not the wire did.
* System common messages F1, F2, F3 and F6. They, SysEx (F0), a stray F7 and
  the undefined F4/F5 cancel running status.
* System real-time bytes (F8-FF) are one-byte messages, emitted at once
  wherever they appear, even inside a SysEx or a partial message, without
  disturbing it.
* System Exclusive (F0 ... F7) comes out in chunks of at most `sysex_chunk`
  bytes, flagged `FLAG_SYSEX` and, on all but the last, `FLAG_SYSEX_MORE`.
* Data bytes with no status to attach to, a stray F7, and the input bytes of
  a partial message cut short by another non-real-time status byte are
  dropped and counted (`stray_bytes`).

Two cases on which the copies of this grammar used to disagree are settled
here, one way for everyone:

* Undefined status bytes are dropped and counted (`undefined_bytes`, and in
  `stray_bytes` like every dropped byte). F4 and F5 are system common bytes,
  so they still do what any status byte does: cancel running status, abandon
  a partial message, abort a SysEx. (The rtmidi re-framer used to forward
  them as one-byte messages; the capture parser dropped them.) The undefined
  real-time bytes F9 and FD disturb nothing and are dropped the same way,
  with one exception: the kernel's capture parser is built with
  ``deliver_undefined_realtime=True`` and hands them to the client, because
  its contract (tests/test_midiparse.py) delivers every real-time byte and
  the client is the receiver that MIDI 1.0 tells to ignore them; a
  transmitter (the render re-framers) must not send them at all.
* A SysEx cut short by a status byte other than F7 and real-time is aborted,
  detected here for everyone: it ends with a `FLAG_SYSEX | FLAG_SYSEX_ABORTED`
  chunk (possibly empty) and is counted in `aborted_sysex`; the status byte
  then does what it does. Capture delivers that chunk, so the client sees
  `MidiMessage.aborted`. A re-framer that sends whole messages cannot send a
  partial SysEx: it drops it and counts it (`aborted_sysex`, and its bytes in
  `discarded`), and the miniports report that count in `statistics()`.
  (The rtmidi re-framer used to discard it without a trace.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Self, TypeAlias

__all__ = [
    "FLAG_PACKED",
    "FLAG_SYSEX",
    "FLAG_SYSEX_ABORTED",
    "FLAG_SYSEX_MORE",
    "MESSAGE_LENGTH",
    "PACKED_RUN",
    "SPECS",
    "SYSEX_END",
    "SYSEX_START",
    "UNDEFINED",
    "MessageAssembler",
    "MessageSpec",
    "Record",
    "data_length",
    "is_channel_status",
    "is_packed_run",
    "is_realtime",
    "is_status",
    "is_undefined",
    "message_length",
    "packed_error",
    "spec_for",
    "split_packed",
]

FLAG_SYSEX: Final = 0x0001
"""The record is (part of) a System Exclusive message."""
FLAG_SYSEX_MORE: Final = 0x0002
"""More chunks of this SysEx follow."""
FLAG_SYSEX_ABORTED: Final = 0x0004
"""This SysEx was cut short by a status byte before F7; this is its last chunk."""
FLAG_PACKED: Final = 0x0008
"""The record holds one or more whole channel messages (80-EF, each with its status
byte, no running status) back to back, all with the record's timestamp and flags, on a
MIDI (not DirectMusic) capture or render ring. Whoever writes one has checked it with
`PACKED_RUN`; whoever reads one checks it again (`split_packed`): it came from another
process. A malformed one is dropped and counted, never used."""

PACKED_RUN: Final = re.compile(
    rb"(?:[\x80-\xbf\xe0-\xef][\x00-\x7f][\x00-\x7f]|[\xc0-\xdf][\x00-\x7f])+")
"""Whole channel messages with their status bytes, back to back: a FLAG_PACKED payload."""

_PACKED_ONE: Final = re.compile(
    rb"[\x80-\xbf\xe0-\xef][\x00-\x7f][\x00-\x7f]|[\xc0-\xdf][\x00-\x7f]")

_BYTE_CLASS: Final = bytes(
    0x64 if b < 0x80  # "d": a data byte
    else 0x33 if b < 0xC0 or 0xE0 <= b < 0xF0  # "3": the status of a 3-byte message
    else 0x32 if b < 0xE0  # "2": the status of a 2-byte message (C0-DF)
    else 0x78  # "x": a system byte, never in a packed run
    for b in range(256))
"""Each byte's class as one ASCII letter, for `bytes.translate`."""
_THREES: Final = b"3dd" * 21846
"""The classes of up to 65,538 bytes of 3-byte channel messages back to back."""


def is_packed_run(data: bytes | bytearray) -> bool:
    """True exactly when `PACKED_RUN` matches the whole of `data` (a valid FLAG_PACKED
    payload). A run of 3-byte messages, the usual payload, is recognised by classing
    every byte with one `translate` and comparing the classes with the pattern's in
    one go: about a tenth of the regular expression's cost for 64 messages, which
    steps once per message. Anything else (2-byte messages in the run, a bad byte) is
    decided by the regular expression."""
    classes = data.translate(_BYTE_CLASS)
    if classes and len(classes) % 3 == 0 and _THREES.startswith(classes):
        return True
    return PACKED_RUN.fullmatch(data) is not None


def split_packed(data: bytes) -> list[bytes] | None:
    """The messages of a FLAG_PACKED payload in order, or None if it is not one (the
    reader then drops the record and counts it)."""
    if not is_packed_run(data):
        return None
    return _PACKED_ONE.findall(data)


def packed_error(data: bytes | bytearray | memoryview) -> str | None:
    """None if `data` is whole channel messages back to back (a valid FLAG_PACKED
    payload), else what is wrong, naming the byte offset where it goes wrong."""
    if not data:
        return "an empty batch"
    if not isinstance(data, memoryview) and is_packed_run(data):
        return None
    match = PACKED_RUN.match(data)
    end = 0 if match is None else match.end()
    if end == len(data):
        return None
    byte = data[end]
    if byte < 0x80:
        return (f"byte {end} is {byte:#04x}, a data byte where a status byte belongs "
                "(a batch holds whole channel messages, each with its status byte)")
    if byte >= 0xF0:
        return (f"byte {end} is {byte:#04x}, not a channel message (a batch holds "
                "channel messages 80-ef only; send SysEx and system messages with send)")
    return f"byte {end}: the channel message there ({byte:#04x}) is cut short or malformed"

SYSEX_START: Final = 0xF0
SYSEX_END: Final = 0xF7


@dataclass(frozen=True, slots=True)
class MessageSpec:
    """One kind of MIDI message.

    `status` is its status byte (channel 0 for a channel message), `name` the
    name mido gives it, `length` the whole message in bytes, status included
    (0 for SysEx, whose length varies).
    """

    status: int
    name: str
    length: int

    @property
    def is_channel(self) -> bool:
        return self.status < 0xF0


SPECS: Final[tuple[MessageSpec, ...]] = (
    MessageSpec(0x80, "note_off", 3),
    MessageSpec(0x90, "note_on", 3),
    MessageSpec(0xA0, "polytouch", 3),
    MessageSpec(0xB0, "control_change", 3),
    MessageSpec(0xC0, "program_change", 2),
    MessageSpec(0xD0, "aftertouch", 2),
    MessageSpec(0xE0, "pitchwheel", 3),
    MessageSpec(0xF0, "sysex", 0),
    MessageSpec(0xF1, "quarter_frame", 2),
    MessageSpec(0xF2, "songpos", 3),
    MessageSpec(0xF3, "song_select", 2),
    MessageSpec(0xF6, "tune_request", 1),
    MessageSpec(0xF8, "clock", 1),
    MessageSpec(0xFA, "start", 1),
    MessageSpec(0xFB, "continue", 1),
    MessageSpec(0xFC, "stop", 1),
    MessageSpec(0xFE, "active_sensing", 1),
    MessageSpec(0xFF, "reset", 1),
)
"""Every defined MIDI 1.0 message. F7 ends a SysEx and starts nothing."""

UNDEFINED: Final = frozenset({0xF4, 0xF5, 0xF9, 0xFD})
"""Status bytes MIDI 1.0 leaves undefined: two system common, two real-time."""


def _spec_table() -> tuple[MessageSpec | None, ...]:
    table: list[MessageSpec | None] = [None] * 256
    for spec in SPECS:
        for status in range(spec.status, spec.status + (16 if spec.is_channel else 1)):
            table[status] = spec
    return tuple(table)


_SPEC_BY_BYTE: Final = _spec_table()

MESSAGE_LENGTH: Final[tuple[int, ...]] = tuple(
    0 if spec is None else spec.length for spec in _SPEC_BY_BYTE
)
"""By byte value: the length of the message that status byte starts; 0 for SysEx (variable),
data bytes, F7 and the undefined bytes."""


def is_status(byte: int) -> bool:
    """Any status byte (80-FF), real-time included."""
    return byte >= 0x80


def is_channel_status(byte: int) -> bool:
    """A channel voice status byte (80-EF): the only kind that sets running status."""
    return 0x80 <= byte < 0xF0


def is_realtime(byte: int) -> bool:
    """A system real-time byte (F8-FF, F9 and FD included): it may appear anywhere."""
    return byte >= 0xF8


def is_undefined(byte: int) -> bool:
    """F4, F5, F9 or FD."""
    return byte in UNDEFINED


def message_length(status: int) -> int:
    """The length of the message `status` starts, itself included; 0 if that varies (F0) or
    it starts none (a data byte, F7, an undefined byte)."""
    return MESSAGE_LENGTH[status]


def data_length(status: int) -> int:
    """How many data bytes follow `status` in its message (0 for SysEx and for bytes that
    start no message)."""
    return max(MESSAGE_LENGTH[status] - 1, 0)


def spec_for(status: int) -> MessageSpec | None:
    """The table entry for a status byte (any channel), None for bytes that start no message."""
    return _SPEC_BY_BYTE[status]


class InvalidMessage(ValueError):
    """Bytes that are not exactly one valid MIDI 1.0 message; the message says why."""


_DATA_ONLY: Final = re.compile(rb"^[\x00-\x7f]*$")


def check_message(data: bytes) -> None:
    """InvalidMessage unless `data` is exactly one valid MIDI 1.0 message: a defined
    status byte followed by exactly the data bytes (0-7F) it takes, or a whole SysEx
    (F0, data bytes, F7). Running status, several messages, an undefined status (F4,
    F5, F9, FD), a lone F7 or a data byte out of range are refused, naming the byte."""
    if not data:
        raise InvalidMessage("an empty message")
    status = data[0]
    if status < 0x80:
        raise InvalidMessage(
            f"byte 0 is {status:#04x}, a data byte: a message starts with a status byte "
            "(running status is not sent as a message)"
        )
    if status in UNDEFINED:
        raise InvalidMessage(f"byte 0 is {status:#04x}, an undefined status byte")
    if status == SYSEX_END:
        raise InvalidMessage("byte 0 is 0xf7, the end of a SysEx that never started")
    if status == SYSEX_START:
        if len(data) < 2 or data[-1] != SYSEX_END:
            raise InvalidMessage("a SysEx must end with 0xf7")
        body = data[1:-1]
        if not _DATA_ONLY.match(body):
            i = next(i for i, b in enumerate(body) if b >= 0x80) + 1
            raise InvalidMessage(
                f"byte {i} is {data[i]:#04x}, a status byte inside a SysEx (only 00-7f)"
            )
        return
    length = MESSAGE_LENGTH[status]
    if len(data) != length:
        spec = _SPEC_BY_BYTE[status]
        name = spec.name if spec is not None else "message"
        raise InvalidMessage(
            f"{name} ({status:#04x}) is {length} byte{'s' if length > 1 else ''}, "
            f"not {len(data)}"
        )
    for i in range(1, length):
        if data[i] >= 0x80:
            raise InvalidMessage(f"byte {i} is {data[i]:#04x}, not a data byte (00-7f)")


Record: TypeAlias = tuple[int, int, bytes]
"""What the assembler emits: (timestamp, flags, message bytes)."""

_REALTIME_FIRST: Final = 0xF8
_TUNE_REQUEST: Final = 0xF6
_FLAGS_MORE: Final = FLAG_SYSEX | FLAG_SYSEX_MORE
_FLAGS_ABORTED: Final = FLAG_SYSEX | FLAG_SYSEX_ABORTED

# One-byte bytes objects, shared by every record that needs one (real-time messages and the
# status byte prepended to running-status messages), so those cost no allocation.
_SINGLE: Final[tuple[bytes, ...]] = tuple(bytes((b,)) for b in range(256))
# By byte value, what a real-time byte emits: its _SINGLE entry, or None to drop it.
_REALTIME_DELIVERED: Final[tuple[bytes | None, ...]] = _SINGLE
_REALTIME_DEFINED: Final[tuple[bytes | None, ...]] = tuple(
    None if b in UNDEFINED else _SINGLE[b] for b in range(256)
)
# Lets the C regex engine, not a Python loop, skip over SysEx payload.
_STATUS_BYTE: Final = re.compile(rb"[\x80-\xff]")


class MessageAssembler:
    """Stateful assembler from a fragmented MIDI byte stream to timestamped messages.

    One instance per stream. `feed` takes each fragment and returns
    ``(timestamp, flags, message_bytes)`` records (`Record`) in the order in
    which they became complete, so a real-time byte that interrupts a message
    comes out before that message. ``flags`` is 0 for everything except SysEx
    chunks. See the module docstring for the rules.

    Counters (never reset, not even by `reset`):

    * `stray_bytes`: input bytes dropped: data bytes with no status to attach
      to, stray F7, undefined bytes that were dropped, and the input bytes of a
      partial channel or system common message abandoned because another
      non-real-time status byte arrived.
    * `undefined_bytes`: the undefined bytes among those (F4, F5, and F9/FD
      unless they are delivered).
    * `aborted_sysex`: SysEx messages cut short by a status byte.
    * `messages`: records returned so far (complete messages, real-time bytes
      and SysEx chunks, including empty aborting chunks).

    Once nothing is pending (after a complete message or F6, say), every input
    byte is either in exactly one returned record or counted in `stray_bytes`;
    the only returned bytes not taken from the input are the status bytes
    prepended to running-status messages.
    """

    __slots__ = (
        "_buf",
        "_chunk",
        "_have",
        "_in_sysex",
        "_msg_ts",
        "_need",
        "_realtime",
        "_running",
        "_sysex",
        "aborted_sysex",
        "messages",
        "stray_bytes",
        "undefined_bytes",
    )

    def __init__(
        self, sysex_chunk: int = 4096, *, deliver_undefined_realtime: bool = False
    ) -> None:
        """An assembler whose SysEx chunks hold at most `sysex_chunk` bytes.

        With `deliver_undefined_realtime`, F9 and FD come out as real-time
        messages instead of being dropped. Raises ValueError if `sysex_chunk`
        is below 2.
        """
        if sysex_chunk < 2:
            raise ValueError(f"sysex_chunk must be at least 2, got {sysex_chunk}")
        self._chunk = sysex_chunk
        self._realtime = _REALTIME_DELIVERED if deliver_undefined_realtime else _REALTIME_DEFINED
        self.stray_bytes = 0
        self.undefined_bytes = 0
        self.aborted_sysex = 0
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

    @property
    def in_sysex(self) -> bool:
        """A SysEx has started and not yet ended."""
        return self._in_sysex

    @property
    def pending_bytes(self) -> int:
        """Input bytes held for a partial message (SysEx bytes are always emitted by `feed`)."""
        return self._have if self._need else 0

    def copy(self) -> Self:
        """An independent assembler in the same state, counters included (to rewind to)."""
        other = object.__new__(type(self))
        for name in MessageAssembler.__slots__:
            setattr(other, name, getattr(self, name))
        other._buf = bytearray(self._buf)
        other._sysex = bytearray(self._sysex)
        return other

    def reset(self) -> None:
        """Forget running status and any partial message or SysEx (for a stream going to STOP).

        Bytes discarded this way are not counted in `stray_bytes`, and an
        interrupted SysEx gets no aborting chunk: the consumer is being reset too.
        """
        self._running = 0
        self._buf.clear()
        self._need = 0
        self._have = 0
        self._in_sysex = False
        self._sysex.clear()

    def feed(self, data: bytes | bytearray | memoryview, timestamp: int = 0) -> list[Record]:
        """Assemble the next fragment, received at `timestamp`; return the records it completes.

        A message is stamped with the timestamp of the fragment that delivered
        its first byte (its status byte, or its first data byte under running
        status); a real-time message with its own fragment's. SysEx bytes still
        pending at the end of the fragment are emitted as a ``FLAG_SYSEX |
        FLAG_SYSEX_MORE`` chunk, so every SysEx chunk's bytes, and hence its
        timestamp, come from the fragment that returns it; an empty aborting
        chunk carries the timestamp of the fragment holding the status byte that
        aborted the SysEx.
        """
        if type(data) is not bytes:
            data = bytes(data)
        out: list[Record] = []
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

    def feed_message(
        self, data: bytes, start: int = 0, timestamp: int = 0
    ) -> tuple[int, list[Record]]:
        """Assemble `data` from `start` up to the next record that is not a SysEx MORE chunk.

        Returns the index of the next byte to assemble and the records. They
        hold at most one record without `FLAG_SYSEX_MORE`: a message (or last
        SysEx chunk) completed by the byte just before that index, or an
        aborting chunk, emitted before the status byte that aborts it, which is
        then the next byte. Pending SysEx bytes come last as a MORE chunk, as
        at the end of `feed`. For a consumer that must be able to stop after
        any message (see `miniports.midibytes`); `feed` is the fast way through
        a whole fragment.
        """
        out: list[Record] = []
        n = len(data)
        i = start
        while i < n:
            if self._in_sysex:
                i = self._scan_sysex(data, i, n, timestamp, out)
            else:
                j = i
                if not self._need:
                    # A whole channel or real-time message at i takes the fast path, limited
                    # to that one message.
                    b = data[i]
                    size = MESSAGE_LENGTH[self._running] - 1 if b < 0x80 else MESSAGE_LENGTH[b]
                    if size > 0:
                        j = self._scan_whole(data, i, min(n, i + size), timestamp, out)
                if j == i:
                    self._feed_byte(data[i], timestamp, out)
                    j = i + 1
                i = j
            if out and not out[-1][1] & FLAG_SYSEX_MORE:
                break
        if self._sysex:
            out.append((timestamp, _FLAGS_MORE, bytes(self._sysex)))
            self._sysex.clear()
        self.messages += len(out)
        return i, out

    def _scan_whole(self, data: bytes, i: int, n: int, ts: int, out: list[Record]) -> int:
        """Emit the run of complete channel / real-time messages starting at boundary `i`.

        Returns the index of the first byte it could not handle as part of such
        a run (the start of a message split by the fragment end or by a
        real-time byte, or any other status byte); the caller takes that byte
        through the general path.
        """
        append = out.append
        length = MESSAGE_LENGTH
        realtime = self._realtime
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
                single = realtime[b]
                if single is None:
                    break
                append((ts, 0, single))
                i += 1
            else:
                break
        self._running = running
        return i

    def _drop_undefined(self) -> None:
        self.stray_bytes += 1
        self.undefined_bytes += 1

    def _feed_byte(self, b: int, ts: int, out: list[Record]) -> None:
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
                need = MESSAGE_LENGTH[running] - 2
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
            single = self._realtime[b]
            if single is None:
                self._drop_undefined()
            else:
                out.append((ts, 0, single))
            return
        if self._need:
            self.stray_bytes += self._have
            self._need = 0
        length = MESSAGE_LENGTH[b]
        if b < 0xF0:
            self._running = b
        else:
            self._running = 0
            if b == SYSEX_START:
                self._in_sysex = True
                self._sysex.append(b)
                return
            if b == _TUNE_REQUEST:
                out.append((ts, 0, _SINGLE[b]))
                return
            if not length:
                if b == SYSEX_END:
                    self.stray_bytes += 1
                else:
                    self._drop_undefined()
                return
        self._buf[:] = _SINGLE[b]
        self._have = 1
        self._need = length - 1
        self._msg_ts = ts

    def _scan_sysex(self, data: bytes, i: int, n: int, ts: int, out: list[Record]) -> int:
        """Consume SysEx payload from `i` up to and including the next status byte.

        Returns the index to continue at. A status byte other than real-time or
        F7 ends the SysEx as aborted and is left unconsumed for the general path.
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
            single = self._realtime[b]
            if single is None:
                self._drop_undefined()
            else:
                out.append((ts, 0, single))
            return i + 1
        self._in_sysex = False
        if b == SYSEX_END:
            sysex.append(b)
            out.append((ts, FLAG_SYSEX, bytes(sysex)))
            sysex.clear()
            return i + 1
        out.append((ts, _FLAGS_ABORTED, bytes(sysex)))
        sysex.clear()
        self.aborted_sysex += 1
        return i
