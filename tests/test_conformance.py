"""The conformance suite on the loopback miniport, and on miniports that break the contract."""

from __future__ import annotations

import pytest

from miniports.testing import ConformanceError, assert_conformant, check_miniport


def test_loopback_is_conformant() -> None:
    report = assert_conformant("loopback")
    assert [r.outcome for r in report.results] == ["passed"] * len(report.results)


def test_loopback_with_partial_and_busy_writes_is_conformant() -> None:
    assert_conformant("loopback", options={"max_write": 5, "busy_writes": 2}, burst=500)


def test_a_lossy_miniport_fails_the_burst_check() -> None:
    report = check_miniport(
        "tests.probe_miniports:DroppingLoopback", checks=["descriptor", "roundtrip", "burst"]
    )
    outcomes = {r.name: r.outcome for r in report.results}
    assert outcomes == {"descriptor": "passed", "roundtrip": "passed", "burst": "failed"}
    # The failure says where the message went missing: the pins' and the device's counts.
    detail = next(r.detail for r in report.results if r.name == "burst")
    assert "render pin {" in detail and "'released'" in detail and "capture pin {" in detail
    with pytest.raises(ConformanceError, match="burst"):
        report.raise_for_failures()


def test_without_a_loop_the_data_checks_are_skipped_not_passed() -> None:
    report = check_miniport("loopback", loop=False, checks=["states", "roundtrip", "burst"])
    assert [r.outcome for r in report.results] == ["passed", "skipped", "skipped"]
