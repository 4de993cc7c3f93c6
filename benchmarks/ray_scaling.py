"""--engine ray on this machine: each stage with the local engine, then a Ray cluster of 1 and 2 workers.

A training set of procedural 32×32 images (PNG files, made from a seed) is embedded by a
TorchScript conv embedder of about 0.3 GFLOP an image (a stand-in for a neural embedder's cost
that needs no weights), the generated samples of a procedural generator are drawn, embedded
under flip+shift with ``pixels-copy`` and searched, and the search alone is timed against the
training copy features. Each configuration runs in a fresh process (its own ``ray.init``):

- ``local``: the local engine's functions, in that process;
- ``ray-1``, ``ray-2``: an in-process Ray cluster on 127.0.0.1 with 1 or 2 CPUs, so 1 or 2
  embedding/sampling actors and as many search actors.

Every figure is wall time; per-image costs are stage time / images. docs/scale.md records the
table and the projection made from it.

    python benchmarks/ray_scaling.py --out benchmarks/results/ray_scaling.json
    python benchmarks/ray_scaling.py --quick --out /tmp/ray_scaling.json   # 300 images, ray-1 only
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARD = 250  # images per shard of the training set


def make_images(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` procedural 32×32 PNGs: a coloured disc on coloured noise, from one seed."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    for i in range(n):
        img = rng.integers(0, 256, (8, 8, 3)).repeat(4, 0).repeat(4, 1).astype(np.float32) * 0.5
        cx, cy, r = rng.uniform(8, 24, 2).tolist() + [rng.uniform(4, 10)]
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.integers(0, 256, 3)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"{i:06d}.png")


def make_models(folder: Path) -> tuple[Path, Path]:
    import torch

    class ConvFeatures(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 48, 5, padding=2)
            self.input_size = 192

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4).flatten(1)

    class Procedural(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.z_dim = 16

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            base = torch.tanh(z[:, :12].reshape(-1, 3, 2, 2))
            return torch.nn.functional.interpolate(base, size=(32, 32), mode="bilinear", align_corners=False)

    embedder, generator = folder / "conv.pt", folder / "procedural.pt"
    torch.jit.script(ConvFeatures()).save(str(embedder))
    torch.jit.script(Procedural()).save(str(generator))
    return embedder, generator


def child(config: str, data: Path, n_samples: int) -> dict:
    """One configuration's stage times (run in a fresh process)."""
    import numpy as np

    from ganaudit.audit import open_generated
    from ganaudit.config import AuditConfig
    from ganaudit.embedders import create_embedder
    from ganaudit.embedders.cache import embed_image_set
    from ganaudit.search.copy_search import CopySearcher, search_source
    from ganaudit.search.index import FlatIndex
    from ganaudit.sources.datasets import open_image_set

    images = open_image_set(data / "train")
    conv_name = f"torchscript:{data / 'conv.pt'}"
    conv = create_embedder(conv_name, "cpu")
    copy = create_embedder("pixels-copy", "cpu")
    copy_feats = embed_image_set(images, copy, 128, None, "copy", False)  # the search's database (not timed)
    audit_config = AuditConfig(train=data / "train", generator=data / "procedural.pt", num_samples=n_samples,
                               embedder="pixels-copy", device="cpu", batch_size=64, engine="ray")
    source = open_generated(audit_config, "cpu")
    out = {"config": config, "n_train": len(images), "n_samples": n_samples}
    rng = np.random.default_rng(1)
    queries = copy_feats[rng.integers(0, len(copy_feats), n_samples * 10)] + 0.01  # samples x variants
    if config == "local":
        t = time.perf_counter()
        embed_image_set(images, conv, 64, None, "embed", False)
        out["embed_train_s"] = time.perf_counter() - t
        index = FlatIndex(copy_feats, copy.spec.metric)
        searcher = CopySearcher(index, copy, ("flip", "shift"), 50)
        t = time.perf_counter()
        search_source(source, searcher, 64, "gen", False)
        out["sample_embed_search_s"] = time.perf_counter() - t
        t = time.perf_counter()
        index.search(queries, 51)
        out["search_only_s"] = time.perf_counter() - t
        return out
    import ray

    from ganaudit.engines.ray import RayEngine, ShardedIndex, embed_shards

    workers = int(config.split("-")[1])
    t = time.perf_counter()
    ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    out["ray_init_s"] = time.perf_counter() - t
    with RayEngine(device="cpu") as engine, tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        stats = embed_shards(engine, images, conv_name, None, conv, 64, Path(cache), "embed", False, chunk_size=SHARD)
        out["embed_train_s"] = time.perf_counter() - t
        out["shards"] = stats["shards"]
        index = ShardedIndex(ray, copy_feats, copy.spec.metric, workers=workers, shard_rows=SHARD)
        searcher = CopySearcher(index, copy, ("flip", "shift"), 50)
        t = time.perf_counter()
        engine.search_generated(source, searcher, 64, "gen", False, 0, audit_config)
        out["sample_embed_search_s"] = time.perf_counter() - t
        t = time.perf_counter()
        index.search(queries, 51)
        out["search_only_s"] = time.perf_counter() - t
        index.close()
    ray.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 training images, 100 samples, ray-1 only")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-samples", type=int, default=1000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), int(args.child[2]))))
        return
    n_train, n_samples = (300, 100) if args.quick else (args.n_train, args.n_samples)
    configs = ["local", "ray-1"] if args.quick else ["local", "ray-1", "ray-2"]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    results = []
    with tempfile.TemporaryDirectory(prefix="ganaudit-ray-bench-") as tmp:
        data = Path(tmp)
        make_images(data / "train", n_train)
        make_models(data)
        for config in configs:
            run = subprocess.run([sys.executable, __file__, "--child", config, str(data), str(n_samples), "--out", "-"],
                                 env=env, capture_output=True, text=True, timeout=3600, cwd=REPO)
            if run.returncode != 0:
                sys.exit(f"{config} failed:\n{run.stderr[-3000:]}")
            row = json.loads(run.stdout.strip().splitlines()[-1])
            for stage, n in (("embed_train", n_train), ("sample_embed_search", n_samples)):
                row[f"{stage}_ms_per_image"] = round(1000 * row[f"{stage}_s"] / n, 3)
            row["search_us_per_query_per_1k_rows"] = round(1e6 * row["search_only_s"] / (n_samples * 10)
                                                          / (n_train / 1000), 3)
            results.append({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
            print(json.dumps(results[-1]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                "platform": platform.platform()},
                                    "shard_rows": SHARD, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
