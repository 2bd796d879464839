"""The scaling grid of `portcls bench` built from the benchmark's floor: what the
process structure alone allows, for issue #16's scaling target (32 clients x 8
miniports p99 <= 2x the 1 x 1 p99).

N client processes on M end processes ("miniports") through one middle process
("kernel"), each client doing paced round trips as the bench's grid does
(ksclient/cli/bench/scaling.py: 200 a second, one in flight, phases spread evenly
over the period, garbage collected and every client idle before the start). The
hops are ksclient/cli/bench/floor.py's rings (loaded by file path: nothing of the
project is imported), so the figures say what the machine and this structure give
with almost no Python per hop. Printed per cell: p50/p90/p99/max, CPU per round trip
per class (the threads' schedstat run time), context switches per round trip, and
how busy the machine was; then p99(32x8) / p99(1x1).

    .venv/bin/python scripts/floor_grid.py [rounds] [seconds] [cells]
        cells: a comma list like 1x1,8x8,32x1,32x8 (the default)
    env RATE: round trips a second per client (default 200, as the bench)

Processes: one B ("kernel"), MAXC=8 C ("miniports"), MAXA=32 A ("clients"), started
once and kept for every cell (idle ones sleep), as the bench keeps its client pool.
Rings (in a temp dir): a<i> A_i->B, r<i> B->A_i, c<j> B->C_j, e<j> C_j->B.
Record flags: bit0 STOP (unused), bit1 ROUTE, bits 2.. the client index. A client sets
them; B and C pass them through; B sends a record from C to client flags>>2.
A ROUTE record (payload: one byte, the C index) routes client i to that C from then on
and is forwarded, so its echo confirms the route.
B: one level-triggered epoll over the 32+8 doorbells it consumes. It drains the rings
whose bells fired (all rings after a 1 s safety timeout), repeats the pass until nothing
moves, then arms each of them (set the flag, re-check: floor.py's Ring.arm) and sleeps
only if all stay empty. Rings that did not fire stay armed (a producer clears the flag
only when it rings), so the arm state before a sleep is the same as floor.py's B's.
"""
from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import sys
import time

FLOOR_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "ksclient", "cli", "bench", "floor.py")
MAXA, MAXC = 32, 8
ROUTE = 2
SAFETY_S = 1.0
RATE = int(os.environ.get("RATE", "200"))  # round trips a second per client


