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
STEPPED = {"gpu_check.py"}  # run by gpu_check.sh, step by step: test_gpu_check_smoke


def test_every_script_has_a_documented_command():
    documented = set(re.findall(r"python benchmarks/(\w+\.py)", DOC))
    assert set(SCRIPTS) <= documented, set(SCRIPTS) - documented


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(set(SCRIPTS) - STEPPED))
def test_script_runs_at_quick_sizes(script, tmp_path):
    pytest.importorskip("prdc")
    pytest.importorskip("pytorch_fid")
    out = tmp_path / "result.json"
    extra = ["--embedders", "pixels,pixels-copy", "--repeats", "1"] if script == "embed_throughput.py" else ["--quick"]
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *extra, "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(out.read_text())["results"]  # the promised JSON, with its measurements


@pytest.mark.slow
def test_gpu_check_smoke(tmp_path):
    """``gpu_check.sh --cpu-smoke``: every step runs tiny on the CPU and writes its figures."""
    out = tmp_path / "gpu"
    run = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu-smoke", "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=900,
                         env={**__import__("os").environ, "PYTHON": sys.executable})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    steps = {name: json.loads((out / f"{name}.json").read_text()) for name in ("device", "e2e", "embed", "faiss", "sample")}
    assert steps["device"]["cpu_smoke"] is True
    assert steps["e2e"]["exit_code"] == 1 and steps["e2e"]["verdict"] == "fail"  # the leaky fixture fails its gate
    assert {r["embedder"] for r in steps["embed"]["results"]} == {"inception", "dinov2-vits14"}
    assert all(r["img_s"] > 0 for r in steps["embed"]["results"])
    assert steps["faiss"]["status"] == "measured" and steps["faiss"]["exact_check"] is True
    assert steps["faiss"]["result_shape"] == [500, 51]
    assert steps["sample"]["samples"] == 256
    report = (out / "gpu_check.md").read_text()
    assert "CPU smoke run: not a measurement" in report and "faiss exact search" in report
