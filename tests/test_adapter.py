"""Adapters (StartDevice): an adapter's subdevices and physical connections, seen by
clients through real kernels and device processes; a device with only a miniport
going through the default adapter; faults and failed starts of the whole device."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

from ipc import protocol as p
from ipc.credentials import LaunchCredentials
from ipc.runtime import BUS_SOCKET, endpoint
from kernel.config import ConfigError, parse
from tests.conftest import ROOT, KernelProcess

CARD = """
[kernel]
heartbeat_timeout = 3.0

[[device]]
name = "card"
adapter = "mpu401card"
options = { cable = "loopback", baud = 3125000 }
resources = { io = [[0x330, 2], [0x300, 2]], irq = [9, 10] }
restart = { limit = 3, backoff = 0.1 }

[[device]]
name = "loopback"
miniport = "loopback"
"""


def _cli(kernel: KernelProcess, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "ksclient.cli", *args, "--runtime", str(kernel.runtime)],
        capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr
    return result.stdout


def _roundtrip(client: Any, fid: str, note: int) -> None:
    with client.open_render(fid) as out, client.open_capture(fid) as inp:
        inp.run()
        out.run()
        out.send(bytes([0x90, note, 64]))
        assert inp.receive(timeout=10).data == bytes([0x90, note, 64])


def _wired(client: Any, fid: str, pin: int, timeout: float = 10.0) -> Any:
    """The pin's physical connection, waiting for the adapter to register it (it does
    so after registering both subdevices, so their arrival may come first)."""
    deadline = time.monotonic() + timeout
    while (wire := client.pin_property(fid, pin, "physicalconnection")) is None:
        assert time.monotonic() < deadline, f"{fid} pin {pin} never wired"
        time.sleep(0.05)
    return wire


def _device_processes(kernel: KernelProcess, device: str) -> list[psutil.Process]:
    kernel_proc = psutil.Process(kernel.proc.pid)
    return [c for c in kernel_proc.children(recursive=True)
            if "miniports.host" in " ".join(c.cmdline()) and device in c.cmdline()]


def test_an_adapter_registers_two_subdevices_and_a_physical_connection(start_kernel) -> None:
    kernel = start_kernel(CARD)
    # The kernel is ready once every start_device returned: nothing to wait for.
    with kernel.connect() as c:
        filters = {f.id: f for f in c.filters()}
        assert set(filters) == {"card", "card/dmus", "loopback"}
        assert (filters["card"].device, filters["card"].name) == ("card", "uart")
        assert (filters["card/dmus"].device, filters["card/dmus"].name) == ("card", "dmus")
        assert filters["loopback"].name == "midi"  # the default adapter's one subdevice
        # PcRegisterPhysicalConnection(uart pin 2 -> dmus pin 3), seen from both ends.
        assert c.pin_property("card", 2, "physicalconnection") == {"filter": "card/dmus",
                                                                   "pin": 3}
        assert c.pin_property("card/dmus", 3, "physicalconnection") == {"filter": "card",
                                                                        "pin": 2}
        assert c.pin_property("card", 3, "physicalconnection") is None
        assert c.pin_property("card/dmus", 2, "physicalconnection") is None
        # Both subdevices stream, each through its own emulated UART; one process.
        _roundtrip(c, "card", 60)
        _roundtrip(c, "card/dmus", 61)
        device = c.stats()["devices"]["card"]
        assert device["state"] == "running" and device["filters"] == ["card", "card/dmus"]
    assert [p.pid for p in _device_processes(kernel, "card")] == [device["pid"]]
    listing = _cli(kernel, "ls")
    assert "card  (device card, subdevice uart)" in listing
    assert "card/dmus  (device card, subdevice dmus)" in listing
    assert "wired to card/dmus:3" in listing and "wired to card:2" in listing
    records = {f["id"]: f for f in json.loads(_cli(kernel, "ls", "--json"))["filters"]}
    assert records["card"]["pins"][2]["physical_connection"] == "card/dmus:3"
    assert records["card/dmus"]["pins"][3]["physical_connection"] == "card:2"
    assert records["card/dmus"]["device_state"]["filters"] == ["card", "card/dmus"]
    info = json.loads(_cli(kernel, "info", "card/dmus", "--json"))
    assert (info["device"], info["subdevice"]) == ("card", "dmus")
    assert "card:2" in _cli(kernel, "info", "card/dmus")


def test_every_portcls_call_answers_as_portcls_does(start_kernel, tmp_path: Path) -> None:
    report = tmp_path / "seen.json"
    kernel = start_kernel(f"""
