"""What is plugged into the emulated MPU-401's MIDI OUT and MIDI IN: a `Cable`.

Looped back to the card's own MIDI IN, a real MIDI port through python-rtmidi
(imported only when that cable is made), or nothing. The card hands a cable
the bytes that finished leaving its MIDI OUT, at wire timing, and a cable
that has an input gives the card what arrives (`Mpu401.receive`/`arrive`).
"""

from __future__ import annotations

import collections
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from miniports.midibytes import MessageFramer

if TYPE_CHECKING:
    from miniports.mpu401.card import Mpu401

__all__ = [
    "CABLES",
    "Cable",
    "CableError",
    "LoopbackCable",
    "MidiFramer",
    "NullCable",
    "RtMidiCable",
    "open_cable",
]


class CableError(Exception):
    """A cable could not be connected (a missing backend, no such MIDI port)."""


class Cable(ABC):
    """What is plugged into the card's MIDI OUT (and, for some, its MIDI IN)."""

    card: Mpu401 | None = None

    def plug(self, card: Mpu401) -> None:
        """Called by the card it is plugged into, before any byte moves."""
        self.card = card

    @abstractmethod
    def transmit(self, data: bytes) -> None:
        """Bytes that finished leaving MIDI OUT, in order, at wire timing (the card's thread)."""

    def statistics(self) -> dict[str, int]:
        """The cable's own counters (none for most cables)."""
        return {}

    def close(self) -> None:  # noqa: B027 - most cables hold nothing
        """Release what the cable holds."""


class NullCable(Cable):
    """Nothing plugged in: output vanishes, no input ever comes."""

    def transmit(self, data: bytes) -> None:
        pass


class LoopbackCable(Cable):
    """MIDI OUT wired to the same card's MIDI IN: each byte arrives as it finishes sending."""

    def transmit(self, data: bytes) -> None:
        if self.card is not None:
            self.card.arrive(data)


class MidiFramer:
    """Cut a raw MIDI byte stream into whole messages (for backends that send messages).

    Running status is expanded, real-time bytes come out on their own at once,
    SysEx comes out whole (F0 ... F7). What cannot go out as a message is
    dropped and counted in `statistics()`: stray data bytes, cut messages,
    undefined bytes, a SysEx aborted by a status byte. The rules are
    `miniports.midibytes.MessageFramer`'s (that is, `ipc.midi`'s).
    """

    def __init__(self) -> None:
        self._framer = MessageFramer()

    def feed(self, data: bytes) -> Iterator[bytes]:
        return iter(self._framer.frame(data))

    def statistics(self) -> dict[str, int]:
        """discarded (bytes), aborted_sysex, undefined_bytes: see `MessageFramer`."""
        return self._framer.statistics()


