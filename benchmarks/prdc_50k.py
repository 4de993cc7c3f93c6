"""prdc-50k: ganaudit's prdc at 50k x 50k, 2048-d, against this machine's GEMM floor.

The prdc package is not run: its need is computed. Its dense matrices cost about
``c * N * M`` bytes on top of the inputs (N x M float32 distances plus the N x N int64 index
array of ``np.argpartition``, i.e. 12 bytes per pair when N = M); ``c`` is measured in this
run from prdc itself at two small sizes and the need is extrapolated to 50k.

The GEMM floor is the time of the float32 matrix products exact prdc cannot avoid:
real·realᵀ, fake·fakeᵀ and real·fakeᵀ (the inner products of the three distance matrices,
``(N² + M² + N·M)·D`` multiply-adds), done as plain tiled GEMM on the same arrays with the
faster of numpy's and torch's BLAS (see ``_common.gemm_floor_call``). With
``--floor-products cross`` only real·fakeᵀ is timed and counted three times: with N = M the
three products are the same GEMM shape, so this saves two thirds of the floor's time. Targets (issue 9):
ganaudit within 1.2x of the floor, in at most 2.5 GB peak resident memory.

    python benchmarks/prdc_50k.py --out benchmarks/results/prdc_50k.json
"""
from __future__ import annotations

from pathlib import Path

from _common import (timed_into as _timed, GB, default_out, features, format_table, gb, gemm_floor_call, interleaved, machine_info,
                     machine_line, make_parser, run_isolated, secs, summary, wait_for_quiet, write_json)

FLOOR_TARGET, PEAK_TARGET_GB = 1.2, 2.5
FULL = {"n_real": 50_000, "n_fake": 50_000, "dim": 2048, "k": 5, "calibration_sizes": [5_000, 10_000]}
QUICK = {"n_real": 3_000, "n_fake": 3_000, "dim": 256, "k": 5, "calibration_sizes": [500, 1_000]}


def _inputs(n_real: int, n_fake: int, dim: int):
    return features(n_real, dim, seed=0), features(n_fake, dim, seed=1)


def task_ganaudit(n_real: int, n_fake: int, dim: int, k: int):
    """The public ``ganaudit.metrics.prdc``, with its two layers timed from outside."""
    import faiss  # noqa: F401  (keep the import out of the timing)

    import ganaudit.metrics.coverage as coverage

    stages: dict[str, float] = {}
    for name in ("knn_radii", "prdc_from_radii"):
        setattr(coverage, name, _timed(getattr(coverage, name), name, stages))
    real, fake = _inputs(n_real, n_fake, dim)

    def report(values):
        return {"values": {m: float(v) for m, v in values.items()}, "stages_s": stages}

    return (lambda: coverage.prdc(real, fake, nearest_k=k)), report


def task_floor(n_real: int, n_fake: int, dim: int, k: int, products: str = "all"):
    real, fake = _inputs(n_real, n_fake, dim)
    pairs = [(real, real), (fake, fake), (real, fake)] if products == "all" else [(real, fake)]
    return gemm_floor_call(pairs)


def task_prdc_package(n: int, dim: int, k: int):
    from prdc import compute_prdc

    real, fake = _inputs(n, n, dim)
    return lambda: {m: float(v) for m, v in compute_prdc(real, fake, k).items()}


def prdc_need(params: dict, script: Path) -> dict:
    """Measure prdc's peak at two small sizes, fit ``fixed + c·n²``, extrapolate to the full size."""
    points = []
    for n in params["calibration_sizes"]:
        r = run_isolated(script, "task_prdc_package", {"n": n, "dim": params["dim"], "k": params["k"]})
        above = r["peak_rss_bytes"] - r["baseline_rss_bytes"]
        points.append({"n": n, "wall_s": r["wall_s"], "peak_rss_bytes": r["peak_rss_bytes"],
                       "baseline_rss_bytes": r["baseline_rss_bytes"], "peak_above_baseline_bytes": above})
        print(f"  [prdc n={n}] {r['wall_s']:.2f} s, peak {r['peak_rss_bytes'] / GB:.3f} GB")
    (n1, p1), (n2, p2) = [(p["n"], p["peak_above_baseline_bytes"]) for p in points]
    per_pair = (p2 - p1) / (n2**2 - n1**2)
    fixed = p2 - per_pair * n2**2
    n, m, dim = params["n_real"], params["n_fake"], params["dim"]
    libraries = points[-1]["baseline_rss_bytes"] - 2 * n2 * dim * 4  # baseline less its inputs
    base = libraries + (n + m) * dim * 4
    return {"calibration": points, "bytes_per_pair": per_pair, "fixed_bytes": fixed,
            "need_bytes": base + fixed + per_pair * n * m,
            "need_bytes_code_model": base + 12 * n * m}


