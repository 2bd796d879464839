"""The `portcls` command: up, ls, info, watch, send, monitor, ping, play, record, demo,
crashtest, bench. The CLI is just another client of the kernel."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import ksclient
from ipc import trace as ipc_trace
from ipc.ks import Communication, DataFlow
from ipc.platform import PlatformError, check_platform
from ipc.runtime import ENV_MINIPORT_PATH, ENV_RUNTIME_DIR, runtime_base
from ksclient.cli import bench, info, monitor, ping, play, send, trace, watch
from ksclient.launch import KernelStartError, kernel_command, start_kernel


def _up(args: argparse.Namespace) -> int:
    # The kernel runs as a child so that its death (a crash, SIGKILL) is reported here;
    # the stop signals are passed on, so Ctrl-C and SIGTERM still stop it cleanly.
    argv = kernel_command(args.config, runtime=args.runtime, quiet=args.quiet, cpus=args.cpus)
    # A miniport named as module:Class is looked for in the working directory too, after
    # the project's own packages (the host appends these; -P keeps cwd off the front).
    env = dict(os.environ)
    env[ENV_MINIPORT_PATH] = os.pathsep.join(
        filter(None, [env.get(ENV_MINIPORT_PATH), os.getcwd()])
    )
    if args.trace is None:
        return _run_kernel(argv, env)
    # `up --trace FILE`: the kernel and its miniports record (a client joins when run with
    # the same PORTCLS_TRACE); their files are merged into FILE once they have exited.
    directory = Path(tempfile.mkdtemp(prefix="portcls-trace-"))
    env[ipc_trace.ENV_TRACE] = str(directory)
    print(f"portcls: tracing; clients join with {ipc_trace.ENV_TRACE}={directory}",
          file=sys.stderr, flush=True)
    try:
        return _run_kernel(argv, env)
    finally:
        events = ipc_trace.write_merged(directory, args.trace)
        shutil.rmtree(directory, ignore_errors=True)
        print(f"portcls: wrote {len(events)} trace events to {args.trace}",
              file=sys.stderr, flush=True)


def _run_kernel(argv: list[str], env: dict[str, str]) -> int:
    # Its own process group: a terminal's Ctrl-C reaches this process alone, which
    # passes exactly one signal on (a second Ctrl-C, a second signal: kill at once).
    kernel = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env, process_group=0)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            kernel.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    code = kernel.wait()
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown"
        print(f"portcls: the kernel died of signal {-code} ({name})", file=sys.stderr)
        return 128 - code
    if code != 0:
        print(f"portcls: the kernel exited with status {code}", file=sys.stderr)
    return code


def _ls_hardware(api: str | None) -> int:
    """The MIDI ports python-rtmidi sees, per API: what an rtmidi device can name."""
    from ipc.status import StatusError
    from miniports.rtmidi.ports import compiled_apis, list_ports

    apis = [api] if api else [a for a in compiled_apis() if a != "auto"]
    failed = 0
    for name in apis:
        try:
            ports = list_ports(name)
        except StatusError as exc:
            print(f"{name}: unavailable ({exc.message})")
            failed += 1
            continue
        print(f"{name}:")
        for key, label in (("inputs", "input "), ("outputs", "output")):
            for port in ports[key]:
                print(f"  {label}  {port}")
        if not ports["inputs"] and not ports["outputs"]:
            print("  (no ports)")
    return 1 if failed == len(apis) else 0


def _ls(args: argparse.Namespace) -> int:
    if args.hardware:
        return _ls_hardware(args.api)
    with ksclient.connect(args.runtime, timeout=args.timeout) as client:
        if args.json:
            return info.run_ls_json(client)
        filters = client.filters()
        if not filters:
            print("no filters")
        for f in filters:
            print(f"{f.id}  (device {f.device}, subdevice {f.name})")
            wires = info.physical_connections(client, f)
            for pin in f.pins:
                if pin.communication == Communication.NONE:
                    kind = "bridge " + ("in" if pin.dataflow == DataFlow.IN else "out")
                else:
                    kind = "render" if pin.dataflow == DataFlow.IN else "capture"
                limit = "unlimited" if pin.max_instances == 0xFFFFFFFF else pin.max_instances
                ranges = len(pin.data_ranges)
                wire = f"  wired to {wires[pin.id]}" if pin.id in wires else ""
                print(
                    f"  pin {pin.id}: {pin.name:<12} {kind:<10} instances {f.open_counts[pin.id]}"
                    f"/{limit}  data ranges {ranges}{wire}"
                )
        info.print_other_devices(client, filters)
    return 0


PHRASE = [
    bytes([0x90, 60, 100]),
    bytes([0x90, 64, 100]),
    bytes([0x90, 67, 100]),
    bytes([0xB0, 7, 90]),
    bytes([0xF0, 0x7E, 0x7F, 0x06, 0x01, 0xF7]),
    bytes([0xF8]),
    bytes([0x80, 60, 0]),
    bytes([0x80, 64, 0]),
    bytes([0x80, 67, 0]),
]


def _demo(args: argparse.Namespace) -> int:
    runtime = Path(tempfile.mkdtemp(prefix="portcls-demo-", dir=runtime_base()))
    os.rmdir(runtime)
    try:
        kernel = start_kernel(config_path=args.config, runtime=runtime)
    except KernelStartError as exc:
        raise SystemExit(f"portcls demo: the kernel did not start: {exc}") from exc
    try:
        with ksclient.connect(runtime) as client:
            f = client.wait_for_filter(args.filter)
            print(f"filter {f.id}: {', '.join(p.name for p in f.pins if p.streaming)}")
            with client.open_render(f.id) as out, client.open_capture(f.id) as inp:
                inp.run()
                out.run()
                for data in PHRASE:
                    sent = ksclient.now()
                    out.send(data)
                    msg = inp.receive(timeout=2.0)
                    rtt = (ksclient.now() - sent) / 10
                    print(f"  sent {data.hex(' '):<24} got {msg.data.hex(' '):<24} {rtt:8.0f} us")
                    if msg.data != data:
                        print("  MISMATCH", file=sys.stderr)
                        return 1
        print("demo ok: every message came back through kernel and loopback miniport")
        return 0
    finally:
        kernel.stop(10.0)


def _crashtest(args: argparse.Namespace) -> int:
    """Run, print the report, write JSON; 1 if a promise broke."""
    from miniports.testing.crashtest import CrashTestError, FaultResult, run_crashtest

    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    json_args: list[dict[str, object]] = []
    for flag, text in (("--options", args.options), ("--resources", args.resources)):
        try:
            value = json.loads(text) if text else {}
        except ValueError as exc:
            print(f"portcls crashtest: {flag} is not JSON: {exc}", file=sys.stderr)
            return 2
        if not isinstance(value, dict):
            print(f"portcls crashtest: {flag} must be a JSON object", file=sys.stderr)
            return 2
        json_args.append(value)
    options, resources = json_args

    def progress(r: FaultResult) -> None:
        det = "-" if r.detect is None else f"{r.detect * 1000:.0f} ms"
        rec = "-" if r.recover is None else f"{r.recover * 1000:.0f} ms"
        line = f"  #{r.iteration:<4} {r.kind:<10} detect {det:>8}  recover {rec:>8}"
        if args.verbose:
            line += f"  lost {r.lost_measured}  {r.reason} {r.error}"
        print(line.rstrip(), flush=True)

    def status(line: str) -> None:
        print(f"crashtest: {line}", flush=True)

    try:
        report = run_crashtest(
            args.miniport, options, args.iterations, faults, args.seed, args.hang_timeout,
            progress, log=args.verbose, resources=resources, status=status,
        )
    except (CrashTestError, ValueError) as exc:
        print(f"portcls crashtest: {exc}", file=sys.stderr)
        return 2
    print(report.text())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return 1 if report.broken_promises() else 0


def version() -> str:
    """The installed distribution's version, else the one pyproject.toml in this tree says."""
    from importlib import metadata

    try:
        return metadata.version("portcls-emu")
    except metadata.PackageNotFoundError:
        import tomllib

        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        try:
            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


