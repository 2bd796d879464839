"""The kernel's one loop: the waiter, the DPC and timer scheduler, and what it watches.

Components hold the loop, never the kernel (as asyncio's transports hold
their loop): they watch descriptors and sockets through it and queue DPCs and
timers on its scheduler. Each turn waits in one epoll (timeout: the next
timer), then runs, in this order, the interrupt-level sockets and descriptors,
due timers and the DPC queue, the passive-level descriptors, and last the
passive-level sockets, the way IRQL lets interrupts and DPCs pre-empt
passive-level work.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any, Final

import zmq

from ipc.doorbell import defer_rings, flush_deferred_rings
from ipc.procwatch import ProcessWatch
from ipc.runtime import now_100ns
from ipc.waiter import Waiter
from kernel.dpc import Dpc, Scheduler

log = logging.getLogger("portcls.kernel")
monotonic_ns = time.monotonic_ns

SAFETY_POLL_MS: Final = 1000
_SWEEP_INTERVAL: Final = SAFETY_POLL_MS * 10_000
"""SAFETY_POLL_MS on the scheduler's clock (100 ns)."""
_SWEEP_EARLY: Final = _SWEEP_INTERVAL * 3 // 4
"""A wake-up this long after the last sweep runs the sweeps (no wake-up of their own)."""
_SWEEP_SLACK: Final = _SWEEP_INTERVAL // 10
"""A sweep waits this much longer for a timer due just after it, to share its wake-up."""

Handler = Callable[[], None]


