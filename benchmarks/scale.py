"""scale: one generator audited against training sets of growing size; time per stage, peak RSS.

The training sets are procedural 32×32 RGB images written once to one ``.npy`` per size
(``--workdir``; no image files): image ``i`` is a smooth random field drawn from
``default_rng([seed, i // 4096])`` (blocks of 4096 rows), upsampled from 8×8 with noise, so
a larger set is a superset of a smaller one. Each size is audited in a fresh process, on the
CPU, with the ``pixels`` embedder (copy search on its ``pixels-copy`` descriptor and its
default test-time augmentations), ``--modes 10`` and a fresh embedding cache (cold: every stage is timed
from nothing)::

    nice -n 10 python benchmarks/scale.py --sizes 10000 30000 100000 1000000 [--samples 200] \\
        [--calibration 200] [--workdir DIR] [--out benchmarks/results/scale.json]

Reported per size: each stage's seconds (the result's ``timings``), the peak resident set
and CPU seconds (all threads: less sensitive to other jobs on a shared machine than wall
time) of the audit's process, its peak resident set (``VmHWM``, which counts the pages of memory-mapped files that were
resident too; also per stage, ``peak_rss_by_stage``: the peak is reset at each stage's start
through ``/proc/self/clear_refs``, so each figure is that stage's own; ``ru_maxrss_bytes`` is then
the kernel's peak since the last reset, not the whole run's), the size of the training copy-feature file (``features.npy`` of the
``pixels-copy`` cache entry) and their ratio. Then, per stage, the growth exponent ``b`` of
``time ≈ a · N^b`` fitted by least squares on log–log over the sizes (stages under 0.05 s at
every size are too small to fit and are left out), and the same for peak RSS above the
smallest run's (the part that grows with N).

Targets (issue 19): total time exponent ≤ 1.1; at 1M, peak RSS ≤ 1.5× the copy-feature file.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, format_table, machine_info, machine_line, write_json  # noqa: E402

GENERATOR = REPO / "fixtures" / "generators" / "dcgan.pt2"
BLOCK = 4096
SIZE = 32


def training_images(start_block: int, n_blocks: int, seed: int = 0) -> np.ndarray:
    """Blocks ``[start_block, start_block + n_blocks)`` of the procedural set, uint8 ``(rows, 32, 32, 3)``."""
    import torch
    import torch.nn.functional as F

    out = []
    for b in range(start_block, start_block + n_blocks):
        rng = np.random.default_rng([seed, b])
        coarse = torch.from_numpy(rng.random((BLOCK, 3, 8, 8), dtype=np.float32))
        fine = F.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=False)
        fine += torch.from_numpy(rng.normal(0, 0.04, (BLOCK, 3, SIZE, SIZE)).astype(np.float32))
        out.append((fine.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def write_training_set(path: Path, n: int, seed: int = 0) -> Path:
    """One ``.npy`` of ``n`` images, written block by block (never all in memory)."""
    if path.exists() and np.load(path, mmap_mode="r").shape == (n, SIZE, SIZE, 3):
        return path
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (n, SIZE, SIZE, 3)})
        written = 0
        for b in range(0, (n + BLOCK - 1) // BLOCK, 8):
            block = training_images(b, 8, seed)[: n - written]
            f.write(block.tobytes())
            written += len(block)
    os.replace(tmp, path)
    return path


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


_PEAK_SO_FAR = 0


def _reset_peak() -> None:
    """Reset the kernel's peak resident set (``VmHWM``) to the current one (Linux's ``clear_refs`` 5),
    keeping the overall peak so far in ``_PEAK_SO_FAR``."""
    global _PEAK_SO_FAR
    _PEAK_SO_FAR = max(_PEAK_SO_FAR, _status_bytes("VmHWM"))
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def one_audit(train: Path, cache: Path, samples: int, calibration: int, result_path: Path) -> None:
    """The child: audit once and write timings, peak RSS and the feature files' sizes."""
    from contextlib import contextmanager

    import ganaudit.audit as audit_module
    from ganaudit.audit import audit
    from ganaudit.config import AuditConfig

    cpu: dict[str, float] = {}
    stage_peak: dict[str, int] = {}
    inner: list[list[int]] = []
    timed = audit_module._stage

    @contextmanager
    def stage(timings, name):  # also the CPU seconds of each stage (all threads): less load-dependent
        if inner:  # the enclosing stage's peak until now
            inner[-1].append(_status_bytes("VmHWM"))
        _reset_peak()
        inner.append([])  # the peaks of stages nested in this one (fd in metrics)
        start = time.process_time()
        with timed(timings, name):
            yield
        cpu[name] = round(time.process_time() - start, 3)
        stage_peak[name] = max([_status_bytes("VmHWM"), *inner.pop()])
        if inner:
            inner[-1].append(stage_peak[name])
        _reset_peak()

    audit_module._stage = stage

    # modes=10: the automatic choice of K (k-means and silhouettes for K in 2..20 on a 5,000-row
    # subsample) costs minutes at D=3072 whatever N is; a fixed K keeps the stages that grow with N
    # visible (docs/scale.md gives the choice's cost).
    config = AuditConfig(generator=GENERATOR, train=train, embedder="pixels", device="cpu", num_samples=samples,
                         calibration_max=calibration, cache_dir=cache, progress=False, seed=0, modes=10)
    start = time.perf_counter()
    result = audit(config)
    wall = time.perf_counter() - start
    files = {}
    for entry in cache.glob("features/*/entry.json"):
        name = json.loads(entry.read_text())["material"]["embedder"]["name"]
        matrix = entry.parent / "features.npy"
        files[name] = matrix.stat().st_size if matrix.exists() else None
    record = {"n_train": len(np.load(train, mmap_mode="r")), "timings": result.timings, "wall_s": wall,
              "cpu_s": cpu | {"total": round(sum(cpu.values()), 3)}, "load_1min": os.getloadavg()[0],
              "peak_rss_bytes": max(_PEAK_SO_FAR, _status_bytes("VmHWM")), "peak_rss_by_stage": stage_peak,
              "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
              "feature_files_bytes": files, "verdict": result.verdict,
              "n_flagged": result.memorization["n_flagged"], "index": result.memorization["index"]["kind"]}
    result_path.write_text(json.dumps(record))


