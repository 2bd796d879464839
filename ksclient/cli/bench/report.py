"""The printed report of ``portcls bench``, its ratios and its table of targets.

Everything here reads the run's JSON document (the same one ``--json`` writes), so
the printed table and the file can never disagree.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final

from ksclient.cli.bench.stats import ratio

__all__ = ["print_report", "ratios", "targets"]

ROUNDTRIP_LABELS: Final = {
    "loopback": "loopback, 3-byte note-on",
    "loopback_sysex_1k": "loopback, 1 KiB SysEx",
    "raw_zmq": "raw pyzmq PAIR ipc://, A>B>C>B>A",
    "raw_ring": "raw rings + FIFO doorbells, A>B>C>B>A",
    "floor": "FLOOR: minimal rings, no project code",
    "rtmidi_jack": "python-rtmidi > JACK > python-rtmidi",
    "loopback_beside_jack": "loopback, 3-byte, beside JACK's run",
}
THROUGHPUT_LABELS: Final = {
    "loopback": "loopback (send_batch + receive_batch)",
    "loopback_per_message": "loopback (send_many + receive_nowait)",
    "raw_ring": "raw rings, A>B>C>B>A (64 per record)",
    "raw_zmq": "raw pyzmq, A>B>C>B>A (64 per message)",
    "floor": "FLOOR, A>B>C>B>A (64 per record)",
}
BASELINES: Final = (("floor", "the floor"), ("raw_zmq", "raw pyzmq"),
                    ("raw_ring", "raw rings"), ("rtmidi_jack", "python-rtmidi/JACK"))


def _get(doc: dict[str, Any], *keys: str) -> Any:
    value: Any = doc
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _ratios_of(section: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rt = section.get("roundtrip") or {}
    for key, _ in BASELINES:
        # python-rtmidi/JACK is compared with the loopback measured beside it.
        mine = "loopback_beside_jack" if key == "rtmidi_jack" and key in rt else "loopback"
        for q in ("p50_us", "p99_us"):
            out[f"roundtrip_{q[:3]}_loopback_over_{key}"] = ratio(
                _get(rt, mine, q), _get(rt, key, q))
    tp = section.get("throughput") or {}
    for key in ("floor", "raw_ring", "raw_zmq"):
        out[f"throughput_loopback_over_{key}"] = ratio(
            _get(tp, "loopback", "msgs_per_s"), _get(tp, key, "msgs_per_s"))
    return out


def ratios(doc: dict[str, Any]) -> dict[str, Any]:
    """Project / baseline for round trips (p50, p99) and throughput; above 1 means the
    project is slower (round trips) or faster (throughput)."""
    out = _ratios_of(doc)
    if isinstance(doc.get("pinned"), dict):
        out["pinned"] = _ratios_of(doc["pinned"])
    return out


def _target(
    variant: str, target: str, measured: float | None, baseline: float | None,
    limit: float | None, unit: str, check: Callable[[float, float], bool], note: str = "",
) -> dict[str, Any]:
    met = None if measured is None or limit is None else check(measured, limit)
    if met is None and not note:
        note = "not measured"
    return {"variant": variant, "target": target, "measured": measured, "baseline": baseline,
            "limit": limit, "unit": unit, "met": met, "note": note}


def _at_most(a: float, b: float) -> bool:
    return a <= b


def _at_least(a: float, b: float) -> bool:
    return a >= b


def _below(a: float, b: float) -> bool:
    return a < b


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _latency_targets(variant: str, section: dict[str, Any]) -> list[dict[str, Any]]:
    rt = section.get("roundtrip") or {}
    p50, p99 = _get(rt, "loopback", "p50_us"), _get(rt, "loopback", "p99_us")
    floor50, floor99 = _get(rt, "floor", "p50_us"), _get(rt, "floor", "p99_us")
    rows = [
        _target(variant, "loopback round trip p50 <= 2.0 x the floor's p50", p50, floor50,
                _scaled(floor50, 2.0), "us", _at_most),
        _target(variant, "loopback round trip p99 <= 3.0 x the floor's p99", p99, floor99,
                _scaled(floor99, 3.0), "us", _at_most),
    ]
    if variant == "unpinned":
        jack50 = _get(rt, "rtmidi_jack", "p50_us")
        beside = _get(rt, "loopback_beside_jack", "p50_us")
        skipped = _get(section, "skipped", "rtmidi_jack")
        rows.append(_target(variant, "loopback round trip p50 <= 0.3 x python-rtmidi/JACK p50",
                            beside if beside is not None else p50, jack50,
                            _scaled(jack50, 0.3), "us", _at_most,
                            f"not measured: {skipped}" if skipped and jack50 is None else ""))
    return rows


def _throughput_targets(variant: str, section: dict[str, Any]) -> list[dict[str, Any]]:
    tp = section.get("throughput") or {}
    rate, lost = _get(tp, "loopback", "msgs_per_s"), _get(tp, "loopback", "lost")
    floor = _get(tp, "floor", "msgs_per_s")
    zero_loss = rate if lost == 0 else None
    note = f"lost {lost}" if lost else ""
    if rate is not None and lost:
        zero_loss = 0.0  # a lossy run does not count, however fast
    return [
        _target(variant, "throughput >= 2,000,000 msgs/s with zero loss", zero_loss, None,
                2e6 if zero_loss is not None else None, "msgs/s", _at_least, note),
        _target(variant, "throughput >= 0.25 x the floor's batched throughput", zero_loss,
                floor, _scaled(floor, 0.25), "msgs/s", _at_least, note),
    ]


def _best_rate(doc: dict[str, Any], key: str) -> float | None:
    """The largest paced rate that passed in ladder `key` (0: none did; None: not run)."""
    ladder = doc.get(key)
    return float(_get(ladder, "max_rate_passed") or 0) if isinstance(ladder, dict) else None


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The project's targets, each with the figure measured, the baseline from this
    run, the limit it implies, and whether it was met (None: not measured)."""
    rows = _latency_targets("unpinned", doc)
    rows += _throughput_targets("unpinned", doc)
    idle = doc.get("idle_cpu_percent")
    exact = _get(doc, "cpu", "idle", "total_percent_schedstat")
    best = _best_rate(doc, "rate_ladder_batch")
    per_message = _best_rate(doc, "rate_ladder")
    rows.append(_target("unpinned", "paced rate with p99 < 1 ms >= 50,000 msgs/s (batch path)",
                        best, None, 50_000.0 if best is not None else None, "msgs/s",
                        _at_least, "" if per_message is None else
                        f"per-message path: {per_message:,.0f} msgs/s"))
    # The threads' scheduler run time (ns) where the kernel offers it: psutil counts
    # 10 ms ticks, one tick over a 5 s window being exactly the 0.2 % to judge.
    precise = isinstance(exact, float) and not math.isnan(exact)
    measured = exact if precise else idle
    rows.append(_target("unpinned", "idle CPU of kernel + 3 miniports < 0.2 % of one core",
                        measured, None, 0.2 if measured is not None else None, "%", _below,
                        f"schedstat; psutil ticks: {idle:.2f} %" if precise and
                        isinstance(idle, float) else "psutil ticks"))
    cells = {(c.get("clients"), c.get("miniports")): c
             for c in (_get(doc, "scaling", "cells") or [])}
    base = _get(cells.get((1, 1), {}), "latency", "p99_us")
    big = _get(cells.get((32, 8), {}), "latency", "p99_us")
    rows.append(_target("unpinned", "32 clients / 8 miniports p99 <= 2 x 1 client / 1 miniport "
                        "p99", big, base, _scaled(base, 2.0), "us", _at_most))
    pinned = doc.get("pinned")
    if isinstance(pinned, dict):
        rows += _latency_targets("pinned", pinned)
        if pinned.get("throughput"):
            rows += _throughput_targets("pinned", pinned)
    return rows


