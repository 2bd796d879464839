"""The rtmidi miniport: any MIDI port python-rtmidi can open becomes a filter.

Written against the public contract like any third-party miniport. The
hardware is an rtmidi input and/or output port of one API (ALSA sequencer or
JACK on Linux, CoreMIDI on macOS, WinMM on Windows). The rtmidi input
callback plays the ISR: it latches the bytes and raises the interrupt, whose
service routine hands them to each running capture stream and calls
`port.notify`, so the port stamps them with the arrival time and drains
`read`. Nothing is filtered: SysEx, MIDI clock and active sensing all pass
(python-rtmidi drops them by default).

On JACK the input is polled instead, every `poll_interval` seconds (1 ms by
default, about one JACK period) and only while a capture stream runs, so an
idle device costs nothing. python-rtmidi runs its callback in JACK's process
thread, which must then take the GIL once per event; while the miniport's own
thread holds it, the callback misses the cycle and reads event buffers JACK
has already reused. Measured here: with the host busy, every burst of 1,000
messages came back with duplicated and lost events through the callback, and
intact through rtmidi's queue. The poll thread plays the interrupt: it drains
the queue, latches the bytes and interrupts, as the callback does elsewhere.

`write` reassembles the byte stream the port hands it into whole MIDI
messages (rtmidi sends messages, not bytes): a message cut across two writes
is completed from the bytes kept from the first, running status is expanded,
and real-time bytes inside a SysEx go out at once (`miniports.midibytes`, by
the grammar of `ipc.midi`). What cannot go out as a message is dropped and
counted in `statistics()`: stray data bytes, cut messages, the undefined
F4/F5/F9/FD, and a SysEx cut short by a status byte before its F7 (the
capture side delivers such a SysEx flagged aborted; a sender cannot send
half a SysEx). Because JACK drops what
does not fit into a period without telling the sender, writes are paced by
two token buckets (messages and bytes per second); when a bucket is empty,
`write` returns a short count and the port offers the rest again about 1 ms
later: the PortCls "busy, retry later" contract, nothing lost. RtMidi's JACK
output carries a message of at most 16,379 bytes (it drops a longer one
silently), so on JACK a longer SysEx goes in pieces, F0 + 4,095 bytes and
then 3 bytes at a time, each paced like a message (`miniports.rtmidi.pacing`);
RtMidi's JACK input joins them again.

Options (keyword arguments, from the device's configuration):
  api          "auto", "alsa", "jack", "coremidi" or "winmm"
  input        the input port to capture from: its exact name, or a glob
               pattern (`*`, `?`, `[...]`); the first port matching is used
  output       the output port to render to, the same way
  virtual      true: create `input`/`output` as virtual ports instead
               (default names "in"/"out"; not on WinMM)
  client_name  the rtmidi client name (JACK: clients "<name>-in" and "<name>-out")
  jack_server  the JACK server to use (sets JACK_DEFAULT_SERVER)
  pace         false turns pacing off (for APIs that queue without loss)
  pace_messages, pace_message_burst   messages per second, and burst
  pace_bytes, pace_byte_burst         bytes per second, and burst
  poll_interval  seconds between input polls; 0 uses rtmidi's callback
               (default: 0.001 on JACK, 0 elsewhere)
  fifo_size    bytes a capture stream buffers before dropping (counted)
  capture_instances  how many capture pins may be open at once
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import rtmidi

from ipc.ks import (
    KSFILTER_NODE,
    Communication,
    Connection,
    DataFlow,
    FilterDescriptor,
    PinDescriptor,
)
from miniports.contract import (
    DataFormat,
    FifoCaptureStream,
    InterruptSync,
    KsState,
    MiniportMidi,
    MiniportMidiStream,
    Port,
    PortServiceGroup,
    ResourceList,
    Status,
    StatusError,
)
from miniports.midibytes import MessageFramer
from miniports.rtmidi.pacing import JACK_MESSAGE_MAX, TokenBucket, piece_end
from miniports.rtmidi.ports import api_id, match_port, no_autostart

__all__ = ["RtMidiCaptureStream", "RtMidiMiniport", "RtMidiRenderStream"]


class RtMidiCaptureStream(FifoCaptureStream):
    def __init__(self, owner: RtMidiMiniport) -> None:
        super().__init__(owner.sync, owner.fifo_size)
        self._owner = owner

    def set_state(self, state: KsState) -> None:
        with self.sync.lock:
            super().set_state(state)
            self._owner.capture_state_changed()

    def close(self) -> None:
        with self._owner.sync.lock:
            self._owner.captures.remove(self)
            self._owner.capture_state_changed()


class RtMidiRenderStream(MiniportMidiStream):
    def __init__(self, owner: RtMidiMiniport) -> None:
        self._owner = owner
        self.framer = MessageFramer()

    def set_state(self, state: KsState) -> None:
        self.state = state
        if state == KsState.STOP:
            self.framer.reset()
            self._owner.abandon_split()

    def write(self, data: bytes) -> int:
        return self._owner.send_bytes(self.framer, data)

    def close(self) -> None:
        self._owner.render_closed(self)


class RtMidiMiniport(MiniportMidi):
    """A filter over one rtmidi input and/or output port."""

    def __init__(
        self,
        api: str = "auto",
        input: str | None = None,
        output: str | None = None,
        virtual: bool = False,
        client_name: str = "portcls",
        jack_server: str | None = None,
        pace: bool = True,
        pace_messages: float = 30_000.0,
        pace_message_burst: int = 64,
        pace_bytes: float = 1_000_000.0,
        pace_byte_burst: int = 8192,
        poll_interval: float | None = None,
        fifo_size: int = 1 << 20,
        capture_instances: int = 4,
    ) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise StatusError(Status.INVALID_PARAMETER, message)

        check(isinstance(api, str), "api must be a string")
        self.api_name = api
        self.api = api_id(api)
        for name, value in (("input", input), ("output", output)):
            check(value is None or (isinstance(value, str) and bool(value)),
                  f"{name} must be a non-empty port name or pattern")
        check(isinstance(virtual, bool), "virtual must be true or false")
        if virtual and input is None and output is None:
            input, output = "in", "out"
        check(input is not None or output is not None,
              "give an input and/or an output port (or virtual = true)")
        check(isinstance(client_name, str) and bool(client_name), "client_name must be a string")
        check(jack_server is None or isinstance(jack_server, str), "jack_server must be a string")
        check(isinstance(pace, bool), "pace must be true or false")
        for name, number in (
            ("pace_messages", pace_messages), ("pace_bytes", pace_bytes),
            ("pace_message_burst", pace_message_burst), ("pace_byte_burst", pace_byte_burst),
        ):
            check(not isinstance(number, bool) and isinstance(number, (int, float))
                  and number > 0, f"{name} must be a positive number")
        if poll_interval is None:
            poll_interval = 0.001 if self.api == rtmidi.API_UNIX_JACK else 0.0
        check(not isinstance(poll_interval, bool) and isinstance(poll_interval, (int, float))
              and 0 <= poll_interval <= 1, "poll_interval must be a number of seconds in [0, 1]")
        self.poll_interval = float(poll_interval)
        for name, count in (("fifo_size", fifo_size), ("capture_instances", capture_instances)):
            check(not isinstance(count, bool) and isinstance(count, int) and count >= 1,
                  f"{name} must be an int >= 1")
        self.input_port, self.output_port, self.virtual = input, output, virtual
        self.client_name = client_name
        self.jack_server = jack_server
        self.pace = pace
        self._messages = TokenBucket(float(pace_messages), float(pace_message_burst))
        self._bytes = TokenBucket(float(pace_bytes), float(pace_byte_burst))
        self.fifo_size = fifo_size
        self.capture_instances = capture_instances
        self.sync = InterruptSync()
        self.captures: list[RtMidiCaptureStream] = []
        self.render_open = False
        self._render: RtMidiRenderStream | None = None
        self._closed_renders: collections.Counter[str] = collections.Counter()
        self.sent_messages = 0
        self.received_messages = 0
        # JACK: a SysEx too long for RtMidi's ring goes in pieces (miniports.rtmidi.pacing);
        # one partly sent is (the SysEx, where its next piece starts).
        self.split_long_sysex = self.api == rtmidi.API_UNIX_JACK
        self._split: tuple[bytes, int] | None = None
        self.split_sysex = 0
        self.truncated_sysex = 0
        self._midi_in: Any = None
        self._midi_out: Any = None
        self._port: Port | None = None
        self._group: PortServiceGroup | None = None
        self._latched: list[bytes] = []
        self._latch_lock = threading.Lock()
        self._capturing = threading.Event()
        self._closing = False
        self._poller: threading.Thread | None = None

    # The filter: a render pin for an output, a capture pin for an input.

    def _pins(self) -> list[tuple[str, PinDescriptor]]:
        pins: list[tuple[str, PinDescriptor]] = []
        if self.output_port is not None:
            pins.append(("render", PinDescriptor("MIDI Out", DataFlow.IN)))
            pins.append(("bridge_out", PinDescriptor(
                "Bridge Out", DataFlow.OUT, Communication.NONE, ())))
        if self.input_port is not None:
            pins.append(("bridge_in", PinDescriptor(
                "Bridge In", DataFlow.IN, Communication.NONE, ())))
            pins.append(("capture", PinDescriptor(
                "MIDI In", DataFlow.OUT,
                max_global_instances=self.capture_instances,
                max_filter_instances=self.capture_instances,
            )))
        return pins

    def _pin_id(self, role: str) -> int | None:
        for index, (name, _) in enumerate(self._pins()):
            if name == role:
                return index
        return None

    def get_description(self) -> FilterDescriptor:
        pins = self._pins()
        ids = {role: index for index, (role, _) in enumerate(pins)}
        connections = []
        if "render" in ids:
            connections.append(
                Connection(KSFILTER_NODE, ids["render"], KSFILTER_NODE, ids["bridge_out"]))
        if "capture" in ids:
            connections.append(
                Connection(KSFILTER_NODE, ids["bridge_in"], KSFILTER_NODE, ids["capture"]))
        return FilterDescriptor(pins=tuple(d for _, d in pins), connections=tuple(connections))

    # The hardware.

    def _open(self, cls: Any, pattern: str, suffix: str) -> Any:
        name = f"{self.client_name}-{suffix}" if self.api == rtmidi.API_UNIX_JACK else (
            self.client_name)
        # rtmidi's input queue (1,024 messages by default) must ride out a poll
        # thread kept from the GIL for a while; it holds about 2 s at the paced rate.
        extra = {"queue_size_limit": 1 << 16} if cls is rtmidi.MidiIn else {}
        try:
            midi = cls(rtapi=self.api, name=name, **extra)
        except rtmidi.RtMidiError as exc:
            raise StatusError(
                Status.IO_DEVICE_ERROR, f"rtmidi {self.api_name}: cannot open the API: {exc}"
            ) from exc
        try:
            if self.virtual:
                midi.open_virtual_port(pattern)
            else:
                ports = list(midi.get_ports())
                index = match_port(ports, pattern)
                if index is None:
                    raise StatusError(
                        Status.OBJECT_NAME_NOT_FOUND,
                        f"no {suffix}put port matches {pattern!r} (have: {ports})",
                    )
                midi.open_port(index, name=suffix)
        except rtmidi.RtMidiError as exc:
            midi.delete()
            raise StatusError(Status.IO_DEVICE_ERROR, f"rtmidi: {exc}") from exc
        except StatusError:
            midi.delete()
            raise
        return midi

    def init(self, resources: ResourceList, port: Port) -> PortServiceGroup | None:
        if self.jack_server is not None:
            os.environ["JACK_DEFAULT_SERVER"] = self.jack_server
        no_autostart()
        self._port = port
        self._group = port.new_service_group()
        port.register_service_group(self._group)
        self.sync.register_service_routine(self._isr)
        try:
            if self.input_port is not None:
                self._midi_in = self._open(rtmidi.MidiIn, self.input_port, "in")
                # SysEx, clock and active sensing are data like any other here.
                self._midi_in.ignore_types(sysex=False, timing=False, active_sense=False)
                if self.poll_interval:
                    self._poller = threading.Thread(
                        target=self._poll_input, name="rtmidi-input", daemon=True)
                    self._poller.start()
                else:
                    self._midi_in.set_callback(self._on_input)
            if self.output_port is not None:
                self._midi_out = self._open(rtmidi.MidiOut, self.output_port, "out")
        except BaseException:
            self.close()
            raise
        return self._group

    def _on_input(self, event: tuple[list[int], float], _data: object = None) -> None:
        """rtmidi's callback thread: the hardware latches the bytes and interrupts."""
        with self._latch_lock:
            self._latched.append(bytes(event[0]))
        self.sync.interrupt()

    def _poll_input(self) -> None:
        """The JACK input's interrupt: poll rtmidi's queue while a capture stream runs."""
        while True:
            self._capturing.wait()
            if self._closing:
                return
            midi_in = self._midi_in
            if midi_in is None:
                return
            got = False
            while (event := midi_in.get_message()) is not None:
                with self._latch_lock:
                    self._latched.append(bytes(event[0]))
                got = True
                self.received_messages += 1
            if got:
                self.sync.interrupt()
            time.sleep(self.poll_interval)

    def capture_state_changed(self) -> None:
        """Poll only while some capture stream runs: an idle device costs nothing."""
        if any(s.state == KsState.RUN for s in self.captures):
            self._capturing.set()
        else:
            self._capturing.clear()

    def _isr(self) -> bool:
        with self._latch_lock:
            latched, self._latched = self._latched, []
        if not latched:
            return False
        data = b"".join(latched)
        stored = False
        for stream in self.captures:
            stored |= stream.hardware_input(data)
        if stored and self._port is not None:
            self._port.notify(self._group)
        return True

    def send_bytes(self, framer: MessageFramer, data: bytes) -> int:
        """A render stream's write: whole messages out through rtmidi, paced.

        On JACK a SysEx longer than `JACK_MESSAGE_MAX` goes in pieces, each
        paced (even with `pace` off: JACK drops what a period cannot hold).
        When the buckets run dry part-way, the SysEx is refused ("not now"),
        the framer offers it again on the port's retry, and sending resumes
        at the piece where it stopped; nothing else goes out in between.
        """
        midi_out = self._midi_out
        if midi_out is None:
            raise StatusError(Status.INVALID_DEVICE_STATE, "the output port is closed")
        now = time.monotonic()
        self._messages.refill(now)
        self._bytes.refill(now)

        def out(message: bytes) -> None:
            try:
                midi_out.send_message(message)
            except (rtmidi.RtMidiError, ValueError, OverflowError) as exc:
                raise StatusError(Status.IO_DEVICE_ERROR, f"rtmidi send: {exc}") from exc

        def paced(size: int) -> bool:
            if not (self._messages.can_take(1) and self._bytes.can_take(size)):
                return False
            self._messages.take(1)
            self._bytes.take(size)
            return True

        def send(message: bytes) -> bool:
            if self.split_long_sysex and len(message) > JACK_MESSAGE_MAX:
                return self._send_pieces(message, out, paced)
            if self.pace and not paced(len(message)):
                return False
            out(message)
            self.sent_messages += 1
            return True

        return framer.feed(data, send)

    def _send_pieces(
        self, message: bytes, out: Callable[[bytes], None], paced: Callable[[int], bool]
    ) -> bool:
        """Send a long SysEx's pieces while the buckets allow; True when the last went."""
        split = self._split
        if split is not None and split[0] != message:
            self.abandon_split()
            split = None
        start = 0 if split is None else split[1]
        n = len(message)
        while start < n:
            end = piece_end(n, start)
            if not paced(end - start):
                self._split = (message, start)
                return False
            out(message[start:end])
            start = end
        self._split = None
        self.sent_messages += 1
        self.split_sysex += 1
        return True

    def abandon_split(self) -> None:
        """A SysEx partly sent in pieces will not be finished (its stream stopped or
        closed): end it with F7 so the JACK receiver stops joining pieces to it (it
        gets it truncated) and count it in `truncated_sysex`."""
        if self._split is None:
            return
        self._split = None
        self.truncated_sysex += 1
        midi_out = self._midi_out
        if midi_out is not None:
            with contextlib.suppress(rtmidi.RtMidiError, ValueError, OverflowError):
                midi_out.send_message(b"\xf7")

    def render_closed(self, stream: RtMidiRenderStream) -> None:
        """A render stream closes: keep what its framer counted."""
        if stream is self._render:
            self.abandon_split()
            self._closed_renders.update(stream.framer.statistics())
            self._render = None
        self.render_open = False

    def statistics(self) -> dict[str, int]:
        """Counters since the miniport was made.

        sent_messages, received_messages (polled input only), and what render
        streams could not send as messages: discarded (bytes), aborted_sysex
        (SysEx cut short by a status byte), undefined_bytes (F4, F5, F9, FD).
        On JACK: split_sysex (SysEx sent in pieces, whole) and truncated_sysex
        (one whose stream stopped part-way: ended early with F7).
        """
        stats = collections.Counter({"discarded": 0, "aborted_sysex": 0, "undefined_bytes": 0})
        stats.update(self._closed_renders)
        if self._render is not None:
            stats.update(self._render.framer.statistics())
        stats["sent_messages"] = self.sent_messages
        stats["received_messages"] = self.received_messages
        stats["split_sysex"] = self.split_sysex
        stats["truncated_sysex"] = self.truncated_sysex
        return dict(stats)

    def new_stream(
        self, pin: int, capture: bool, fmt: DataFormat
    ) -> tuple[MiniportMidiStream, PortServiceGroup | None]:
        role = "capture" if capture else "render"
        if pin != self._pin_id(role):
            raise StatusError(Status.INVALID_PARAMETER, f"pin {pin} cannot stream that way")
        if capture:
            with self.sync.lock:
                if len(self.captures) >= self.capture_instances:
                    raise StatusError(Status.INSUFFICIENT_RESOURCES, "all capture streams in use")
                stream = RtMidiCaptureStream(self)
                self.captures.append(stream)
            return stream, self._group
        if self.render_open:
            raise StatusError(Status.INSUFFICIENT_RESOURCES, "the render stream is in use")
        self.render_open = True
        self._render = RtMidiRenderStream(self)
        return self._render, None

    def close(self) -> None:
        self._closing = True
        self._capturing.set()
        if self._poller is not None:
            self._poller.join(1.0)
            self._poller = None
        self.abandon_split()
        for attr in ("_midi_in", "_midi_out"):
            midi = getattr(self, attr)
            if midi is not None:
                setattr(self, attr, None)
                try:
                    if attr == "_midi_in" and not self.poll_interval:
                        midi.cancel_callback()
                    midi.close_port()
                finally:
                    midi.delete()
