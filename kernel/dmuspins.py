"""The DirectMusic half of the port's pins: between a pin's format and the miniport's kind.

Layouts (ipc.dmusic): a DirectMusic-format pin's client ring and every ring of
a DirectMusic miniport carry `GROUP_PREFIX` + the event's bytes; MIDI pins and
MIDI miniports carry plain MIDI bytes, which are channel group 1.

Render (`convert_render`, on each record as the sequencer takes it in):

  DirectMusic pin → DMus miniport   the prefix is checked and kept
  DirectMusic pin → MIDI miniport   the prefix is stripped: a MIDI miniport is
                                    one MIDI OUT, and every group goes out of
                                    it (as Windows' DMusUART sends every group)
  MIDI pin → DMus miniport          channel group 1 is added

A record whose prefix is bad (short, group 0 or above 65535) or that has no
bytes after it is dropped and counted ("malformed"); it never reaches the
miniport. The sequencer then releases a DMus miniport's events `schedule_prefetch`
ahead of their presentation time and writes each with the presentation time on
the master clock (`kernel.renderpin`).

Capture (`DmusCapture`, a DMus miniport's records): a record flagged
RECORD_FLAG_INCOMPLETE holds raw bytes (or a SysEx fragment) and is parsed per
channel group by the one MIDI grammar (ipc.midi's assembler, as MIDI capture
is); any other record must hold exactly one whole message (ipc.midi
`check_message`), else it is dropped and counted ("malformed"). To a
DirectMusic-format pin every group goes, prefixed; to a MIDI-format pin only
group 1, plain (the others are counted in "other_groups"), so a MIDI client
sees exactly what a MIDI miniport on the same wire would give it.
"""

from __future__ import annotations

import collections
from typing import Final

from ipc.dmusic import (
    DONT_HOLD_FOR_SEQUENCING,
    RECORD_FLAG_INCOMPLETE,
    join_group,
    prefetch_from_wire,
    split_group,
)
from ipc.ks import KSDATAFORMAT_SUBTYPE_DIRECTMUSIC, RENDER_FLAG_BUFFER_END, DataFormat
from ipc.midi import InvalidMessage, check_message
from ipc.ring import Record
from ipc.status import Status, StatusError
from kernel.midiparse import MidiStreamParser

__all__ = [
    "MAX_GROUPS_PARSED",
    "DmusCapture",
    "check_prefetch",
    "convert_render",
    "for_client",
    "is_dmus_format",
    "release_ahead",
]

MAX_GROUPS_PARSED: Final = 64
"""Channel groups with a partial message at once; beyond, the oldest is forgotten
(a miniport cannot make the kernel keep 65535 parsers)."""

Grouped = tuple[int, int, int, bytes]
"""(timestamp, flags, channel group, message bytes)."""


def is_dmus_format(fmt: DataFormat) -> bool:
    """The pin was opened with KSDATAFORMAT_SUBTYPE_DIRECTMUSIC."""
    return fmt.sub_format == KSDATAFORMAT_SUBTYPE_DIRECTMUSIC


def check_prefetch(value: object) -> int:
    """A schedule pre-fetch from a NewStream reply (ipc.dmusic `prefetch_from_wire`: an
    int 0 <= x < 2**63, or DONT_HOLD_FOR_SEQUENCING as DONT_HOLD_ON_WIRE or as itself);
    StatusError(INVALID_PARAMETER) otherwise."""
    try:
        return prefetch_from_wire(value)
    except ValueError as exc:
        raise StatusError(Status.INVALID_PARAMETER, str(exc)) from None


def release_ahead(prefetch: int) -> int:
    """How far ahead of its time the sequencer releases an event: DONT_HOLD is "always"."""
    return 1 << 80 if prefetch == DONT_HOLD_FOR_SEQUENCING else prefetch


def convert_render(
    records: list[Record], pin_dmus: bool, miniport_dmus: bool,
    stats: collections.Counter[str],
) -> list[Record]:
    """The client's records in the miniport's layout (see the module docstring); buffer
    markers pass unchanged, bad records are dropped and counted in `stats`."""
    out: list[Record] = []
    for record in records:
        if record.flags & RENDER_FLAG_BUFFER_END:
            out.append(record)
            continue
        if not pin_dmus:
            if record.data:
                out.append(record._replace(data=join_group(1, record.data)))
            continue
        try:
            _, data = split_group(record.data)
        except ValueError:
            stats["malformed"] += 1
            continue
        if not data:
            stats["malformed"] += 1
        elif miniport_dmus:
            out.append(record)
        else:
            out.append(record._replace(data=data))
    return out


class DmusCapture:
    """A DMus miniport's capture records into whole messages per channel group."""

    def __init__(self, stats: collections.Counter[str]) -> None:
        self.stats = stats
        self._parsers: collections.OrderedDict[int, MidiStreamParser] = (
            collections.OrderedDict())
        self._whole = MidiStreamParser()

    def feed(self, records: list[Record]) -> list[Grouped]:
        """The messages these records complete, in order (see the module docstring)."""
        out: list[Grouped] = []
        for record in records:
            try:
                group, data = split_group(record.data)
            except ValueError:
                self.stats["malformed"] += 1
                continue
            if record.flags & RECORD_FLAG_INCOMPLETE:
                parser = self._parser(group)
                out += [(t, f, group, m) for t, f, m in parser.feed(data, record.timestamp)]
                continue
            try:
                check_message(data)
            except InvalidMessage:
                self.stats["malformed"] += 1
                continue
            # Through a parser of its own, so a long SysEx comes in the usual chunks.
            self._whole.reset()
            out += [(t, f, group, m) for t, f, m in self._whole.feed(data, record.timestamp)]
        return out

    def _parser(self, group: int) -> MidiStreamParser:
        parser = self._parsers.get(group)
        if parser is None:
            if len(self._parsers) >= MAX_GROUPS_PARSED:
                self._parsers.popitem(last=False)
                self.stats["groups_forgotten"] += 1
            parser = self._parsers[group] = MidiStreamParser()
        else:
            self._parsers.move_to_end(group)
        return parser

    @property
    def stray_bytes(self) -> int:
        return sum(p.stray_bytes for p in self._parsers.values())

    def reset(self) -> None:
        """STOP: forget every partial message."""
        self._parsers.clear()
        self._whole.reset()


def for_client(
    messages: list[Grouped], pin_dmus: bool, stats: collections.Counter[str]
) -> list[tuple[int, int, bytes]]:
    """The records for the client's ring: prefixed for a DirectMusic-format pin, group 1
    only and plain for a MIDI-format one (the rest counted in "other_groups")."""
    if pin_dmus:
        return [(t, f, join_group(g, m)) for t, f, g, m in messages]
    out = [(t, f, m) for t, f, g, m in messages if g == 1]
    if len(out) != len(messages):
        stats["other_groups"] += len(messages) - len(out)
    return out
