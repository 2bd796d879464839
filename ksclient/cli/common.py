"""What the user-facing subcommands share: the console, MIDI message parsing and naming,
pin addresses (`FILTER[:PIN]`), the runtime option."""

from __future__ import annotations

import argparse
import re
import string
from pathlib import Path
from typing import Any

import mido
from rich.console import Console

__all__ = ["Console"]

import ksclient
from ipc.runtime import ENV_RUNTIME_DIR

SYSEX_SHOWN = 8
"""Bytes of a SysEx shown at each end before the rest is elided."""


def console(stderr: bool = False) -> Console:
    """A rich console: colour only on a terminal (and never with $NO_COLOR), tables as
    wide as the terminal, lines never broken (they may be read by programs)."""
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def add_runtime(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runtime", type=Path, help=f"the kernel's runtime directory (${ENV_RUNTIME_DIR})"
    )
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds to wait for the kernel to answer")


def connect(args: argparse.Namespace) -> ksclient.Client:
    return ksclient.connect(args.runtime, timeout=args.timeout, name=f"portcls-{args.command}")


def parse_messages(words: list[str]) -> list[bytes]:
    """MIDI messages from the command line: hex bytes (`90 3c 40`, several messages in a
    row allowed) or mido's text form (`note_on note=60 velocity=64`, several separated by
    commas). ValueError with the reason for anything that is not whole, valid MIDI."""
    words = " ".join(words).split()  # "90 3c 40" as one argument, too
    if not words:
        raise ValueError("no message given")
    if all(w and all(c in string.hexdigits for c in w) and len(w) % 2 == 0 for w in words):
        data = bytes.fromhex("".join(words))
        parser = mido.Parser()
        parser.feed(data)
        messages = [bytes(m.bytes()) for m in parser]
        if not messages or b"".join(messages) != data:
            raise ValueError(f"not whole, valid MIDI messages: {data.hex(' ')}")
        return messages
    text = " ".join(words)
    messages = []
    for part in re.split(r",(?![^()]*\))", text):  # not the commas of `data=(1,2,3)`
        try:
            msg = mido.Message.from_str(part.strip())
        except (ValueError, TypeError, LookupError) as exc:
            raise ValueError(f"not a MIDI message: {part.strip()!r} ({exc})") from None
        messages.append(bytes(msg.bytes()))
    return messages


def describe(data: bytes, raw: bool = False) -> str:
    """A message as mido names it (`note_on channel=0 note=60 velocity=64`), a SysEx
    shortened with its length; the hex bytes with `raw` or when mido cannot parse it."""
    if raw:
        return short_hex(data)
    try:
        msg = mido.Message.from_bytes(data)
    except (ValueError, TypeError):
        return f"(not MIDI) {short_hex(data)}"
    if msg.type == "sysex":
        return f"sysex {len(data)} bytes: {short_hex(data)}"
    return str(msg).removesuffix(" time=0")


def short_hex(data: bytes) -> str:
    if len(data) <= 2 * SYSEX_SHOWN + 2:
        return data.hex(" ")
    return f"{data[:SYSEX_SHOWN].hex(' ')} … {data[-SYSEX_SHOWN:].hex(' ')}"


def fields(data: bytes) -> dict[str, Any]:
    """A message as a JSON object: mido's type and fields, and the hex bytes."""
    out: dict[str, Any] = {}
    try:
        msg = mido.Message.from_bytes(data)
    except (ValueError, TypeError):
        out["type"] = "invalid"
    else:
        out.update(msg.dict())
        out.pop("time", None)
        if msg.type == "sysex":
            out["data"] = len(msg.data)
            out["length"] = len(data)
    out["hex"] = data.hex(" ")
    return out


def resolve_pin(client: ksclient.Client, target: str, capture: bool) -> tuple[str, int]:
    """(filter, pin id) for `FILTER[:PIN]`, PIN an id or a name; the filter's first pin
    of the direction asked for when PIN is left out."""
    name, sep, pin = target.partition(":")
    f = client.filter(name)
    if not sep or not pin:
        return f.id, f.find_pin(capture)
    for info in f.pins:
        if str(info.id) == pin or info.name == pin:
            if not (info.is_capture if capture else info.is_render):
                what = "capture" if capture else "render"
                raise ValueError(f"pin {info.id} ({info.name}) of {f.id} is not a {what} pin")
            return f.id, info.id
    raise ValueError(f"{f.id} has no pin {pin!r}")
