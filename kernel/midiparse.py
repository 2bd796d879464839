"""The kernel's capture parser: a raw MIDI 1.0 byte stream, captured in arbitrary fragments,
into whole timestamped messages.

A miniport hands over whatever bytes its ISR collected, stamped with the ISR
time (an int in 100 ns units); the parser reassembles them by the one MIDI 1.0
grammar of `ipc.midi` (see its docstring for the rules), and delivers every
real-time byte, the undefined F9 and FD included: the client is the receiver
and decides what to ignore. SysEx comes in bounded chunks flagged with
``FLAG_SYSEX*``; a SysEx cut short by a status byte ends with a
``FLAG_SYSEX_ABORTED`` chunk.
"""

from __future__ import annotations

from ipc.midi import FLAG_SYSEX, FLAG_SYSEX_ABORTED, FLAG_SYSEX_MORE, MessageAssembler

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