def _num(value: Any, width: int, digits: int = 1) -> str:
    if value is None:
        return f"{'-':>{width}}"
    if isinstance(value, float):
        return f"{value:>{width},.{digits}f}"
    return f"{value:>{width},}"


def _roundtrip_table(section: dict[str, Any], skipped: dict[str, Any]) -> list[str]:
    rt = section.get("roundtrip") or {}
    head = f"{'Round trip, one message in flight (us)':<42}{'n':>7}"
    lines = [head + "".join(f"{h:>9}" for h in ("p50", "p90", "p99", "p99.9", "max"))]
    lines.append("-" * len(lines[0]))
    for key, label in ROUNDTRIP_LABELS.items():
        if key in rt:
            r = rt[key]
            lines.append(f"{label:<42}{_num(r['samples'], 7)}" + "".join(
                _num(r[q], 9) for q in ("p50_us", "p90_us", "p99_us", "p999_us", "max_us")))
        elif key in skipped:
            lines.append(f"{label:<42}  not measured: {skipped[key]}")
        elif failed := _get(section, "phases", f"round trip {key}", "error"):
            lines.append(f"{label:<42}  FAILED: {failed}")
    return lines


def _ratio_lines(section: dict[str, Any]) -> list[str]:
    r = _ratios_of(section)
    lines = [f"{'Ratio loopback / baseline':<42}{'p50':>9}{'p99':>9}"]
    for key, label in BASELINES:
        p50 = r[f"roundtrip_p50_loopback_over_{key}"]
        p99 = r[f"roundtrip_p99_loopback_over_{key}"]
        if p50 is not None or p99 is not None:
            lines.append(f"{'  over ' + label:<42}{_num(p50, 9, 2)}{_num(p99, 9, 2)}")
    return lines


