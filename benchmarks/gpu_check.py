"""The steps of ``benchmarks/gpu_check.sh``: each measures one thing and writes ``OUT/<step>.json``.

    python benchmarks/gpu_check.py STEP --out DIR [--cpu-smoke]

Steps:

- ``e2e``: ``ganaudit check`` on the leaky fixture (``fixtures/generators/leaky.pt2`` against
  ``fixtures/data/train``, holdout calibration, ``pixels``), on CUDA: its verdict, stage
  timings and wall time;
- ``embed``: images per second of ``inception`` and ``dinov2-vits14`` / ``dinov2-vitb14``
  (randomly initialised weights of the real shapes: ``embed_throughput.make_embedder``),
  on already decoded batches, as the embedders run them (bf16 autocast on CUDA where the spec
  allows it);
- ``faiss``: exact search of 50,000 queries against 1,000,000 × 768 float32 features (k = 51,
  copy search's ``copy_k + 1``) through ganaudit's ``build_index(kind="flat", gpu=0)``: the
  seconds, queries per second, and the build; with faiss-cpu (no GPU build importable) it says
  so and measures nothing at that size;
- ``sample``: generator throughput, samples per second, of the DCGAN fixture drawn in batches
  as an audit draws them (``GeneratorSamples``).

``--cpu-smoke`` runs each step tiny on the CPU (20 samples, 2 images per network, 500 × 20,000
queries, 256 samples): a check that the script runs, not a measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))


def _device(smoke: bool):
    import torch

    if smoke:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch: run with --cpu-smoke for the CPU path")
    return torch.device("cuda")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_info(smoke: bool) -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(), "cpu_smoke": smoke}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": torch.cuda.get_device_name(0), "gpu_memory_gb": round(props.total_memory / 1e9, 1),
                 "cuda": torch.version.cuda}
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                             "--format=csv,noheader"], capture_output=True, text=True,
                                            timeout=30).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        info["nvidia_smi"] = None
    return info


def step_e2e(smoke: bool, out: Path) -> dict:
    samples = 20 if smoke else 1000
    result_path = out / "e2e_result.json"
    cmd = [sys.executable, "-m", "ganaudit", "check", "--generator", "fixtures/generators/leaky.pt2",
           "--train", "fixtures/data/train", "--holdout", "fixtures/data/holdout", "--num-samples", str(samples),
           "--device", "cpu" if smoke else "cuda", "--no-progress", "--no-cache", "--json", str(result_path)]
    if smoke:
        cmd += ["--tta", "flip"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    record = {"command": " ".join(cmd[1:]), "exit_code": proc.returncode, "wall_s": round(wall, 2)}
    if result_path.exists():
        result = json.loads(result_path.read_text())
        mem = result["memorization"]
        record |= {"verdict": result["verdict"], "timings": result["timings"], "n_flagged": mem["n_flagged"],
                   "index_device": mem["index"]["device"], "embedder_device": result["embedder"]["device"]}
    else:
        record["stderr_tail"] = proc.stderr[-1500:]
    return record


def step_embed(smoke: bool, out: Path) -> dict:
    import torch
    from embed_throughput import make_embedder

    device = _device(smoke)
    names = ["inception", "dinov2-vits14"] if smoke else ["inception", "dinov2-vits14", "dinov2-vitb14"]
    n, batch = (2, 2) if smoke else (1024, 128)
    rows = []
    for name in names:
        embedder = make_embedder(name, device)
        images = torch.rand(batch, 3, 256, 256, generator=torch.Generator().manual_seed(0))
        embedder.embed(images)  # warm-up: allocations, kernel choice
        _sync(device)
        start = time.perf_counter()
        for _ in range(max(1, n // batch)):
            embedder.embed(images)
        _sync(device)
        seconds = time.perf_counter() - start
        done = max(1, n // batch) * batch
        rows.append({"embedder": name, "input_size": list(embedder.spec.input_size), "batch_size": batch,
                     "images": done, "seconds": round(seconds, 3), "img_s": float(f"{done / seconds:.3g}"),
                     "precision": str(embedder.autocast_dtype or "float32").removeprefix("torch."),
                     "weights": "random, real shapes"})
        del embedder
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"device": str(device), "results": rows}


def step_faiss(smoke: bool, out: Path) -> dict:
    import faiss

    from ganaudit.search.index import build_index

    n_db, n_q, dim, k = (20_000, 500, 768, 51) if smoke else (1_000_000, 50_000, 768, 51)
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    record = {"faiss": faiss.__version__, "faiss_gpus": gpus, "n_database": n_db, "n_queries": n_q, "dim": dim,
              "k": k, "faiss_build": os.environ.get("GANAUDIT_FAISS_BUILD", "as installed")}
    gpu = 0 if (gpus > 0 and not smoke) else None
    if gpu is None and not smoke:
        record |= {"status": "skipped", "reason": "no GPU build of faiss could be imported (faiss-cpu only); "
                   "see gpu_check.sh's faiss install step in its log"}
        return record
    rng = np.random.default_rng(0)
    database = rng.standard_normal((n_db, dim), dtype=np.float32)
    queries = rng.standard_normal((n_q, dim), dtype=np.float32)
    start = time.perf_counter()
    index = build_index(database, "l2", "flat", gpu=gpu)
    build_s = time.perf_counter() - start
    index.search(queries[:100], k)  # warm-up
    start = time.perf_counter()
    _, idx = index.search(queries, k)
    search_s = time.perf_counter() - start
    # Exactness spot check: the nearest row of 20 queries by numpy (float64 distances).
    check = queries[:20].astype(np.float64)
    sq = (check**2).sum(1)[:, None] - 2 * check @ database.T.astype(np.float64) + (database.astype(np.float64) ** 2).sum(1)[None] \
        if n_db <= 20_000 else None
    exact = None if sq is None else np.argmin(sq, axis=1)
    record |= {"status": "measured", "device": index.device, "build_s": round(build_s, 3), "search_s": round(search_s, 3),
               "queries_per_s": round(n_q / search_s, 1),
               "gflops": round(2 * n_q * n_db * dim / search_s / 1e9, 1), "result_shape": list(idx.shape)}
    if exact is not None:
        record["exact_check"] = bool((idx[:20, 0] == exact).all())
    return record


def step_sample(smoke: bool, out: Path) -> dict:
    from ganaudit.sources.generators import load_generator
    from ganaudit.sources.samples import GeneratorSamples

    device = _device(smoke)
    n, batch = (256, 128) if smoke else (50_000, 1024)
    generator = load_generator(REPO / "fixtures" / "generators" / "dcgan.pt2", device)
    source = GeneratorSamples(generator, n, seed=0)
    next(iter(GeneratorSamples(generator, batch, seed=1).batches(batch)))  # warm-up
    _sync(device)
    start = time.perf_counter()
    count = 0
    for indices, images in source.batches(batch):
        count += len(indices)
    _sync(device)
    seconds = time.perf_counter() - start
    return {"device": str(device), "generator": "fixtures/generators/dcgan.pt2", "samples": count,
            "batch_size": batch, "seconds": round(seconds, 3), "samples_per_s": round(count / seconds, 1)}


STEPS = {"e2e": step_e2e, "embed": step_embed, "faiss": step_faiss, "sample": step_sample}


def markdown(out: Path) -> str:
    """``gpu_check.md``: the figures of every step that ran, with the device named."""
    parts = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))
             if p.stem in STEPS or p.stem == "device"}
    dev = parts.get("device", {})
    lines = [f"# gpu_check ({'CPU smoke run: not a measurement' if dev.get('cpu_smoke') else 'CUDA'})", "",
             f"device: {dev.get('gpu') or 'CPU'} ({dev.get('nvidia_smi') or 'no nvidia-smi'}); torch {dev.get('torch')}",
             ""]
    if "e2e" in parts:
        e = parts["e2e"]
        lines += ["## end-to-end fixture audit", "", f"`{e['command']}`", "",
                  f"exit {e['exit_code']}, verdict {e.get('verdict')}, wall {e['wall_s']} s, "
                  f"timings {json.dumps(e.get('timings'))}", ""]
    if "embed" in parts:
        lines += ["## embedder throughput (random weights, real shapes)", "",
                  "| embedder | input | batch | precision | img/s |", "|---|---|---|---|---|"]
        lines += [f"| {r['embedder']} | {r['input_size'][0]}x{r['input_size'][1]} | {r['batch_size']} | "
                  f"{r['precision']} | {r['img_s']} |" for r in parts["embed"]["results"]]
        lines.append("")
    if "faiss" in parts:
        f = parts["faiss"]
        lines += ["## faiss exact search", "",
                  f"{f['n_queries']:,} queries x {f['n_database']:,} x {f['dim']}-d, k={f['k']}, faiss {f['faiss']} "
                  f"({f['faiss_build']}): " + (f"{f['search_s']} s on {f['device']} ({f['queries_per_s']} queries/s, "
                                                f"{f['gflops']} GFLOP/s), build {f['build_s']} s"
                                                if f.get("status") == "measured" else f"{f['status']}: {f.get('reason')}"), ""]
    if "sample" in parts:
        s = parts["sample"]
        lines += ["## sampling throughput", "",
                  f"{s['generator']}: {s['samples_per_s']} samples/s ({s['samples']} in batches of {s['batch_size']}, "
                  f"{s['device']})", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=[*STEPS, "device", "report"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cpu-smoke", action="store_true")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.step == "report":
        (args.out / "gpu_check.md").write_text(markdown(args.out) + "\n")
        print((args.out / "gpu_check.md").read_text())
        return 0
    start = time.perf_counter()
    try:
        record = device_info(args.cpu_smoke) if args.step == "device" else STEPS[args.step](args.cpu_smoke, args.out)
    except Exception as e:  # noqa: BLE001 - one step failing must not lose the others' figures
        record = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
    record["step_wall_s"] = round(time.perf_counter() - start, 2)
    (args.out / f"{args.step}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    return 0 if record.get("status") != "failed" else 1


if __name__ == "__main__":
    sys.exit(main())