[[device]]
name = "probe"
adapter = "tests.probe_adapters:ContractProbe"
options = {{ report = "{report}", to = "loopback" }}
resources = {{ io = [[0x330, 2]] }}

[[device]]
name = "loopback"
miniport = "loopback"
""")
    with kernel.connect() as c:
        c.wait_for_filter("probe/b")
        deadline = time.monotonic() + 20
        while not report.exists():  # written when start_device is done
            assert time.monotonic() < deadline, c.stats()["devices"]["probe"]
            time.sleep(0.05)
        time.sleep(0.2)
        seen = json.loads(report.read_text())
        assert seen == {
            "resources": {"io": [[0x330, 2]], "irq": []},
            "new_port_unknown": "NOT_SUPPORTED",
            "new_miniport_unknown": "INVALID_PARAMETER",
            "register_before_init": "INVALID_PARAMETER",
            "init_not_a_miniport": "INVALID_PARAMETER",
            "init_again": "SUCCESS",
            "filter_a": "probe",
            "wire_before_register": "INVALID_DEVICE_STATE",
            "bad_name": "INVALID_PARAMETER",
            "same_name": "OBJECT_NAME_COLLISION",
            "filter_b": "probe/b",
            "register_twice": "INVALID_DEVICE_STATE",
            "wire_no_such_pin": "INVALID_PARAMETER",
            "wire_pin_taken": "OBJECT_NAME_COLLISION",
        }
        assert c.pin_property("probe", 1, "physicalconnection") == {"filter": "probe/b",
                                                                    "pin": 0}
        assert c.pin_property("probe/b", 0, "physicalconnection") == {"filter": "probe",
                                                                      "pin": 1}
        assert c.pin_property("probe", 0, "physicalconnection") == {"filter": "loopback",
                                                                    "pin": 5}
        assert c.pin_property("probe/b", 1, "physicalconnection") == {"filter": "outside",
                                                                      "pin": 6}
        _roundtrip(c, "probe/b", 62)
        assert c.stats()["devices"]["probe"]["state"] == "running"


def test_a_crashed_device_takes_every_filter_and_brings_them_all_back(start_kernel) -> None:
    kernel = start_kernel(CARD)
    with kernel.connect() as c:
        c.wait_for_filter("card/dmus")
        pid = c.stats()["devices"]["card"]["pid"]
        os.kill(pid, signal.SIGKILL)
        removed = set()
        while removed != {"card", "card/dmus"}:
            event = c.next_event(timeout=10)
            assert event.kind == "removal" and "signal 9" in event.reason, event
            removed.add(event.filter)
        arrived = set()
        while arrived != {"card", "card/dmus"}:
            event = c.next_event(timeout=20)
            if event.kind == "arrival":
                arrived.add(event.filter)
        # The wire is registered again by the restarted adapter.
        assert _wired(c, "card", 2) == {"filter": "card/dmus", "pin": 3}
        _roundtrip(c, "card/dmus", 63)
        _roundtrip(c, "loopback", 64)  # the other device never noticed
        device = c.stats()["devices"]["card"]
        assert device["restarts"] == 1 and device["pid"] != pid


def test_a_fault_in_one_subdevice_ends_the_whole_device(start_kernel, tmp_path: Path) -> None:
    kernel = start_kernel(f"""
