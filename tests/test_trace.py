"""Tracing (ipc/trace.py, `portcls trace`, `portcls up --trace`) and what `portcls up`
logs of the stack at work, with real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

import ksclient
from ipc import trace
from tests.conftest import LOOPBACK

TIMEOUT = 60
ROOT = Path(__file__).resolve().parent.parent


def child_env(**extra: str) -> dict[str, str]:
    """This worktree first on the path of a child (else it runs the installed project)."""
    env = {k: v for k, v in os.environ.items() if k != trace.ENV_TRACE}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def check_trace_event_format(events: Any) -> None:
    """What Perfetto and chrome://tracing need of the JSON array form."""
    assert isinstance(events, list) and events
    for e in events:
        assert isinstance(e, dict)
        assert {"ph", "ts", "pid", "tid", "name"} <= e.keys(), e
        assert isinstance(e["ts"], (int, float)) and isinstance(e["pid"], int)
        if e["ph"] == "X":
            assert e["dur"] >= 0
        if e["ph"] in ("s", "t", "f"):
            assert isinstance(e["id"], int) and e["id"] < 2**53
        if e["ph"] == "M":
            assert e["name"] in ("process_name", "thread_name", "process_labels")


def process_names(events: list[dict[str, Any]]) -> dict[int, str]:
    return {e["pid"]: e["args"]["name"] for e in events
            if e["ph"] == "M" and e["name"] == "process_name"}


def test_trace_of_round_trips(tmp_path: Path) -> None:
    config = tmp_path / "loopback.toml"
    config.write_text(LOOPBACK)
    out = tmp_path / "trace.json"
    result = subprocess.run(
        [sys.executable, "-m", "ksclient.cli", "trace", "--out", str(out),
         "--config", str(config), "--count", "100"],
        capture_output=True, text=True, timeout=TIMEOUT, env=child_env(), cwd=tmp_path,
    )
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr
    assert "100 round trips" in result.stdout
    events = json.loads(out.read_text())
    check_trace_event_format(events)

    names = process_names(events)
    by_role = {role: [pid for pid, name in names.items() if name.startswith(role)]
               for role in ("client", "kernel", "miniport loopback")}
    assert all(len(pids) == 1 for pids in by_role.values()), names
    client, kernel, host = (by_role[r][0] for r in ("client", "kernel", "miniport loopback"))
    active = {e["pid"] for e in events if e["ph"] != "M"}
    assert {client, kernel, host} <= active

    def named(name: str, pid: int) -> list[dict[str, Any]]:
        return [e for e in events if e["name"] == name and e["pid"] == pid and e["ph"] != "M"]

    # The miniport's interrupt and the kernel taking it; the DPCs and group runs on both
    # sides, with their members; the miniport's calls with their results.
    assert named("notify", host) and named("raise interrupt", host)
    assert len(named("interrupt", kernel)) >= 100
    assert named("DPC", kernel) and named("service group run", kernel)
    runs = named("service group run", host)
    assert runs and all("members" in e["args"] for e in runs)
    for call in ("init", "new_stream", "set_state", "write", "read", "close_stream"):
        assert named(call, host), call
    writes = named("write", host)
    assert all(e["args"]["result"] == 3 for e in writes)
    assert {"pin open", "pin state", "pin close"} <= {e["name"] for e in events
                                                      if e["pid"] == kernel}

    # Every message's path: client send -> kernel sequencer -> host write (render), and
    # host read -> kernel parser -> client receive (capture), in time order.
    flows: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if e["ph"] in ("s", "t", "f"):
            flows[(e["cat"], e["id"])].append(e)
    paths = {"render": [client, kernel, host], "capture": [host, kernel, client]}
    complete = {"render": 0, "capture": 0}
    for (cat, _), steps in flows.items():
        steps.sort(key=lambda e: e["ts"])
        assert [e["ph"] for e in steps] == ["s", "t", "f"]
        assert [e["pid"] for e in steps] == paths[cat]
        complete[cat] += 1
    assert complete == {"render": 100, "capture": 100}


def run_traced(code: str, directory: Path, events: int = 1000) -> subprocess.CompletedProcess[str]:
    env = child_env(PORTCLS_TRACE=str(directory), PORTCLS_TRACE_EVENTS=str(events))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=directory)


def test_ring_is_bounded_and_counts_overflow(tmp_path: Path) -> None:
    result = run_traced("""
        from ipc import trace
        assert trace.ON
        for i in range(50):
            trace.instant("tick", "test", {"i": i})
        print(trace.statistics())
    """, tmp_path, events=10)
    assert result.returncode == 0, result.stderr
    assert "'dropped': 40" in result.stdout
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1
    events = json.loads(files[0].read_text())
    check_trace_event_format(events)
    ticks = [e for e in events if e["name"] == "tick"]
    assert [e["args"]["i"] for e in ticks] == list(range(40, 50))  # the newest are kept
    labels = [e for e in events if e["name"] == "process_labels"]
    assert "40 dropped" in labels[0]["args"]["labels"]


