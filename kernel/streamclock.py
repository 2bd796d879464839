"""A pin's presentation clock (KSPROPERTY_CLOCK_TIME), in 100 ns units.

It reads 0 when the pin opens, advances with the shared monotonic clock only
while the pin is in RUN, stands still in ACQUIRE and PAUSE, and goes back to 0
at STOP. While running, stream time maps to physical time by one offset, so the
render sequencer turns presentation times into physical deadlines, and capture
stamps (physical ISR times) into stream times.
"""

from __future__ import annotations

from collections.abc import Callable


class StreamClock:
    """The stream time of one pin, driven by its KSSTATE changes."""

    def __init__(self, physical: Callable[[], int]) -> None:
        self.physical = physical
        self.frozen = 0
        """The stream time when the clock last stopped advancing (or was reset)."""
        self.run_since: int | None = None
        """The physical time the pin entered RUN; None outside RUN."""

    @property
    def running(self) -> bool:
        return self.run_since is not None

    def time(self, now: int | None = None) -> int:
        """The stream time at physical time `now` (default: now)."""
        if self.run_since is None:
            return self.frozen
        if now is None:
            now = self.physical()
        return self.frozen + max(0, now - self.run_since)

    def to_physical(self, stream_time: int) -> int | None:
        """The physical time the clock reaches `stream_time`; None outside RUN."""
        if self.run_since is None:
            return None
        return self.run_since + max(0, stream_time - self.frozen)

    def run(self, now: int) -> None:
        """The pin entered RUN: count on from where the clock stood."""
        if self.run_since is None:
            self.run_since = now

    def pause(self, now: int) -> None:
        """The pin left RUN: stand still at the time reached."""
        if self.run_since is not None:
            self.frozen = self.time(now)
            self.run_since = None

    def reset(self) -> None:
        """STOP: back to 0."""
        self.frozen = 0
        self.run_since = None

    def to_wire(self, now: int | None = None) -> dict[str, int]:
        """The correlated time: the stream time and the physical time it was read at."""
        if now is None:
            now = self.physical()
        return {"time": self.time(now), "physical": now}
