"""A mido backend: the kernel's filter pins as ordinary mido ports.

    mido.set_backend("ksclient.mido_backend")      # or MIDO_BACKEND=ksclient.mido_backend

Port names are ``"<filter>:<pin name>"``, e.g. ``"loopback:MIDI Out"``: inputs are
the capture pins (MIDI comes *in* to the program), outputs the render pins. Only
pins that accept plain MIDI (KSDATAFORMAT_SUBTYPE_MIDI) are listed. If two pins of
a filter share a name, each gets `` #<pin id>`` after it. A filter that has both a
render and a capture pin is also listed under its bare name (``"loopback"``) as an
I/O port: its first capture pin and its first render pin. The bare filter name also
opens the first pin of the direction asked for with `open_input`/`open_output`.

The kernel is found as `ksclient.connect()` finds it ($PORTCLS_RUNTIME_DIR, else
the per-user default); ``runtime_dir=...`` in the open/get_devices keyword
arguments overrides it. Each port has its own connection, so ports may be used
from different threads. Errors are `PortError`, an OSError as mido's own backends
raise: an unknown port, a device removed under an open port, a kernel gone.
Received messages are parsed by mido's parser (a SysEx cut short by another status
byte is dropped, as mido does); `msg.time` is 0, as with mido's other backends.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import mido
from mido import ports

import ksclient
from ipc.ks import DataFormat
from ksclient import errors
from ksclient.client import CapturePin, Client, FilterInfo, PinInfo, RenderPin

POLL_SLICE = 0.1
"""How long one blocking wait lasts before `receive()` looks whether the port was closed."""


class PortError(OSError):
    """A port failed; `status` is the kernel's NTSTATUS code (0 for "no such port")."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def _port_error(exc: errors.KsError) -> PortError:
    error = PortError(str(exc), exc.status)
    error.__cause__ = exc
    return error


def _connect(runtime_dir: str | os.PathLike[str] | None) -> Client:
    try:
        return ksclient.connect(runtime_dir, name=f"mido-{os.getpid()}")
    except errors.KsError as exc:
        raise _port_error(exc) from exc


def _midi_pins(f: FilterInfo) -> Iterator[PinInfo]:
    midi = DataFormat()
    for pin in f.pins:
        if pin.streaming and any(r.matches(midi) for r in pin.data_ranges):
            yield pin


def _pin_names(f: FilterInfo) -> dict[int, str]:
    """Pin id -> port name, for the MIDI pins of one filter."""
    pins = list(_midi_pins(f))
    counts: dict[str, int] = {}
    for pin in pins:
        counts[pin.name] = counts.get(pin.name, 0) + 1
    return {
        pin.id: f"{f.id}:{pin.name}" + (f" #{pin.id}" if counts[pin.name] > 1 else "")
        for pin in pins
    }


def _devices(filters: list[FilterInfo]) -> list[dict[str, Any]]:
    devices: list[dict[str, Any]] = []
    for f in filters:
        names = _pin_names(f)
        kinds = {pin.id: pin.is_capture for pin in f.pins if pin.id in names}
        for pin_id, name in names.items():
            devices.append({
                "name": name, "is_input": kinds[pin_id], "is_output": not kinds[pin_id],
                "filter": f.id, "pin": pin_id,
            })
        if any(kinds.values()) and not all(kinds.values()):
            devices.append({
                "name": f.id, "is_input": True, "is_output": True, "filter": f.id, "pin": None,
            })
    return devices


def get_devices(
    runtime_dir: str | os.PathLike[str] | None = None, **_: Any
) -> list[dict[str, Any]]:
    """mido's device list: one dict per MIDI pin (name, is_input, is_output, filter,
    pin) and one per filter with pins of both directions (its I/O port)."""
    with _connect(runtime_dir) as client:
        try:
            return _devices(client.filters())
        except errors.KsError as exc:
            raise _port_error(exc) from exc


def _resolve(client: Client, name: str | None, capture: bool) -> tuple[str, int, str]:
    """(filter, pin id, port name) for a port name; the first such pin if `name` is None."""
    try:
        filters = client.filters()
    except errors.KsError as exc:
        raise _port_error(exc) from exc
    for f in filters:
        names = _pin_names(f)
        for pin in f.pins:
            if pin.id not in names or pin.is_capture != capture:
                continue
            if name is None or name in (f.id, names[pin.id]):
                return f.id, pin.id, names[pin.id]
    what = "input" if capture else "output"
    if name is None:
        raise PortError(f"no {what} ports available")
    raise PortError(f"unknown {what} port {name!r}")


class _PinPort:
    """What inputs and outputs share: a connection and one open pin."""

    name: str | None
    _client: Client | None = None
    _pin: RenderPin | CapturePin | None = None
    _device_type = "portcls"

    def _open_pin(self, name: str | None, capture: bool, kwargs: dict[str, Any]) -> str:
        if kwargs.get("virtual"):
            raise PortError("the portcls backend has no virtual ports")
        client = _connect(kwargs.get("runtime_dir"))
        try:
            filter_id, pin_id, port_name = _resolve(client, name, capture)
            pin = client.open_pin(filter_id, pin_id)
            pin.run()
        except errors.KsError as exc:
            client.close()
            raise _port_error(exc) from exc
        except BaseException:
            client.close()
            raise
        self._client, self._pin = client, pin
        return port_name

    def _close_pin(self) -> None:
        pin, client = self._pin, self._client
        self._pin = self._client = None
        if pin is not None:
            with contextlib.suppress(errors.KsError):
                pin.close()
        if client is not None:
            client.close()


