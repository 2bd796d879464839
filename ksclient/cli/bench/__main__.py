"""``python -m ksclient.cli.bench``: see :mod:`ksclient.cli.bench`."""

import os
import sys


def _pin_early(argv: list[str]) -> None:
    """The pinned variant's child pins itself before anything else runs: libzmq's
    I/O threads take the affinity of the thread that creates their context, and
    every process started from here (the kernel, its miniport hosts, the raw
    chains) inherits it."""
    for i, arg in enumerate(argv):
        value = None
        if arg == "--pinned-child" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--pinned-child="):
            value = arg.partition("=")[2]
        if value is not None:
            os.sched_setaffinity(0, {int(value)})
            return


if __name__ == "__main__":
    _pin_early(sys.argv[1:])

    from ksclient.cli.bench import main

    sys.exit(main())
