"""The kernel's command line (also behind `portcls up`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ipc.runtime import default_runtime_dir
from ipc.status import StatusError
from kernel import config as kconfig
from kernel.kernel import Kernel


def describe(kernel: Kernel) -> str:
    lines = [f"kernel {os.getpid()} ready in {kernel.runtime_dir}"]
    for device in kernel.devices.values():
        f = device.filter
        if f is None:
            lines.append(f"  {device.config.name}: {device.state} {device.last_exit}".rstrip())
            continue
        pid = device.process.pid if device.process else "?"
        lines.append(f"  {f.fid} ({device.config.miniport}, pid {pid})")
        for i, pin in enumerate(f.descriptor.pins):
            kind = "render" if pin.dataflow == 1 else "capture"
            if not pin.streaming:
                kind = "bridge " + ("in" if pin.dataflow == 1 else "out")
            lines.append(f"    pin {i}: {pin.name} [{kind}]")
    return "\n".join(lines)


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
    args = parser.parse_args(argv)
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
    runtime = args.runtime or default_runtime_dir()
    kernel = Kernel(runtime, config)
    try:
        kernel.open()
    except FileExistsError as exc:
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
