"""A device's registry keys, read by a client (`Client.device_registry`) and shown by
`portcls info`: the MPU-401's Statistics key, which its miniport writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import ksclient
from tests.conftest import KernelProcess

ROOT = Path(__file__).resolve().parent.parent
MPU401 = """
[[device]]
name = "mpu401"
miniport = "mpu401"
resources = { io = [[0x330, 2]], irq = [9] }
"""


def test_info_shows_the_statistics_key(
    start_kernel: Callable[..., KernelProcess], tmp_path: Path
) -> None:
    kernel = start_kernel(MPU401)
    with kernel.connect() as client:
        f = client.wait_for_filter("mpu401")
        assert client.device_registry("mpu401") == []  # nothing written yet
        with client.open_render(f.id) as pin:
            pin.run()
            pin.send(bytes((0x90, 60, 100)))
            pin.stop()  # leaving RUN publishes the counters
        keys = client.device_registry(f.id)
        with pytest.raises(ksclient.KsError):
            client.device_registry("no-such-device")
    assert [(k["type"], k["path"]) for k in keys] == [("DEVICE", "Statistics")]
    values = keys[0]["values"]
    assert {"TxBytes", "RxBytes", "ShortWrites", "CaptureOverflows"} <= values.keys()
    assert all(isinstance(v, int) for v in values.values())

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "ksclient.cli", "info", "mpu401",
            "--runtime", str(kernel.runtime)]
    text = subprocess.run(base, capture_output=True, text=True, timeout=60, env=env,
                          cwd=tmp_path, check=True).stdout
    assert "registry key DEVICE\\Statistics" in text
    assert f"TxBytes = {values['TxBytes']}" in text
    record = json.loads(subprocess.run([*base, "--json"], capture_output=True, text=True,
                                       timeout=60, env=env, cwd=tmp_path, check=True).stdout)
    assert record["registry"][0]["values"] == values
