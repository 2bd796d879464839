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

from ipc import midi
from ipc.midi import FLAG_SYSEX_ABORTED, FLAG_SYSEX_MORE, data_length

__all__ = ["MessageAssembler", "MessageFramer", "data_bytes"]

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
        self._sysex.clear()
        self._assembler.reset()

    def _whole(self, flags: int, message: bytes) -> bytes | None:
        """The message a record completes, if any; SysEx chunks wait for their last one."""
        if not flags:
            return message
        if flags & FLAG_SYSEX_MORE:
            self._sysex.append(message)
            return None
        if flags & FLAG_SYSEX_ABORTED:
            self._dropped += sum(map(len, self._sysex)) + len(message)
            self._sysex.clear()
            return None
        self._sysex.append(message)
        whole = b"".join(self._sysex)
        self._sysex.clear()
        return whole

    def frame(self, data: bytes) -> list[bytes]:
        """The whole messages `data` completes, in order (nothing is ever refused)."""
        messages: list[bytes] = []
        for _, flags, message in self._assembler.feed(data):
            whole = self._whole(flags, message)
            if whole is not None:
                messages.append(whole)
        return messages

    def feed(self, data: bytes, send: Callable[[bytes], bool]) -> int:
        """Send the whole messages `data` completes; the count of bytes consumed (see above)."""
        saved = (self._assembler.copy(), list(self._sysex), self._dropped)
        feed_message = self._assembler.feed_message
        i, n = 0, len(data)
        while i < n:
            i, records = feed_message(data, i)
            for _, flags, message in records:
                whole = self._whole(flags, message)
                if whole is not None and not send(whole):
                    # Rewind, then take everything before the byte that completed `whole`
                    # again; what that sends again was sent already, so it is not sent.
                    self._assembler, self._sysex, self._dropped = saved
                    self.frame(data[: i - 1])
                    return i - 1
        return n


MessageAssembler = MessageFramer
"""The old name of `MessageFramer` (not `ipc.midi.MessageAssembler`, which it is built on)."""
