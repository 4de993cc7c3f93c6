"""fd: Fréchet distance from features, ganaudit against pytorch-fid, end to end.

Both sides start from the same two (N, D) float32 standard-normal feature arrays (real:
seed 0, fake: seed 1) and end with the distance:

- ``ganaudit``: ``ganaudit.metrics.frechet_distance(real, fake)`` (float64 statistics
  accumulated in row blocks by symmetric rank-k updates, then the eigenvalues of
  ``Lᵀ Σ2 L`` with ``Σ1 = L Lᵀ``);
- ``pytorch-fid``: ``np.mean(x, axis=0)`` and ``np.cov(x, rowvar=False)`` of each array, as
  ``pytorch_fid.fid_score.calculate_activation_statistics`` does, then
  ``calculate_frechet_distance`` (``scipy.linalg.sqrtm``).

Each call in a fresh process, the sides interleaved. Targets (issue 9): at most 0.35x
pytorch-fid's time, relative difference of the values at most 1e-9.

    python benchmarks/fd.py --out benchmarks/results/fd.json
"""
from __future__ import annotations

import time
from pathlib import Path

from _common import (timed_into as _timed, default_out, run_isolated, features, format_table, gb, interleaved, machine_info, machine_line, make_parser,
                     secs, summary, wait_for_quiet, write_json)

TIME_TARGET, REL_DIFF_TARGET = 0.35, 1e-9
FULL = {"n_real": 50_000, "n_fake": 50_000, "dim": 2048}
QUICK = {"n_real": 4_000, "n_fake": 4_000, "dim": 256}


def _inputs(n_real: int, n_fake: int, dim: int):
    return features(n_real, dim, seed=0), features(n_fake, dim, seed=1)


def task_ganaudit(n_real: int, n_fake: int, dim: int):
    """The public ``frechet_distance``, its two layers timed from outside."""
    import ganaudit.metrics.fid as fid

    stages: dict[str, float] = {}
    for name, stage in (("features_to_statistics", "statistics_s"), ("statistics_to_frechet_distance", "distance_s")):
        setattr(fid, name, _timed(getattr(fid, name), stage, stages))
    real, fake = _inputs(n_real, n_fake, dim)
    return (lambda: fid.frechet_distance(real, fake)), (lambda value: {"value": value, "stages_s": stages})


def task_pytorch_fid(n_real: int, n_fake: int, dim: int):
    import numpy as np
    from pytorch_fid.fid_score import calculate_frechet_distance

    real, fake = _inputs(n_real, n_fake, dim)
    stages: dict[str, float] = {}

    def call():
        start = time.perf_counter()
        mu1, sigma1 = np.mean(real, axis=0), np.cov(real, rowvar=False)
        mu2, sigma2 = np.mean(fake, axis=0), np.cov(fake, rowvar=False)
        stages["statistics_s"] = time.perf_counter() - start
        value = float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2))
        stages["distance_s"] = time.perf_counter() - start - stages["statistics_s"]
        return value

    return call, (lambda value: {"value": value, "stages_s": stages})


def task_attribution(n_real: int, n_fake: int, dim: int):
    """Every pairing of the two sides' statistics with the two sides' distance functions.

    Not a timing: it says which step the values' difference comes from.
    """
    import numpy as np
    from pytorch_fid.fid_score import calculate_frechet_distance

    from ganaudit.metrics.fid import features_to_statistics, statistics_to_frechet_distance

    real, fake = _inputs(n_real, n_fake, dim)

    def call():
        stats = {"ganaudit": features_to_statistics(real) + features_to_statistics(fake),
                 "pytorch-fid": (np.mean(real, axis=0), np.cov(real, rowvar=False),
                                 np.mean(fake, axis=0), np.cov(fake, rowvar=False))}
        return {f"{s} statistics, {d} distance": float(func(*stats[s]))
                for s in stats
                for d, func in (("ganaudit", statistics_to_frechet_distance),
                                ("pytorch-fid", calculate_frechet_distance))}

    return call


def tables(params: dict, res: dict, repeats: int, info: dict) -> str:
    title = (f"fd: {params['n_real']} real x {params['n_fake']} fake, {params['dim']}-d float32, "
             f"{repeats} interleaved runs per side\n{machine_line(info)}")
    rows = []
    for side in ("ganaudit", "pytorch-fid"):
        s, stages = res[side], res["stages_s"][side]
        rows.append([side, secs(s["wall_s_best"]), secs(s["wall_s_median"]), secs(stages["statistics_s"]),
                     secs(stages["distance_s"]), gb(s["peak_rss_bytes"]), repr(res["values"][side])])
    main = format_table(title, ["side", "wall best", "wall median", "statistics", "distance", "peak RSS", "value"],
                        rows)
    target_rows = [
        ["time ratio (best)", f"{res['time_ratio_best']:.3f}", f"<= {TIME_TARGET}",
         "yes" if res["time_ratio_best"] <= TIME_TARGET else "NO"],
        ["time ratio (median)", f"{res['time_ratio_median']:.3f}", f"<= {TIME_TARGET}",
         "yes" if res["time_ratio_median"] <= TIME_TARGET else "NO"],
        ["relative difference", f"{res['relative_difference']:.2e}", f"<= {REL_DIFF_TARGET:.0e}",
         "yes" if res["relative_difference"] <= REL_DIFF_TARGET else "NO"],
        ["peak RSS ratio", f"{res['peak_ratio']:.3f}", "", ""],
    ]
    figures = format_table("ganaudit / pytorch-fid", ["figure", "value", "target", "met"], target_rows)
    reference = res["values"]["ganaudit"]
    attribution = format_table("where the difference comes from (each pairing of statistics and distance)",
                               ["statistics, distance", "value", "relative to ganaudit's value"],
                               [[name, repr(v), f"{abs(v - reference) / abs(reference):.2e}"]
                                for name, v in res["attribution"].items()])
    return "\n\n".join([main, figures, attribution])


def main(argv: list[str] | None = None) -> int:
    args = make_parser(__doc__, repeats=2).parse_args(argv)
    params = QUICK if args.quick else FULL
    waited = wait_for_quiet(args.wait_quiet)
    script = Path(__file__).resolve()
    runs = interleaved({"ganaudit": (script, "task_ganaudit", params),
                        "pytorch-fid": (script, "task_pytorch_fid", params)}, args.repeats)
    res = {"runs": runs, **{side: summary(r) for side, r in runs.items()}}
    best = {side: min(r, key=lambda x: x["wall_s"]) for side, r in runs.items()}
    res["values"] = {side: b["result"]["value"] for side, b in best.items()}
    res["stages_s"] = {side: b["result"]["stages_s"] for side, b in best.items()}
    res["values_repeatable"] = all(len({x["result"]["value"] for x in r}) == 1 for r in runs.values())
    ours, peer = res["values"]["ganaudit"], res["values"]["pytorch-fid"]
    res["relative_difference"] = abs(ours - peer) / abs(peer)
    res["time_ratio_best"] = res["ganaudit"]["wall_s_best"] / res["pytorch-fid"]["wall_s_best"]
    res["time_ratio_median"] = res["ganaudit"]["wall_s_median"] / res["pytorch-fid"]["wall_s_median"]
    res["peak_ratio"] = res["ganaudit"]["peak_rss_bytes"] / res["pytorch-fid"]["peak_rss_bytes"]
    res["attribution"] = run_isolated(script, "task_attribution", params)["result"]
    info = machine_info()
    table = tables(params, res, args.repeats, info)
    print(table)
    write_json(args.out or default_out("fd", args.quick), "fd", params, res, table, waited)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