def _load_floor():
    import importlib.util
    spec = importlib.util.spec_from_file_location("floor_ring", FLOOR_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _die_with_parent(parent: int) -> None:
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


# ---------------------------------------------------------------- B and C (scripts)

def middle(d: str, parent: int) -> None:
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    Ring = _load_floor().Ring
    from_a = [Ring(f"{d}/a{i}", False) for i in range(MAXA)]
    to_a = [Ring(f"{d}/r{i}", True) for i in range(MAXA)]
    to_c = [Ring(f"{d}/c{j}", True) for j in range(MAXC)]
    from_c = [Ring(f"{d}/e{j}", False) for j in range(MAXC)]
    dest = [to_c[i % MAXC] for i in range(MAXA)]
    stats = {"missed": 0, "wakes": 0, "timeouts": 0}

    def client_drain(i: int, r):
        def drain() -> bool:
            got = r.take()
            for flags, data in got:
                if flags & ROUTE:
                    dest[i] = to_c[data[0]]
                dest[i].put(data, flags)
            return bool(got)
        return drain

    def end_drain(r):
        def drain() -> bool:
            got = r.take()
            for flags, data in got:
                to_a[flags >> 2].put(data, flags)
            return bool(got)
        return drain

    ep = select.epoll()
    entries = []
    by_fd = {}
    for i, r in enumerate(from_a):
        entries.append((client_drain(i, r), r))
    for r in from_c:
        entries.append((end_drain(r), r))
    for e in entries:
        ep.register(e[1].bell, select.EPOLLIN)
        by_fd[e[1].bell] = e

    def on_term(*_a) -> None:
        sys.stderr.write(f"B: {stats}\n")
        os._exit(0)
    signal.signal(signal.SIGTERM, on_term)
    gc.collect()
    gc.disable()
    poll = ep.poll
    pending = list(entries)
    while True:
        moved = True
        while moved:
            moved = False
            for drain, _ in pending:
                if drain():
                    moved = True
        ready = [e for e in pending if not e[1].arm()]
        if ready:
            pending = ready
            continue
        events = poll(SAFETY_S)
        stats["wakes"] += 1
        if events:
            pending = []
            for fd, _ in events:
                e = by_fd[fd]
                e[1].woken()
                pending.append(e)
        else:
            stats["timeouts"] += 1
            if any(r.readable() for _, r in entries):
                stats["missed"] += 1
            pending = list(entries)


def end(d: str, j: int, parent: int) -> None:
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    Ring = _load_floor().Ring
    reader, writer = Ring(f"{d}/c{j}", False), Ring(f"{d}/e{j}", True)
    ep = select.epoll()
    ep.register(reader.bell, select.EPOLLIN)
    stats = {"missed": 0}

    def on_term(*_a) -> None:
        if stats["missed"]:
            sys.stderr.write(f"C{j}: {stats}\n")
        os._exit(0)
    signal.signal(signal.SIGTERM, on_term)
    gc.collect()
    gc.disable()
    take, put, poll = reader.take, writer.put, ep.poll
    while True:
        records = take()
        for flags, data in records:
            put(data, flags)
        if not records and reader.arm():
            events = poll(SAFETY_S)
            reader.woken()
            if not events and reader.readable():
                stats["missed"] += 1


# ---------------------------------------------------------------- A (forked)

def client(conn, d: str, i: int, parent: int) -> None:
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from array import array
    Ring = _load_floor().Ring
    out, back = Ring(f"{d}/a{i}", True), Ring(f"{d}/r{i}", False)
    ep = select.epoll()
    ep.register(back.bell, select.EPOLLIN)
    base_flags = i << 2
    missed = [0]

    def receive(timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            got = back.take()
            if got:
                return got
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            slice_s = min(remaining, SAFETY_S)
            if back.arm():
                events = ep.poll(slice_s)
                back.woken()
                if not events and slice_s == SAFETY_S and back.readable():
                    missed[0] += 1

    def paced(start_at: float, seconds: float, rate: float):
        # as scaling._paced_roundtrips
        samples = array("q")
        clock = time.perf_counter_ns
        period = 1.0 / rate
        put = out.put
        for k in range(max(1, int(seconds * rate))):
            delay = start_at + k * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            message = bytes((0x90, k & 0x7F, (k >> 7) & 0x7F))
            t0 = clock()
            put(message, base_flags)
            got = receive(5.0)
            samples.append(clock() - t0)
            if len(got) != 1 or got[0][1] != message:
                raise RuntimeError(f"client {i}: sent {message.hex()}, got {got!r}")
        return samples

    while True:
        try:
            op, arg = conn.recv()
        except (EOFError, OSError):
            return
        try:
            res = None
            if op == "route":
                out.put(bytes((arg,)), base_flags | ROUTE)
                got = receive(5.0)
                if len(got) != 1 or got[0][1] != bytes((arg,)):
                    raise RuntimeError(f"client {i}: route echo {got!r}")
                paced(time.monotonic(), 0.3, 1000.0)  # warm-up, as the project's "open"
            elif op == "quiesce":
                gc.collect()
                gc.disable()
            elif op == "latency":
                m0 = missed[0]
                res = (paced(**arg), missed[0] - m0)
                gc.enable()
            elif op == "quit":
                conn.send(("ok", None))
                return
            conn.send(("ok", res))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


# ---------------------------------------------------------------- parent

def sched(pid: int) -> int:
    tot = 0
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                tot += int(f.read().split()[0])
    except FileNotFoundError:
        pass
    return tot


def ctxsw(pid: int) -> int:
    v = 0
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")):
                        v += int(line.split()[1])
    except FileNotFoundError:
        pass
    return v


def cpu_stat() -> list[int]:
    """/proc/stat cpu line: user nice system idle iowait irq softirq steal (guest is in user)."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def pct(s: list[int], q: float) -> float:
    return s[min(len(s) - 1, int(len(s) * q))] / 1000


def main() -> None:
    import multiprocessing as mp
    import shutil
    import subprocess
    import tempfile

    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    cells = [(1, 1), (8, 8), (32, 1), (32, 8)]
    if len(sys.argv) > 3:
        cells = [tuple(map(int, c.split("x"))) for c in sys.argv[3].split(",")]

    def raise_exit(*_a) -> None:
        raise SystemExit(143)
    signal.signal(signal.SIGTERM, raise_exit)

    floor = _load_floor()
    d = tempfile.mkdtemp(prefix="floor-grid-")
    me = os.getpid()
    bc: list[subprocess.Popen] = []
    procs, conns = [], []
    try:
        for n in [f"a{i}" for i in range(MAXA)] + [f"r{i}" for i in range(MAXA)] + \
                 [f"c{j}" for j in range(MAXC)] + [f"e{j}" for j in range(MAXC)]:
            floor.Ring.create(f"{d}/{n}")
        script = [sys.executable, "-P", "-S", os.path.abspath(__file__)]
        for j in range(MAXC):
            bc.append(subprocess.Popen([*script, "end", d, str(j), str(me)],
                                       stdin=subprocess.DEVNULL))
        bc.append(subprocess.Popen([*script, "middle", d, str(me)], stdin=subprocess.DEVNULL))
        ctx = mp.get_context("fork")  # this process maps no ring
        for i in range(MAXA):
            pe, ce = ctx.Pipe()
            p = ctx.Process(target=client, args=(ce, d, i, me), daemon=True)
            p.start()
            ce.close()
            procs.append(p)
            conns.append(pe)

        def call(idx, op, args, timeout):
            for i in idx:
                conns[i].send((op, args[i] if isinstance(args, list) else args))
            out, errs = [], []
            deadline = time.monotonic() + timeout
            for i in idx:
                if not conns[i].poll(max(0.0, deadline - time.monotonic())):
                    errs.append(f"client {i}: no answer to {op}")
                    out.append(None)
                    continue
                st, v = conns[i].recv()
                if st != "ok":
                    errs.append(v)
                out.append(v)
            if errs:
                raise RuntimeError("; ".join(errs[:4]))
            return out

        groups = {"B": [bc[-1].pid], "C": [p.pid for p in bc[:-1]],
                  "A": [p.pid for p in procs]}
        print(f"floor grid: {rounds} rounds x {seconds:g} s, cells "
              + " ".join(f"{c}x{m}" for c, m in cells), flush=True)
        results: dict[tuple[int, int], list[list[int]]] = {c: [] for c in cells}
        p99s: dict[tuple[int, int], list[float]] = {c: [] for c in cells}
        for r in range(rounds):
            for c, m in cells:
                idx = range(c)
                call(idx, "route", [i % m for i in idx], 60.0)
                call(idx, "quiesce", None, 30.0)  # barrier: all collected and idle
                b = {g: sum(sched(p) for p in ps) for g, ps in groups.items()}
                bs = {g: sum(ctxsw(p) for p in ps) for g, ps in groups.items()}
                st0 = cpu_stat()
                start_at = time.monotonic() + 0.3
                period = 1.0 / RATE
                args = [{"start_at": start_at + period * i / c, "seconds": seconds,
                         "rate": RATE} for i in idx]
                per = call(idx, "latency", args, seconds + 30.0)
                a = {g: sum(sched(p) for p in ps) for g, ps in groups.items()}
                as_ = {g: sum(ctxsw(p) for p in ps) for g, ps in groups.items()}
                dst = [y - x for x, y in zip(st0, cpu_stat(), strict=False)]
                allt = max(1, sum(dst))
                busy = allt - dst[3] - dst[4]
                brk = "usr {:.0f} sys {:.0f} irq+si {:.0f} steal {:.0f}".format(
                    *(100 * v / allt for v in (dst[0] + dst[1], dst[2], dst[5] + dst[6], dst[7])))
                samples = sorted(x for s, _ in per for x in s)
                missed = sum(mi for _, mi in per)
                n = len(samples)
                results[(c, m)].append(samples)
                p99s[(c, m)].append(pct(samples, .99))
                cpu = {g: (a[g] - b[g]) / n / 1000 for g in groups}
                sw = {g: (as_[g] - bs[g]) / n for g in groups}
                print(f"r{r} {c}x{m}: n={n} p50={pct(samples, .5):.0f} p90={pct(samples, .9):.0f}"
                      f" p99={pct(samples, .99):.0f} max={samples[-1] / 1000:.0f} us; CPU/RT us "
                      + " ".join(f"{g}={v:.1f}" for g, v in cpu.items())
                      + f" total={sum(cpu.values()):.1f}; ctxsw/RT "
                      + " ".join(f"{g}={v:.2f}" for g, v in sw.items())
                      + f"; machine busy {100 * busy / allt:.0f}% ({brk})"
                      + (f"; client missed wake-ups {missed}" if missed else ""), flush=True)
        print("pooled over rounds:")
        for cell in cells:
            s = sorted(x for run in results[cell] for x in run)
            print(f"  {cell[0]}x{cell[1]}: n={len(s)} p50={pct(s, .5):.0f} p90={pct(s, .9):.0f}"
                  f" p99={pct(s, .99):.0f} max={s[-1] / 1000:.0f} us", flush=True)
        if (1, 1) in cells and (32, 8) in cells:
            per_round = " ".join(
                f"{x / y:.2f}" for x, y in zip(p99s[(32, 8)], p99s[(1, 1)], strict=True))
            s11 = sorted(x for run in results[(1, 1)] for x in run)
            s328 = sorted(x for run in results[(32, 8)] for x in run)
            print(f"p99(32x8)/p99(1x1): per round {per_round}; pooled "
                  f"{pct(s328, .99) / pct(s11, .99):.2f}", flush=True)
    finally:
        for cn in conns:
            with contextlib.suppress(OSError, ValueError):
                cn.send(("quit", None))
        deadline = time.monotonic() + 3.0
        for p in procs:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(5.0)
        for p in bc:
            if p.poll() is None:
                p.terminate()
        for p in bc:
            try:
                p.wait(3.0)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for cn in conns:
            cn.close()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "middle":
        middle(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "end":
        end(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
