"""Shared helpers of the benchmark scripts: isolated measurement, machine facts, tables, JSON.

How a call is measured
----------------------
Every measured call runs in a fresh Python process (this file, run with ``--child``), so no
call inherits another's heap, caches or thread pools, and each has a peak of its own. The child

1. loads the scenario script and calls the named task function with its parameters; the task
   builds the inputs (from seeds, so both sides get bit-identical arrays), imports what it
   needs and returns the call to measure. None of this is timed;
2. resets the kernel's peak-RSS mark (writes ``5`` to ``/proc/self/clear_refs``) and reads
   ``VmRSS``: the baseline (interpreter, libraries, inputs);
3. times the call: ``time.perf_counter`` (wall) and ``time.process_time`` (CPU of all threads);
4. reads ``VmHWM`` from ``/proc/self/status``: the peak resident set *during the call*, inputs
   included. The kernel keeps this mark exactly (it is updated whenever memory is unmapped),
   so short spikes are not missed as they would be by sampling.

The parent reaps the child with ``os.wait4``, whose ``ru_maxrss`` is that one child's lifetime
peak (setup included, and any process the child waited for); it is kept as a cross-check and
is the peak when ``clear_refs`` cannot be written. (``getrusage(RUSAGE_CHILDREN)`` is not used:
it is the maximum over *all* children so far, not the one just run.)

Sizes are decimal: 1 GB = 10^9 bytes.
"""
from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PACKAGES = ("ganaudit", "numpy", "scipy", "torch", "faiss-cpu", "scikit-learn", "prdc", "pytorch-fid")
GB = 1e9
if str(REPO) not in sys.path:  # measure the working tree, installed or not
    sys.path.insert(0, str(REPO))


# ---------------------------------------------------------------------------------------------
# inputs and the GEMM floor (called inside children)

def features(n: int, dim: int, seed: int) -> np.ndarray:
    """``(n, dim)`` float32 standard normal features, drawn directly in float32 (no float64 copy)."""
    return np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)


def gemm_floor_call(pairs: list[tuple[np.ndarray, np.ndarray]], tile: int = 4096):
    """The plain float32 matrix products ``a @ b.T`` of every pair, tile by tile.

    Each ``tile × tile`` block of every product is written into one reused buffer: only the
    multiply-adds and the output writes, no allocation, norms, distances or selection. The
    faster of numpy's and torch's float32 GEMM on this machine (tried on one tile beforehand)
    is used. Returns ``(call, report)`` for :func:`run_isolated`.
    """
    engines = {"numpy": _numpy_gemm, "torch": _torch_gemm}
    a0, b0 = pairs[0][0][:tile], pairs[0][1][:tile]
    speed = {}
    for name, gemm in engines.items():
        buf = np.empty((a0.shape[0], b0.shape[0]), dtype=np.float32)
        gemm(a0, b0, buf)  # warm-up: thread pools, first-call setup
        start = time.perf_counter()
        gemm(a0, b0, buf)
        speed[name] = time.perf_counter() - start
    engine = min(speed, key=speed.get)
    gemm = engines[engine]
    buf = np.empty((tile, tile), dtype=np.float32)
    macs = sum(a.shape[0] * b.shape[0] * a.shape[1] for a, b in pairs)

    def call():
        for a, b in pairs:
            for i in range(0, a.shape[0], tile):
                ai = a[i : i + tile]
                for j in range(0, b.shape[0], tile):
                    bj = b[j : j + tile]
                    gemm(ai, bj, buf[: ai.shape[0], : bj.shape[0]])

    def report(_):
        return {"engine": engine, "multiply_adds": macs, "tile": tile,
                "calibration_s": {k: round(v, 4) for k, v in speed.items()}}

    return call, report


def _numpy_gemm(a, b, out):
    np.matmul(a, b.T, out=out)


def _torch_gemm(a, b, out):
    import torch

    torch.mm(torch.from_numpy(a), torch.from_numpy(b).T, out=torch.from_numpy(out))


# ---------------------------------------------------------------------------------------------
# running one call in a fresh process

def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _load_task(script: str, func: str):
    spec = importlib.util.spec_from_file_location("_bench_task", script)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(BENCH_DIR))
    spec.loader.exec_module(module)
    return getattr(module, func)