class RtMidiCable(Cable):
    """A real MIDI port through python-rtmidi (imported only when this cable is made).

    `port`: connect to the first output (and input, if there is one) whose name
    contains it; None: open virtual ports ("out", "in") that other programs
    connect to. `api`: "alsa", "jack" or None (rtmidi's default); with JACK the
    two directions are the clients `client_name`-out and `client_name`-in.
    Input arrives at the card paced at the wire rate.

    On JACK the input queue is polled every `JACK_POLL` seconds (about one JACK
    period) instead of using rtmidi's callback: that callback runs in JACK's
    process thread, must take the GIL per event and then misses cycles and
    loses or repeats events while another thread holds it (observed here, as
    the rtmidi miniport found). Other APIs use the callback and cost nothing idle.

    On JACK the output goes through a sender thread, in order, paced by token
    buckets (`JACK_PACE_MESSAGES` a second, `JACK_PACE_BYTES` bytes a second:
    JACK drops what a period cannot hold), and a SysEx longer than RtMidi's
    JACK output carries (16,379 bytes) goes in pieces, F0 + 4,095 bytes and
    then 3 bytes at a time, which RtMidi's JACK input joins again (see
    `miniports.rtmidi.pacing`). The card's wire never waits for it: what the
    wire sends faster than the pace waits in the sender's queue.
    """

    JACK_POLL: Final = 0.001
    JACK_PACE_MESSAGES: Final = 30_000.0
    JACK_PACE_MESSAGE_BURST: Final = 64
    JACK_PACE_BYTES: Final = 1_000_000.0
    JACK_PACE_BYTE_BURST: Final = 8192
    CLOSE_DRAIN: Final = 1.0
    """Seconds `close` lets the JACK sender finish its backlog before stopping it."""

    def __init__(
        self, port: str | None = None, client_name: str = "portcls-mpu401", api: str | None = None
    ) -> None:
        try:
            import rtmidi
        except ImportError as exc:
            raise CableError(f"the rtmidi cable needs python-rtmidi: {exc}") from exc
        apis = {None: rtmidi.API_UNSPECIFIED, "alsa": rtmidi.API_LINUX_ALSA,
                "jack": rtmidi.API_UNIX_JACK}
        if api not in apis:
            raise CableError(f"no rtmidi API {api!r} (alsa, jack)")
        jack = api == "jack"
        self._framer = MidiFramer()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._sender: threading.Thread | None = None
        self._backlog: collections.deque[bytes] = collections.deque()
        self._wake = threading.Condition()
        self._in_flight = False
        self.split_sysex = 0
        self.truncated_sysex = 0
        try:
            self._out = rtmidi.MidiOut(
                rtapi=apis[api], name=f"{client_name}-out" if jack else client_name
            )
            self._in = rtmidi.MidiIn(
                rtapi=apis[api], name=f"{client_name}-in" if jack else client_name
            )
            if port is None:
                self._out.open_virtual_port("out")
                self._in.open_virtual_port("in")
            else:
                self._open_named(self._out, port, required=True)
                self._open_named(self._in, port, required=False)
            self._in.ignore_types(sysex=False, timing=False, active_sense=False)
            if not jack:
                self._in.set_callback(self._on_input)
        except (rtmidi.RtMidiError, OSError) as exc:
            self.close()
            raise CableError(f"rtmidi: {exc}") from exc
        if jack:
            self._poller = threading.Thread(target=self._poll_input, name="mpu401-jack-in",
                                            daemon=True)
            self._poller.start()
            self._sender = threading.Thread(target=self._send_paced, name="mpu401-jack-out",
                                            daemon=True)
            self._sender.start()

    def _poll_input(self) -> None:
        while not self._stop.is_set():
            event = self._in.get_message()
            if event is None:
                self._stop.wait(self.JACK_POLL)
            elif self.card is not None:
                self.card.receive(bytes(event[0]))

    @staticmethod
    def _open_named(midi: Any, port: str, required: bool) -> None:
        names = midi.get_ports()
        for index, name in enumerate(names):
            if port in name:
                midi.open_port(index)
                return
        if required:
            raise CableError(f"no MIDI port named like {port!r} (there are {names})")

    def _on_input(self, event: tuple[list[int], float], _data: object = None) -> None:
        if self.card is not None:
            self.card.receive(bytes(event[0]))

    def transmit(self, data: bytes) -> None:
        if self._sender is None:
            for message in self._framer.feed(data):
                self._out.send_message(message)
            return
        messages = list(self._framer.feed(data))
        if messages:
            with self._wake:
                self._backlog.extend(messages)
                self._wake.notify()

    def _send_paced(self) -> None:
        """The JACK sender thread: the backlog's messages in order, each piece paced."""
        from miniports.rtmidi.pacing import JACK_MESSAGE_MAX, TokenBucket, piece_end

        messages = TokenBucket(self.JACK_PACE_MESSAGES, self.JACK_PACE_MESSAGE_BURST)
        octets = TokenBucket(self.JACK_PACE_BYTES, self.JACK_PACE_BYTE_BURST)
        while not self._stop.is_set():
            with self._wake:
                while not self._backlog and not self._stop.is_set():
                    self._wake.wait()
                if self._stop.is_set():
                    return
                message = self._backlog.popleft()
                self._in_flight = True
            n, start = len(message), 0
            while start < n:
                end = piece_end(n, start)
                now = time.monotonic()
                messages.refill(now)
                octets.refill(now)
                if not (messages.can_take(1) and octets.can_take(end - start)):
                    wait = max(messages.wait_time(1), octets.wait_time(end - start))
                    if self._stop.wait(max(wait, self.JACK_POLL)):
                        if start:  # a SysEx cut off part-way: end it for the receiver
                            self.truncated_sysex += 1
                            self._out.send_message(b"\xf7")
                        return
                    continue
                messages.take(1)
                octets.take(end - start)
                self._out.send_message(message[start:end])
                start = end
            if n > JACK_MESSAGE_MAX:
                self.split_sysex += 1
            self._in_flight = False

    def statistics(self) -> dict[str, int]:
        """What could not go out as a message (see `MidiFramer.statistics`); on JACK also
        split_sysex (SysEx sent in pieces), truncated_sysex (one cut off part-way by
        close, ended early with F7) and backlog (messages waiting to be sent)."""
        stats = self._framer.statistics()
        if self._sender is not None:
            stats.update(split_sysex=self.split_sysex, truncated_sysex=self.truncated_sysex,
                         backlog=len(self._backlog))
        return stats

    def close(self) -> None:
        """Release the ports; on JACK, first give the sender up to `CLOSE_DRAIN` seconds to
        send what the wire already transmitted (a SysEx then cut off is ended with F7)."""
        sender = getattr(self, "_sender", None)
        if sender is not None:
            deadline = time.monotonic() + self.CLOSE_DRAIN
            while (self._backlog or self._in_flight) and time.monotonic() < deadline:
                time.sleep(self.JACK_POLL)
        self._stop.set()
        if sender is not None:
            with self._wake:
                self._wake.notify()
            sender.join(5)
            self._sender = None
        poller = getattr(self, "_poller", None)
        if poller is not None:
            poller.join(5)
            self._poller = None
        midi_in, midi_out = getattr(self, "_in", None), getattr(self, "_out", None)
        if midi_in is not None:
            midi_in.cancel_callback()
        for midi in (midi_in, midi_out):
            if midi is not None:
                midi.close_port()
                midi.delete()


CABLES: Final = ("loopback", "rtmidi", "none")


def open_cable(
    kind: str,
    port: str | None = None,
    client_name: str = "portcls-mpu401",
    api: str | None = None,
) -> Cable:
    """A new cable of `kind` ("loopback", "rtmidi" or "none"); CableError if it cannot be made.

    `port`, `client_name` and `api` are for the rtmidi cable (see `RtMidiCable`).
    """
    if kind == "loopback":
        return LoopbackCable()
    if kind == "none":
        return NullCable()
    if kind == "rtmidi":
        return RtMidiCable(port, client_name, api)
    raise CableError(f"no cable {kind!r} (one of {', '.join(CABLES)})")