[[device]]
name = "probe"
adapter = "tests.probe_adapters:ContractProbe"
options = {{ report = "{tmp_path / 'seen.json'}", fault_b = "exception" }}
restart = {{ limit = 1, backoff = 0.1 }}

[[device]]
name = "loopback"
miniport = "loopback"
""")
    with kernel.connect() as c:
        c.wait_for_filter("probe/b")
        first_pid = c.stats()["devices"]["probe"]["pid"]
        removed = set()
        while removed != {"probe", "probe/b"}:
            event = c.next_event(timeout=15)
            if event.kind == "removal":
                assert "raised out of a callback (exit 70)" in event.reason, event
                removed.add(event.filter)
        deadline = time.monotonic() + 30
        while c.stats()["devices"]["probe"]["state"] != "failed":
            assert time.monotonic() < deadline, c.stats()["devices"]["probe"]
            time.sleep(0.1)
        device = c.stats()["devices"]["probe"]
        assert device["restarts"] == 1 and device["pid"] is None and first_pid
        _roundtrip(c, "loopback", 65)


@pytest.mark.parametrize(("crash", "state", "words"), [
    (False, "failed", "start_device failed: STATUS_IO_DEVICE_ERROR: the second codec"),
    (True, "failed", "raised out of a callback (exit 70)"),
])
def test_a_failed_start_fails_the_device_and_a_crashing_adapter_is_restarted(
    start_kernel, crash: bool, state: str, words: str
) -> None:
    kernel = start_kernel(f"""
[[device]]
name = "bad"
adapter = "tests.probe_adapters:FailingStart"
options = {{ crash = {str(crash).lower()} }}
restart = {{ limit = 2, backoff = 0.1 }}

[[device]]
name = "loopback"
miniport = "loopback"
""")
    with kernel.connect() as c:
        c.wait_for_filter("loopback")
        deadline = time.monotonic() + 30
        while (device := c.stats()["devices"]["bad"])["state"] != state or (
                crash and device["restarts"] < 2):
            assert time.monotonic() < deadline, device
            time.sleep(0.1)
        assert words in device["last_exit"], device
        # A failed start is not restarted; an adapter's fault is, up to the limit.
        assert device["restarts"] == (2 if crash else 0)
        assert "bad" not in {f.id for f in c.filters()}
        _roundtrip(c, "loopback", 66)


def test_adapter_configuration_mistakes() -> None:
    base = {"name": "d"}
    for raw, words in (
        ({**base}, "needs a miniport (or an adapter)"),
        ({**base, "miniport": "loopback", "adapter": "mpu401card"}, "not both"),
        ({**base, "adapter": ""}, "adapter must be a name"),
        ({**base, "adaptor": "mpu401card"}, "did you mean 'adapter'"),
    ):
        with pytest.raises(ConfigError, match=re.escape(words)):
            parse({"device": [raw]})
    cfg = parse({"device": [{**base, "adapter": "mpu401card", "options": {"cable": "null"}}]})
    assert (cfg.devices[0].adapter, cfg.devices[0].miniport) == ("mpu401card", "")


def test_an_unknown_adapter_is_a_configuration_error_of_its_device(start_kernel) -> None:
    kernel = start_kernel("""
[[device]]
name = "nothing"
adapter = "no-such-card"

