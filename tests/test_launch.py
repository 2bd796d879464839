"""ksclient.launch: the one way to start a private kernel and to write its configuration."""

from __future__ import annotations

import sys
import time
import tomllib
from pathlib import Path

import pytest

from ksclient import launch
from ksclient.launch import KernelStartError, start_kernel, toml_config


def test_toml_config_writes_what_tomllib_reads_back() -> None:
    devices = [
        {"name": "a", "miniport": "loopback", "restart": "never"},
        {
            "name": "b",
            "miniport": "pkg.mod:Class",
            "options": {"port": 'say "hi"\n\\', "rate": 0.5, "on": True, "ids": [1, 2],
                        "nested": {"x y": -3, "é": "ü🎹"}},
            "resources": {"io": [[0x330, 2]], "irq": [9]},
        },
    ]
    kernel = {"heartbeat_timeout": 1.5, "ring_capacity": 4096}
    parsed = tomllib.loads(toml_config(devices, kernel=kernel))
    assert parsed == {"kernel": kernel, "device": devices}


def test_toml_config_refuses_none_naming_the_key() -> None:
    device = {"name": "dut", "miniport": "faulty", "options": {"options": {"port": None}}}
    with pytest.raises(ValueError, match=r"device 'dut': options\.options\.port is None"):
        toml_config([device])
    with pytest.raises(ValueError, match=r"kernel: call_timeout is None"):
        toml_config([], kernel={"call_timeout": None})
    with pytest.raises(ValueError, match=r"device 0: ports\[1\] is None"):
        toml_config([{"ports": ["a", None]}])
    with pytest.raises(TypeError, match="cannot write object"):
        toml_config([{"name": "x", "options": object()}])


def test_a_kernel_that_prints_nothing_is_given_up_on_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch, runtime_dir: Path
) -> None:
    silent = [sys.executable, "-c", "import time; time.sleep(60)"]
    monkeypatch.setattr(launch, "kernel_command", lambda *args, **kwargs: silent)
    started = time.monotonic()
    with pytest.raises(KernelStartError, match=r"not ready in 0\.5 s") as info:
        start_kernel(runtime=runtime_dir, timeout=0.5)
    assert time.monotonic() - started < 10
    assert info.value.returncode is None


def test_a_kernel_that_exits_while_starting_is_reported_with_its_output(
    monkeypatch: pytest.MonkeyPatch, runtime_dir: Path
) -> None:
    failing = [sys.executable, "-c", "print('no luck'); raise SystemExit(3)"]
    monkeypatch.setattr(launch, "kernel_command", lambda *args, **kwargs: failing)
    with pytest.raises(KernelStartError, match="exited with 3") as info:
        start_kernel(runtime=runtime_dir)
    assert info.value.returncode == 3 and info.value.output == "no luck\n"


def test_start_connect_stop(runtime_dir: Path) -> None:
    config = toml_config([{"name": "loopback", "miniport": "loopback"}])
    with start_kernel(config, runtime=runtime_dir) as kernel, kernel.connect() as client:
        assert kernel.banner.startswith("kernel") and "ready" in kernel.banner
        assert client.wait_for_filter("loopback").id == "loopback"
        assert kernel.alive() and len(kernel.miniport_pids()) == 1
    assert kernel.stop() == 0 and not kernel.killed
    assert not runtime_dir.exists()
    with pytest.raises(ValueError, match="not both"):
        start_kernel(config, config_path=Path("kernel.toml"))


def test_the_private_config_file_is_gone_once_the_kernel_is_ready(runtime_dir: Path) -> None:
    # So an owner killed while the kernel runs (a test's timeout, SIGKILL) leaves no
    # portcls-config-* directory behind.
    config = toml_config([{"name": "loopback", "miniport": "loopback"}])
    with start_kernel(config, runtime=runtime_dir) as kernel:
        config_path = Path(str(kernel.process.args[-1]))
        assert config_path.name == "kernel.toml"
        assert not config_path.exists() and not config_path.parent.exists()
        with kernel.connect() as client:
            assert client.wait_for_filter("loopback").id == "loopback"
