"""What a miniport author runs to test a miniport, in one package (as `trio.testing`).

- `conformance`: the conformance suite (`assert_conformant`, `check_miniport`) and a
  kernel started for a test (`start_kernel`, `running_kernel`, `KernelUnderTest`);
- `crashtest`: the crash tester behind `portcls crashtest`; `pytest_plugin`: its
  `crashtest` fixture (the `pytest11` entry point `portcls_crashtest`);
- `faults`: the fault-injecting miniport (the built-in miniport "faulty");
- `cablebank`: a bank of independent loopback cables in one filter (the benchmark's
  scaling device);
- `jack`: a private JACK server (`jackd -d dummy`) for tests and benchmarks.

The conformance names below are importable from here, and load on first use:
`faults` and `cablebank` run inside miniport host processes, which should not import
the client SDK just because their modules live in this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from miniports.testing.conformance import (
        CHECKS,
        CheckResult,
        ConformanceError,
        ConformanceReport,
        KernelUnderTest,
        assert_conformant,
        check_miniport,
        running_kernel,
        start_kernel,
        toml_config,
    )

__all__ = [
    "CHECKS",
    "CheckResult",
    "ConformanceError",
    "ConformanceReport",
    "KernelUnderTest",
    "assert_conformant",
    "check_miniport",
    "running_kernel",
    "start_kernel",
    "toml_config",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module("miniports.testing.conformance"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
