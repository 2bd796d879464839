"""A read-only monitor of one pin: copies of what it renders or captures.

`Client.open_monitor(filter, pin)` makes one. It takes no pin instance, so it
can watch a render pin that a player holds, or a capture pin beside the
application reading it. The kernel copies each message into the monitor's
ring as the pin passes it on — render: when the sequencer hands it to the
miniport; capture: when the parser delivers it — and drops (and counts, see
`dropped`) what does not fit when the monitor falls behind; the pin itself is
never slowed.
"""

from __future__ import annotations

import collections
import select
import time
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from ipc import protocol as p
from ipc.channel import ChannelReader
from ipc.ring import RingError
from ipc.status import Status
from ksclient import errors
from ksclient.client import MidiMessage, SysexJoiner

if TYPE_CHECKING:
    from ksclient.client import Client


class Monitor:
    """Messages a pin passes on, as `MidiMessage`s stamped with the time (shared clock)
    the pin passed them; `receive`, `receive_nowait`, iteration, `close`."""

    def __init__(
        self, client: Client, handle: int, filter_id: str, pin_id: int, channel: ChannelReader
    ) -> None:
        self.client = client
        self.handle = handle
        self.filter_id = filter_id
        self.pin_id = pin_id
        self._channel = channel
        self._poller = select.poll()
        self._poller.register(self._channel.data_fileno(), select.POLLIN)
        self._ready: collections.deque[MidiMessage] = collections.deque()
        self._sysex = SysexJoiner()
        self._closed = False

    def _fill(self) -> bool:
        if self._closed:
            raise errors.ClosedError("the monitor is closed")
        try:
            records = self._channel.receive_many(1024)
        except RingError as exc:
            raise errors.BrokenError(Status.IO_DEVICE_ERROR, f"corrupt ring: {exc}") from exc
        self._ready.extend(MidiMessage(data, timestamp, flags)
                           for timestamp, flags, data in self._sysex.join(records))
        return bool(self._ready)

    def receive_nowait(self) -> MidiMessage:
        """The next message, or WouldBlock if none is waiting."""
        if self._ready or self._fill():
            return self._ready.popleft()
        raise errors.WouldBlock("no message waiting")

    def receive(self, timeout: float | None = None) -> MidiMessage:
        """The next message, waiting up to `timeout` seconds (None: no limit);
        KsTimeoutError when none came, KernelGoneError if the kernel died."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._ready or self._fill():
                return self._ready.popleft()
            self.client.check_kernel()
            if self._channel.prepare_to_sleep():
                wait = 0.25 if deadline is None else min(0.25, deadline - time.monotonic())
                if wait <= 0:
                    self._channel.end_sleep()
                    raise errors.KsTimeoutError("no message in time")
                self._poller.poll(max(1, int(wait * 1000)))
                self._channel.end_sleep()

    def poll(self, timeout: float | None = 0.0) -> bool:
        """True when a message can be received without blocking (waits up to `timeout`)."""
        try:
            self._ready.appendleft(self.receive(timeout))
        except errors.KsTimeoutError:
            return False
        return True

    def __iter__(self) -> Iterator[MidiMessage]:
        while True:
            yield self.receive()

    def statistics(self) -> dict[str, Any]:
        """What the kernel copied to this monitor and what it dropped (it fell behind)."""
        for entry in self.client.stats().get("monitors", []):
            if entry["handle"] == self.handle:
                return dict(entry)
        return {}

    @property
    def dropped(self) -> int:
        return int(self.statistics().get("dropped", 0))

    def close(self) -> None:
        """Stop watching (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self.client._closed:
                self.client._call(p.CloseMonitor(self.handle))
        except (errors.KernelGoneError, errors.ClosedError):
            pass
        finally:
            self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
