"""prdc-20k: precision/recall/density/coverage, ganaudit against the prdc package.

Both sides get the same float32 standard-normal features (real: seed 0, fake: seed 1) and
k = 5, each call in a fresh process, the sides interleaved (ganaudit, prdc, ganaudit, prdc,
...). Reported: best and median wall time, peak resident memory during the call (inputs
included) and the four values, which must be equal. Targets (issue 9): at most 0.45x prdc's
time and 0.25x its peak memory.

    python benchmarks/prdc_20k.py --out benchmarks/results/prdc_20k.json
"""
from __future__ import annotations

from pathlib import Path

from _common import (features, format_table, gb, interleaved, machine_info, machine_line,
                     make_parser, default_out, secs, summary, wait_for_quiet, write_json)

METRICS = ("precision", "recall", "density", "coverage")
TIME_TARGET, MEMORY_TARGET = 0.45, 0.25
FULL = {"n_real": 20_000, "n_fake": 20_000, "dim": 2048, "k": 5}
QUICK = {"n_real": 2_000, "n_fake": 2_000, "dim": 256, "k": 5}


def _inputs(n_real: int, n_fake: int, dim: int):
    return features(n_real, dim, seed=0), features(n_fake, dim, seed=1)


def task_ganaudit(n_real: int, n_fake: int, dim: int, k: int):
    import faiss  # noqa: F401  (imported by the call anyway; keep import time out of the timing)

    from ganaudit.metrics import prdc

    real, fake = _inputs(n_real, n_fake, dim)
    return (lambda: prdc(real, fake, nearest_k=k)), _as_floats


def task_prdc(n_real: int, n_fake: int, dim: int, k: int):
    from prdc import compute_prdc

    real, fake = _inputs(n_real, n_fake, dim)
    return (lambda: compute_prdc(real, fake, k)), _as_floats


def _as_floats(values: dict) -> dict:
    return {m: float(values[m]) for m in METRICS}


def compare(params: dict, repeats: int) -> dict:
    """Interleaved runs of both sides; summaries, ratios and the value comparison."""
    script = Path(__file__).resolve()
    runs = interleaved({"ganaudit": (script, "task_ganaudit", params),
                        "prdc": (script, "task_prdc", params)}, repeats)
    ours, peer = summary(runs["ganaudit"]), summary(runs["prdc"])
    values = {side: runs[side][0]["result"] for side in runs}
    consistent = all(r["result"] == runs[side][0]["result"] for side in runs for r in runs[side])
    return {
        "runs": runs, "ganaudit": ours, "prdc": peer, "values": values,
        "values_bitwise_equal": values["ganaudit"] == values["prdc"] and consistent,
        "values_max_abs_difference": max(abs(values["ganaudit"][m] - values["prdc"][m]) for m in METRICS),
        "time_ratio_best": ours["wall_s_best"] / peer["wall_s_best"],
        "time_ratio_median": ours["wall_s_median"] / peer["wall_s_median"],
        "peak_ratio": ours["peak_rss_bytes"] / peer["peak_rss_bytes"],
        "peak_above_baseline_ratio": (ours["peak_rss_bytes"] - ours["baseline_rss_bytes"])
        / (peer["peak_rss_bytes"] - peer["baseline_rss_bytes"]),
        # prdc's working memory per real x fake pair: what prdc_50k extrapolates from.
        "prdc_bytes_per_pair": (peer["peak_rss_bytes"] - peer["baseline_rss_bytes"])
        / (params["n_real"] * params["n_fake"]),
    }


def tables(params: dict, res: dict, repeats: int, info: dict) -> str:
    title = (f"prdc-{params['n_real'] // 1000}k: {params['n_real']} real x {params['n_fake']} fake, "
             f"{params['dim']}-d float32, k={params['k']}, {repeats} interleaved runs per side\n{machine_line(info)}")
    rows = [[side, secs(s["wall_s_best"]), secs(s["wall_s_median"]), f"{s['cpu_s_best_run'] / s['wall_s_best']:.2f}",
             gb(s["peak_rss_bytes"]), gb(s["baseline_rss_bytes"]), gb(s["peak_rss_bytes"] - s["baseline_rss_bytes"])]
            for side, s in (("ganaudit", res["ganaudit"]), ("prdc", res["prdc"]))]
    main = format_table(title, ["side", "wall best", "wall median", "cpu/wall", "peak RSS", "before call",
                                "peak - before"], rows)
    ratio_rows = [
        ["time (best)", f"{res['time_ratio_best']:.3f}", f"<= {TIME_TARGET}", _met(res["time_ratio_best"] <= TIME_TARGET)],
        ["time (median)", f"{res['time_ratio_median']:.3f}", f"<= {TIME_TARGET}", _met(res["time_ratio_median"] <= TIME_TARGET)],
        ["peak RSS", f"{res['peak_ratio']:.3f}", f"<= {MEMORY_TARGET}", _met(res["peak_ratio"] <= MEMORY_TARGET)],
        ["peak - before", f"{res['peak_above_baseline_ratio']:.3f}", "", ""],
    ]
    ratios = format_table("ganaudit / prdc", ["ratio", "value", "target", "met"], ratio_rows)
    values = format_table("values", ["metric", "ganaudit", "prdc", "|difference|", "bitwise equal"],
                          value_rows(res["values"]["ganaudit"], res["values"]["prdc"]))
    return "\n\n".join([main, ratios, values])


def value_rows(ours: dict, peer: dict) -> list[list[str]]:
    return [[m, repr(ours[m]), repr(peer[m]), f"{abs(ours[m] - peer[m]):.1e}", _met(ours[m] == peer[m])]
            for m in METRICS]


def _met(ok: bool) -> str:
    return "yes" if ok else "NO"


def main(argv: list[str] | None = None) -> int:
    args = make_parser(__doc__, repeats=2).parse_args(argv)
    params = QUICK if args.quick else FULL
    waited = wait_for_quiet(args.wait_quiet)
    res = compare(params, args.repeats)
    info = machine_info()
    table = tables(params, res, args.repeats, info)
    print(table)
    write_json(args.out or default_out("prdc_20k", args.quick), "prdc-20k", params, res, table, waited)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
