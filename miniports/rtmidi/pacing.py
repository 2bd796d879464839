"""Pacing rtmidi output, and a long SysEx cut into pieces JACK can carry.

Plain Python (no python-rtmidi): the rtmidi miniport and the MPU-401's rtmidi
cable both use it.

Why a SysEx is cut on JACK. RtMidi 5's JACK output (python-rtmidi 1.5.8)
queues each message whole, after a 4-byte length, in a 16 KiB ring that its
process callback empties into the port's buffer once a JACK period:

- a message whose length + 4 exceeds the ring is dropped at once, silently
  (no error, no warning; measured: 16,379 bytes go through, 16,380 vanish);
- a message that fits waits (`send_message` spins) until the ring has room,
  so the ring itself never overflows;
- what the period's port buffer cannot hold is dropped in the process
  callback (JACK2 prints "JackMidiBuffer::ReserveEvent ... not enough room"
  on the server side; the sender is not told). A ring full of 3-byte events
  is more than one port buffer holds (measured: 1 MiB sent unpaced in 3-byte
  pieces lost 0.8 %), so the number of events per period must be bounded:
  the message bucket does it.

python-rtmidi's `send_message` refuses a message longer than 3 bytes that
does not start with F0, and RtMidi's JACK input joins JACK events into one
SysEx from an F0 until an event ending in F7. So a SysEx longer than
`JACK_MESSAGE_MAX` goes as F0 + up to `FIRST_PIECE - 1` data bytes, then
pieces of 3 bytes (the last 1-3, ending in F7), every piece paced through the
token buckets like any message. A JACK receiver must join such pieces (RtMidi
does; a tool like jack_midi_dump shows them apart).
"""

from __future__ import annotations

import time
from typing import Final

__all__ = ["FIRST_PIECE", "JACK_MESSAGE_MAX", "PIECE", "TokenBucket", "piece_end"]

JACK_MESSAGE_MAX: Final = 16_379
"""The longest message RtMidi 5's JACK output carries whole (its ring is 16 KiB)."""

FIRST_PIECE: Final = 4096
"""The first piece of a cut SysEx: F0 and up to 4,095 data bytes."""

PIECE: Final = 3
"""Every further piece: python-rtmidi sends up to 3 bytes not starting with F0."""


def piece_end(length: int, start: int, first: int = FIRST_PIECE) -> int:
    """Where the piece of a `length`-byte SysEx that starts at `start` ends, over JACK.

    A SysEx of up to `JACK_MESSAGE_MAX` bytes is one piece; a longer one is
    F0 + `first - 1` data bytes, then `PIECE`-byte pieces (the last may be
    shorter). `start` is 0 or the end of the piece before.
    """
    if length <= JACK_MESSAGE_MAX:
        return length
    if start == 0:
        return min(first, length)
    return min(start + PIECE, length)


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved; a cost above `burst` may go
    when the bucket is full (a large message goes alone)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def can_take(self, cost: float) -> bool:
        return self.tokens >= min(cost, self.burst)

    def take(self, cost: float) -> None:
        self.tokens -= cost

    def wait_time(self, cost: float) -> float:
        """Seconds until `can_take(cost)` (0 if now), at the last refill."""
        short = min(cost, self.burst) - self.tokens
        return max(0.0, short / self.rate)
