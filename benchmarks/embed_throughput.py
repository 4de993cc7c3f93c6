"""Embedding throughput, images per second, with decoding's share measured separately.

Writes PNGs into a temporary folder, then measures for each embedder (``pixels``, its copy
descriptor ``pixels-copy`` and ``inception`` by default):

- ``decode``: decoding the folder alone (``ImageSet.batches``: PIL in a thread pool);
- ``compute``: the embedder alone on already-decoded batches (resize, normalise, network);
- ``end_to_end``: ``embed_image_set`` without a cache, decoding overlapped with compute, as
  ``ganaudit check`` embeds a training set.

``decode_share`` is decode time / (decode + compute) time: the fraction of the serial work
that is decoding. ``inception``, ``dinov2-*`` and ``sscd`` run with randomly initialised weights (He init, so that
activations stay O(1): the same FLOPs and memory traffic as the real weights, no denormals);
no weight file is needed. Networks run as the embedders run them: float32, channels_last,
inference mode (autocast only on CUDA). Each figure is the best of ``--repeats`` runs, since
other processes can only slow a run down.

    python benchmarks/embed_throughput.py --out benchmarks/results/embed_throughput_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ganaudit.embedders import create_embedder  # noqa: E402
from ganaudit.embedders.cache import embed_image_set  # noqa: E402
from ganaudit.sources.datasets import open_image_set  # noqa: E402


def write_pngs(folder: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` RGB PNGs of ``size``², smooth noise (compresses like photographs, not like white noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        coarse = rng.integers(0, 256, size=(size // 8, size // 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
        image.save(folder / f"{i:05d}.png")
    return folder


def random_inception(device: torch.device):
    """The inception embedder with random weights (no weight file)."""
    from ganaudit.embedders.inception import InceptionEmbedder
    from ganaudit.embedders.inception_net import FIDInceptionV3

    torch.manual_seed(0)
    network = FIDInceptionV3()
    for m in network.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return InceptionEmbedder(network, device, None)


def random_dinov2(name: str, device: torch.device):
    """A DINOv2 embedder (``dinov2-vits14`` / ``-vitb14`` / ``-vitl14``) with random weights of the real shapes."""
    from ganaudit.embedders.dinov2 import DinoV2Embedder, build_network

    torch.manual_seed(0)
    return DinoV2Embedder(name, build_network(name), device, None)


def random_sscd(device: torch.device):
    """The sscd embedder's network shape (ResNet-50 trunk, GeM pooling, 512-d projection, as
    ``sscd_disc_mixup``) with random weights, scripted as the real file is."""
    import torchvision

    from ganaudit.embedders.sscd import SSCDEmbedder

    class GeM(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.clamp(min=1e-6).pow(3.0).mean(dim=(2, 3)).pow(1.0 / 3.0)

    torch.manual_seed(0)
    trunk = torchvision.models.resnet50(weights=None)
    trunk.fc, trunk.avgpool = torch.nn.Identity(), torch.nn.Identity()
    body = torch.nn.Sequential(*list(trunk.children())[:-2], GeM(), torch.nn.Linear(2048, 512)).eval()
    return SSCDEmbedder(torch.jit.script(body), device, None)


def make_embedder(name: str, device: torch.device):
    """The registry's embedder ``name``; networks with random weights of the real shapes (no files)."""
    if name == "inception":
        return random_inception(device)
    if name.startswith("dinov2-"):
        return random_dinov2(name, device)
    if name == "sscd":
        return random_sscd(device)
    return create_embedder(name, device)


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(name: str, folder: Path, batch_size: int, repeats: int, device: torch.device, decode_s: float) -> dict:
    embedder = make_embedder(name, device)
    images = open_image_set(folder)
    batches = [batch for _, batch in images.batches(batch_size)]
    n = sum(len(b) for b in batches)
    embedder.embed(batches[0])  # warm-up: first-call allocations and kernel selection

    def compute():
        for batch in batches:
            embedder.embed(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()

    compute_s = best_of(repeats, compute)
    end_to_end_s = best_of(repeats, lambda: embed_image_set(open_image_set(folder), embedder, batch_size,
                                                            None, name, False))
    return {
        "embedder": name, "dim": embedder.spec.dim, "input_size": list(embedder.spec.input_size),
        "n_images": n, "batch_size": batch_size,
        "decode_img_s": round(n / decode_s, 1), "compute_img_s": round(n / compute_s, 2),
        "end_to_end_img_s": round(n / end_to_end_s, 2),
        "decode_share": round(decode_s / (decode_s + compute_s), 4),
        "seconds": {"decode": round(decode_s, 4), "compute": round(compute_s, 4), "end_to_end": round(end_to_end_s, 4)},
    }


def machine(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "device": str(device), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "precision": "float32, channels_last" if device.type == "cpu" else "autocast on CUDA per spec"}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if hasattr(os, "getloadavg"):
        info["load_average_before"] = [round(v, 2) for v in os.getloadavg()]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def print_table(rows: list[dict]) -> None:
    header = f"{'embedder':<10} {'input':>8} {'batch':>5} {'decode img/s':>13} {'compute img/s':>14} {'end-to-end img/s':>17} {'decode share':>13}"
    print(header)
    print("-" * len(header))
    for r in rows:
        size = f"{r['input_size'][0]}x{r['input_size'][1]}"
        print(f"{r['embedder']:<10} {size:>8} {r['batch_size']:>5} {r['decode_img_s']:>13} {r['compute_img_s']:>14} "
              f"{r['end_to_end_img_s']:>17} {r['decode_share']:>12.1%}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="write the results here as JSON")
    parser.add_argument("--embedders", default="pixels,pixels-copy,inception",
                        help="comma list (default pixels,pixels-copy,inception)")
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=128, help="side of the PNGs on disk (default 128)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    info = machine(device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_pngs(Path(tmp) / "pngs", args.n_images, args.image_size)
        decode_s = best_of(args.repeats, lambda: [None for _ in open_image_set(folder).batches(args.batch_size)])
        for name in args.embedders.split(","):
            rows.append(measure(name.strip(), folder, args.batch_size, args.repeats, device, decode_s))
    print(f"{info['cpu']}, {info['torch_threads']} threads, torch {info['torch']}, {info['precision']}; "
          f"{args.n_images} PNGs of {args.image_size}x{args.image_size}; best of {args.repeats}")
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "embed_throughput", "machine": info, "image_size": args.image_size,
              "repeats": args.repeats, "results": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
