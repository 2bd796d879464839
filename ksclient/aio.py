"""The asyncio flavour of the SDK: the same names, awaitable.

    async with await ksclient.aio.connect() as kernel:
        inp = await kernel.open_capture("loopback")
        await inp.run()
        msg = await inp.receive(timeout=1.0)

Receiving waits on the pin's ring doorbell with `loop.add_reader`, so no thread
is parked per pin; control requests (open, state, close) are short and run in
a worker thread, one at a time per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from ipc.ks import DataFormat
from ksclient import errors
from ksclient.client import (
    DEFAULT_CAPACITY,
    EVENT_CHECK_SECONDS,
    BufferRequest,
    CapturePin,
    Client,
    FilterInfo,
    KernelEvent,
    MidiMessage,
    PhysicalTime,
    RenderPin,
)
from ksclient.client import (
    connect as sync_connect,
)

T = TypeVar("T")


class AsyncClient:
    def __init__(self, client: Client) -> None:
        self.sync = client
        self._lock = threading.Lock()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        def locked() -> T:
            with self._lock:
                return fn(*args)

        return await asyncio.to_thread(locked)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def filters(self) -> list[FilterInfo]:
        return await self._run(self.sync.filters)

    async def wait_for_filter(self, name: str, timeout: float = 10.0) -> FilterInfo:
        return await self._run(self.sync.wait_for_filter, name, timeout)

    async def next_event(self, timeout: float | None = None) -> KernelEvent:
        return await self._run(self.sync.next_event, timeout)

    async def master_clock(self, filter_id: str) -> PhysicalTime:
        """KSPROPERTY_SYNTH_MASTERCLOCK (see Client.master_clock)."""
        return await self._run(self.sync.master_clock, filter_id)

    async def open_render(
        self, filter_id: str, pin: int | None = None, fmt: DataFormat | None = None,
        capacity: int = DEFAULT_CAPACITY,
    ) -> AsyncRenderPin:
        return AsyncRenderPin(self, await self._run(
            self.sync.open_render, filter_id, pin, fmt, capacity))

    async def open_capture(
        self, filter_id: str, pin: int | None = None, fmt: DataFormat | None = None,
        capacity: int = DEFAULT_CAPACITY,
    ) -> AsyncCapturePin:
        return AsyncCapturePin(self, await self._run(
            self.sync.open_capture, filter_id, pin, fmt, capacity))

    async def close(self) -> None:
        await self._run(self.sync.close)


class _AsyncPin:
    def __init__(self, client: AsyncClient, pin: RenderPin | CapturePin) -> None:
        self.client = client
        self.sync = pin

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def run(self) -> None:
        await self.client._run(self.sync.run)

    async def pause(self) -> None:
        await self.client._run(self.sync.pause)

    async def stop(self) -> None:
        await self.client._run(self.sync.stop)

    async def close(self) -> None:
        await self.client._run(self.sync.close)

    async def time(self) -> int:
        """The pin's stream time (KSPROPERTY_CLOCK_TIME), from the kernel."""
        return await self.client._run(self.sync.time)

    async def latency_clock(self) -> PhysicalTime:
        """KSPROPERTY_SYNTH_LATENCYCLOCK (see Pin.latency_clock)."""
        return await self.client._run(self.sync.latency_clock)

    @property
    def is_directmusic(self) -> bool:
        return self.sync.is_directmusic


