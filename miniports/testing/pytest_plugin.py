"""A pytest plugin for miniport authors: crash-test a miniport in a few lines.

    def test_my_miniport_takes_nothing_down(crashtest):
        crashtest("mypackage.midi:MyMiniport", options={"port": 1}, iterations=6)

The `crashtest` fixture runs `miniports.testing.crashtest.run_crashtest` (a private
kernel with the miniport wrapped in the fault injector beside a streaming
loopback device), fails the test with the report if any promise is broken,
and returns the `Report` for further checks. Registered under the `pytest11`
entry point, so installing portcls-emu makes the fixture available.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import pytest

from miniports.testing.crashtest import FAULT_KINDS, Report, run_crashtest


class CrashTest(Protocol):
    def __call__(
        self,
        miniport: str = "loopback",
        options: dict[str, Any] | None = None,
        iterations: int = 6,
        faults: Sequence[str] = FAULT_KINDS,
        seed: int | None = 0,
        hang_timeout: float = 2.0,
    ) -> Report: ...


def check_crashtest(
    miniport: str = "loopback",
    options: dict[str, Any] | None = None,
    iterations: int = 6,
    faults: Sequence[str] = FAULT_KINDS,
    seed: int | None = 0,
    hang_timeout: float = 2.0,
) -> Report:
    """Run a crash test; `pytest.fail` with the report if a promise is broken."""
    report = run_crashtest(miniport, options, iterations, faults, seed, hang_timeout)
    if report.broken_promises():
        pytest.fail(report.text(), pytrace=False)
    return report


@pytest.fixture
def crashtest() -> CrashTest:
    """`crashtest(miniport, options=None, iterations=6, faults=all, seed=0)` -> Report."""
    return check_crashtest
