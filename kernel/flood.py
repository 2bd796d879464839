"""Doorbell floods: a peer ringing the kernel with no work behind the rings.

A producer rings a consumer's doorbell once per sleep, after it published (and
a consumer the producer's once per wait for room), so a ring with nothing
behind it is rare and a stream of them is a peer making the kernel turn for
nothing. The channels count such rings (`idle_wakeups`); once a second this
watch adds them up per peer, and a peer past FLOOD_LIMIT a second is cut
off: a miniport is faulted (surprise removal and restart), a client's session
is ended (its pins closed). Both are counted in the kernel's statistics.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Final

from kernel.loop import KernelLoop
from kernel.pins import Pin
from kernel.pnp import PnpManager
from kernel.usermode import UserMode

FLOOD_LIMIT: Final = 1000
"""Idle wake-ups a second one peer may cause."""


def _idle(channels: Iterable[Any]) -> int:
    return sum(getattr(c, "idle_wakeups", 0) for c in channels if c is not None)


def _pin_sides(pin: Pin) -> tuple[list[Any], list[Any]]:
    """A pin's channels the client writes to or rings, and those the miniport does."""
    client = [getattr(pin, "client_reader", None), getattr(pin, "client_writer", None)]
    miniport = [getattr(pin, "mp_reader", None), getattr(pin, "mp_writer", None)]
    return client, miniport


class FloodWatch:
    """Once a second (with the loop's safety sweep), cut off peers that flood."""

    def __init__(self, loop: KernelLoop, pnp: PnpManager, user: UserMode) -> None:
        self.loop = loop
        self.pnp = pnp
        self.user = user
        self._seen: dict[object, int] = {}
        self._last = time.monotonic()
        loop.idle_sweeps.append(self.check)

    def _over(self, peer: object, total: int, seconds: float, seen: dict[object, int]) -> bool:
        seen[peer] = total
        return total - self._seen.get(peer, total) > FLOOD_LIMIT * seconds

    def check(self) -> None:
        now = time.monotonic()
        seconds, self._last = max(now - self._last, 1e-3), now
        seen: dict[object, int] = {}
        for device in tuple(self.pnp.devices.values()):
            for sub in tuple(device.subdevices.values()):
                conn = sub.conn
                channels: list[Any] = [conn.interrupts]
                if sub.port is not None:
                    for pin in sub.port.streams.values():
                        channels += _pin_sides(pin)[1]
                if self._over(conn, _idle(channels), seconds, seen):
                    self.loop.stats["miniport_floods"] += 1
                    self.pnp.miniport_fault(conn, "doorbell flood: wake-ups with no work")
        for session in tuple(self.user.sessions.values()):
            total = _idle(c for i in session.pins.values() for c in _pin_sides(i.pin)[0])
            if self._over(session, total, seconds, seen):
                self.loop.stats["client_floods"] += 1
                self.user.end_session(session, "doorbell flood: wake-ups with no work")
        self._seen = seen
