"""The port watcher: a process that reports the MIDI ports one rtmidi API offers.

The kernel's PnP manager starts one per API its hot-plug rules name (the
kernel never imports rtmidi itself). It prints one JSON line
`{"inputs": [...], "outputs": [...]}` at start and again whenever the lists
change, and exits when its stdout closes or the kernel dies. rtmidi has no
port-change notification, so it polls `get_ports()`, every `--interval`
seconds (0.25 by default): one cheap query, no MIDI traffic.

Run as: python -m miniports.rtmidi.watch --api jack [--interval 0.25]
(the kernel runs it by its old name, `python -m miniports.portwatch`, which still works)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import rtmidi

from ipc.status import StatusError
from miniports.rtmidi.ports import api_id, no_autostart


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miniports.rtmidi.watch")
    parser.add_argument("--api", required=True)
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("--parent", type=int, default=os.getppid(),
                        help="exit when this process is gone (default: the parent)")
    args = parser.parse_args(argv)
    no_autostart()
    try:
        api = api_id(args.api)
        midi_in = rtmidi.MidiIn(rtapi=api, name="portcls-watch")
        midi_out = rtmidi.MidiOut(rtapi=api, name="portcls-watch")
    except (StatusError, rtmidi.RtMidiError) as exc:
        print(f"portwatch {args.api}: {exc}", file=sys.stderr)
        return 2
    last: dict[str, list[str]] | None = None
    try:
        while os.getppid() == args.parent:
            ports = {"inputs": list(midi_in.get_ports()), "outputs": list(midi_out.get_ports())}
            if ports != last:
                print(json.dumps(ports), flush=True)
                last = ports
            time.sleep(args.interval)
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        midi_in.delete()
        midi_out.delete()
    return 0


if __name__ == "__main__":
    sys.exit(main())
