"""The README's DirectMusic miniport example is a conformant DirectMusic miniport.

The example is taken from "## Writing a DirectMusic miniport" as it stands, written
out as the module its first line names, and run through the conformance suite
under the `module:Class` the README's own `assert_conformant` line gives, found on
PORTCLS_MINIPORT_PATH as a third party's would be.
"""

from __future__ import annotations

import re
from pathlib import Path

from miniports.testing import assert_conformant
from miniports.testing.conformance import CHECKS, DMUS_CHECKS
from tests.conftest import ROOT


def _section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Writing a DirectMusic miniport")
    return text[start:text.index("\n## ", start + 1)]


def test_the_readme_dmus_example_is_conformant(tmp_path: Path) -> None:
    section = _section()
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the section should hold exactly one Python example"
    code = blocks[0]
    module = re.match(r"# (\w+)\.py\n", code)
    assert module, "the example's first line names its module: # mydmus.py"
    spec = re.search(r'assert_conformant\("(\w+:\w+)"\)', section)
    assert spec, "the section shows assert_conformant(\"module:Class\")"
    assert spec.group(1).split(":")[0] == module.group(1)
    (tmp_path / f"{module.group(1)}.py").write_text(code)

    report = assert_conformant(spec.group(1), env={"PORTCLS_MINIPORT_PATH": str(tmp_path)})

    outcomes = {r.name: r.outcome for r in report.results}
    # Driven as a DirectMusic miniport: every check ran (none skipped) and passed.
    assert set(outcomes) == set(CHECKS) | set(DMUS_CHECKS), report.summary()
    assert set(outcomes.values()) == {"passed"}, report.summary()
