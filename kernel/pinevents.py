"""The KS events a client enables on an open pin.

KSEVENT_CLOCK_POSITION_MARK fires once, when the pin's stream clock reaches a
time; KSEVENT_CLOCK_INTERVAL_MARK fires each time it passes base + k * interval;
KSEVENT_CONNECTION_ENDOFSTREAM (render pins) fires once, when nothing the client
queued is left to hand to the miniport. Clock events wait on kernel timers set
from the stream time while the pin is in RUN; outside RUN the clock stands
still, so they are held and re-armed on RUN. Disabling an event, or closing the
pin, cancels it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from ipc import protocol as p
from ipc.status import Status, StatusError
from kernel.dpc import Dpc, Timer
from kernel.loop import KernelLoop
from kernel.streamclock import StreamClock

POSITION: Final = "position"
INTERVAL: Final = "interval"
END_OF_STREAM: Final = "end_of_stream"
KINDS: Final = (POSITION, INTERVAL, END_OF_STREAM)
MIN_INTERVAL: Final = 10_000
"""1 ms: the sequencer's resolution, and a floor against flooding the client."""
MAX_EVENTS: Final = 64
"""Events enabled at once on one pin."""


@dataclass(eq=False)
class EnabledEvent:
    cookie: int
    kind: str
    time: int
    """POSITION: the mark; INTERVAL: the next mark to fire at."""
    interval: int
    timer: Timer | None = field(default=None)


class PinEvents:
    """The events enabled on one pin; the pin calls `started`, `held`, `drained`."""

    def __init__(
        self, loop: KernelLoop, handle: int, clock: StreamClock, capture: bool,
        send: Callable[[p.PinEvent], None], queue_empty: Callable[[], bool],
    ) -> None:
        self.loop = loop
        self.handle = handle
        self.clock = clock
        self.capture = capture
        self.send = send
        self.queue_empty = queue_empty
        self.enabled: dict[int, EnabledEvent] = {}

    def enable(self, kind: str, cookie: int, time: int, interval: int) -> None:
        """Enable `kind` under the client's `cookie`. INVALID_PARAMETER for an unknown
        kind, a cookie in use, a negative time, a too short interval, end of stream on
        a capture pin; INSUFFICIENT_RESOURCES past MAX_EVENTS."""
        if kind not in KINDS:
            raise StatusError(Status.INVALID_PARAMETER, f"no event {kind!r}; one of {KINDS}")
        if cookie in self.enabled:
            raise StatusError(Status.INVALID_PARAMETER, f"event {cookie} is enabled already")
        if len(self.enabled) >= MAX_EVENTS:
            raise StatusError(Status.INSUFFICIENT_RESOURCES, f"{MAX_EVENTS} events enabled")
        if time < 0:
            raise StatusError(Status.INVALID_PARAMETER, "an event time is not negative")
        if kind == INTERVAL and interval < MIN_INTERVAL:
            raise StatusError(Status.INVALID_PARAMETER, "an interval is at least 1 ms")
        if kind == END_OF_STREAM and self.capture:
            raise StatusError(Status.INVALID_DEVICE_REQUEST, "end of stream is a render event")
        event = EnabledEvent(cookie, kind, time, interval)
        self.enabled[cookie] = event
        if kind == END_OF_STREAM:
            self.drained()
        else:
            event.timer = Timer(Dpc(lambda: self._due(event)))
            self._check(event)

    def disable(self, cookie: int) -> None:
        event = self.enabled.pop(cookie, None)
        if event is None:
            raise StatusError(Status.INVALID_PARAMETER, f"no event {cookie} is enabled")
        self._cancel(event)

    def _cancel(self, event: EnabledEvent) -> None:
        if event.timer is not None:
            self.loop.scheduler.cancel_timer(event.timer)

    def _due(self, event: EnabledEvent) -> None:
        if self.enabled.get(event.cookie) is event:
            self._check(event)

    def _check(self, event: EnabledEvent) -> None:
        """Fire `event` if the clock has reached it; else arm its timer (in RUN)."""
        now = self.clock.time()
        if now >= event.time:
            self.send(p.PinEvent(self.handle, event.kind, event.cookie, now))
            if event.kind == POSITION:
                self.enabled.pop(event.cookie, None)
                return
            # The next mark after now: marks missed while the loop was busy fire once.
            event.time += ((now - event.time) // event.interval + 1) * event.interval
        deadline = self.clock.to_physical(event.time)
        if deadline is not None and event.timer is not None:
            self.loop.scheduler.set_timer(event.timer, deadline)

    def started(self) -> None:
        """RUN: the clock counts again; re-arm every clock event."""
        for event in tuple(self.enabled.values()):
            if event.kind != END_OF_STREAM:
                self._check(event)

    def held(self) -> None:
        """The clock stands still: no clock event can come before RUN."""
        for event in self.enabled.values():
            self._cancel(event)

    def drained(self) -> None:
        """Everything queued was handed to the miniport: end of stream, if enabled."""
        if not self.queue_empty():
            return
        for event in tuple(self.enabled.values()):
            if event.kind == END_OF_STREAM:
                del self.enabled[event.cookie]
                self.send(p.PinEvent(self.handle, END_OF_STREAM, event.cookie,
                                     self.clock.time()))

    def close(self) -> None:
        for event in self.enabled.values():
            self._cancel(event)
        self.enabled.clear()
