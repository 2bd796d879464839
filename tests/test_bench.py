"""`portcls bench` end to end with tiny sizes: every phase runs, the JSON has its figures.

No timing is asserted: these runs share the machine with the rest of the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from ipc.runtime import runtime_base
from tests.conftest import ROOT

TINY = [
    "--samples", "60", "--sysex-samples", "10", "--warmup", "10", "--blocks", "2",
    "--messages", "3000", "--idle-seconds", "0.3", "--step-seconds", "0.1",
    "--max-rate", "2000", "--scaling-seconds", "0.3", "--no-jack",
]


def _run_bench(tmp_path: Path, *extra: str) -> dict[str, Any]:
    run = uuid.uuid4().hex[:12]
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PORTCLS_BENCH_RUN=run)
    result = subprocess.run(
        [sys.executable, "-m", "ksclient.cli.bench", *TINY, *extra, "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "TARGETS" in result.stdout
    left = sorted(runtime_base().glob(f"portcls-bench-{run}-*"))
    assert not left, f"the benchmark left {left} behind"
    doc: dict[str, Any] = json.loads(out.read_text())
    assert doc["failed_phases"] == [], doc["phases"]
    return doc


def _check_roundtrip(figures: dict[str, Any]) -> None:
    assert isinstance(figures["samples"], int) and figures["samples"] > 0
    for key in ("p50_us", "p90_us", "p99_us", "p999_us", "max_us"):
        assert isinstance(figures[key], float) and figures[key] > 0, key
    assert figures["p50_us"] <= figures["p99_us"] <= figures["max_us"]


def _check_throughput(figures: dict[str, Any]) -> None:
    assert figures["lost"] == 0
    assert isinstance(figures["msgs_per_s"], float) and figures["msgs_per_s"] > 0
    rates = sorted(run["msgs_per_s"] for run in figures["runs"])
    assert len(rates) == 3 and rates[1] == figures["msgs_per_s"]  # the median run


@pytest.mark.slow
def test_bench_tiny_run_writes_every_figure(tmp_path: Path) -> None:
    doc = _run_bench(tmp_path, "--no-pinned", "--clients", "1,2", "--miniports", "1,2")
    for key in ("loopback", "loopback_sysex_1k", "raw_zmq", "raw_ring", "floor"):
        _check_roundtrip(doc["roundtrip"][key])
    assert "rtmidi_jack" not in doc["roundtrip"]
    assert doc["skipped"]["rtmidi_jack"] == "--no-jack"
    for key in ("loopback", "raw_ring", "raw_zmq", "floor"):
        _check_throughput(doc["throughput"][key])
    assert isinstance(doc["idle_cpu_percent"], float) and doc["idle_cpu_percent"] >= 0
    assert doc["cpu"]["idle"]["miniports"] == 3
    assert set(doc["cpu"]["load"]["processes"]) >= {"kernel", "miniport loopback"}
    for key in ("rate_ladder", "rate_ladder_batch"):
        steps = doc[key]["steps"]
        assert steps and all(step["lost"] == 0 or not step["passed"] for step in steps), key
        assert all(step["sent"] > 0 and step["latency"]["samples"] > 0 for step in steps), key
    cells = doc["scaling"]["cells"]
    assert [(c["clients"], c["miniports"]) for c in cells] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for cell in cells:
        assert cell["latency"]["samples"] > 0 and cell["throughput"]["lost"] == 0
    assert doc["skipped"]["pinned"] == "--no-pinned"
    assert {row["met"] for row in doc["targets"]} <= {True, False, None}
    assert not doc["quick"]


@pytest.mark.slow
def test_bench_pinned_child_reports_back(tmp_path: Path) -> None:
    doc = _run_bench(tmp_path, "--no-scaling")
    pinned = doc["pinned"]
    assert len(pinned["affinity"]) == 1 and pinned["affinity"] == [pinned["cpu"]]
    for key in ("loopback", "raw_zmq", "raw_ring", "floor"):
        _check_roundtrip(pinned["roundtrip"][key])
    for key in ("loopback", "raw_ring", "raw_zmq", "floor"):
        _check_throughput(pinned["throughput"][key])
    assert any(row["variant"] == "pinned" for row in doc["targets"])


def test_the_floor_shares_no_code_with_the_project() -> None:
    """The floor's processes run floor.py as a script: it may import the standard
    library only, or a change to the project's rings would move the floor too."""
    import ast

    tree = ast.parse((ROOT / "ksclient" / "cli" / "bench" / "floor.py").read_text())
    imported = {
        (node.module or "").split(".")[0] if isinstance(node, ast.ImportFrom)
        else alias.name.split(".")[0]
        for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
