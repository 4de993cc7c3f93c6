"""copy passes: forward passes per generated sample and their cost, per embedder, old and new default.

Copy search embeds every test-time augmentation of each sample with the copy embedder. For
each embedder this measures, on a batch of the shipped fixture's 32×32 training images
searched against the others:

- ``img/s``: the embedder alone (resize, normalise, network) on CPU, best of ``--repeats``;
  networks with randomly initialised weights of the real shapes (no weight files needed:
  ``benchmarks/embed_throughput.make_embedder``);
- passes per sample, counted (``Embedder.images_embedded``) while a ``CopySearcher`` embeds
  and searches the batch, for two settings: ``own`` (the network as its own copy descriptor
  with its spec's ``copy_tta``: the default before issue 19, and still the default on a GPU)
  and ``cpu-default`` (what ``--copy-embedder auto`` now resolves to on a CPU);
- seconds of embedding per generated sample that follow: network passes / network img/s,
  plus the copy embedder's share when it is another one.

With ``--recall`` it also audits the leaky fixture (``fixtures/generators/leaky.pt2``,
1000 samples, holdout calibration) with the ``pixels`` embedder and counts the planted
copies caught per transformation: the CPU default's copy search is exactly that one
(``tests/test_copy_passes.py`` checks that an audit with a network flags the same samples).

    nice -n 10 python benchmarks/copy_passes.py [--recall] --out benchmarks/results/copy_passes.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from embed_throughput import machine, make_embedder  # noqa: E402

from ganaudit.embedders import auto_copy_embedder, create_embedder  # noqa: E402
from ganaudit.search.copy_search import CopySearcher  # noqa: E402
from ganaudit.search.index import FlatIndex  # noqa: E402
from ganaudit.sources.datasets import open_image_set  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "fixtures" / "data" / "train"
NETWORKS = ("inception", "dinov2-vits14", "dinov2-vitb14", "sscd")


def fixture_images(n: int) -> torch.Tensor:
    images = open_image_set(TRAIN)
    rows = np.linspace(0, len(images) - 1, n).astype(np.int64)
    return torch.cat([b for _, b in images.batches(n, rows)])


def img_per_s(embedder, images: torch.Tensor, batch: int, repeats: int) -> float:
    embedder.embed(images[:batch])  # warm-up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(images), batch):
            embedder.embed(images[i : i + batch])
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def passes(embedder, copy_embedder, queries: torch.Tensor, database: torch.Tensor) -> dict:
    """Images through each embedder per query while a CopySearcher embeds and searches them."""
    train_features = copy_embedder.embed(database)
    index = FlatIndex(train_features, copy_embedder.spec.metric)
    searcher = CopySearcher(index, copy_embedder, copy_embedder.spec.copy_tta, copy_k=3,
                            embedder=None if copy_embedder is embedder else embedder, train_features=train_features)
    before = {id(e): e.images_embedded for e in (embedder, copy_embedder)}
    _, _, matches = searcher(queries)
    per = {e.spec.name: (e.images_embedded - before[id(e)]) / len(queries)
           for e in {id(e): e for e in (embedder, copy_embedder)}.values()}
    network = sum(v for e, v in ((embedder, per[embedder.spec.name]),) if e.is_network)
    if copy_embedder is not embedder and copy_embedder.is_network:
        network += per[copy_embedder.spec.name]
    return {"copy_embedder": copy_embedder.spec.name, "tta": list(copy_embedder.spec.copy_tta),
            "variants": len(matches.names), "passes_per_sample": per, "network_passes_per_sample": network}


def recall_on_leaky() -> dict:
    """Planted copies caught per transformation, leaky fixture, pixels embedder (the CPU default's copy search)."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_fixtures_e2e import NUM_SAMPLES, SEED, _planted_leaks

    from ganaudit.audit import audit
    from ganaudit.config import AuditConfig

    manifest = json.loads((REPO / "fixtures" / "generators" / "leaky_manifest.json").read_text())
    planted = _planted_leaks(manifest)
    config = AuditConfig(generator=REPO / "fixtures" / "generators" / "leaky.pt2", train=TRAIN,
                         holdout=REPO / "fixtures" / "data" / "holdout", num_samples=NUM_SAMPLES, seed=SEED,
                         embedder="pixels", device="cpu", progress=False, no_cache=True)
    result = audit(config)
    flagged = {f["sample_index"] for f in result.memorization["flagged"]}
    by_transform: dict[str, list[int]] = {}
    for i, entry in planted.items():
        caught = by_transform.setdefault(entry["transform"], [0, 0])
        caught[0] += i in flagged
        caught[1] += 1
    return {"copy_embedder": result.memorization["copy_embedder"]["name"],
            "variants": len(result.memorization["copy_embedder"]["variants"]),
            "caught": {t: {"caught": c, "planted": n} for t, (c, n) in sorted(by_transform.items())},
            "false_flags": len(flagged - set(planted)), "n_samples": NUM_SAMPLES}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--embedders", default=",".join(NETWORKS))
    parser.add_argument("--n-images", type=int, default=8, help="images timed per embedder (default 8)")
    parser.add_argument("--queries", type=int, default=4, help="images whose passes are counted (default 4)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--recall", action="store_true", help="also audit the leaky fixture (a few minutes)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: dinov2-vits14 on 2 images, 1 query")
    args = parser.parse_args(argv)
    if args.quick:
        args.embedders, args.n_images, args.queries, args.batch_size, args.repeats = "dinov2-vits14", 2, 1, 2, 1
    device = torch.device("cpu")
    torch.set_grad_enabled(False)
    images = fixture_images(max(args.n_images, args.queries) + 32)
    queries, database = images[: args.queries], images[args.queries :]
    pixels_copy = create_embedder("pixels-copy", device)
    copy_rate = img_per_s(pixels_copy, images, 32, args.repeats)
    rows = []
    for name in args.embedders.split(","):
        embedder = make_embedder(name.strip(), device)
        rate = img_per_s(embedder, images[: args.n_images], args.batch_size, args.repeats)
        auto = auto_copy_embedder(embedder)
        new_copy = embedder if auto == embedder.spec.name else create_embedder(auto, device)
        settings = {"own": passes(embedder, embedder, queries, database),
                    "cpu-default": passes(embedder, new_copy, queries, database)}
        for s in settings.values():
            extra = s["passes_per_sample"].get("pixels-copy", 0) / copy_rate if s["copy_embedder"] == "pixels-copy" else 0
            s["embed_s_per_sample"] = round(s["network_passes_per_sample"] / rate + extra, 3)
        rows.append({"embedder": name, "input_size": list(embedder.spec.input_size), "img_s": round(rate, 2),
                     **settings})
        print(json.dumps(rows[-1]), flush=True)
    header = (f"{'embedder':<14} {'input':>8} {'img/s':>7} | {'own: copy, variants, passes, s/sample':<40} | "
              f"{'CPU default: copy, variants, passes, s/sample':<46}")
    lines = [header, "-" * len(header)]
    for r in rows:
        cell = lambda s: f"{s['copy_embedder']}, {s['variants']}, {s['network_passes_per_sample']:g}, {s['embed_s_per_sample']}"
        size = f"{r['input_size'][0]}x{r['input_size'][1]}"
        lines.append(f"{r['embedder']:<14} {size:>8} {r['img_s']:>7} | {cell(r['own']):<40} | {cell(r['cpu-default']):<46}")
    lines.append(f"pixels-copy: {copy_rate:.0f} img/s")
    table = "\n".join(lines)
    print(table)
    out = {"benchmark": "copy_passes", "machine": machine(device), "pixels_copy_img_s": round(copy_rate, 1),
           "results": rows, "table": table}
    if args.recall:
        out["recall_leaky_fixture"] = recall_on_leaky()
        print(json.dumps(out["recall_leaky_fixture"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
