"""`portcls play FILE.mid --to FILTER` and `portcls record FILE.mid --from FILTER`: standard
MIDI files through the kernel, with their timing."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import mido
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

import ksclient
from ksclient.cli import common

PLAY_DESCRIPTION = "play a standard MIDI file to a filter's render pin (Ctrl-C silences it)"
RECORD_DESCRIPTION = "record a filter's capture pin into a standard MIDI file"

LOOKAHEAD = 0.25
"""Seconds of the file queued ahead in the kernel's sequencer, which keeps the timing."""
LEAD = 0.05
"""Seconds between starting and the file's time zero, so the first events are not late."""
TICKS_PER_BEAT = 960
TEMPO = 500_000  # microseconds per beat: 120 bpm, one tick about 0.52 ms


def add_play_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE.mid")
    parser.add_argument("--to", required=True, metavar="FILTER[:PIN]", dest="target")
    common.add_runtime(parser)


def add_record_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE.mid")
    parser.add_argument("--from", required=True, metavar="FILTER[:PIN]", dest="target")
    parser.add_argument("--duration", type=float, help="seconds to record (default: Ctrl-C)")
    parser.add_argument("--count", type=int, help="stop after this many messages")
    common.add_runtime(parser)


def silence(pin: ksclient.RenderPin) -> None:
    """Drop what is queued and send all sounds off and all notes off on the 16 channels."""
    pin.stop()
    pin.run()
    pin.send_many([bytes((0xB0 | ch, cc, 0)) for ch in range(16) for cc in (120, 123)])


def run_play(args: argparse.Namespace) -> int:
    midi = mido.MidiFile(args.file)
    events: list[tuple[float, bytes]] = []
    clock = 0.0
    for msg in midi:  # times in seconds, tempo changes applied
        clock += msg.time
        if not msg.is_meta:
            events.append((clock, bytes(msg.bytes())))
    total = events[-1][0] if events else 0.0
    out = common.console(stderr=True)
    with common.connect(args) as client:
        filter_id, pin_id = common.resolve_pin(client, args.target, capture=False)
        with client.open_render(filter_id, pin_id) as pin:
            pin.run()
            start = time.monotonic() + LEAD
            zero = ksclient.now() + int(LEAD * 10_000_000)
            columns = (
                TextColumn("[bold]{task.description}"), BarColumn(),
                TextColumn("{task.fields[clock]} / " + _mmss(total)),
                TextColumn("{task.completed:.0f}/{task.total:.0f} messages"), TimeElapsedColumn(),
            )
            try:
                with Progress(*columns, console=out, transient=False) as progress:
                    task = progress.add_task(f"{args.file.name} -> {filter_id}",
                                             total=len(events), clock=_mmss(0))
                    for sent, (at, data) in enumerate(events):
                        ahead = at - (time.monotonic() - start) - LOOKAHEAD
                        if ahead > 0:
                            time.sleep(ahead)
                        pin.send(data, at=zero + int(at * 10_000_000))
                        progress.update(task, completed=sent + 1,
                                        clock=_mmss(max(0.0, time.monotonic() - start)))
                    remaining = total - (time.monotonic() - start)
                    while remaining > 0:
                        time.sleep(min(remaining, 0.1))
                        remaining = total - (time.monotonic() - start)
                        progress.update(task, clock=_mmss(time.monotonic() - start))
                    time.sleep(0.01)  # the last event is played, not flushed by closing
            except KeyboardInterrupt:
                silence(pin)
                time.sleep(0.05)
                out.print("interrupted: all notes off on 16 channels")
                return 130
    out.print(f"played {len(events)} messages in {_mmss(total)}")
    return 0


def _mmss(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:06.3f}"


def run_record(args: argparse.Namespace) -> int:
    """Time zero is the first message captured; deltas come from the capture timestamps."""
    out = common.console(stderr=True)
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=TEMPO, time=0))
    count = 0
    first: int | None = None
    last_tick = 0
    with common.connect(args) as client:
        filter_id, pin_id = common.resolve_pin(client, args.target, capture=True)
        with client.open_capture(filter_id, pin_id) as pin:
            pin.run()
            out.print(f"recording {filter_id}:{pin_id} -> {args.file} (Ctrl-C stops)")
            deadline = None if args.duration is None else time.monotonic() + args.duration
            try:
                while args.count is None or count < args.count:
                    wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                    if wait <= 0:
                        break
                    if not pin.poll(wait):
                        continue
                    msg = pin.receive_nowait()
                    try:
                        message = mido.Message.from_bytes(msg.data)
                    except ValueError:
                        continue  # an aborted SysEx has no place in a file
                    if first is None:
                        first = msg.timestamp
                    seconds = (msg.timestamp - first) / 10_000_000
                    tick = round(mido.second2tick(seconds, TICKS_PER_BEAT, TEMPO))
                    track.append(message.copy(time=tick - last_tick))
                    last_tick = tick
                    count += 1
            except KeyboardInterrupt:
                pass
    midi = mido.MidiFile(type=0, ticks_per_beat=TICKS_PER_BEAT)
    midi.tracks.append(track)
    midi.save(args.file)
    out.print(f"recorded {count} messages to {args.file}")
    return 0