[[device]]
name = "loopback"
miniport = "loopback"
""")
    with kernel.connect() as c:
        c.wait_for_filter("loopback")
        deadline = time.monotonic() + 20
        while (device := c.stats()["devices"]["nothing"])["state"] != "failed":
            assert time.monotonic() < deadline, device
            time.sleep(0.1)
        assert "no adapter 'no-such-card'" in device["last_exit"]
        assert "mpu401card" in device["last_exit"]  # the known ones are named


def test_subdevice_identities_belong_to_their_launch_only() -> None:
    launch = LaunchCredentials.new("card")
    other = LaunchCredentials.new("card")
    sub = launch.for_subdevice(3)
    assert sub.secret == launch.secret and sub.device == "card"
    assert launch.admits(sub.identity, launch.secret)
    assert launch.admits(launch.identity, launch.secret)
    assert not launch.admits(sub.identity, other.secret)
    assert not other.admits(sub.identity, other.secret)
    for forged in (launch.identity + b"/x", launch.identity + b"/03", launch.identity + b"/64",
                   launch.identity + b"/1/2", launch.identity + b"0"):
        assert not launch.admits(forged, launch.secret), forged
    with pytest.raises(ValueError):
        launch.for_subdevice(64)


def _readme_adapter_blocks() -> tuple[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Writing an adapter"):]
    python = re.search(r"```python\n(.*?)```", section, re.S)
    toml = re.search(r"```toml\n(.*?)```", section, re.S)
    assert python and toml
    return python.group(1), toml.group(1)


def test_the_readme_adapter_runs(start_kernel, tmp_path: Path) -> None:
    code, config = _readme_adapter_blocks()
    (tmp_path / "myadapter.py").write_text(code)
    kernel = start_kernel(config, env={"PORTCLS_MINIPORT_PATH": str(tmp_path)})
    with kernel.connect() as c:
        c.wait_for_filter("card/extra")
        assert {f.id: f.name for f in c.filters()} == {"card": "uart", "card/extra": "extra"}
        assert _wired(c, "card", 2) == {"filter": "card/extra", "pin": 0}
        assert c.pin_property("card/extra", 0, "physicalconnection") == {"filter": "card",
                                                                         "pin": 2}
        _roundtrip(c, "card", 67)
        _roundtrip(c, "card/extra", 68)


def test_an_impostor_cannot_add_a_subdevice_to_a_running_device(start_kernel) -> None:
    kernel = start_kernel(CARD)
    with kernel.connect() as c:
        pid = c.stats()["devices"]["card"]["pid"]
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, b"card\0" + b"0" * 32 + b"/5")
        sock.connect(endpoint(kernel.runtime, BUS_SOCKET))
        try:
            # The device's pid and a subdevice-shaped identity, but not the launch's.
            sock.send(p.encode_request(1, p.Register("card", pid, "loopback", False, False,
                                                     secret=b"\0" * 32)))
            sock.send(p.encode_request(2, p.DeviceStarted("card", pid, b"\0" * 32, 0xC0000001,
                                                          "forged failure")))
            sock.send(p.encode_request(3, p.RegisterSubdevice("forged")))
            sock.send(p.encode_request(4, p.RegisterPhysicalConnection("uart", 2, "dmus", 2)))
            replies = []
            while len(replies) < 4 and sock.poll(5000):
                replies.append(p.decode(sock.recv()))
        finally:
            sock.close()
            ctx.term()
        assert len(replies) == 4 and all(isinstance(r, p.Reply) and not r.ok for r in replies)
        stats = c.stats()
        assert stats["kernel"]["bus_impostors"] >= 2
        device = stats["devices"]["card"]
        assert (device["state"], device["filters"], device["restarts"]) == (
            "running", ["card", "card/dmus"], 0)
        assert c.pin_property("card/dmus", 2, "physicalconnection") is None
        _roundtrip(c, "card/dmus", 69)


def test_a_start_device_that_never_returns_is_a_fault(start_kernel) -> None:
    kernel = start_kernel("""
[kernel]
start_timeout = 1.0

[[device]]
name = "stuck"
adapter = "tests.probe_adapters:HangingStart"
restart = { limit = 1, backoff = 0.1 }

[[device]]
name = "loopback"
miniport = "loopback"
""")
    with kernel.connect() as c:  # ready: a hung start does not hold the kernel up
        deadline = time.monotonic() + 30
        while (device := c.stats()["devices"]["stuck"])["state"] != "failed":
            assert time.monotonic() < deadline, device
            time.sleep(0.1)
        assert "start_device did not return in 1 s" in device["last_exit"], device
        assert device["restarts"] == 1 and "stuck" not in {f.id for f in c.filters()}
        _roundtrip(c, "loopback", 70)
