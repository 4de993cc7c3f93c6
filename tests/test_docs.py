"""The commands in docs/ci.md work as written (on small inputs)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

SCRIPT = REPO / "docs" / "examples" / "audit_gate.sh"


def _run_gate(tiny_sets, generator: Path, out: Path, *extra: str) -> int:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(SCRIPT), str(generator), str(tiny_sets["train"]), str(tiny_sets["holdout"]),
                           str(out), *extra], env=env, cwd=out.parent, capture_output=True, text=True,
                          timeout=600)
    return proc.returncode


def test_shell_gate_passes_a_good_generator_and_blocks_a_copying_one(tiny_sets, tmp_path):
    # The script reads ganaudit.toml from the working directory: write the small-run settings there.
    (tmp_path / "ganaudit.toml").write_text("num_samples = 120\ntta = []\n")
    assert _run_gate(tiny_sets, tiny_sets["fresh_gen"], tmp_path / "good") == 0
    assert _run_gate(tiny_sets, tiny_sets["copy_gen"], tmp_path / "bad", str(tmp_path / "good" / "result.json")) == 1
    for name in ("report.html", "result.json", "junit.xml"):
        assert (tmp_path / "bad" / name).is_file()
    result = json.loads((tmp_path / "bad" / "result.json").read_text())
    assert result["baseline"]["path"].endswith("good/result.json")
    assert _run_gate(tiny_sets, tmp_path / "missing.pt2", tmp_path / "err") == 2