class AsyncRenderPin(_AsyncPin):
    sync: RenderPin

    async def send(self, message: Any, at: int | None = None, channel_group: int = 1) -> None:
        """Queue a message; waits (in a worker thread) only when the ring is full.
        `channel_group`: on a DirectMusic pin (see RenderPin.send)."""
        try:
            self.sync.send_nowait(message, at, channel_group)
        except errors.WouldBlock:
            await self.client._run(self.sync.send, message, at, None, channel_group)

    async def send_many(
        self, messages: list[Any], at: int | None = None, channel_group: int = 1
    ) -> None:
        await self.client._run(self.sync.send_many, messages, at, None, False, channel_group)

    async def send_batch(
        self, data: bytes, at: int | None = None, channel_group: int = 1
    ) -> None:
        """Queue whole channel messages back to back in one buffer (see
        RenderPin.send_batch: InvalidMessage naming the offset, nothing sent)."""
        await self.client._run(self.sync.send_batch, data, at, None, channel_group)

    async def write(self, buffer: bytes, presentation_time: int = 0) -> BufferRequest:
        """Queue a KSMUSICFORMAT buffer, or a DirectMusic one on a DirectMusic pin (see
        RenderPin.write); `await wait(request)`."""
        return await self.client._run(self.sync.write, buffer, presentation_time)

    async def wait(self, request: BufferRequest, timeout: float | None = None) -> int:
        """The request's status once it completed (KsTimeoutError after `timeout`)."""
        return await self.client._run(request.wait, timeout)


class AsyncCapturePin(_AsyncPin):
    sync: CapturePin

    def __init__(self, client: AsyncClient, pin: CapturePin) -> None:
        super().__init__(client, pin)
        self._events_checked = -EVENT_CHECK_SECONDS
        """When this pin last took in the kernel's messages (time.monotonic())."""

    async def _readable(self, timeout: float) -> bool:
        """Wait until the pin's data doorbell rings (True) or `timeout` seconds pass (False)."""
        loop = asyncio.get_running_loop()
        fd = self.sync._channel.data_fileno()
        ready: asyncio.Future[bool] = loop.create_future()

        def wake(rung: bool) -> None:
            if not ready.done():
                ready.set_result(rung)

        # A timer rather than asyncio.wait_for, which wraps the future in more futures
        # and callbacks on every wait.
        loop.add_reader(fd, wake, True)
        timer = loop.call_later(timeout, wake, False)
        try:
            return await ready
        finally:
            timer.cancel()
            loop.remove_reader(fd)

    async def receive(self, timeout: float | None = None) -> MidiMessage:
        """The next message; KsTimeoutError after `timeout` seconds (None: forever).
        DeviceRemovedError (and the other errors) as `CapturePin.receive`: the kernel's
        messages are taken in before every wait but the first, and before that one too
        unless they were taken in less than EVENT_CHECK_SECONDS ago (a receive whose
        message comes with its first wake-up, the usual case, needs no look)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        sync = self.sync
        ready = sync._ready
        fresh = time.monotonic() - self._events_checked < EVENT_CHECK_SECONDS
        while True:
            # receive_nowait, without raising WouldBlock on a healthy pin.
            if ready or sync._fill():
                return ready.popleft()
            if sync._error is not None or sync._closed:
                with contextlib.suppress(errors.WouldBlock):
                    return sync.receive_nowait()
            if not fresh and self.client._lock.acquire(blocking=False):
                try:
                    sync.client.pump_events()
                finally:
                    self.client._lock.release()
                self._events_checked = time.monotonic()
            sync._check()
            remaining = 0.25 if deadline is None else min(0.25, deadline - loop.time())
            if remaining <= 0:
                raise errors.KsTimeoutError("no MIDI message")
            # Whatever ended a wait without a message (a timeout, a doorbell with nothing
            # behind it, one that hung up) may be the kernel's news: look next time.
            fresh = False
            if sync._channel.prepare_to_sleep():
                await self._readable(remaining)

    def __aiter__(self) -> AsyncIterator[MidiMessage]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[MidiMessage]:
        while True:
            try:
                yield await self.receive()
            except (errors.ClosedError, errors.BrokenError):
                return


async def connect(
    runtime_dir: str | Path | None = None, *, timeout: float = 5.0, name: str | None = None
) -> AsyncClient:
    """Connect to a kernel (see `ksclient.connect`)."""
    client = await asyncio.to_thread(sync_connect, runtime_dir, timeout=timeout, name=name)
    return AsyncClient(client)