def _child(script: str, func: str, params_json: str, result_path: str) -> None:
    made = _load_task(script, func)(**json.loads(params_json))
    call, report = made if isinstance(made, tuple) else (made, None)
    gc.collect()
    reset = _reset_peak()
    baseline = _status_kib("VmRSS") * 1024
    wall0, cpu0 = time.perf_counter(), time.process_time()
    value = call()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    peak = _status_kib("VmHWM") * 1024
    out = {"wall_s": wall, "cpu_s": cpu, "baseline_rss_bytes": baseline,
           "peak_rss_bytes": peak if reset else None, "peak_reset": reset,
           "result": report(value) if report else value}
    Path(result_path).write_text(json.dumps(out, default=_jsonable))


def run_isolated(script: str | Path, func: str, params: dict, timeout_s: float = 1800) -> dict:
    """Run ``func(**params)`` of ``script`` in a fresh process and measure its call.

    Returns the child's record (``wall_s``, ``cpu_s``, ``baseline_rss_bytes``,
    ``peak_rss_bytes``, ``result``) plus ``lifetime_max_rss_bytes`` from ``wait4`` and the
    1-minute load average just before the start.
    """
    with tempfile.TemporaryDirectory(prefix="ganaudit-bench-") as tmp:
        result_path, err_path = Path(tmp, "result.json"), Path(tmp, "stderr.txt")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(script), func,
               json.dumps(params), str(result_path)]
        load = os.getloadavg()[0]
        with open(err_path, "w") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
            timer = threading.Timer(timeout_s, proc.kill)
            timer.start()
            try:
                _, status, usage = os.wait4(proc.pid, 0)
            finally:
                timer.cancel()
            proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0 or not result_path.exists():
            tail = err_path.read_text()[-3000:]
            raise RuntimeError(f"{func}{params} failed (exit {proc.returncode}):\n{tail}")
        record = json.loads(result_path.read_text())
    record["lifetime_max_rss_bytes"] = usage.ru_maxrss * 1024  # Linux reports KiB
    if record["peak_rss_bytes"] is None:
        record["peak_rss_bytes"] = record["lifetime_max_rss_bytes"]
    record["load_1min_before"] = round(load, 2)
    return record


def run_command(cmd: list[str], env: dict | None = None, timeout_s: float = 1800) -> dict:
    """Run a command; its wall time, exit code, peak RSS (``wait4``) and output tails."""
    with tempfile.TemporaryDirectory(prefix="ganaudit-bench-") as tmp:
        out_path, err_path = Path(tmp, "stdout.txt"), Path(tmp, "stderr.txt")
        load = os.getloadavg()[0]
        with open(out_path, "w") as out, open(err_path, "w") as err:
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO, env=env)
            timer = threading.Timer(timeout_s, proc.kill)
            timer.start()
            try:
                _, status, usage = os.wait4(proc.pid, 0)
            finally:
                timer.cancel()
            wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        return {"wall_s": wall, "exit_code": proc.returncode, "peak_rss_bytes": usage.ru_maxrss * 1024,
                "cpu_s": usage.ru_utime + usage.ru_stime, "load_1min_before": round(load, 2),
                "stdout_tail": out_path.read_text()[-2000:], "stderr_tail": err_path.read_text()[-2000:]}


def interleaved(sides: dict[str, tuple[str | Path, str, dict]], repeats: int, log=print) -> dict[str, list[dict]]:
    """Run each side ``repeats`` times, alternating (a, b, a, b, ...); records per side."""
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for r in range(repeats):
        for name, (script, func, params) in sides.items():
            record = run_isolated(script, func, params)
            record["repeat"] = r
            runs[name].append(record)
            log(f"  [{name} #{r + 1}] {record['wall_s']:.2f} s wall, "
                f"peak {record['peak_rss_bytes'] / GB:.3f} GB, load {record['load_1min_before']}")
    return runs