class KernelLoop:
    """One thread's loop: descriptors, sockets, timers and DPCs, in IRQL order."""

    def __init__(self) -> None:
        self.scheduler = Scheduler(now_100ns)
        """On the shared clock, which `turn` reads inline (time.monotonic_ns() // 100)."""
        self.scheduler.on_dpc_error = self._dpc_error
        self.waiter = Waiter()
        self.stats = collections.Counter[str]()
        self.interrupts = 0
        """Interrupt records taken (every miniport's): a plain int on the hot path,
        published as stats["interrupts"] by `stats_snapshot`."""
        self.stopping = False
        self.hurry = False
        """A second stop signal came: whatever is being waited for is killed now."""
        self.idle_sweeps: list[Handler] = []
        """Run every SAFETY_POLL_MS, whatever else the loop does (a wake-up lost to store
        reordering is rescued there; waiting for an idle interval would never come
        while heartbeat timers shorten every wait): no sooner than 3/4 of it after
        the last run, on whatever wake-up comes first, and no later than 1.1 times it
        (a timer due within that tenth shares its wake-up)."""
        now = self.scheduler.clock()
        self._sweep_early = now + _SWEEP_EARLY
        self._sweep_due = now + _SWEEP_INTERVAL
        self._fd_handlers: dict[int, Handler] = {}
        self._interrupt_fds: set[int] = set()
        self._interrupt_sockets: dict[zmq.Socket[Any], Handler] = {}
        self._passive_sockets: dict[zmq.Socket[Any], Handler] = {}
        self._signal_r: int | None = None
        self._signal_w: int | None = None

    def stats_snapshot(self) -> dict[str, int]:
        """The loop's counters as one dict: `stats` and the hot-path counts."""
        out = dict(self.stats)
        if self.interrupts:
            out["interrupts"] = self.interrupts
        return out

    @staticmethod
    def clock_seconds() -> float:
        return time.monotonic()

    def _dpc_error(self, dpc: Dpc, exc: BaseException) -> None:
        log.error("DPC raised", exc_info=exc)

    def watch_fd(self, fd: int, handler: Handler) -> None:
        """Call `handler` (at passive level) whenever `fd` is readable."""
        if fd not in self._fd_handlers:
            self.waiter.watch(fd)
        self._fd_handlers[fd] = handler

    def watch_interrupt_fd(self, fd: int, handler: Handler) -> None:
        """Like `watch_fd`, but handled at interrupt level: with the bus, before DPCs."""
        self.watch_fd(fd, handler)
        self._interrupt_fds.add(fd)

    def unwatch_fd(self, fd: int) -> None:
        self._interrupt_fds.discard(fd)
        if self._fd_handlers.pop(fd, None) is not None:
            self.waiter.unwatch(fd)

    def watch_process(self, watch: ProcessWatch, handler: Handler) -> None:
        self.watch_fd(watch.fileno(), handler)

    def stop_watching(self, watch: ProcessWatch | None) -> None:
        """Forget and close a process watch (None: nothing)."""
        if watch is not None:
            self.unwatch_fd(watch.fileno())
            watch.close()

    def add_socket(self, sock: zmq.Socket[Any], handler: Handler, *, interrupt: bool) -> None:
        """Call `handler` when `sock` has messages: with the interrupts, or at passive level."""
        self.waiter.add_socket(sock)
        (self._interrupt_sockets if interrupt else self._passive_sockets)[sock] = handler

    def open_signals(self) -> None:
        """A self-pipe the stop signals write to, so a signal ends the wait at once."""
        self._signal_r, self._signal_w = os.pipe()
        for fd in (self._signal_r, self._signal_w):
            os.set_blocking(fd, False)
        self.watch_fd(self._signal_r, self._on_signal)

    def install_signal_handlers(self) -> None:
        assert self._signal_w is not None, "open_signals first"
        signal.set_wakeup_fd(self._signal_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)

    def _on_signal(self) -> None:
        assert self._signal_r is not None
        with contextlib.suppress(BlockingIOError):
            os.read(self._signal_r, 64)
        if not self.stopping:
            log.info("stop signal: shutting down (again to kill at once)")
            self.stopping = True
        elif not self.hurry:
            log.warning("second stop signal: killing the miniports")
            self.hurry = True

    def turn(self, max_timeout_ms: int = SAFETY_POLL_MS) -> None:
        """One loop turn: wait, then IRQ work, DPCs, doorbells, passive requests.

        The wait ends at the next timer or sweep (at most `max_timeout_ms`); a
        turn that finds DPCs queued does not block. The clock is read once before
        and once after the wait: every turn of a busy loop pays for it.
        """
        sched = self.scheduler
        dpcs = sched.dpc_queue
        timers = sched.timers
        if dpcs:
            timeout = 0
        else:
            # The scheduler's clock (now_100ns) and next_deadline(), inline: every
            # turn of a busy loop pays for them.
            now = monotonic_ns() // 100
            wake = self._sweep_due
            while timers and timers[0][3].generation != timers[0][2]:
                heapq.heappop(timers)  # a stale entry
            # A timer due a little after the sweep takes the sweep along: periodic
            # timers (heartbeat checks) and the sweep would otherwise keep waking the
            # loop twice a period, a few milliseconds apart, for ever.
            if timers and timers[0][0] < wake + _SWEEP_SLACK:
                wake = timers[0][0]
            # Whole milliseconds, rounded up: waking early would only wait again.
            timeout = -((now - wake) // 10_000)
            if timeout > max_timeout_ms:
                timeout = max_timeout_ms
            elif timeout < 0:
                timeout = 0
        sockets, fds = self.waiter.wait(timeout)
        # Doorbells rung during the turn are written at its end (see ipc.doorbell): a
        # woken peer that pre-empts the kernel then finds this turn's work all done.
        defer_rings()
        try:
            now = monotonic_ns() // 100
            if now >= self._sweep_early:
                # The sweeps run on any wake-up once most of their interval has passed,
                # so that an idle loop woken by heartbeats and timers rarely needs a
                # wake-up of its own for them; at the latest every SAFETY_POLL_MS.
                self._sweep_early = now + _SWEEP_EARLY
                self._sweep_due = now + _SWEEP_INTERVAL
                for sweep in self.idle_sweeps:
                    self._guarded(sweep)
            if sockets:
                interrupt_sockets = self._interrupt_sockets
                for sock in sockets:
                    handler = interrupt_sockets.get(sock)
                    if handler is not None:
                        self._guarded(handler)
            passive: list[int] | None = None
            if fds:
                interrupt_fds = self._interrupt_fds
                if len(fds) == 1:  # the usual wake-up: one doorbell
                    if fds[0] in interrupt_fds:
                        self._run_fd_handlers(fds)
                    else:
                        passive = fds
                else:
                    interrupts = [fd for fd in fds if fd in interrupt_fds]
                    if len(interrupts) < len(fds):
                        passive = [fd for fd in fds if fd not in interrupt_fds]
                    if interrupts:
                        self._run_fd_handlers(interrupts)
            if timers and timers[0][0] <= now:  # a timer may be due (a stale one: no-op)
                sched.fire_due_timers()
            if dpcs:
                sched.run_dpcs()
            if passive is not None:
                self._run_fd_handlers(passive)
                if dpcs:
                    sched.run_dpcs()
            if sockets:
                ran_passive = False
                passive_sockets = self._passive_sockets
                for sock in sockets:
                    handler = passive_sockets.get(sock)
                    if handler is not None:
                        self._guarded(handler)
                        ran_passive = True
                if ran_passive and dpcs:
                    sched.run_dpcs()
        finally:
            flush_deferred_rings()

    def _run_fd_handlers(self, fds: list[int]) -> None:
        """The handlers of `fds`, in order, each looked up as it comes (an earlier one may
        unwatch a later descriptor) and called as `_guarded` does, inline: one call a
        turn, not one a descriptor."""
        fd_handlers = self._fd_handlers
        for fd in fds:
            handler = fd_handlers.get(fd)
            if handler is not None:
                try:
                    handler()
                except Exception:  # a bug must not take the kernel down; counted
                    self._handler_failed(handler)

    def _guarded(self, handler: Handler) -> None:
        try:
            handler()
        except Exception:  # a bug must not take the kernel down; counted
            self._handler_failed(handler)

    def _handler_failed(self, handler: Handler) -> None:
        """Count and log the exception `handler` raised (call from its except block)."""
        self.stats["handler_errors"] += 1
        log.exception("loop handler %r raised", handler)

    def close(self) -> None:
        self.waiter.close()
        with contextlib.suppress(Exception):
            signal.set_wakeup_fd(-1)
        for fd in (self._signal_r, self._signal_w):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._signal_r = self._signal_w = None