def _throughput_table(section: dict[str, Any]) -> list[str]:
    tp = section.get("throughput") or {}
    if not tp:
        return []
    head = f"{'Throughput, 3-byte note-ons, batches of 64':<42}"
    lines = [head + "".join(f"{h:>12}" for h in ("msgs/s", "lost", "messages", "seconds"))
             + "   median run of"]
    lines.append("-" * len(lines[0]))
    for key, label in THROUGHPUT_LABELS.items():
        if key in tp:
            t = tp[key]
            runs = t.get("runs") or []
            lines.append(f"{label:<42}{_num(t['msgs_per_s'], 12, 0)}{_num(t['lost'], 12)}"
                         f"{_num(t['messages'], 12)}{_num(t['seconds'], 12, 3)}   "
                         + " / ".join(_num(r["msgs_per_s"], 0, 0) for r in runs))
            if t.get("note"):
                lines.append(f"    {t['note']}")
    r = _ratios_of(section)
    for key, label in (("floor", "the floor"), ("raw_ring", "raw rings"),
                       ("raw_zmq", "raw pyzmq")):
        value = r[f"throughput_loopback_over_{key}"]
        if value is not None:
            lines.append(f"{'  ratio loopback / ' + label:<42}{_num(value, 12, 3)}")
    return lines


