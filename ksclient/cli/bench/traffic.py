"""What the benchmarks send, and how what comes back is checked.

Every throughput and rate measurement numbers its messages: note-ons whose channel
nibble and two data bytes carry an 18-bit counter, so a receiver can tell a missing,
repeated or reordered message from the bytes alone, whichever path carried them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "BATCH",
    "NOTE_ON",
    "SYSEX_1K",
    "SequenceCheck",
    "ThroughputResult",
    "numbered",
    "numbered_messages",
    "sequence_number",
]

NOTE_ON: Final = 0x90
NOTE: Final = bytes((NOTE_ON, 60, 100))
"""The 3-byte note-on of the round-trip measurements."""
SYSEX_1K: Final = bytes((0xF0, *((i * 7 + 3) & 0x7F for i in range(1022)), 0xF7))
"""A 1 KiB SysEx: F0, 1022 data bytes, F7."""
BATCH: Final = 64
"""Messages per `send_many` in the throughput measurements."""
_WRAP: Final = 1 << 18


def numbered(i: int) -> bytes:
    """Note-on number ``i`` (mod 2**18): the counter in the channel nibble and data bytes."""
    return bytes((NOTE_ON | ((i >> 14) & 0x0F), (i >> 7) & 0x7F, i & 0x7F))


def sequence_number(data: bytes) -> int:
    """The counter of a message made by :func:`numbered`; -1 for anything else."""
    if len(data) != 3 or data[0] & 0xF0 != NOTE_ON:
        return -1
    return ((data[0] & 0x0F) << 14) | (data[1] << 7) | data[2]


def numbered_messages(count: int) -> list[bytes]:
    """Messages 0 .. count-1, made up front so that making them is not measured."""
    return [numbered(i) for i in range(count)]


class SequenceCheck:
    """Checks that numbered messages arrive complete and in order.

    ``expected`` is how many arrived in order so far (the next number due);
    ``missing`` counts numbers skipped over, ``out_of_order`` messages that were
    repeated, late or not numbered at all.
    """

    def __init__(self, messages: list[bytes]) -> None:
        self._messages = messages
        self.total = len(messages)
        self.expected = 0
        self.received = 0
        self.missing = 0
        self.out_of_order = 0

    def take(self, data: bytes) -> None:
        """Account for one received message."""
        k = self.expected
        if k < len(self._messages) and data == self._messages[k]:
            # The fast path: exactly the message due.
            self.expected = k + 1
            self.received += 1
            return
        number = sequence_number(data)
        gap = (number - k) % _WRAP
        if number < 0 or gap >= _WRAP // 2 or k + gap >= len(self._messages):
            self.out_of_order += 1
            return
        self.missing += gap
        self.expected = k + gap + 1
        self.received += 1

    def take_run(self, payload: bytes) -> None:
        """Account for several 3-byte messages sent as one payload (a batch)."""
        n = len(payload) // 3
        k = self.expected
        if n and len(payload) == 3 * n and payload == b"".join(self._messages[k : k + n]):
            # The fast path: exactly the messages due, compared in one go.
            self.expected = k + n
            self.received += n
            return
        for i in range(0, len(payload), 3):
            self.take(payload[i : i + 3])

    @property
    def done(self) -> bool:
        return self.expected >= self.total

    def lost(self) -> int:
        """Missing (skipped, or never arrived) plus out-of-order messages."""
        return self.missing + (self.total - self.expected) + self.out_of_order


@dataclass
class ThroughputResult:
    """One zero-loss throughput run: ``messages`` sent, how many came back in order."""

    messages: int
    received: int = 0
    lost: int = 0
    seconds: float = math.nan
    window: int = 0
    note: str = ""

    @property
    def msgs_per_s(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else math.nan

    @classmethod
    def from_check(
        cls, check: SequenceCheck, seconds: float, window: int, note: str = ""
    ) -> ThroughputResult:
        return cls(check.total, check.received, check.lost(), seconds, window, note)

    def to_json(self) -> dict[str, Any]:
        return {
            "msgs_per_s": self.msgs_per_s,
            "lost": self.lost,
            "messages": self.messages,
            "received": self.received,
            "seconds": self.seconds,
            "batch": BATCH,
            "window": self.window,
            "note": self.note,
        }
