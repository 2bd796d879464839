"""The kernel's DPC queue and timers: deferred work, run by the one kernel loop.

No I/O here. The loop takes its poll timeout from `next_deadline()` (inline, reading
`timers`), then calls `fire_due_timers()` and `run_dpcs()` before it handles
passive-level requests, the way DISPATCH_LEVEL work pre-empts PASSIVE_LEVEL on Windows.
"""

from __future__ import annotations

import collections
import heapq
import itertools
from collections.abc import Callable
from typing import Final

from ipc import trace
from ipc.runtime import now_100ns

DPC_BUDGET: Final = 4096
"""DPCs one `run_dpcs` call runs at most: DPCs that keep queueing one another cannot
hold the loop (its signals, heartbeats, sockets); the rest run on the next turn."""


class Dpc:
    """A deferred procedure call. Queuing one that is already queued does nothing."""

    __slots__ = ("queued", "routine")

    def __init__(self, routine: Callable[[], None]) -> None:
        self.routine = routine
        self.queued = False


class Timer:
    """A one-shot timer that queues its DPC when it expires. Setting it again re-arms it."""

    __slots__ = ("dpc", "due", "generation")

    def __init__(self, dpc: Dpc) -> None:
        self.dpc = dpc
        self.due: int | None = None
        self.generation = 0
        """Bumped whenever the timer is set, cancelled or fires: a heap entry made with
        another generation is stale (read-only outside the scheduler)."""


class Scheduler:
    """FIFO DPC queue plus a timer heap on the shared 100 ns clock."""

    def __init__(self, clock: Callable[[], int] = now_100ns) -> None:
        self.clock = clock
        self.dpc_queue: collections.deque[Dpc] = collections.deque()
        """The queued DPCs, first to run first. Outside this class only read (the loop
        tests it on every turn, cheaper than `pending`), or appended to as `queue_dpc`
        does (a service group's request, inline)."""
        self.timers: list[tuple[int, int, int, Timer]] = []
        """The timer heap, (due, sequence, generation, timer); entries whose generation
        is not their timer's are stale. Outside this class it is only read, and stale
        entries popped from its top (what `next_deadline` does; the loop does it inline)."""
        self._seq = itertools.count()
        self.dpcs_run = 0
        self.dpc_errors = 0
        self.on_dpc_error: Callable[[Dpc, BaseException], None] | None = None

    def queue_dpc(self, dpc: Dpc) -> bool:
        """Queue `dpc`; False if it was already queued (the requests coalesce).
        (ServiceGroup.request_service does the same inline.)"""
        if dpc.queued:
            return False
        dpc.queued = True
        self.dpc_queue.append(dpc)
        return True

    def remove_dpc(self, dpc: Dpc) -> bool:
        """Take a queued DPC out of the queue (KeRemoveQueueDpc)."""
        if not dpc.queued:
            return False
        dpc.queued = False
        self.dpc_queue.remove(dpc)
        return True

    @property
    def pending(self) -> int:
        return len(self.dpc_queue)

    def run_dpcs(self, budget: int = DPC_BUDGET) -> int:
        """Run queued DPCs until the queue is empty (including ones they queue) or `budget`
        ran; return the count. What is left stays queued (`pending`) for the next call.

        A DPC is marked unqueued before its routine runs, so a request made
        during the run queues it again rather than being lost.
        """
        ran = 0
        queue = self.dpc_queue
        while queue and ran < budget:
            dpc = queue.popleft()
            dpc.queued = False
            ran += 1
            try:
                if trace.ON:
                    trace_dpc(dpc.routine)
                else:
                    dpc.routine()
            except Exception as exc:  # a faulty DPC must not take the kernel down
                self.dpc_errors += 1
                if self.on_dpc_error is not None:
                    self.on_dpc_error(dpc, exc)
        self.dpcs_run += ran
        return ran

    def set_timer(self, timer: Timer, due: int) -> None:
        """Arm `timer` to fire at absolute time `due` (100 ns); replaces an earlier setting."""
        timer.generation += 1
        timer.due = due
        heapq.heappush(self.timers, (due, next(self._seq), timer.generation, timer))

    def cancel_timer(self, timer: Timer) -> bool:
        """Disarm `timer`; True if it was armed."""
        armed = timer.due is not None
        timer.generation += 1
        timer.due = None
        return armed

    def _drop_stale(self) -> None:
        timers = self.timers
        while timers and timers[0][3].generation != timers[0][2]:
            heapq.heappop(timers)

    def next_deadline(self) -> int | None:
        """The due time of the earliest armed timer, or None when no timer is armed."""
        self._drop_stale()
        return self.timers[0][0] if self.timers else None

    def fire_due_timers(self) -> int:
        """Queue the DPC of every timer whose time has come; return how many fired."""
        fired = 0
        now = self.clock()
        timers = self.timers
        while True:
            self._drop_stale()
            if not timers or timers[0][0] > now:
                return fired
            _, _, _, timer = heapq.heappop(timers)
            timer.due = None
            timer.generation += 1
            self.queue_dpc(timer.dpc)
            fired += 1


def trace_dpc(routine: Callable[[], None]) -> None:
    """Run a DPC's routine as a trace slice named after it."""
    start = trace.now()
    try:
        routine()
    finally:
        trace.complete("DPC", "dpc", start, {"routine": getattr(routine, "__qualname__", "?")})
