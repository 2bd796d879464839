"""`portcls trace --out FILE`: record what the whole stack does into Trace Event Format.

A private kernel is started with tracing on (`PORTCLS_TRACE`, inherited by its
miniport hosts); this process traces itself as the client. The traffic is a
number of round trips through the loopback (or as many as fit in `--duration`),
or a command of the user's run against that kernel (`-- COMMAND ...`, with
`PORTCLS_RUNTIME_DIR` and `PORTCLS_TRACE` set). When the kernel has stopped,
every process's file is merged into FILE: open it in https://ui.perfetto.dev
or chrome://tracing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import ksclient
from ipc import trace
from ipc.runtime import ENV_RUNTIME_DIR, runtime_base
from ksclient.cli import common
from ksclient.launch import KernelStartError, start_kernel

DESCRIPTION = (
    "trace a private kernel, its miniports and a client (interrupts, DPCs, miniport calls, "
    "each message's path) into Trace Event Format JSON for Perfetto"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="the trace file to write")
    parser.add_argument("--config", type=Path, help="the kernel's TOML configuration")
    parser.add_argument("--filter", default="loopback", help="the looped filter to drive")
    parser.add_argument("--count", type=int, default=100,
                        help="round trips to make (default 100)")
    parser.add_argument("--duration", type=float,
                        help="make round trips for this many seconds instead")
    parser.add_argument("--events", type=int, default=trace.DEFAULT_EVENTS,
                        help="events each process keeps (the oldest go first)")
    parser.add_argument("run_command", nargs=argparse.REMAINDER, metavar="COMMAND",
                        help="-- COMMAND ...: run this against the kernel instead")


def round_trips(client: ksclient.Client, filter_name: str, count: int,
                duration: float | None) -> int:
    """Send a message and wait for it to come back, `count` times or for `duration`
    seconds; the number that came back."""
    f = client.wait_for_filter(filter_name)
    back = 0
    with client.open_render(f.id) as out, client.open_capture(f.id) as inp:
        inp.run()
        out.run()
        end = None if duration is None else time.monotonic() + duration
        i = 0
        while (i < count) if end is None else (time.monotonic() < end):
            out.send(bytes((0xBF, 102 + (i // 128) % 18, i % 128)))
            try:
                inp.receive(timeout=2.0)
                back += 1
            except ksclient.KsTimeoutError:
                pass
            i += 1
    return back


def summary(events: list[dict[str, Any]]) -> list[str]:
    """A few lines on what the trace holds: processes, and events by kind."""
    names = {e["pid"]: e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    kinds = Counter(e.get("name") for e in events if e.get("ph") in ("X", "i"))
    flows = sum(1 for e in events if e.get("ph") == "s")
    lines = [f"{len(events)} events from {len(names)} processes: "
             + ", ".join(sorted(names.values()))]
    top = ", ".join(f"{name} {n}" for name, n in kinds.most_common(12))
    lines.append(f"  {top}")
    lines.append(f"  {flows} message paths")
    return lines


def run(args: argparse.Namespace) -> int:
    console = common.console()
    command = list(args.run_command)
    if command and command[0] == "--":
        command = command[1:]
    directory = Path(tempfile.mkdtemp(prefix="portcls-trace-"))
    runtime = Path(tempfile.mkdtemp(prefix="portcls-trace-", dir=runtime_base()))
    os.rmdir(runtime)
    env = dict(os.environ)
    env[trace.ENV_TRACE] = str(directory)
    env[trace.ENV_TRACE_EVENTS] = str(args.events)
    try:
        try:
            kernel = start_kernel(config_path=args.config, runtime=runtime, env=env)
        except KernelStartError as exc:
            raise SystemExit(f"portcls trace: the kernel did not start: {exc}") from exc
        code = 0
        try:
            if command:
                env[ENV_RUNTIME_DIR] = str(runtime)
                code = subprocess.run(command, env=env, check=False).returncode
            else:
                trace.enable(directory, "client (portcls trace)", args.events)
                try:
                    with ksclient.connect(runtime) as client:
                        back = round_trips(client, args.filter, args.count, args.duration)
                    console.print(f"{back} round trips through {args.filter}")
                finally:
                    trace.dump()
                    trace.disable()
        finally:
            kernel.stop(10.0)
        events = trace.write_merged(directory, args.out)
        for line in summary(events):
            console.print(line, highlight=False)
        console.print(f"wrote {args.out}: open it in https://ui.perfetto.dev or chrome://tracing",
                      highlight=False)
        return code
    finally:
        shutil.rmtree(directory, ignore_errors=True)