def _ladder_table(doc: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for key in ("rate_ladder", "rate_ladder_batch"):
        ladder = doc.get(key)
        if not ladder:
            continue
        if lines:
            lines.append("")
        header = (f"{'rate/s':>10}{'sent':>10}{'lost':>8}{'p50 us':>10}{'p99 us':>10}"
                  f"{'max us':>10}{'':>3}pass")
        lines += [f"Paced rate, p99 under 1 ms with zero loss, {ladder.get('path', 'send_many')}"
                  f" ({ladder['step_seconds']:g} s a step; a failed rung is tried once more)",
                  header, "-" * len(header)]
        for st in ladder["steps"]:
            lat = st["latency"]
            lines.append(f"{_num(st['rate'], 10)}{_num(st['sent'], 10)}{_num(st['lost'], 8)}"
                         f"{_num(lat['p50_us'], 10)}{_num(lat['p99_us'], 10)}"
                         f"{_num(lat['max_us'], 10)}   {'yes' if st['passed'] else 'NO'}")
        best = ladder.get("max_rate_passed")
        lines.append(f"largest rate passed: {_num(best, 0) if best else 'none'} msgs/s"
                     + ("" if ladder.get("stopped_at") is None
                        else f" (stopped climbing at {ladder['stopped_at']:,})"))
    return lines


def _cpu_table(doc: dict[str, Any]) -> list[str]:
    cpu = doc.get("cpu") or {}
    windows = [(k, label) for k, label in (
        ("idle", "idle, no pin open"), ("idle_pins_run", "idle, render+capture in RUN"),
        ("load", "under load (throughput loopback)")) if k in cpu]
    if not windows:
        return []
    names: list[str] = []
    for key, _ in windows:
        for name in cpu[key]["processes"]:
            if name not in names:
                names.append(name)
    short = [n.replace("miniport ", "") for n in names]
    lines = [f"{'CPU, % of one core (psutil)':<34}{'secs':>6}{'total':>8}"
             + "".join(f"{n[:10]:>11}" for n in short) + f"{'schedstat':>11}"]
    lines.append("-" * len(lines[0]))
    for key, label in windows:
        w = cpu[key]
        lines.append(f"{label:<34}{_num(w['seconds'], 6)}{_num(w['total_percent'], 8, 2)}"
                     + "".join(_num(w["processes"].get(n), 11, 2) for n in names)
                     + _num(w.get("total_percent_schedstat"), 11, 3))
    idle = cpu.get("idle")
    if idle:
        lines.append(f"  psutil counts 10 ms ticks: {idle['resolution_percent_per_process']:.2f} % "
                     "a process over the idle window; 'schedstat' sums the threads' "
                     "run time in ns")
    return lines


def _scaling_table(doc: dict[str, Any]) -> list[str]:
    grid = doc.get("scaling")
    if not grid:
        return []
    title = "Scaling: clients x miniports" + (" (reduced grid, quick run)"
                                              if grid.get("reduced") else "")
    lines = [title,
             f"  on {grid['miniport']} devices: {grid['why']}",
             f"{'clients':>8}{'miniports':>10}{'rtt n':>8}{'p50 us':>10}{'p99 us':>10}"
             f"{'max us':>10}{'msgs/s':>12}{'lost':>7}"]
    lines.append("-" * len(lines[-1]))
    for cell in grid["cells"]:
        if "error" in cell:
            lines.append(f"{cell['clients']:>8}{cell['miniports']:>10}  FAILED: {cell['error']}")
            continue
        lat, tp = cell["latency"], cell["throughput"]
        lines.append(f"{cell['clients']:>8}{cell['miniports']:>10}{_num(lat['samples'], 8)}"
                     f"{_num(lat['p50_us'], 10)}{_num(lat['p99_us'], 10)}"
                     f"{_num(lat['max_us'], 10)}{_num(tp['msgs_per_s'], 12, 0)}"
                     f"{_num(tp['lost'], 7)}")
    return lines


def _targets_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"{'TARGETS':<64}{'measured':>12}{'baseline':>12}{'limit':>12}{'met':>6}"]
    lines.append("-" * len(lines[0]))
    for row in rows:
        met = {True: "yes", False: "NO", None: "-"}[row["met"]]
        digits = 2 if row["unit"] == "%" else (0 if row["unit"] == "msgs/s" else 1)
        label = ("[pinned] " if row["variant"] == "pinned" else "") + row["target"]
        lines.append(f"{label:<64}{_num(row['measured'], 12, digits)}"
                     f"{_num(row['baseline'], 12, digits)}{_num(row['limit'], 12, digits)}"
                     f"{met:>6}" + (f"  {row['note']}" if row["note"] else ""))
    return lines


def print_report(doc: dict[str, Any]) -> None:
    """Print the run as plain-text tables."""
    m = doc.get("machine", {})
    out: list[str] = [
        "",
        f"portcls bench{' --quick' if doc.get('quick') else ''}: python {m.get('python')}, "
        f"pyzmq {m.get('pyzmq')} (libzmq {m.get('libzmq')}), {m.get('cpus')} CPUs "
        f"({m.get('cpu_model') or 'unknown'}), processes free to move",
    ]
    out += [f"note: {n}" for n in doc.get("notes", [])]
    jack = doc.get("jack")
    if jack:
        out.append(f"JACK: private jackd -d dummy, period {jack['period']} at {jack['rate']} Hz"
                   f"{', realtime' if jack.get('realtime') else ''}")
    skipped = doc.get("skipped", {})
    sections = [
        _roundtrip_table(doc, skipped), _ratio_lines(doc), _throughput_table(doc),
        _ladder_table(doc), _cpu_table(doc), _scaling_table(doc),
    ]
    pinned = doc.get("pinned")
    if isinstance(pinned, dict):
        sections.append([f"PINNED: every process on CPU {pinned.get('cpu')}",
                         *_roundtrip_table(pinned, {})])
        sections.append(_ratio_lines(pinned))
        sections.append(_throughput_table(pinned))
    elif "pinned" in skipped:
        sections.append([f"pinned variant: skipped ({skipped['pinned']})"])
    sections.append(_targets_table(doc.get("targets") or targets(doc)))
    for section in sections:
        if section:
            out.append("")
            out += section
    failed = doc.get("failed_phases") or []
    out.append("")
    for name in failed:
        out.append(f"FAILED phase {name}: {doc['phases'][name]['error']}")
    if doc.get("interrupted"):
        out.append("INTERRUPTED: the figures above are partial")
    out.append(f"wall time {doc.get('wall_s', 0.0):.1f} s; "
               + ("all phases ran" if not failed else f"{len(failed)} phase(s) failed"))
    print("\n".join(out), flush=True)
