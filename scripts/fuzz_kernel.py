"""Fuzz a real kernel's two sockets with hostile frames (the long run; CI runs 20,000).

    python scripts/fuzz_kernel.py [--frames 1000000] [--seed 0]

Starts a kernel with two loopback devices, streams through one of them the
whole time, sends `--frames` hostile frames to each socket (random bytes,
msgpack of wrong types, out-of-range ints, huge lengths, deep nesting,
truncated and extra frames, other clients' pins), and reports deaths, the
steady stream's losses, and the kernel's descriptors and memory before and
after. Exit status 1 if the kernel died or the stream lost anything.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from miniports.testing import start_kernel
from tests.hostile import (
    HOSTILE,
    SOCKETS,
    SteadyStream,
    assert_kernel_serves,
    fuzz_socket,
    kernel_resources,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1_000_000, help="frames per socket")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    kernel = start_kernel(HOSTILE)
    deaths = 0
    try:
        pid = kernel.proc.pid
        assert_kernel_serves(kernel)
        fds, rss = kernel_resources(pid)
        print(f"kernel {pid}: {fds} fds, {rss >> 20} MiB before", flush=True)
        started = time.monotonic()
        steady = SteadyStream(kernel.runtime)
        with steady:
            for i, name in enumerate(SOCKETS):
                def progress(n: int, name: str = name) -> None:
                    print(f"  {name}: {n} frames, {time.monotonic() - started:.0f} s",
                          flush=True)

                fuzz_socket(kernel.runtime, name, args.seed + i, args.frames,
                            progress=progress)
                if not kernel.alive():
                    deaths += 1
                    print(f"the kernel died fuzzing {name}", flush=True)
                    break
            if not deaths:
                assert_kernel_serves(kernel)
        sent = steady.stop()
        fds, rss = kernel_resources(pid)
        print(f"{len(SOCKETS) * args.frames} frames in {time.monotonic() - started:.0f} s, "
              f"{deaths} deaths; steady stream: {sent} messages, none lost; "
              f"kernel {fds} fds, {rss >> 20} MiB after")
    finally:
        kernel.stop()
    return 1 if deaths else 0


if __name__ == "__main__":
    sys.exit(main())
