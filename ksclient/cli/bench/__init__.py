"""``portcls bench``: the project's performance, beside its baselines, in one run.

One command measures, on this machine and in one run (so that every baseline
shares the machine's state with what it is compared to):

* round trips, one message in flight: a 3-byte note-on and a 1 KiB SysEx through
  client -> kernel -> loopback miniport -> kernel -> client; beside raw pyzmq and
  raw shared-memory rings over the same four hops, and python-rtmidi alone through
  a private JACK server (when jackd is installed);
* zero-loss throughput with batched sends, through the loopback and the raw rings;
* the largest paced rate whose per-message latency p99 stays under 1 ms;
* CPU of the kernel and its miniport hosts, idle and under load;
* scaling: round-trip p99 and aggregate throughput for 1, 8 and 32 client processes
  on 1, 4 and 8 miniport processes;
* the round trips again with every process pinned to one CPU;

then prints the ratios and a table of the project's targets (met or not: targets
are reported, not asserted). ``--json FILE`` writes every figure.

The modules: :mod:`~ksclient.cli.bench.stats` (percentiles), :mod:`~ksclient.cli.bench.traffic`
(numbered messages and the in-order check), :mod:`~ksclient.cli.bench.baselines`
(raw pyzmq, raw rings, python-rtmidi/JACK), :mod:`~ksclient.cli.bench.project` (the paths
through the kernel, CPU), :mod:`~ksclient.cli.bench.scaling` (many clients),
:mod:`~miniports.testing.cablebank` (the scaling grid's device), :mod:`~ksclient.cli.bench.report`
(tables, targets, JSON) and :mod:`~ksclient.cli.bench.runner` (the phases).
This module stays light: ``portcls`` builds its parser from :func:`add_arguments`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

__all__ = ["DESCRIPTION", "add_arguments", "main", "run"]

DESCRIPTION = (
    "measure round trips, throughput, CPU and scaling of the driver model beside raw "
    "pyzmq, raw shared-memory rings and python-rtmidi/JACK, in one run"
)


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``portcls bench`` (also ``python -m ksclient.cli.bench``)."""
    parser.add_argument(
        "--quick", action="store_true",
        help="a representative run within 45 s: fewer samples, shorter windows, reduced "
        "scaling grid (the report says what was reduced)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every figure here")
    parser.add_argument("--no-pinned", action="store_true",
                        help="skip the variant with every process pinned to one CPU")
    parser.add_argument("--no-jack", action="store_true",
                        help="skip the python-rtmidi/JACK baseline")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling grid")
    sizes = parser.add_argument_group("sizes (override the defaults of the mode)")
    sizes.add_argument("--samples", type=_count, metavar="N",
                       help="3-byte round trips per path (full 20000, quick 4000)")
    sizes.add_argument("--sysex-samples", type=_count, metavar="N",
                       help="1 KiB SysEx round trips (full 2000, quick 400)")
    sizes.add_argument("--jack-samples", type=_count, metavar="N",
                       help="python-rtmidi/JACK round trips (full 5000, quick 1000)")
    sizes.add_argument("--warmup", type=int, metavar="N",
                       help="unmeasured round trips per path first (full 1000, quick 300)")
    sizes.add_argument("--blocks", type=_count, metavar="N",
                       help="interleaved blocks the samples are taken in (full 20, quick 10)")
    sizes.add_argument("--messages", type=_count, metavar="N",
                       help="messages per throughput run (full 300000, quick 100000)")
    sizes.add_argument("--idle-seconds", type=_seconds, metavar="S",
                       help="each idle CPU window (full 10, quick 5)")
    sizes.add_argument("--step-seconds", type=_seconds, metavar="S",
                       help="each step of the paced-rate ladder (full 1.0, quick 0.4)")
    sizes.add_argument("--max-rate", type=_count, metavar="N",
                       help="highest rung of the paced-rate ladder (default 200000)")
    sizes.add_argument("--clients", type=str, metavar="LIST",
                       help="scaling grid client counts (default 1,8,32; quick 1,32)")
    sizes.add_argument("--miniports", type=str, metavar="LIST",
                       help="scaling grid miniport counts (default 1,4,8; quick 1,8)")
    sizes.add_argument("--scaling-seconds", type=_seconds, metavar="S",
                       help="latency window of each grid cell (full 3, quick 1.5); "
                       "throughput gets two thirds of it")
    # The pinned variant runs in a fresh child process of this command, which pins
    # itself before any ZeroMQ context exists; these options are how it is told so.
    parser.add_argument("--pinned-child", type=int, metavar="CPU", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-throughput", action="store_true", help=argparse.SUPPRESS)


def parser() -> argparse.ArgumentParser:
    """The standalone parser (``python -m ksclient.cli.bench``)."""
    ap = argparse.ArgumentParser(prog="portcls bench", description=DESCRIPTION)
    add_arguments(ap)
    return ap


def run(args: argparse.Namespace) -> int:
    """Run the benchmark as the parsed options say; the exit status (non-zero if a
    phase failed, never because a target was missed)."""
    from ksclient.cli.bench import runner

    return runner.run(args)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ksclient.cli.bench [options]``."""
    return run(parser().parse_args(argv))
