"""Each fault kind, injected into a real miniport process while another device streams.

Checked every time: the faulty device's client sees STATUS_DEVICE_REMOVED on
pending and later I/O and a removal event with the reason, then an arrival
after the restart; the kernel answers; the healthy device lost nothing;
nothing (processes, rings, command files) is left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import ksclient
from ipc.procwatch import ENV_NO_PIDFD, ProcessWatch
from ipc.runtime import remove_runtime_dir
from miniports.testing.faults import trigger_fault
from miniports.testing.pytest_plugin import check_crashtest, crashtest  # noqa: F401 (the fixture)
from tests.conftest import ROOT, KernelProcess

CONFIG = """
[kernel]
heartbeat_interval = 0.2
heartbeat_timeout = 3.0
stop_grace = 0.5

[[device]]
name = "healthy"
miniport = "loopback"

[[device]]
name = "faulty"
miniport = "faulty"
options = { miniport = "loopback" }
restart = { limit = 10, window = 60.0, backoff = 0.05 }
"""

NEVER = CONFIG.replace(
    "restart = { limit = 10, window = 60.0, backoff = 0.05 }", 'restart = "never"'
)


class Healthy(threading.Thread):
    """Streams through the healthy device the whole time; counts what came back."""

    def __init__(self, kernel: KernelProcess) -> None:
        super().__init__(daemon=True)
        self.kernel = kernel
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.sent = self.received = 0
        self.events: list[ksclient.KernelEvent] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.kernel.connect() as client:
                client.on_event(self.events.append)
                with client.open_capture("healthy") as inp, client.open_render("healthy") as out:
                    inp.run()
                    out.run()
                    self.ready.set()
                    while not self.stop.is_set():
                        out.send(bytes([0x90, self.sent >> 7 & 0x7F, self.sent & 0x7F]))
                        self.sent += 1
                        self._take(inp, 0.002)
                    deadline = time.monotonic() + 20
                    while self.received < self.sent and time.monotonic() < deadline:
                        self._take(inp, 0.1)
        except BaseException as exc:
            self.error = exc
        finally:
            self.ready.set()

    def _take(self, inp: ksclient.CapturePin, timeout: float) -> None:
        if inp.poll(timeout):
            while True:
                try:
                    msg = inp.receive_nowait()
                except ksclient.WouldBlock:
                    return
                expected = bytes([0x90, self.received >> 7 & 0x7F, self.received & 0x7F])
                assert msg.data == expected, (msg.data, expected)
                self.received += 1

    def finish(self) -> None:
        self.stop.set()
        self.join(30)
        assert self.error is None, self.error
        assert self.sent > 0 and self.received == self.sent, (self.sent, self.received)
        assert not [e for e in self.events if e.filter == "healthy"], self.events


def _wait_event(client: ksclient.Client, kind: str, name: str, timeout: float = 30.0
                ) -> ksclient.KernelEvent:
    deadline = time.monotonic() + timeout
    while True:
        event = client.next_event(max(0.01, deadline - time.monotonic()))
        if event.kind == kind and event.filter == name:
            return event


def _faulty_pid(client: ksclient.Client) -> int:
    deadline = time.monotonic() + 30
    while True:
        device = client.stats()["devices"]["faulty"]
        if device["state"] == "running":
            return int(device["pid"])
        assert time.monotonic() < deadline, device
        time.sleep(0.02)


def _inject(kind: str, pid: int, runtime: Path) -> None:
    if kind == "kill":
        os.kill(pid, signal.SIGKILL)
    else:
        trigger_fault(pid, runtime, kind)


def _echo(client: ksclient.Client, name: str) -> None:
    with client.open_capture(name) as inp, client.open_render(name) as out:
        inp.run()
        out.run()
        out.send(b"\x90\x3c\x40")
        assert inp.receive(timeout=10).data == b"\x90\x3c\x40"


def _kernel_memfds(pid: int) -> list[str]:
    """The names of the memfds the kernel holds open."""
    names = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/memfd:"):
            names.append(target.removeprefix("/memfd:").removesuffix(" (deleted)"))
    return names


def _assert_clean(kernel: KernelProcess, open_pins: int) -> None:
    """Two miniport processes, and no files but the sockets and the pid: every ring
    (open pins', the live miniports' interrupt channels) is a memfd, never a file."""
    deadline = time.monotonic() + 10
    while True:
        hosts = [
            c for c in psutil.Process(kernel.proc.pid).children()
            if c.status() != psutil.STATUS_ZOMBIE
        ]
        files = sorted(p.name for p in kernel.runtime.iterdir())
        extra = [f for f in files if f not in ("kernel.pid", "user.sock", "bus.sock", "fds.sock")]
        memfds = _kernel_memfds(kernel.proc.pid)
        # The live miniports' interrupt channels and open pins' miniport rings, no more.
        live = {f"irq-{h.pid}" for h in hosts}
        irqs = {m for m in memfds if m.startswith("irq-")}
        pins = {m for m in memfds if m.startswith("pin") and m.endswith("-miniport")}
        if len(hosts) == 2 and not extra and irqs == live and len(pins) == open_pins:
            return
        assert time.monotonic() < deadline, (hosts, extra, irqs, pins, open_pins)
        time.sleep(0.05)


REASONS = {
    "kill": "signal 9",
    "exit": "exited with 1",
    "segv": "signal 11",
    "exception": "raised out of a callback",
    "hang": "no heartbeat",
    "corrupt": "corrupt ring",
    "flood": "malformed messages",
}


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_fault_removes_only_that_device_and_it_comes_back(start_kernel, kind: str) -> None:
    kernel = start_kernel(CONFIG)
    healthy = Healthy(kernel)
    with kernel.connect() as client:
        client.wait_for_filter("faulty")
        client.wait_for_filter("healthy")
        healthy.start()
        assert healthy.ready.wait(20)
        inp = client.open_capture("faulty")
        out = client.open_render("faulty")
        inp.run()
        out.run()
        for i in range(20):
            out.send(bytes([0x90, 0x40, i]))
        for _ in range(20):
            inp.receive(timeout=10)
        _inject(kind, _faulty_pid(client), kernel.runtime)
        # Pending I/O: a blocked receive ends with DEVICE_REMOVED, not a timeout.
        with pytest.raises(ksclient.DeviceRemovedError) as caught:
            while True:
                out.send(b"\x90\x40\x01", timeout=10)
                inp.receive(timeout=30)
        assert caught.value.status == ksclient.KsError(0xC00002B6).status
        # Later I/O fails the same way, on both pins.
        with pytest.raises(ksclient.DeviceRemovedError):
            out.send(b"\x90\x40\x02")
        with pytest.raises(ksclient.DeviceRemovedError):
            inp.receive(timeout=1)
        assert inp.removed and out.removed
        removal = _wait_event(client, "removal", "faulty")
        assert REASONS[kind] in removal.reason, removal
        _wait_event(client, "arrival", "faulty")
        inp.close()
        out.close()
        _echo(client, "faulty")
        stats = client.stats()
        assert stats["devices"]["faulty"]["restarts"] == 1
        assert stats["devices"]["healthy"]["restarts"] == 0
        healthy.finish()
        _assert_clean(kernel, open_pins=0)
    assert kernel.proc.poll() is None


def test_auto_reopen_restores_state_and_counts_losses(start_kernel) -> None:
    kernel = start_kernel(CONFIG)
    with kernel.connect(auto_reopen=True) as client:
        client.wait_for_filter("faulty")
        inp = client.open_capture("faulty")
        out = client.open_render("faulty", auto_reopen=True)
        assert inp.auto_reopen and out.auto_reopen
        inp.run()
        out.run()
        out.send(b"\x90\x40\x01")
        assert inp.receive(timeout=10).data == b"\x90\x40\x01"
        old = (inp.handle, out.handle)
        os.kill(_faulty_pid(client), signal.SIGKILL)
        _wait_event(client, "removal", "faulty")
        out.send(b"\x90\x40\x02")  # waits for the device to come back, then goes out
        # The blocked receive rides over the restart: reopen, back to RUN, carry on.
        deadline = time.monotonic() + 30
        while inp.reopens == 0 or out.reopens == 0:
            out.send(b"\x90\x40\x03", timeout=30)
            with pytest.raises(ksclient.KsTimeoutError):
                while True:
                    inp.receive(timeout=0.2)
            assert time.monotonic() < deadline
        assert (inp.handle, out.handle) != old
        assert inp.state == out.state == ksclient.KsState.RUN
        out.send(b"\x90\x40\x04")
        while inp.receive(timeout=10).data != b"\x90\x40\x04":
            pass
        reopened = []
        while True:
            try:
                event = client.next_event(0.1)
            except ksclient.KsTimeoutError:
                break
            if event.kind == "reopened":
                reopened.append(event)
        assert {e.handle for e in reopened} == {inp.handle, out.handle}
        assert sum(e.lost for e in reopened) == inp.lost + out.lost
        inp.close()
        out.close()
    _assert_clean(kernel, open_pins=0)


def test_restart_never_leaves_the_device_removed(start_kernel) -> None:
    kernel = start_kernel(NEVER)
    with kernel.connect(auto_reopen=True, reopen_timeout=1.0) as client:
        client.wait_for_filter("faulty")
        inp = client.open_capture("faulty")
        inp.run()
        os.kill(_faulty_pid(client), signal.SIGKILL)
        _wait_event(client, "removal", "faulty")
        with pytest.raises(ksclient.DeviceRemovedError):
            inp.receive(timeout=None)
        assert client.stats()["devices"]["faulty"]["state"] == "failed"
        assert [f.id for f in client.filters()] == ["healthy"]
        inp.close()
        _echo(client, "healthy")


def test_configured_fault_fires_after_n_bytes(start_kernel) -> None:
    config = NEVER.replace(
        'options = { miniport = "loopback" }',
        'options = { miniport = "loopback", fault = "exception", after_bytes = 30 }',
    )
    kernel = start_kernel(config)
    with kernel.connect() as client:
        client.wait_for_filter("faulty")
        with client.open_render("faulty") as out:
            out.run()
            for _ in range(9):
                out.send(b"\x90\x40\x01")  # 27 bytes: still alive
            assert client.stats()["devices"]["faulty"]["state"] == "running"
            out.send(b"\x90\x40\x01")
            removal = _wait_event(client, "removal", "faulty")
            assert "raised out of a callback" in removal.reason


def test_bad_fault_options_are_refused(start_kernel) -> None:
    config = NEVER.replace('options = { miniport = "loopback" }', 'options = { fault = "melt" }')
    kernel = start_kernel(config)
    with kernel.connect() as client:
        assert client.stats()["devices"]["faulty"]["state"] == "failed"
    with pytest.raises(ValueError, match="no fault"):
        trigger_fault(os.getpid(), kernel.runtime, "melt")


def test_kernel_death_is_noticed_by_clients_and_hosts(start_kernel) -> None:
    kernel = start_kernel(CONFIG)
    try:
        with kernel.connect() as client:
            client.wait_for_filter("faulty")
            hosts = [psutil.Process(pid) for pid in kernel.miniport_pids()]
            inp = client.open_capture("healthy")
            inp.run()
            kernel.proc.kill()
            with pytest.raises(ksclient.KernelGoneError):
                inp.receive(timeout=None)  # blocked, woken by the kernel's death
            with pytest.raises(ksclient.KernelGoneError):
                client.next_event(timeout=None)
            _, alive = psutil.wait_procs(hosts, timeout=20)
            assert not alive
    finally:
        kernel.stop()
        remove_runtime_dir(kernel.runtime)


def test_portcls_up_reports_a_dead_kernel(runtime_dir: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ksclient.cli", "up", "--quiet", "--runtime", str(runtime_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "ready" in line:
                break
        kernel = psutil.Process(proc.pid).children()[0]
        hosts = kernel.children()
        kernel.kill()
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 128 + signal.SIGKILL
        assert "the kernel died of signal 9 (SIGKILL)" in err
        psutil.wait_procs(hosts, timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        remove_runtime_dir(runtime_dir)


@pytest.mark.parametrize("fallback", [False, True])
def test_process_watch(monkeypatch: pytest.MonkeyPatch, fallback: bool) -> None:
    if fallback:
        monkeypatch.setenv(ENV_NO_PIDFD, "1")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    watch = ProcessWatch(child.pid, child)
    try:
        assert watch.kind == ("thread" if fallback else "pidfd")
        assert not watch.exited()
        child.kill()
        deadline = time.monotonic() + 20
        while not watch.exited():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert child.wait() == -signal.SIGKILL
    finally:
        watch.close()
        child.kill()
        child.wait()


def test_kernel_without_pidfd_detects_a_kill(start_kernel, monkeypatch) -> None:
    monkeypatch.setenv(ENV_NO_PIDFD, "1")
    kernel = start_kernel(CONFIG)
    with kernel.connect() as client:
        client.wait_for_filter("faulty")
        os.kill(_faulty_pid(client), signal.SIGKILL)
        assert "signal 9" in _wait_event(client, "removal", "faulty").reason
        _wait_event(client, "arrival", "faulty")
        _echo(client, "faulty")


def test_crashtest_fixture(crashtest) -> None:  # noqa: F811 (the plugin's fixture)
    report = crashtest(iterations=2, faults=["kill", "corrupt"])
    assert [r.kind for r in report.results].count("kill") == 1
    assert report.healthy_sent > 0 and report.healthy_lost == 0


@pytest.mark.slow
def test_crashtest_every_kind() -> None:
    report = check_crashtest(iterations=6, seed=3)
    assert sorted(r.kind for r in report.results) == sorted(
        ("kill", "segv", "exception", "hang", "corrupt", "flood")
    )
