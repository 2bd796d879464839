from __future__ import annotations

import os
import subprocess
import sys

import psutil

import ksclient
from tests.conftest import LOOPBACK


def test_loopback_round_trip(loopback_kernel) -> None:
    with loopback_kernel.connect() as client:
        f = client.wait_for_filter("loopback")
        assert [p.name for p in f.pins] == ["MIDI Out", "Bridge Out", "Bridge In", "MIDI In"]
        with client.open_render("loopback") as out, client.open_capture("loopback") as inp:
            inp.run()
            out.run()
            out.send([0x90, 60, 100])
            msg = inp.receive(timeout=5)
            assert msg.data == bytes([0x90, 60, 100])
            assert msg.timestamp <= ksclient.now()


def test_cpus_setting_pins_the_kernel_and_its_miniports(start_kernel) -> None:
    # The launcher's CPU setting (PORTCLS_CPUS, or `--cpus`) applies before any ZeroMQ
    # context exists, and the miniport processes inherit it.
    cpu = min(os.sched_getaffinity(0))
    kernel = start_kernel(LOOPBACK, env={**os.environ, "PORTCLS_CPUS": str(cpu)})
    pids = [kernel.proc.pid, *kernel.miniport_pids()]
    assert len(pids) == 2
    assert all(psutil.Process(pid).cpu_affinity() == [cpu] for pid in pids)
    with kernel.connect() as client, client.open_render("loopback") as out, \
            client.open_capture("loopback") as inp:
        inp.run()
        out.run()
        out.send([0x90, 60, 100])
        assert inp.receive(timeout=5).data == bytes([0x90, 60, 100])


def test_bad_cpus_setting_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kernel", "--cpus", "1-0", "--runtime", "/nonexistent/x"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "bad --cpus '1-0'" in result.stderr