def test_sigterm_still_writes_the_trace(tmp_path: Path) -> None:
    result = run_traced("""
        import os, signal
        from ipc import trace
        trace.instant("before the end", "test")
        os.kill(os.getpid(), signal.SIGTERM)
    """, tmp_path)
    assert result.returncode == -signal.SIGTERM
    events = trace.merge(tmp_path)
    assert any(e["name"] == "before the end" for e in events)


def test_off_by_default_and_writes_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from ipc import trace; print(trace.ON)"],
        env=child_env(), capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path,
    )
    assert result.stdout.strip() == "False"
    assert not list(tmp_path.iterdir())


def test_up_logs_the_stack_at_work_and_traces_it(runtime_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "loopback.toml"
    config.write_text(LOOPBACK)
    out = tmp_path / "up.json"
    up = subprocess.Popen(
        [sys.executable, "-m", "ksclient.cli", "up", str(config), "--runtime", str(runtime_dir),
         "--trace", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
        cwd=tmp_path,
    )
    try:
        assert up.stdout is not None
        banner = up.stdout.readline()
        assert "ready" in banner, banner
        with ksclient.connect(runtime_dir) as client:
            f = client.wait_for_filter("loopback")
            with client.open_render(f.id) as pin:
                pin.run()
                pin.send(bytes((0x90, 60, 100)))
                pin.stop()
        up.send_signal(signal.SIGINT)
        _, err = up.communicate(timeout=TIMEOUT)
    finally:
        if up.poll() is None:
            up.kill()
            up.communicate()
    print(err)
    assert up.returncode == 0
    lines = err.splitlines()

    def logged(*words: str) -> bool:
        return any(all(w in line for w in words) for line in lines)

    assert logged("device loopback", "filter published")
    assert logged("client", str(os.getpid()), "hello")
    assert logged("opened by", "loopback pin", "(render)", "format MIDI")
    for state in ("ACQUIRE", "PAUSE", "RUN", "STOP"):
        assert logged(": " + state), state
    assert logged("closed", "released 1")
    assert logged("session ended: goodbye")
    assert not any("f0" in line.lower() or "90 3c" in line for line in lines)  # no messages
    assert "trace events" in err
    events = json.loads(out.read_text())
    check_trace_event_format(events)
    names = process_names(events).values()
    assert any(n.startswith("kernel") for n in names)
    assert any(n.startswith("miniport loopback") for n in names)
    assert any(e["name"] == "write" for e in events)


def test_up_quiet_hides_the_activity(runtime_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "loopback.toml"
    config.write_text(LOOPBACK)
    up = subprocess.Popen(
        [sys.executable, "-m", "ksclient.cli", "up", str(config), "--runtime", str(runtime_dir),
         "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
        cwd=tmp_path,
    )
    try:
        assert up.stdout is not None
        assert "ready" in up.stdout.readline()
        with ksclient.connect(runtime_dir) as client, \
                client.open_render(client.wait_for_filter("loopback").id) as pin:
            pin.run()
        up.send_signal(signal.SIGINT)
        _, err = up.communicate(timeout=TIMEOUT)
    finally:
        if up.poll() is None:
            up.kill()
            up.communicate()
    assert "hello" not in err and "opened by" not in err


RECORDING = {"instant", "complete", "set_process_name", "name_process_once", "now"}
"""The calls of ipc.trace that record or cost something (`trace.now()` reads a clock)."""
GUARDED_MODULES = ("kernel", "miniports", "ksclient")
HELPERS = {"ksclient/tracing.py", "kernel/activity.py"}
"""Modules of trace helpers: their callers guard the calls; activity.py logs as well and
guards its own trace calls."""


def test_every_trace_point_is_free_when_off() -> None:
    """A trace point outside ipc/trace.py sits under `if trace.ON` (or in a helper that
    only such a branch calls, or is `trace.now() if trace.ON else 0`): off, it costs one
    test of a module boolean."""
    import ast

    def guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
        while node in parents:
            parent = parents[node]
            test = getattr(parent, "test", None)
            if isinstance(parent, (ast.If, ast.IfExp)) and isinstance(test, ast.BoolOp):
                test = test.values[0]
            if (isinstance(parent, (ast.If, ast.IfExp)) and isinstance(test, ast.Attribute)
                    and test.attr == "ON" and node is not test):
                return True
            if isinstance(parent, ast.FunctionDef) and parent.name.startswith(
                    ("trace_", "_trace", "_traced")):
                return True
            node = parent
        return False

    unguarded = []
    for package in GUARDED_MODULES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in HELPERS or rel.startswith("ksclient/cli/"):
                continue
            tree = ast.parse(path.read_text())
            parents = {child: node for node in ast.walk(tree)
                       for child in ast.iter_child_nodes(node)}
            for node in ast.walk(tree):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and isinstance(node.func.value, ast.Name)
                        and node.func.value.id in ("trace", "tracing")
                        and (node.func.attr in RECORDING or node.func.value.id == "tracing")
                        and not guarded(node, parents)):
                    unguarded.append(f"{rel}:{node.lineno}")
    assert not unguarded
