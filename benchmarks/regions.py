"""Cost of region search (``--regions``) on the shipped fixtures: tiling the training set,
building the tile index, and searching images' tiles (docs/regions.md, docs/benchmarks.md).

    python benchmarks/regions.py --out benchmarks/results/regions.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="200 training images, 16 searched (a smoke run)")
    p.add_argument("--searched", type=int, default=64, help="holdout images searched (default 64)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "regions.json")
    args = p.parse_args()
    from ganaudit.embedders.pixels import create_tile
    from ganaudit.search import regions as rg
    from ganaudit.search.index import build_index
    from ganaudit.sources.datasets import open_image_set

    train = open_image_set(REPO / "fixtures" / "data" / "train")
    holdout = open_image_set(REPO / "fixtures" / "data" / "holdout")
    n_searched = 16 if args.quick else args.searched
    if args.quick:
        train = train.subset(np.arange(200))
        train.size = train.images.size
    emb = create_tile(torch.device("cpu"))
    wall, cpu = time.perf_counter(), time.process_time()
    tiles = rg.tile_training_set(train, emb, 128)
    index = build_index(tiles.features, "ip")
    build = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
    searcher = rg.RegionSearcher(index, tiles, emb, 50)
    wall, cpu = time.perf_counter(), time.process_time()
    found = rg.search_regions(holdout.subset(np.arange(n_searched)), searcher, 64, "regions", False)
    search = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
    results = {
        "train_images": len(train), "image_size": list(train.size), "train_tiles": tiles.n_rows,
        "train_tiles_skipped_flat": tiles.n_skipped, "tile_features_mib": tiles.nbytes / 2**20,
        "build": build, "searched_images": n_searched, "search": search,
        "cpu_s_per_searched_image": search["cpu_s"] / n_searched,
        "queries_per_image": len(found.grid.positions) + rg.REFINE_TILES * (len(rg.refine_offsets(found.grid)) - 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "regions", "results": results}, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