def tables(params: dict, res: dict, info: dict) -> str:
    floor, ours, need = res["floor"], res["ganaudit"], res["prdc_need"]
    title = (f"prdc-{params['n_real'] // 1000}k: {params['n_real']} real x {params['n_fake']} fake, "
             f"{params['dim']}-d float32, k={params['k']}, {floor['runs']} interleaved runs per side\n"
             f"{machine_line(info)}")
    stages = res["ganaudit_stages_s"]
    how = ", real·fakeᵀ measured x3" if res["floor_products"] == "cross" else ""
    rows = [[f"GEMM floor ({res['floor_engine']}{how})", secs(floor["wall_s_best"]), f"{res['floor_gflops']:.1f}",
             gb(floor["peak_rss_bytes"]), "-"],
            ["ganaudit prdc", secs(ours["wall_s_best"]), f"{res['ganaudit_effective_gflops']:.1f}",
             gb(ours["peak_rss_bytes"]),
             f"radii {stages['knn_radii']:.1f} s + cross {stages['prdc_from_radii']:.1f} s"],
            ["prdc package", "not run", "-", gb(need["need_bytes"]) + " (computed)",
             f"needs more than the {info['mem_total_gb']} GB RAM" if need["need_bytes"] > info["mem_total_gb"] * GB
             else f"would fit in {info['mem_total_gb']} GB RAM"]]
    main = format_table(title, ["side", "wall best", "GFLOP/s", "peak RSS", "note"], rows)
    target_rows = [
        ["ganaudit / floor (best)", f"{res['floor_ratio_best']:.3f}", f"<= {FLOOR_TARGET}",
         _met(res["floor_ratio_best"] <= FLOOR_TARGET)],
        ["ganaudit peak RSS", gb(ours["peak_rss_bytes"]), f"<= {PEAK_TARGET_GB} GB",
         _met(ours["peak_rss_bytes"] <= PEAK_TARGET_GB * GB)],
    ]
    targets = format_table("targets", ["figure", "value", "target", "met"], target_rows)
    cal = format_table("prdc package memory, measured (inputs included)", ["n = m", "wall", "peak RSS",
                       "peak - before"],
                       [[p["n"], secs(p["wall_s"]), gb(p["peak_rss_bytes"]), gb(p["peak_above_baseline_bytes"])]
                        for p in need["calibration"]])
    cal += (f"\nfit: peak - before = {need['fixed_bytes'] / GB:.3f} GB + {need['bytes_per_pair']:.2f} bytes x n·m"
            f" -> {need['need_bytes'] / GB:.1f} GB at {params['n_real']} x {params['n_fake']}"
            f" (reading the code: 12 bytes per pair -> {need['need_bytes_code_model'] / GB:.1f} GB)")
    values = format_table("ganaudit values", ["precision", "recall", "density", "coverage"],
                          [[repr(res["values"][m]) for m in ("precision", "recall", "density", "coverage")]])
    return "\n\n".join([main, targets, cal, values])


def _met(ok: bool) -> str:
    return "yes" if ok else "NO"


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__, repeats=1)
    parser.add_argument("--floor-products", choices=("all", "cross"), default="all",
                        help="all: time the three products; cross: time real·fakeᵀ and count it 3 times "
                             "(same shape as the other two when N = M; a third of the time)")
    args = parser.parse_args(argv)
    params = QUICK if args.quick else FULL
    waited = wait_for_quiet(args.wait_quiet)
    script = Path(__file__).resolve()
    run_params = {k: params[k] for k in ("n_real", "n_fake", "dim", "k")}
    if args.floor_products == "cross" and params["n_real"] != params["n_fake"]:
        raise SystemExit("--floor-products cross needs n_real == n_fake (three products of one shape)")
    runs = interleaved({"floor": (script, "task_floor", {**run_params, "products": args.floor_products}),
                        "ganaudit": (script, "task_ganaudit", run_params)}, args.repeats)
    scale = 3 if args.floor_products == "cross" else 1  # the three products have one shape when N = M
    for r in runs["floor"]:
        r["measured_wall_s"], r["wall_s"] = r["wall_s"], r["wall_s"] * scale
    floor, ours = summary(runs["floor"]), summary(runs["ganaudit"])
    macs = runs["floor"][0]["result"]["multiply_adds"] * scale
    best_run = min(runs["ganaudit"], key=lambda r: r["wall_s"])
    res = {"runs": runs, "floor": floor, "ganaudit": ours, "floor_engine": runs["floor"][0]["result"]["engine"],
           "floor_products": args.floor_products,
           "multiply_adds": macs, "floor_gflops": 2 * macs / floor["wall_s_best"] / 1e9,
           "ganaudit_effective_gflops": 2 * macs / ours["wall_s_best"] / 1e9,
           "floor_ratio_best": ours["wall_s_best"] / floor["wall_s_best"],
           "floor_ratio_median": ours["wall_s_median"] / floor["wall_s_median"],
           "ganaudit_stages_s": best_run["result"]["stages_s"], "values": best_run["result"]["values"],
           "prdc_need": prdc_need(params, script)}
    info = machine_info()
    table = tables(params, res, info)
    print(table)
    write_json(args.out or default_out("prdc_50k", args.quick), "prdc-50k", params, res, table, waited)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
