"""Faults: a crash is exit 3 (never a verdict), kill -9 mid-write leaves a cache that gives the
same result, two audits share one cache, and a full disk is a clear exit 2 with nothing half-written."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_cli

# The child audits with small cache chunks (several chunk files per entry) and an IVF index (an
# index-cache write), and SIGKILLs itself at the n-th write step: after a temporary file is
# written, after it is flushed to disk, after it is moved into place, or in the middle of faiss
# writing the index.
CHILD = textwrap.dedent("""
    import os, signal, sys
    import ganaudit.audit as audit, ganaudit.plumbing as plumbing
    from ganaudit.search import approximate
    from ganaudit.cli import main

    target, count = int(os.environ["KILL_AT"]), [0]

    def step():
        count[0] += 1
        if count[0] == target:
            os.kill(os.getpid(), signal.SIGKILL)

    real_fsync, real_replace, real_save = os.fsync, os.replace, approximate.ApproxIndex.save
    def fsync(fd):
        step(); real_fsync(fd); step()
    def replace(a, b):
        real_replace(a, b); step()
    def save(self, path):
        real_save(self, path)
        with open(path, "r+b") as f:  # as if killed half way through faiss' own write
            f.truncate(os.path.getsize(path) // 2) if count[0] + 1 == target else None
        step()
        real_save(self, path)
    plumbing.os.fsync, plumbing.os.replace, approximate.ApproxIndex.save = fsync, replace, save
    embed = audit.embed_image_set
    audit.embed_image_set = lambda *a, **k: embed(*a, chunk_size=32, **k)
    code = main(sys.argv[1:])
    print("STEPS", count[0], flush=True)
    sys.exit(code)
""")


def _args(tiny_sets, cache: Path, out: Path) -> list[str]:
    return ["check", "--generator", str(tiny_sets["copy_gen"]), "--train", str(tiny_sets["train"]),
            "--holdout", str(tiny_sets["holdout"]), "--num-samples", "40", "--index", "ivf",
            "--cache-dir", str(cache), "--json", str(out)]


def _child(args: list[str], kill_at: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, KILL_AT=str(kill_at), PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=REPO)


def _comparable(path: Path) -> dict:
    result = json.loads(path.read_text())
    result.pop("timings")
    result["config"].pop("json"), result["config"].pop("cache_dir")
    result["memorization"]["index"].pop("cached")
    return result


@pytest.mark.slow
def test_kill_9_at_random_points_of_cache_and_index_writes_then_rerun_gives_the_same_result(tiny_sets, tmp_path):
    reference = tmp_path / "reference.json"
    dry = _child(_args(tiny_sets, tmp_path / "fresh", reference), kill_at=0)
    assert dry.returncode == 1, dry.stderr  # the copying generator fails its gate
    steps = int(dry.stdout.split("STEPS")[-1])
    assert steps > 20  # chunk files of two feature sets, their manifests, the index and its record
    points = sorted(np.random.default_rng(23).choice(np.arange(1, steps - 3), size=5, replace=False).tolist())
    for point in points:
        cache, out = tmp_path / f"cache-{point}", tmp_path / f"out-{point}.json"
        killed = _child(_args(tiny_sets, cache, out), kill_at=point)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-500:])
        assert not out.exists()
        code, _, _ = run_cli(*_args(tiny_sets, cache, out))
        assert code == 1
        assert _comparable(out) == _comparable(reference), f"killed at write step {point} of {steps}"


@pytest.mark.slow
def test_two_concurrent_audits_share_one_fresh_cache(tiny_sets, tmp_path):
    cache = tmp_path / "cache"
    outs = [tmp_path / f"r{i}.json" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "ganaudit", *_args(tiny_sets, cache, out)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for out in outs]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 1, err
    assert _comparable(outs[0]) == _comparable(outs[1])
    third = tmp_path / "r2.json"
    assert run_cli(*_args(tiny_sets, cache, third))[0] == 1
    assert _comparable(third) == _comparable(outs[0])
    assert json.loads(third.read_text())["memorization"]["index"]["cached"] is True


def test_a_full_disk_is_exit_2_and_leaves_no_partial_cache_entry(tiny_sets, tmp_path, capsys, monkeypatch):
    import ganaudit.plumbing as plumbing

    real_fsync = plumbing.os.fsync

    def full(fd):
        if "chunk-" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(plumbing.os, "fsync", full)
    cache, out = tmp_path / "cache", tmp_path / "r.json"
    code, _, err = run_cli(*_args(tiny_sets, cache, out), capsys=capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: no space left on device"), err
    assert not out.exists()
    assert not list(cache.rglob("*.tmp")) and not list(cache.rglob("chunk-*.bin"))
    monkeypatch.setattr(plumbing.os, "fsync", real_fsync)  # space again: the same cache works
    assert run_cli(*_args(tiny_sets, cache, out))[0] == 1
    fresh = tmp_path / "fresh.json"
    assert run_cli(*_args(tiny_sets, tmp_path / "fresh-cache", fresh))[0] == 1
    assert _comparable(out) == _comparable(fresh)


def test_a_crash_is_exit_3_with_one_line_and_a_traceback_only_with_v(tiny_sets, tmp_path, capsys, monkeypatch):
    import ganaudit.audit as audit

    def broken(*args, **kwargs):
        raise ZeroDivisionError("planted bug")

    monkeypatch.setattr(audit, "coverage_section", broken)
    args = ["check", "--generator", tiny_sets["copy_gen"], "--train", tiny_sets["train"], "--holdout",
            tiny_sets["holdout"], "--num-samples", "20", "--json", tmp_path / "r.json"]
    code, _, err = run_cli(*args, capsys=capsys)
    lines = [line for line in err.strip().splitlines() if not line.startswith("WARNING ")]
    assert code == 3 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("internal error: ZeroDivisionError: planted bug (please report: ganaudit ")
    assert lines[0].endswith("rerun with -v for the traceback)")
    assert not (tmp_path / "r.json").exists()
    code, _, err = run_cli(*args, "-v", capsys=capsys)
    assert code == 3 and "Traceback (most recent call last)" in err and "planted bug" in err