TOOLS = {
    "info": (info.DESCRIPTION, info.add_arguments, info.run),
    "watch": (watch.DESCRIPTION, watch.add_arguments, watch.run),
    "send": (send.DESCRIPTION, send.add_arguments, send.run),
    "monitor": (monitor.DESCRIPTION, monitor.add_arguments, monitor.run),
    "ping": (ping.DESCRIPTION, ping.add_arguments, ping.run),
    "play": (play.PLAY_DESCRIPTION, play.add_play_arguments, play.run_play),
    "record": (play.RECORD_DESCRIPTION, play.add_record_arguments, play.run_record),
    "trace": (trace.DESCRIPTION, trace.add_arguments, trace.run),
}
"""The user tools, one module each: name -> (description, add_arguments, run)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="portcls", description="PortCls MIDI driver-model emulator"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run a kernel in the foreground (Ctrl-C stops it)")
    up.add_argument("config", nargs="?", type=Path, help="TOML configuration")
    up.add_argument("--runtime", type=Path, help=f"runtime directory (${ENV_RUNTIME_DIR})")
    up.add_argument("--quiet", action="store_true",
                    help="print only warnings and errors, not what clients and devices do")
    up.add_argument("--trace", type=Path, metavar="FILE",
                    help="record what every process does; Trace Event Format JSON for Perfetto")
    up.add_argument(
        "--cpus", help="pin the kernel and its miniports to these CPUs, e.g. 0 or 0-1 "
        "($PORTCLS_CPUS); on small VMs one CPU can halve the latency",
    )
    ls = sub.add_parser("ls", help="list the filters and pins of a running kernel")
    ls.add_argument("--runtime", type=Path)
    ls.add_argument("--timeout", type=float, default=2.0)
    ls.add_argument("--hardware", action="store_true",
                    help="list the MIDI ports rtmidi sees, per API, instead (no kernel needed)")
    ls.add_argument("--api", help="with --hardware: only this rtmidi API (alsa, jack, ...)")
    ls.add_argument("--json", action="store_true",
                    help="filters, pins and every device's state as one JSON object")
    for name, (description, add_arguments, _) in TOOLS.items():
        add_arguments(sub.add_parser(name, help=description, description=description))
    demo = sub.add_parser("demo", help="start a kernel, loop a phrase through it, print the times")
    demo.add_argument("config", nargs="?", type=Path)
    demo.add_argument("--filter", default="loopback")
    crash = sub.add_parser(
        "crashtest",
        help="inject faults into a miniport beside a streaming loopback device; report",
    )
    crash.add_argument("--miniport", default="loopback", help="name or module:Class")
    crash.add_argument("--options", default="", help="the miniport's options as JSON")
    crash.add_argument(
        "--resources", default="",
        help='the device\'s resources as JSON, e.g. \'{"io": [[816, 2]], "irq": [9]}\'',
    )
    crash.add_argument("--iterations", type=int, default=12, help="faults to inject")
    crash.add_argument(
        "--faults", default="kill,segv,exception,hang,corrupt,flood",
        help="comma-separated fault kinds (default: all)",
    )
    crash.add_argument("--seed", type=int, default=None)
    crash.add_argument("--json", type=Path, help="write the full report here")
    crash.add_argument("--hang-timeout", type=float, default=1.5,
                       help="heartbeat timeout of the test kernel (s)")
    crash.add_argument("-v", "--verbose", action="store_true", help="a line per fault")
    bench.add_arguments(sub.add_parser(
        "bench", help=bench.DESCRIPTION, description=bench.DESCRIPTION
    ))
    args = parser.parse_args(argv)
    try:
        check_platform()
    except PlatformError as exc:
        print(f"portcls: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "up":
            return _up(args)
        if args.command == "ls":
            return _ls(args)
        if args.command == "crashtest":
            return _crashtest(args)
        if args.command == "bench":
            return bench.run(args)
        if args.command in TOOLS:
            return TOOLS[args.command][2](args)
        return _demo(args)
    except ksclient.KsError as exc:
        print(f"portcls: {exc}", file=sys.stderr)
        return 1
    except (ValueError, json.JSONDecodeError) as exc:
        print(f"portcls: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `portcls ... | head`
        sys.stderr.close()
        return 0