class Input(_PinPort, ports.BaseInput):  # type: ignore[misc]
    """A capture pin as a mido input port."""

    _locking = False

    def _open(self, callback: Callable[[mido.Message], None] | None = None,
              **kwargs: Any) -> None:
        self._callback: Callable[[mido.Message], None] | None = None
        self._pending: list[mido.Message] = []
        self.name = self._open_pin(self.name, True, kwargs)
        self.callback = callback

    @property
    def _capture(self) -> CapturePin:
        pin = self._pin
        if not isinstance(pin, CapturePin):
            raise OSError("the port is closed")
        return pin

    def _parse(self, data: bytes) -> None:
        self._pending.extend(_decode(data))

    def _take(self, timeout: float | None) -> mido.Message | None:
        """The next message, waiting up to `timeout` (None: until one comes or the port
        closes)."""
        while not self._pending:
            if self.closed or self._pin is None:
                raise OSError("port closed during receive()")
            wait = POLL_SLICE if timeout is None else min(timeout, POLL_SLICE)
            try:
                self._parse(self._capture.receive(wait).data)
                continue
            except errors.KsTimeoutError:
                pass
            except errors.KsError as exc:
                raise _port_error(exc) from exc
            if timeout is not None:
                timeout -= wait
                if timeout <= 0:
                    return None
        return self._pending.pop(0)

    def receive(self, block: bool = True) -> mido.Message | None:
        """The next message; with block=False, None if none is waiting."""
        self._check_callback()
        if self.closed:
            if block:
                raise ValueError("receive() called on closed port")
            return None
        return self._take(None if block else 0.0)

    def poll(self) -> mido.Message | None:
        return self.receive(block=False)

    @property
    def callback(self) -> Callable[[mido.Message], None] | None:
        return self._callback

    @callback.setter
    def callback(self, func: Callable[[mido.Message], None] | None) -> None:
        pin = self._capture
        pin.set_callback(None)
        self._callback = func
        if func is None:
            return
        while self._pending:
            func(self._pending.pop(0))

        def deliver(message: ksclient.MidiMessage) -> None:
            for msg in _decode(message.data):
                func(msg)

        pin.set_callback(deliver)

    def _close(self) -> None:
        if isinstance(self._pin, CapturePin):
            self._pin.set_callback(None)
        self._callback = None
        self._close_pin()


def _decode(data: bytes) -> list[mido.Message]:
    """The mido messages of one captured message, as a mido Parser of its own gives them.
    A Parser tokenizes the bytes, then decodes each message with Message.from_bytes; a
    captured message is whole, so its bytes go to from_bytes straight away. What that
    cannot decode as one message (an aborted SysEx, an undefined byte delivered) goes
    through a Parser, which drops it as it always did."""
    try:
        return [mido.Message.from_bytes(data)]
    except ValueError:
        parser = mido.Parser()
        parser.feed(data)
        return list(parser)


class Output(_PinPort, ports.BaseOutput):  # type: ignore[misc]
    """A render pin as a mido output port; messages play at once."""

    def _open(self, **kwargs: Any) -> None:
        kwargs.pop("callback", None)
        self.name = self._open_pin(self.name, False, kwargs)

    def _send(self, msg: mido.Message) -> None:
        pin = self._pin
        if not isinstance(pin, RenderPin):
            raise OSError("the port is closed")
        try:
            pin.send(msg.bytes())
        except errors.KsError as exc:
            raise _port_error(exc) from exc

    def _close(self) -> None:
        self._close_pin()


class IOPort(ports.IOPort):  # type: ignore[misc]
    """A filter's capture and render pins as one mido I/O port.

    The name is the filter's (its first pins of each direction), or
    ``"<input name> + <output name>"`` as mido names I/O ports it builds itself.
    """

    def __init__(self, name: str | None = None, **kwargs: Any) -> None:
        in_name: str | None = name
        out_name: str | None = name
        if name is not None and " + " in name:
            in_name, out_name = name.split(" + ", 1)
        callback = kwargs.pop("callback", None)
        autoreset = kwargs.pop("autoreset", False)
        inp = Input(in_name, callback=callback, **kwargs)
        try:
            out = Output(out_name, autoreset=autoreset, **kwargs)
        except BaseException:
            inp.close()
            raise
        super().__init__(inp, out)
        if name is not None and " + " not in name:
            self.name = name

    @property
    def callback(self) -> Callable[[mido.Message], None] | None:
        return self.input.callback  # type: ignore[no-any-return]

    @callback.setter
    def callback(self, func: Callable[[mido.Message], None] | None) -> None:
        self.input.callback = func

    def receive(self, block: bool = True) -> mido.Message | None:
        return self.input.receive(block)

    def poll(self) -> mido.Message | None:
        return self.input.poll()