def summary(runs: list[dict]) -> dict:
    """Best and median wall time, the largest peak, and the baseline of a side's runs."""
    walls = [r["wall_s"] for r in runs]
    return {"runs": len(runs), "wall_s_best": min(walls), "wall_s_median": statistics.median(walls),
            "wall_s_all": walls, "cpu_s_best_run": min(runs, key=lambda r: r["wall_s"])["cpu_s"],
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
            "baseline_rss_bytes": max(r["baseline_rss_bytes"] for r in runs),
            "lifetime_max_rss_bytes": max(r["lifetime_max_rss_bytes"] for r in runs)}


# ---------------------------------------------------------------------------------------------
# machine facts, command line, output

def machine_info() -> dict:
    """Cores, CPU model, memory, load, library versions and thread settings."""
    info = {"cpu_model": _cpu_model(), "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)), "mem_total_gb": round(_meminfo_kib("MemTotal") * 1024 / GB, 2),
            "mem_available_gb": round(_meminfo_kib("MemAvailable") * 1024 / GB, 2),
            "load_average": [round(v, 2) for v in os.getloadavg()],
            "platform": platform.platform(), "python": platform.python_version(),
            "versions": {p: _version(p) for p in PACKAGES},
            "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
                           if k in os.environ},
            "git": _git_state()}
    try:
        info["numpy_blas"] = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    except Exception:  # numpy < 2 or an unusual build: the name is a nicety
        info["numpy_blas"] = None
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def _meminfo_kib(field: str) -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_state() -> dict | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True)
        return {"commit": head.stdout.strip(), "uncommitted_changes": bool(dirty.stdout.strip())}
    except (OSError, subprocess.CalledProcessError):
        return None


def make_parser(doc: str, repeats: int) -> argparse.ArgumentParser:
    """The options every scenario takes: --quick, --out, --repeats, --wait-quiet."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a few seconds")
    parser.add_argument("--out", type=Path, help="write the results here as JSON (default benchmarks/results/NAME.json)")
    parser.add_argument("--repeats", type=int, default=repeats, help=f"interleaved runs per side (default {repeats})")
    parser.add_argument("--wait-quiet", type=float, metavar="LOAD",
                        help="first wait (up to 30 min) until the 1-minute load average is below LOAD")
    return parser


def wait_for_quiet(threshold: float | None, max_wait_s: float = 1800, poll_s: float = 30) -> dict | None:
    """Poll ``/proc/loadavg`` until the 1-minute load is below ``threshold`` or time runs out."""
    if threshold is None:
        return None
    start = time.monotonic()
    while (load := os.getloadavg()[0]) >= threshold and time.monotonic() - start < max_wait_s:
        print(f"waiting for a quiet machine: load {load:.2f} >= {threshold}", flush=True)
        time.sleep(poll_s)
    return {"threshold": threshold, "waited_s": round(time.monotonic() - start), "load_at_start": round(load, 2)}


def default_out(name: str, quick: bool) -> Path:
    return BENCH_DIR / "results" / (f"{name}.quick.json" if quick else f"{name}.json")


def write_json(path: Path, scenario: str, params: dict, results: dict, table: str, waited: dict | None) -> None:
    """Write the record atomically: scenario, command, machine, parameters, results, table."""
    payload = {"scenario": scenario, "command": " ".join([Path(sys.executable).name, *sys.argv]),
               "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": machine_info(), "wait_quiet": waited, "params": params,
               "results": results, "table": table}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path}")


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot write {type(x).__name__} as JSON")


def format_table(title: str, header: list[str], rows: list[list]) -> str:
    """A plain-text table: the title, a header, a rule, one line per row (right-aligned)."""
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join([title, *lines])


def machine_line(info: dict) -> str:
    v = info["versions"]
    return (f"machine: {info['cpus_usable']} cores {info['cpu_model']}, {info['mem_total_gb']} GB; "
            f"numpy {v['numpy']} ({info['numpy_blas']}), torch {v['torch']}, faiss {v['faiss-cpu']}; "
            f"load {info['load_average'][0]}")


def gb(x: float) -> str:
    return f"{x / GB:.3f} GB"


def secs(x: float) -> str:
    return f"{x:.2f} s"


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--child":
    _child(*sys.argv[2:])


def timed_into(func, name: str, stages: dict):
    """Wrap ``func`` so each call adds its wall time to ``stages[name]``."""
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            stages[name] = stages.get(name, 0.0) + time.perf_counter() - start
    return wrapper
