"""The read-only monitor tap: copies of what a pin renders or captures, for monitors.

A monitor watches one pin of a filter (every instance of it, present and
future) without taking an instance. The pins copy each message into every
monitor's ring as they pass it on: render when the sequencer hands it to the
miniport, capture when the parser delivers it. A monitor that falls behind
never slows the pin: what does not fit in its ring is dropped and counted.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Sequence
from pathlib import Path

from ipc.channel import ChannelWriter, create_channel_files, remove_channel_files
from ipc.ring import RingError
from ipc.status import Status, StatusError

Message = tuple[int, int, bytes]
"""(time on the shared clock, record flags, MIDI bytes)."""


class MonitorTap:
    """One monitor's ring (the kernel writes, the monitor reads)."""

    def __init__(self, handle: int, filter_id: str, pin_id: int, base: Path) -> None:
        self.handle = handle
        self.filter_id = filter_id
        self.pin_id = pin_id
        self.base = base
        self.writer: ChannelWriter | None = ChannelWriter.open(base)
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
        with contextlib.suppress(OSError):
            remove_channel_files(self.base)

    def info(self) -> dict[str, int | str]:
        return {"handle": self.handle, "filter": self.filter_id, "pin": self.pin_id,
                "copied": self.copied, "dropped": self.dropped}


def copy_to(taps: list[MonitorTap], messages: Sequence[Message]) -> None:
    """Copy `messages` to every tap of a pin (the common case, no tap, costs one test)."""
    for tap in taps:
        tap.copy(messages)


class Monitors:
    """Every monitor of one kernel, by handle, and whose they are."""

    def __init__(self, runtime_dir: Path) -> None:
        self.runtime_dir = runtime_dir
        self._taps: dict[int, tuple[MonitorTap, list[MonitorTap], bytes]] = {}

    def open(
        self, owner: bytes, handle: int, filter_id: str, pin_id: int, taps: list[MonitorTap],
        capacity: int,
    ) -> MonitorTap:
        """A new tap on the pin whose list of taps is `taps`; its ring made here."""
        base = self.runtime_dir / f"mon{handle}-{secrets.token_hex(8)}"
        create_channel_files(base, capacity)
        try:
            tap = MonitorTap(handle, filter_id, pin_id, base)
        except BaseException:
            remove_channel_files(base)
            raise
        taps.append(tap)
        self._taps[handle] = (tap, taps, owner)
        return tap

    def close(self, owner: bytes, handle: int) -> None:
        entry = self._taps.get(handle)
        if entry is None or entry[2] != owner:
            raise StatusError(Status.INVALID_PARAMETER, f"no monitor {handle}")
        del self._taps[handle]
        tap, taps, _ = entry
        with contextlib.suppress(ValueError):
            taps.remove(tap)
        tap.close()

    def close_all(self, owner: bytes) -> None:
        for handle in [h for h, (_, _, o) in self._taps.items() if o == owner]:
            self.close(owner, handle)

    def info(self, owner: bytes) -> list[dict[str, int | str]]:
        return [tap.info() for tap, _, o in self._taps.values() if o == owner]
