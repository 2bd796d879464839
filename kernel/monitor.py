"""The read-only monitor tap: copies of what a pin renders or captures, for monitors.

A monitor watches one pin of a filter (every instance of it, present and
future) without taking an instance. The pins copy each message into every
monitor's ring as they pass it on: render when the sequencer hands it to the
miniport, capture when the parser delivers it. A monitor that falls behind
never slows the pin: what does not fit in its ring is dropped and counted.
The ring is a sealed memfd the client fetches over fds.sock, as a pin's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from ipc.channel import ChannelWriter, create_sealed_channel
from ipc.ring import RingError
from ipc.status import Status, StatusError
from kernel.fdserver import FdServer

Message = tuple[int, int, bytes]
"""(time on the shared clock, record flags, MIDI bytes)."""


class MonitorTap:
    """One monitor's ring (the kernel writes, the monitor reads)."""

    def __init__(self, handle: int, filter_id: str, pin_id: int, writer: ChannelWriter) -> None:
        self.handle = handle
        self.filter_id = filter_id
        self.pin_id = pin_id
        self.writer: ChannelWriter | None = writer
        self.token = ""
        """Under which fds.sock offers the monitor its end of the ring."""
        self.copied = 0
        self.dropped = 0

    def copy(self, messages: Sequence[Message]) -> None:
        """Queue copies of `messages`; what does not fit now is dropped and counted."""
        writer = self.writer
        if writer is None or not messages:
            return
        try:
            sent = writer.send_many(messages)
        except (RingError, ValueError):
            sent = 0
            self.close()  # the monitor scribbled on its ring: it loses its tap, nothing else
        self.copied += sent
        self.dropped += len(messages) - sent

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def info(self) -> dict[str, int | str]:
        return {"handle": self.handle, "filter": self.filter_id, "pin": self.pin_id,
                "copied": self.copied, "dropped": self.dropped}


def copy_to(taps: list[MonitorTap], messages: Sequence[Message]) -> None:
    """Copy `messages` to every tap of a pin (the common case, no tap, costs one test)."""
    for tap in taps:
        tap.copy(messages)


class Monitors:
    """Every monitor of one kernel, by handle, and whose they are."""

    def __init__(self, fds: FdServer) -> None:
        self.fds = fds
        self._taps: dict[int, tuple[MonitorTap, list[MonitorTap], bytes]] = {}

    def open(
        self, owner: bytes, pid: int, handle: int, filter_id: str, pin_id: int,
        taps: list[MonitorTap], capacity: int,
    ) -> MonitorTap:
        """A new tap on the pin whose list of taps is `taps`; its ring made here and
        offered to process `pid` on fds.sock under `tap.token`."""
        try:
            writer, fds = create_sealed_channel(capacity, owner_writes=True, name=f"mon{handle}")
        except OSError as exc:
            raise StatusError(Status.INSUFFICIENT_RESOURCES,
                              f"cannot create the monitor's ring: {exc}") from exc
        assert isinstance(writer, ChannelWriter)
        tap = MonitorTap(handle, filter_id, pin_id, writer)
        tap.token = self.fds.offer(pid, fds, lambda: self._expired(owner, handle))
        taps.append(tap)
        self._taps[handle] = (tap, taps, owner)
        return tap

    def close(self, owner: bytes, handle: int) -> None:
        entry = self._taps.get(handle)
        if entry is None or entry[2] != owner:
            raise StatusError(Status.INVALID_PARAMETER, f"no monitor {handle}")
        del self._taps[handle]
        tap, taps, _ = entry
        self.fds.withdraw(tap.token)
        with contextlib.suppress(ValueError):
            taps.remove(tap)
        tap.close()

    def _expired(self, owner: bytes, handle: int) -> None:
        """The monitor never fetched its ring: the tap goes."""
        with contextlib.suppress(StatusError):
            self.close(owner, handle)

    def close_all(self, owner: bytes) -> None:
        for handle in [h for h, (_, _, o) in self._taps.items() if o == owner]:
            self.close(owner, handle)

    def info(self, owner: bytes) -> list[dict[str, int | str]]:
        return [tap.info() for tap, _, o in self._taps.values() if o == owner]
