"""Every benchmark script runs from a clone with the command docs/benchmarks.md gives, at
``--quick`` sizes, and writes the JSON it promises (the full sizes take minutes each)."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import REPO

DOC = (REPO / "docs" / "benchmarks.md").read_text()
SCRIPTS = sorted(p.name for p in (REPO / "benchmarks").glob("*.py") if not p.name.startswith("_"))


def test_every_script_has_a_documented_command():
    documented = set(re.findall(r"python benchmarks/(\w+\.py)", DOC))
    assert set(SCRIPTS) <= documented, set(SCRIPTS) - documented


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_script_runs_at_quick_sizes(script, tmp_path):
    pytest.importorskip("prdc")
    pytest.importorskip("pytorch_fid")
    out = tmp_path / "result.json"
    extra = ["--embedders", "pixels,pixels-copy", "--repeats", "1"] if script == "embed_throughput.py" else ["--quick"]
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *extra, "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(out.read_text())["results"]  # the promised JSON, with its measurements
