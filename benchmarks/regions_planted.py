"""regions-planted: region search's false-flag rate and recall over several seeds (issue 17).

One reference of ~100 holdout images gives a conformal threshold whose own false-flag rate
spreads as Beta(j, n + 1 - j) (about alpha ± 0.02 at alpha = 0.05), so one run cannot show
whether the rate is within alpha + 0.01. This script repeats the planted set of
``tests/regions_support.py`` (training cells of nine scikit-image photographs; holdout and
novel images are crops of ten others; planted samples paste a quarter of a training image,
at its own position or moved) for several seeds per size, and records per seed the
threshold, the novel false-flag rate and the recall of both kinds, then the mean false-flag
rate over seeds with its standard error.

    python benchmarks/regions_planted.py --sizes 64 128 --seeds 0 1 2 3 4 --out benchmarks/results/regions_planted.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO, REPO / "tests"):  # the working tree, and the planted sets the tests use
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def run_one(size: int, n_train: int, seed: int, alpha: float, n_holdout: int, n_novel: int, n_planted: int) -> dict:
    from regions_support import ArraySource as _Arrays, planted_sets

    from ganaudit.embedders.pixels import create_tile
    from ganaudit.metrics import copy_stats
    from ganaudit.search import regions as rg
    from ganaudit.search.index import build_index

    started = time.perf_counter()
    sets = planted_sets(size, n_train, n_holdout, n_novel, n_planted, seed=1000 * size + seed)
    emb = create_tile(torch.device("cpu"))
    train = _Arrays(sets["train"])
    tiles = rg.tile_training_set(train, emb, 64)
    searcher = rg.RegionSearcher(build_index(tiles.features, "ip"), tiles, emb, copy_k=50)
    ref, info = rg.reference_regions(train, _Arrays(sets["holdout"]), searcher, 0, 5000, 64, False)
    threshold = copy_stats.calibrate_threshold(ref.score, alpha)
    found = {k: rg.search_regions(_Arrays(sets[k]), searcher, 64, k, False) for k in ("novel", "own", "moved")}
    row = {"size": size, "seed": seed, "n_train": n_train, "n_reference": info["n_reference"],
           "threshold": float(threshold),
           "false_flags": int((found["novel"].score < threshold).sum()), "n_novel": len(found["novel"].score)}
    for kind in ("own", "moved"):
        truth = sets[f"{kind}_truth"]
        m = found[kind]
        row[f"recall_{kind}"] = sum(bool(m.score[i] < threshold and m.train_index[i] == truth[i]["train_index"])
                                    for i in range(len(truth))) / len(truth)
    row["false_flag_rate"] = row["false_flags"] / row["n_novel"]
    row["wall_s"] = round(time.perf_counter() - started, 1)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--quick", action="store_true", help="64 px, one seed, small sets (a smoke run)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "regions_planted.json")
    args = p.parse_args()
    n_train = {64: 200, 128: 120}
    shape = dict(n_holdout=100, n_novel=150, n_planted=25)
    if args.quick:
        args.sizes, args.seeds, shape = [64], [0], dict(n_holdout=40, n_novel=40, n_planted=5)
    rows = []
    for size in args.sizes:
        for seed in args.seeds:
            row = run_one(size, 40 if args.quick else n_train.get(size, 120), seed, args.alpha, **shape)
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for size in args.sizes:
        rates = np.array([r["false_flag_rate"] for r in rows if r["size"] == size])
        mine = [r for r in rows if r["size"] == size]
        summary[str(size)] = {
            "seeds": len(rates), "false_flag_rate_mean": float(rates.mean()),
            "false_flag_rate_se": float(rates.std(ddof=1) / np.sqrt(len(rates))) if len(rates) > 1 else None,
            "recall_own_mean": float(np.mean([r["recall_own"] for r in mine])),
            "recall_moved_mean": float(np.mean([r["recall_moved"] for r in mine])),
            "recall_moved_min": float(np.min([r["recall_moved"] for r in mine])),
        }
    print(json.dumps(summary, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "regions-planted", "alpha": args.alpha,
                                    "results": {"rows": rows, "summary": summary}}, indent=2) + "\n")


if __name__ == "__main__":
    main()
