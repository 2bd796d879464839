"""The README's Python examples work when pasted (against a running kernel)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

BLOCKS = [
    block
    for block in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    if "ksclient.connect()" in block
]
"""The examples that talk to a kernel (not the miniport author's conformance one)."""


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(loopback_kernel, index: int) -> None:
    env = {**os.environ, "PORTCLS_RUNTIME_DIR": str(loopback_kernel.runtime)}
    done = subprocess.run([sys.executable, "-c", BLOCKS[index]], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    print(done.stdout)
    assert done.returncode == 0, done.stderr