def fit_exponent(sizes, values) -> float | None:
    """Slope of log(value) on log(size) by least squares (None with fewer than two usable points)."""
    pts = [(np.log(s), np.log(v)) for s, v in zip(sizes, values) if v is not None and v > 0]
    if len(pts) < 2:
        return None
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


def run_size(n: int, args) -> dict:
    train = write_training_set(args.workdir / f"train-{n}.npy", n)
    cache = Path(tempfile.mkdtemp(prefix=f"cache-{n}-", dir=args.workdir))
    out = args.workdir / f"result-{n}.json"
    cmd = [sys.executable, __file__, "--one", str(train), str(cache), str(args.samples), str(args.calibration), str(out)]
    env = dict(os.environ, XDG_CACHE_HOME=str(cache / "xdg"))
    import subprocess

    try:
        subprocess.run(cmd, check=True, env=env, cwd=REPO, timeout=args.timeout)
        return json.loads(out.read_text())
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--samples", type=int, default=200, help="generated samples per audit (default 200)")
    parser.add_argument("--calibration", type=int, default=200,
                        help="training images of the leave-one-out calibration (default 200)")
    parser.add_argument("--workdir", type=Path, help="where the training sets and caches go (default a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the training sets in --workdir")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per audit")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scale.json")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 500 and 1000 images, 10 samples")
    parser.add_argument("--from-results", action="store_true",
                        help="audit nothing: report the result-N.json files already in --workdir (of --sizes)")
    args = parser.parse_args()
    if args.from_results:
        return report([json.loads((args.workdir / f"result-{n}.json").read_text()) for n in sorted(args.sizes)], args)
    if args.quick:
        args.sizes, args.samples, args.calibration = [500, 1000], 10, 100
    temporary = args.workdir is None
    args.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ganaudit-scale-"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    runs = []
    try:
        for n in sorted(args.sizes):
            print(f"auditing against {n} training images ...", flush=True)
            runs.append(run_size(n, args))
            print(json.dumps(runs[-1]), flush=True)
    finally:
        if temporary and not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    report(runs, args)


def report(runs: list[dict], args) -> None:
    """Fit the exponents, print the table, write the JSON."""
    sizes = [r["n_train"] for r in runs]
    stages = [s for s in runs[0]["timings"] if s != "total"] + ["total"]
    exponents = {s: (fit_exponent(sizes, [r["timings"].get(s) for r in runs])
                     if max(r["timings"].get(s) or 0 for r in runs) >= 0.05 else None) for s in stages}
    cpu_exponents = {s: (fit_exponent(sizes, [r["cpu_s"].get(s) for r in runs])
                         if max(r["cpu_s"].get(s) or 0 for r in runs) >= 0.05 else None) for s in stages}
    base = runs[0]["peak_rss_bytes"]
    exponents["peak_rss_above_smallest"] = fit_exponent(sizes[1:], [r["peak_rss_bytes"] - base for r in runs[1:]])
    rows = []
    for r in runs:
        copy_file = r["feature_files_bytes"].get("pixels-copy")
        rows.append([f"{r['n_train']:,}", *(f"{r['timings'].get(s, 0):.2f}" for s in stages),
                     f"{r['peak_rss_bytes'] / 1e9:.2f}", f"{copy_file / 1e9:.3f}" if copy_file else "-",
                     f"{r['peak_rss_bytes'] / copy_file:.2f}" if copy_file else "-"])
    rows.append(["exponent", *(f"{exponents[s]:.2f}" if exponents[s] is not None else "-" for s in stages),
                 f"{exponents['peak_rss_above_smallest']:.2f}" if exponents["peak_rss_above_smallest"] else "-",
                 "", ""])
    for r in runs:
        rows.append([f"{r['n_train']:,} CPU", *(f"{r['cpu_s'].get(s, 0):.2f}" for s in stages), "", "", ""])
    rows.append(["CPU exponent", *(f"{cpu_exponents[s]:.2f}" if cpu_exponents[s] is not None else "-" for s in stages),
                 "", "", ""])
    header = ["N train", *[f"{s} s" for s in stages], "peak RSS GB", "copy file GB", "RSS/file"]
    info = machine_info()
    table = format_table(f"scale: {args.samples} samples, {args.calibration} calibration images, pixels, CPU\n"
                         + machine_line(info), header, rows)
    print(table)
    write_json(args.out, "scale", {"sizes": args.sizes, "samples": args.samples, "calibration": args.calibration},
               {"runs": runs, "exponents": exponents, "cpu_exponents": cpu_exponents}, table, None)


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--one":
        one_audit(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), Path(sys.argv[6]))
    else:
        main()
