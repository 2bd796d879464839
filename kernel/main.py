"""The kernel's command line (also behind `portcls up`)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import resource
import sys
from collections.abc import Sequence
from pathlib import Path

from ipc import trace
from ipc.ks import PinDescriptor
from ipc.platform import PlatformError, check_platform
from ipc.runtime import default_runtime_dir
from ipc.status import StatusError
from kernel import config as kconfig
from kernel.kernel import Kernel


def describe(kernel: Kernel) -> str:
    lines = [f"kernel {os.getpid()} ready in {kernel.runtime_dir}"]
    for device in kernel.devices.values():
        if not device.filters:
            lines.append(f"  {device.config.name}: {device.state} {device.last_exit}".rstrip())
        pid = device.process.pid if device.process else "?"
        driver = device.config.miniport or f"adapter {device.config.adapter}"
        for f in device.filters:
            lines.append(f"  {f.fid} ({driver}, pid {pid})")
            lines.extend(_pins(f.descriptor.pins))
    return "\n".join(lines)


def _pins(pins: Sequence[PinDescriptor]) -> list[str]:
    lines = []
    for i, pin in enumerate(pins):
        kind = "render" if pin.dataflow == 1 else "capture"
        if not pin.streaming:
            kind = "bridge " + ("in" if pin.dataflow == 1 else "out")
        lines.append(f"    pin {i}: {pin.name} [{kind}]")
    return lines


ENV_CPUS = "PORTCLS_CPUS"


def raise_descriptor_limit() -> None:
    """RLIMIT_NOFILE's soft limit up to the hard one: every client session, pin ring and
    doorbell costs descriptors, and running out must not be the first thing to fail."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def parse_cpus(text: str) -> set[int]:
    """CPU numbers from "0", "0,1" or "0-3"; ValueError for anything else."""
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        first, last = int(low), int(high or low)
        if first < 0 or last < first:
            raise ValueError(f"{part.strip()!r} is not a CPU or a range of CPUs")
        cpus.update(range(first, last + 1))
    return cpus


def main(argv: list[str] | None = None, prog: str = "python -m kernel") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Run the PortCls emulator's kernel.")
    parser.add_argument(
        "config", nargs="?", type=Path,
        help="TOML configuration (default: a loopback and an emulated MPU-401)",
    )
    parser.add_argument(
        "--runtime",
        type=Path,
        default=None,
        help="runtime directory (default: $PORTCLS_RUNTIME_DIR or /dev/shm/portcls-<uid>)",
    )
    parser.add_argument("--quiet", action="store_true", help="print only warnings and errors")
    parser.add_argument(
        "--cpus",
        default=os.environ.get(ENV_CPUS),
        help="pin the kernel and its miniports to these CPUs, e.g. 0 or 0,1 "
        f"(default: ${ENV_CPUS}, else the scheduler places them)",
    )
    args = parser.parse_args(argv)
    try:
        check_platform()
    except PlatformError as exc:
        print(f"portcls: {exc}", file=sys.stderr)
        return 2
    if args.cpus:
        try:
            cpus = parse_cpus(args.cpus)
            # Before any ZeroMQ context: libzmq's I/O thread inherits the affinity of the
            # thread that creates it, and miniport processes inherit it from here.
            os.sched_setaffinity(0, cpus)
        except (ValueError, OSError) as exc:
            print(f"portcls: bad --cpus {args.cpus!r}: {exc}", file=sys.stderr)
            return 2
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s kernel %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        config = kconfig.load(args.config)
    except StatusError as exc:
        print(f"portcls: bad configuration: {exc}", file=sys.stderr)
        return 2
    raise_descriptor_limit()
    if trace.ON:
        trace.set_process_name("kernel")
    runtime = args.runtime or default_runtime_dir()
    kernel = Kernel(runtime, config)
    try:
        kernel.open()
    except OSError as exc:  # a live kernel there, or a directory that is not ours
        print(f"portcls: {exc}", file=sys.stderr)
        return 1
    kernel.install_signal_handlers()

    def ready(k: Kernel) -> None:
        print(describe(k), flush=True)

    kernel.on_ready = ready
    try:
        kernel.run()
    finally:
        kernel.close()
    print("kernel stopped", flush=True)
    return 0
