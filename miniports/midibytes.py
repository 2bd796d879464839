"""Whole MIDI messages from a raw byte stream, for miniports whose hardware sends messages
rather than bytes (rtmidi, the MPU-401's rtmidi cable).

The rules are `ipc.midi`'s, the same the kernel's capture parser applies:
running status expanded, real-time bytes sent at once wherever they appear,
SysEx sent whole (F0 ... F7). What a sender cannot send is dropped and
counted: stray data bytes, partial messages cut short, undefined bytes
(F4, F5, F9, FD: a transmitter must not send them), and a SysEx aborted by a
status byte before its F7, which the capture side delivers flagged as
aborted but which cannot go out as a message (`aborted_sysex`, and its bytes
in `discarded`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeAlias

from ipc import midi
from ipc.midi import FLAG_SYSEX_ABORTED, FLAG_SYSEX_MORE, data_length

__all__ = ["MessageAssembler", "MessageFramer", "data_bytes"]

_FIRST_SLICE: Final = 48
_LAST_SLICE: Final = 1024
"""`MessageFramer.feed` assembles slices of 48, 96, ... 1024 bytes ahead of the sender."""

_Snapshot: TypeAlias = tuple[midi.MessageAssembler, list[bytes], int, int]

data_bytes = data_length
"""The old name of `ipc.midi.data_length`."""


class MessageFramer:
    """Cuts a MIDI byte stream into whole messages, across calls, with back-pressure.

    `feed(data, send)` calls `send(message)` for each message `data`
    completes and returns how many bytes it consumed. `send` returns False to
    refuse a message ("not now"): feeding stops before the byte that would
    have completed it, so that byte is offered again later, and the state is
    exactly as if feeding had stopped there. `frame(data)` is the same without
    refusals.

    Counters: `discarded` (input bytes that went into no message sent:
    strays, cut messages, undefined bytes, aborted SysEx, what `reset` threw
    away), `aborted_sysex`, `undefined_bytes`; `statistics()` has them all.
    """

    def __init__(self) -> None:
        self._assembler = midi.MessageAssembler()
        # A SysEx in progress, in the chunks the assembler emitted so far.
        self._sysex: list[bytes] = []
        # Bytes discarded that the assembler does not count as stray: aborted SysEx and reset.
        self._dropped = 0

    @property
    def discarded(self) -> int:
        return self._assembler.stray_bytes + self._dropped

    @property
    def aborted_sysex(self) -> int:
        return self._assembler.aborted_sysex

    @property
    def undefined_bytes(self) -> int:
        return self._assembler.undefined_bytes

    def statistics(self) -> dict[str, int]:
        """`discarded`, `aborted_sysex` and `undefined_bytes`."""
        return {
            "discarded": self.discarded,
            "aborted_sysex": self.aborted_sysex,
            "undefined_bytes": self.undefined_bytes,
        }

    def reset(self) -> None:
        """Forget any partial message or SysEx (counted in `discarded`) and running status."""
        self._dropped += self._assembler.pending_bytes + sum(map(len, self._sysex))
        self._sysex = []
        self._assembler.reset()

    def _whole(self, flags: int, message: bytes) -> bytes | None:
        """The message a record completes, if any; SysEx chunks wait for their last one.

        A finished SysEx gets a new chunk list rather than clearing the old one,
        which a snapshot may still hold (see `_snapshot`).
        """
        if not flags:
            return message
        if flags & FLAG_SYSEX_MORE:
            self._sysex.append(message)
            return None
        chunks, self._sysex = self._sysex, []
        if flags & FLAG_SYSEX_ABORTED:
            self._dropped += sum(map(len, chunks)) + len(message)
            return None
        chunks.append(message)
        return b"".join(chunks)

    def _snapshot(self) -> _Snapshot:
        return self._assembler.copy(), self._sysex, len(self._sysex), self._dropped

    def _restore(self, snapshot: _Snapshot) -> None:
        self._assembler, self._sysex, chunks, self._dropped = snapshot
        del self._sysex[chunks:]

    def frame(self, data: bytes) -> list[bytes]:
        """The whole messages `data` completes, in order (nothing is ever refused)."""
        messages: list[bytes] = []
        for _, flags, message in self._assembler.feed(data):
            whole = self._whole(flags, message)
            if whole is not None:
                messages.append(whole)
        return messages

    def feed(self, data: bytes, send: Callable[[bytes], bool]) -> int:
        """Send the whole messages `data` completes; the count of bytes consumed (see above).

        Assembles a slice at a time the fast way, sending as it goes; a refusal
        rewinds to the slice's start and takes it again message by message up
        to the one refused. Slices start small and double while the sender
        takes everything, so a refusal costs at most a slice assembled twice
        and a sender that refuses early (a paced one) costs little.
        """
        n = len(data)
        start = 0
        size = _FIRST_SLICE
        while start < n:
            piece = data[start : start + size]
            snapshot = self._snapshot()
            sent = 0
            for _, flags, message in self._assembler.feed(piece):
                whole = self._whole(flags, message)
                if whole is None:
                    continue
                if not send(whole):
                    self._restore(snapshot)
                    return start + self._take_before(piece, sent)
                sent += 1
            start += len(piece)
            size = min(size * 2, _LAST_SLICE)
        return n

    def _take_before(self, piece: bytes, sent: int) -> int:
        """Take `piece` up to the byte that completes its whole message number `sent` (from 0),
        without sending anything; return that byte's index."""
        snapshot = self._snapshot()
        i = count = 0
        while i < len(piece):
            i, records = self._assembler.feed_message(piece, i)
            for _, flags, message in records:
                if self._whole(flags, message) is None:
                    continue
                if count == sent:
                    self._restore(snapshot)
                    self.frame(piece[: i - 1])
                    return i - 1
                count += 1
        raise AssertionError("feed and feed_message disagree on where messages end")


MessageAssembler = MessageFramer
"""The old name of `MessageFramer` (not `ipc.midi.MessageAssembler`, which it is built on)."""
