"""leak-search: k-NN of generated features among training features, exact and IVF.

10k generated x 200k training features, 1024-d float32 standard normal, k = 10, Euclidean
(``metric="l2"``). The first 10% of the generated rows are planted near-copies (a training
row plus N(0, 0.1²) noise, distance about 3 against about 44 to a random neighbour): the
leaks a search exists to find, on which IVF's recall is measured separately.

Sides, each in a fresh process, the exact ones interleaved:

- ``GEMM floor``: the float32 product generated·trainingᵀ (``Nq·Nb·D`` multiply-adds) as
  plain tiled GEMM (``_common.gemm_floor_call``): what exact search cannot go below;
- ``exact``: ``build_index(train, kind="flat")`` then one ``search`` of all queries;
- ``exact, batches``: the same index searched 128 queries at a time, as ``ganaudit check``
  searches one batch of generated images at a time;
- ``IVF``: ``build_index(train, kind="ivf")`` (k-means training + adding) then one search;
  recall@1 is the fraction of queries whose first IVF result is the exact nearest row. The
  build includes writing the index to a cache folder;
- ``IVF, index from the cache``: the same call in a new process, reading that file back (what
  a second audit against the same training set pays instead of the k-means).

Target (issue 9): exact search within 1.2x of the floor.

    python benchmarks/leak_search.py --out benchmarks/results/leak_search.json
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from _common import (GB, default_out, features, format_table, gb, gemm_floor_call, interleaved, machine_info,
                     machine_line, make_parser, run_isolated, secs, summary, wait_for_quiet, write_json)

FLOOR_TARGET = 1.2
PLANTED_FRACTION, PLANT_NOISE = 0.1, 0.1
FULL = {"n_queries": 10_000, "n_train": 200_000, "dim": 1024, "k": 10, "batch": 128}
QUICK = {"n_queries": 500, "n_train": 10_000, "dim": 128, "k": 10, "batch": 128}


def _inputs(n_queries: int, n_train: int, dim: int):
    """Training features, and queries whose first 10% are near-copies of known training rows."""
    train = features(n_train, dim, seed=0)
    queries = features(n_queries, dim, seed=1)
    sources = _planted_sources(n_queries, n_train)
    queries[: len(sources)] = train[sources] + PLANT_NOISE * features(len(sources), dim, seed=3)
    return train, queries


def _planted_sources(n_queries: int, n_train: int) -> np.ndarray:
    """The training rows that the first 10% of the queries are near-copies of."""
    return np.random.default_rng(2).choice(n_train, int(n_queries * PLANTED_FRACTION), replace=False)


def _search_task(n_queries: int, n_train: int, dim: int, k: int, kind: str, batch: int | None, ids_out: str,
                 cache_dir: str | None = None):
    import faiss  # noqa: F401  (keep the import out of the timing)

    from ganaudit.search.index import build_index

    train, queries = _inputs(n_queries, n_train, dim)
    stages: dict[str, float] = {}

    def call():
        start = time.perf_counter()
        index = build_index(train, "l2", kind=kind, seed=0, cache_dir=cache_dir)
        stages["build_s"] = time.perf_counter() - start
        stages["cached"] = index.cached
        step = batch or n_queries
        parts = [index.search(queries[i : i + step], k)[1] for i in range(0, n_queries, step)]
        stages["search_s"] = time.perf_counter() - start - stages["build_s"]
        return np.concatenate(parts)

    def report(ids):
        np.save(ids_out, ids)
        return stages

    return call, report


def task_exact(**params):
    return _search_task(kind="flat", batch=None, **params)


def task_exact_batches(batch: int, **params):
    return _search_task(kind="flat", batch=batch, **params)


def task_ivf(**params):
    """IVF built from scratch (k-means), then written to ``cache_dir`` (timed as part of the build)."""
    return _search_task(kind="ivf", batch=None, **params)


def task_ivf_cached(**params):
    """IVF read back from the index cache ``task_ivf`` wrote: what a second audit pays."""
    return _search_task(kind="ivf", batch=None, **params)


def task_floor(n_queries: int, n_train: int, dim: int, k: int, ids_out: str = ""):
    train, queries = _inputs(n_queries, n_train, dim)
    return gemm_floor_call([(queries, train)])


def recall(ids: np.ndarray, exact: np.ndarray, rows: slice) -> float:
    return float(np.mean(ids[rows, 0] == exact[rows, 0]))


def run(params: dict, repeats: int, tmp: Path) -> dict:
    script = Path(__file__).resolve()
    base = {key: params[key] for key in ("n_queries", "n_train", "dim", "k")}
    ids = {name: str(tmp / f"{name}.npy") for name in ("exact", "exact_batches", "ivf", "ivf_cached")}
    runs = interleaved({
        "floor": (script, "task_floor", base),
        "exact": (script, "task_exact", {**base, "ids_out": ids["exact"]}),
        "exact_batches": (script, "task_exact_batches", {**base, "batch": params["batch"],
                                                         "ids_out": ids["exact_batches"]}),
    }, repeats)
    cache = str(tmp / "index-cache")
    for name in ("ivf", "ivf_cached"):
        runs[name] = [run_isolated(script, f"task_{name}", {**base, "ids_out": ids[name], "cache_dir": cache})]
        print(f"  [{name}] {runs[name][0]['wall_s']:.2f} s wall, peak {runs[name][0]['peak_rss_bytes'] / GB:.3f} GB")
    ivf, ivf_cached = runs["ivf"][0], runs["ivf_cached"][0]
    exact, ivf_ids = np.load(ids["exact"]), np.load(ids["ivf"])
    sources = _planted_sources(params["n_queries"], params["n_train"])
    planted = len(sources)
    res = {"runs": runs, **{name: summary(r) for name, r in runs.items()}}
    macs = runs["floor"][0]["result"]["multiply_adds"]
    res.update({
        "floor_engine": runs["floor"][0]["result"]["engine"], "multiply_adds": macs,
        "floor_gflops": 2 * macs / res["floor"]["wall_s_best"] / 1e9,
        "exact_ratio_best": res["exact"]["wall_s_best"] / res["floor"]["wall_s_best"],
        "exact_search_ratio_best": min(r["result"]["search_s"] for r in runs["exact"]) / res["floor"]["wall_s_best"],
        "exact_batches_ratio_best": res["exact_batches"]["wall_s_best"] / res["floor"]["wall_s_best"],
        "batches_agree_with_exact": bool(np.array_equal(np.load(ids["exact_batches"]), exact)),
        "exact_finds_planted": float(np.mean(exact[:planted, 0] == sources)),
        "ivf_recall_at_1": recall(ivf_ids, exact, slice(None)),
        "ivf_recall_at_1_planted": recall(ivf_ids, exact, slice(0, planted)),
        "ivf_recall_at_1_unplanted": recall(ivf_ids, exact, slice(planted, None)),
        "ivf_stages_s": ivf["result"],
        "ivf_cached_stages_s": ivf_cached["result"],
        "ivf_cache_was_read": bool(ivf_cached["result"]["cached"]) and not ivf["result"]["cached"],
        "ivf_cached_ids_equal": bool(np.array_equal(np.load(ids["ivf_cached"]), ivf_ids)),
        "exact_stages_s": min(runs["exact"], key=lambda r: r["wall_s"])["result"],
    })
    res["ivf_speedup_search"] = res["exact_stages_s"]["search_s"] / ivf["result"]["search_s"]
    res["ivf_speedup_total"] = res["exact"]["wall_s_best"] / ivf["wall_s"]
    return res


def tables(params: dict, res: dict, repeats: int, info: dict) -> str:
    title = (f"leak-search: {params['n_queries']} generated x {params['n_train']} training, {params['dim']}-d "
             f"float32, k={params['k']}, l2; {repeats} interleaved runs of the exact sides\n{machine_line(info)}")
    ex, ivf, cached = res["exact_stages_s"], res["ivf_stages_s"], res["ivf_cached_stages_s"]
    rows = [
        [f"GEMM floor ({res['floor_engine']})", secs(res["floor"]["wall_s_best"]), "-", "-",
         f"{res['floor_gflops']:.1f}", gb(res["floor"]["peak_rss_bytes"]), "1.000"],
        ["exact (flat)", secs(res["exact"]["wall_s_best"]), secs(ex["build_s"]), secs(ex["search_s"]), "-",
         gb(res["exact"]["peak_rss_bytes"]), f"{res['exact_ratio_best']:.3f}"],
        [f"exact, {params['batch']}-query batches", secs(res["exact_batches"]["wall_s_best"]), "-", "-", "-",
         gb(res["exact_batches"]["peak_rss_bytes"]), f"{res['exact_batches_ratio_best']:.3f}"],
        ["IVF", secs(res["ivf"]["wall_s_best"]), secs(ivf["build_s"]), secs(ivf["search_s"]), "-",
         gb(res["ivf"]["peak_rss_bytes"]), f"{res['ivf']['wall_s_best'] / res['floor']['wall_s_best']:.3f}"],
        ["IVF, index from the cache", secs(res["ivf_cached"]["wall_s_best"]), secs(cached["build_s"]),
         secs(cached["search_s"]), "-", gb(res["ivf_cached"]["peak_rss_bytes"]),
         f"{res['ivf_cached']['wall_s_best'] / res['floor']['wall_s_best']:.3f}"],
    ]
    main = format_table(title, ["side", "wall best", "build", "search", "GFLOP/s", "peak RSS", "/ floor"], rows)
    target_rows = [
        ["exact / floor (build + search)", f"{res['exact_ratio_best']:.3f}", f"<= {FLOOR_TARGET}",
         "yes" if res["exact_ratio_best"] <= FLOOR_TARGET else "NO"],
        ["exact search alone / floor", f"{res['exact_search_ratio_best']:.3f}", "", ""],
        ["IVF speed-up, search", f"{res['ivf_speedup_search']:.1f}x", "", ""],
        ["IVF speed-up, build + search", f"{res['ivf_speedup_total']:.2f}x", "", ""],
        ["IVF recall@1, all queries", f"{res['ivf_recall_at_1']:.4f}", "", ""],
        ["IVF recall@1, planted copies", f"{res['ivf_recall_at_1_planted']:.4f}", "", ""],
        ["IVF recall@1, other queries", f"{res['ivf_recall_at_1_unplanted']:.4f}", "", ""],
        ["exact finds planted sources", f"{res['exact_finds_planted']:.4f}", "", ""],
        ["batched ids == one-call ids", "yes" if res["batches_agree_with_exact"] else "NO", "", ""],
        ["IVF read from the cache", "yes" if res["ivf_cache_was_read"] else "NO", "", ""],
        ["cached IVF ids == built IVF ids", "yes" if res["ivf_cached_ids_equal"] else "NO", "", ""],
    ]
    return main + "\n\n" + format_table("figures", ["figure", "value", "target", "met"], target_rows)


def main(argv: list[str] | None = None) -> int:
    args = make_parser(__doc__, repeats=2).parse_args(argv)
    params = QUICK if args.quick else FULL
    waited = wait_for_quiet(args.wait_quiet)
    with tempfile.TemporaryDirectory(prefix="ganaudit-leak-") as tmp:
        res = run(params, args.repeats, Path(tmp))
    info = machine_info()
    table = tables(params, res, args.repeats, info)
    print(table)
    write_json(args.out or default_out("leak_search", args.quick), "leak-search", params, res, table, waited)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
