"""hard-edits: recall of harder planted copies and the false-flag rate, at 32, 64 and 128 px (issue 16).

Planted ground truth from images that ship with packages: crops of the photos in
``skimage.data`` and ``sklearn.datasets.load_sample_images`` (colour and grey), and
``sklearn.datasets.load_digits`` digits, all resized to the set's size. Crops are drawn so
that no two overlap much (box IoU at most ``MAX_IOU`` in the same photo) and none is nearly
flat, so the novel images are not copies of training images by accident.

Per size, deterministic from ``--seed``:

- ``train``: ``n_train`` images; ``holdout``: ``n_holdout`` other images of the same kinds,
  of which ``dup_fraction`` are near-duplicates of training images (the same photo box
  moved by a few per cent and re-encoded, or the same digit), as real splits have them;
- ``samples``: ``n_novel`` further images (non-copies: the false-flag rate is measured on
  them) and ``per_kind`` edited copies of training images for each kind in ``KINDS``.

Then ``ganaudit.audit`` runs on the three folders with the default ``pixels`` embedder and
its copy descriptor, and the table gives, per kind, the fraction of its copies flagged
(recall) and the fraction of those naming the training image they copy; and the fraction of
novel samples flagged. The target is recall >= 0.9 for every kind and a false-flag rate at
most alpha + 0.01.

    python benchmarks/hard_edits.py --out benchmarks/results/hard_edits.json
"""
from __future__ import annotations

import argparse
import io
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:  # measure the working tree, installed or not
    sys.path.insert(0, str(REPO))

MAX_IOU = 0.2  # crops of one photo overlap at most this much (box intersection over union)
MIN_STD = 0.04  # crops flatter than this (std of grey levels in [0, 1]) are not drawn
CROP_SIDES = (0.12, 0.45)  # crop side as a fraction of the photo's shorter side
DIGIT_SHARE = 0.2  # share of every split that is digits
TARGET_RECALL = 0.9

# Single edits: name -> (needs a colour source, function(image uint8 HxWx3, rng) -> uint8).
# Parameters are drawn per copy; the ranges are the ("up to ~15% cropped" ...).


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC))


def edit_crop(img, rng):
    """Crop-and-resize: a box of 85-92% of the side at a random position, resized back."""
    h, w = img.shape[:2]
    f = rng.uniform(0.85, 0.92)
    ch, cw = round(h * f), round(w * f)
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return np.asarray(Image.fromarray(img[y : y + ch, x : x + cw]).resize((w, h), Image.BICUBIC))


def edit_rotate(img, rng):
    """Rotation by 4-10 degrees either way about the centre, edges reflected in."""
    from scipy import ndimage

    angle = rng.uniform(4.0, 10.0) * rng.choice([-1, 1])
    out = ndimage.rotate(img.astype(np.float32), angle, axes=(1, 0), reshape=False, order=3, mode="reflect")
    return np.clip(out, 0, 255).round().astype(np.uint8)


def edit_hue(img, rng):
    """Hue rotated by 0.05-0.12 of the colour wheel either way (HSV)."""
    hsv = np.asarray(Image.fromarray(img).convert("HSV")).copy()
    shift = round(rng.uniform(0.05, 0.12) * 256) * rng.choice([-1, 1])
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + shift) % 256
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


def edit_saturation(img, rng):
    """Saturation times 0.3-0.6 or 1.6-2.5 (PIL's colour enhancer)."""
    factor = rng.uniform(0.3, 0.6) if rng.random() < 0.5 else rng.uniform(1.6, 2.5)
    return np.asarray(ImageEnhance.Color(Image.fromarray(img)).enhance(factor))


def edit_grayscale(img, rng):
    """Luminance only (PIL's ``L``), as three equal channels."""
    return np.asarray(Image.fromarray(img).convert("L").convert("RGB"))


def _jpeg(img, quality):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(buf).convert("RGB"))


def edit_jpeg30(img, rng):
    """JPEG at quality 30."""
    return _jpeg(img, 30)


# the kinds the shipped fixtures plant, kept to check that new augmentations cost them nothing
def edit_exact(img, rng):
    return img.copy()


def edit_hflip(img, rng):
    return img[:, ::-1].copy()


def edit_shift(img, rng):
    """Translation by 2-3 pixels per 32 in each direction, edges replicated."""
    unit = img.shape[0] / 32
    dx, dy = (int(round(v * unit)) for v in rng.choice([-3, -2, 2, 3], size=2))
    p = max(abs(dx), abs(dy))
    padded = np.pad(img, ((p, p), (p, p), (0, 0)), mode="edge")
    h, w = img.shape[:2]
    return padded[p - dy : p - dy + h, p - dx : p - dx + w].copy()


def edit_jpeg70(img, rng):
    return _jpeg(img, 70)


def edit_brightness(img, rng):
    return np.clip(img.astype(np.float32) * 1.15, 0, 255).round().astype(np.uint8)


SINGLE = {"crop": edit_crop, "rotate": edit_rotate, "hue": edit_hue, "saturation": edit_saturation,
          "grayscale": edit_grayscale, "jpeg30": edit_jpeg30}
OLD = {"exact": edit_exact, "hflip": edit_hflip, "shift": edit_shift, "jpeg70": edit_jpeg70,
       "brightness": edit_brightness}
PAIRS = (("crop", "rotate"), ("crop", "jpeg30"), ("rotate", "jpeg30"), ("hue", "crop"),
         ("grayscale", "rotate"), ("saturation", "jpeg30"))
COLOUR_EDITS = {"hue", "saturation", "grayscale"}  # need a colour source to change anything
KINDS = [*SINGLE, *("+".join(p) for p in PAIRS), *OLD]


def apply_kind(kind: str, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The edited copy of ``img`` (uint8 HxWx3) for kind ``kind`` (``"a+b"``: ``a`` then ``b``)."""
    for name in kind.split("+"):
        img = (SINGLE | OLD)[name](img, rng)
    return img


def needs_colour(kind: str) -> bool:
    return any(name in COLOUR_EDITS for name in kind.split("+"))


# --------------------------------------------------------------------------------------- sources


def photos() -> list[tuple[str, np.ndarray]]:
    """The photos shipped with scikit-image and scikit-learn, uint8 HxWx3 (grey ones as 3 equal channels)."""
    import skimage.data as data
    from sklearn.datasets import load_sample_images

    out = []
    for name in ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina",
                 "rocket", "camera", "brick", "grass", "gravel", "coins", "clock", "moon", "cell", "page", "text"):
        img = getattr(data, name)()
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        out.append((name, np.ascontiguousarray(img[..., :3])))
    sample = load_sample_images()
    out += [(Path(f).stem, img) for f, img in zip(sample.filenames, sample.images)]
    return out


@dataclass
class Crop:
    photo: int
    box: tuple[int, int, int]  # y, x, side


def _iou(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    (ay, ax, asz), (by, bx, bsz) = a, b
    ih = max(0, min(ay + asz, by + bsz) - max(ay, by))
    iw = max(0, min(ax + asz, bx + bsz) - max(ax, bx))
    inter = ih * iw
    return inter / (asz * asz + bsz * bsz - inter)


def draw_crops(pics: list[np.ndarray], n: int, rng: np.random.Generator, max_tries: int = 200_000) -> list[Crop]:
    """``n`` square crops spread over the photos, pairwise IoU at most ``MAX_IOU`` within a photo."""
    boxes: list[list[tuple[int, int, int]]] = [[] for _ in pics]
    crops: list[Crop] = []
    for _ in range(max_tries):
        if len(crops) == n:
            break
        p = int(rng.integers(len(pics)))
        h, w = pics[p].shape[:2]
        side = int(rng.uniform(*CROP_SIDES) * min(h, w))
        box = (int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1)), side)
        if any(_iou(box, b) > MAX_IOU for b in boxes[p]):
            continue
        y, x, s = box
        if pics[p][y : y + s, x : x + s].std() / 255 < MIN_STD:
            continue
        boxes[p].append(box)
        crops.append(Crop(p, box))
    if len(crops) < n:
        raise RuntimeError(f"only {len(crops)} of {n} crops fit the overlap rule; ask for fewer images")
    return crops


def crop_image(pics, crop: Crop, size: int, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    y, x, s = crop.box
    h, w = pics[crop.photo].shape[:2]
    y = min(max(y + offset[0], 0), h - s)
    x = min(max(x + offset[1], 0), w - s)
    return _resize(pics[crop.photo][y : y + s, x : x + s], size)


def digit_images(size: int) -> np.ndarray:
    """sklearn's 1,797 digits (8x8, 0-16), white on black, resized to ``size``, uint8 (N, size, size, 3)."""
    from sklearn.datasets import load_digits

    d = (load_digits().images * (255 / 16)).round().astype(np.uint8)
    return np.stack([np.repeat(_resize(img, size)[..., None], 3, axis=2) for img in d])


def is_colour(img: np.ndarray) -> bool:
    """Mean chroma (max - min over channels) of at least 0.06."""
    x = img.astype(np.float32) / 255
    return float((x.max(axis=2) - x.min(axis=2)).mean()) >= 0.06


# --------------------------------------------------------------------------------------- the sets


@dataclass
class PlantedSet:
    train: list[np.ndarray]
    holdout: list[np.ndarray]
    samples: list[np.ndarray]
    kinds: list[str]  # per sample: "novel" or the edit kind
    sources: list[int]  # per sample: the training image it copies, -1 for novel
    holdout_duplicates: list[int]  # holdout indices that near-duplicate a training image


def build_set(size: int, seed: int, n_train: int, n_holdout: int, n_novel: int, per_kind: int,
              dup_fraction: float, kinds: list[str] | None = None) -> PlantedSet:
    """The planted set at ``size`` px (see the module docstring); deterministic in ``seed``."""
    kinds = KINDS if kinds is None else kinds
    rng = np.random.default_rng([seed, size])
    pics = [p for _, p in photos()]
    n_all = n_train + n_holdout + n_novel
    n_digits = int(round(DIGIT_SHARE * n_all))
    crops = draw_crops(pics, n_all - n_digits, np.random.default_rng(seed))  # the same boxes at every size
    digits = digit_images(size)
    pool = [("crop", c) for c in crops] + [("digit", int(i)) for i in
                                            np.random.default_rng(seed + 1).choice(len(digits), n_digits, replace=False)]
    order = rng.permutation(len(pool))
    pool = [pool[i] for i in order]
    render = lambda item: crop_image(pics, item[1], size) if item[0] == "crop" else digits[item[1]]
    train_items = pool[:n_train]
    hold_items = pool[n_train : n_train + n_holdout]
    novel_items = pool[n_train + n_holdout :]
    train = [render(it) for it in train_items]
    holdout = [render(it) for it in hold_items]
    n_dup = int(round(dup_fraction * n_holdout))
    dup_rows = sorted(int(i) for i in rng.choice(n_holdout, n_dup, replace=False))
    dup_sources = rng.choice(n_train, n_dup, replace=False)
    for row, src in zip(dup_rows, dup_sources):
        kind, item = train_items[src]
        if kind == "crop":  # the same scene framed a little differently, re-encoded
            s = item.box[2]
            offset = tuple(int(v) for v in rng.integers(-s // 25, s // 25 + 1, size=2))
            holdout[row] = _jpeg(crop_image(pics, item, size, offset), 90)
        else:
            holdout[row] = train[src].copy()
    samples = [render(it) for it in novel_items]
    sample_kinds, sample_sources = ["novel"] * len(samples), [-1] * len(samples)
    colour = np.array([is_colour(t) for t in train])
    for kind in kinds:
        eligible = np.flatnonzero(colour) if needs_colour(kind) else np.arange(n_train)
        for src in rng.choice(eligible, per_kind, replace=len(eligible) < per_kind):
            samples.append(apply_kind(kind, train[src], rng))
            sample_kinds.append(kind)
            sample_sources.append(int(src))
    return PlantedSet(train, holdout, samples, sample_kinds, sample_sources, dup_rows)


def write_set(planted: PlantedSet, root: Path) -> dict[str, Path]:
    """PNG folders ``train``, ``holdout``, ``samples`` under ``root``; names sort in index order."""
    folders = {}
    for split in ("train", "holdout", "samples"):
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(getattr(planted, split)):
            Image.fromarray(img).save(folder / f"{i:05d}.png")
        folders[split] = folder
    return folders


def score_audit(planted: PlantedSet, result: dict) -> dict:
    """Recall per kind (and how many name the right training image), and the false-flag rate."""
    flagged = {int(Path(e["sample_path"]).stem): int(Path(e["train_path"]).stem)
               for e in result["memorization"]["flagged"]}
    kinds = np.array(planted.kinds)
    rows = {}
    for kind in dict.fromkeys(planted.kinds):
        idx = np.flatnonzero(kinds == kind)
        hit = [i for i in idx if i in flagged]
        right = [i for i in hit if flagged[i] == planted.sources[i]]
        rows[kind] = {"n": len(idx), "flagged": len(hit), "rate": len(hit) / len(idx),
                      "right_source": len(right)}
    return rows


def run_size(size: int, params: dict, seed: int, alpha: float, work: Path, tta=None) -> dict:
    from ganaudit.audit import audit  # (ganaudit.audit is the submodule once cli or audit is imported)
    from ganaudit.config import AuditConfig

    started = time.perf_counter()
    planted = build_set(size, seed, **params)
    folders = write_set(planted, work / f"{size}px")
    built = time.perf_counter() - started
    config = AuditConfig(train=str(folders["train"]), holdout=str(folders["holdout"]),
                         samples=str(folders["samples"]), alpha=alpha, seed=seed, device="cpu", progress=False,
                         no_cache=True, **({"tta": tta} if tta is not None else {}))
    result = audit(config).to_dict()
    rows = score_audit(planted, result)
    mem = result["memorization"]
    return {"size": size, "rows": rows, "build_s": built, "audit_s": time.perf_counter() - started - built,
            "n_train": len(planted.train), "n_holdout": len(planted.holdout),
            "holdout_duplicates": len(planted.holdout_duplicates),
            "threshold": mem["threshold"], "calibration": mem["calibration"],
            "copy_embedder": mem["copy_embedder"], "timings": result["timings"]}


FULL = {"n_train": 400, "n_holdout": 250, "n_novel": 400, "per_kind": 30, "dup_fraction": 0.03}
QUICK = {"n_train": 200, "n_holdout": 120, "n_novel": 150, "per_kind": 10, "dup_fraction": 0.03}


def table(runs: list[dict], alpha: float) -> str:
    sizes = [r["size"] for r in runs]
    head = f"{'kind':<22}" + "".join(f"{f'{s} px':>16}" for s in sizes)
    lines = [head, "-" * len(head)]
    for kind in runs[0]["rows"]:
        if kind == "novel":
            continue
        cells = []
        for r in runs:
            row = r["rows"][kind]
            mark = "" if row["rate"] >= TARGET_RECALL else " *"
            cells.append(f"{row['flagged']:>3}/{row['n']:<3} {row['rate']:.2f}{mark:<2}")
        lines.append(f"{kind:<22}" + "".join(f"{c:>16}" for c in cells))
    cells = []
    for r in runs:
        row = r["rows"]["novel"]
        mark = "" if row["rate"] <= alpha + 0.01 else " *"
        cells.append(f"{row['flagged']:>3}/{row['n']:<3} {row['rate']:.3f}{mark:<2}")
    lines.append("-" * len(head))
    lines.append(f"{'false flags (novel)':<22}" + "".join(f"{c:>16}" for c in cells))
    lines.append(f"* misses the target: recall >= {TARGET_RECALL}, false flags <= alpha + 0.01 = {alpha + 0.01:g}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sets (a smoke run)")
    parser.add_argument("--sizes", default=None, help="comma list of image sizes (default 32,64,128; --quick: 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--dup-fraction", type=float, default=None,
                        help="share of holdout images that near-duplicate training images (default 0.03)")
    parser.add_argument("--tta", default=None, help="comma list of test-time augmentations (default: the descriptor's)")
    parser.add_argument("--out", default=str(BENCH_DIR / "results" / "hard_edits.json"))
    args = parser.parse_args(argv)
    params = dict(QUICK if args.quick else FULL)
    if args.dup_fraction is not None:
        params["dup_fraction"] = args.dup_fraction
    tta = None if args.tta is None else tuple(t for t in args.tta.split(",") if t and t != "none")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        sizes = args.sizes or ("32" if args.quick else "32,64,128")
        for size in (int(s) for s in sizes.split(",")):
            runs.append(run_size(size, params, args.seed, args.alpha, Path(tmp), tta))
            r = runs[-1]
            print(f"  [{size} px] built in {r['build_s']:.1f} s, audited in {r['audit_s']:.1f} s", flush=True)
            print(table([r], args.alpha), flush=True)
    text = table(runs, args.alpha)
    tta_names = runs[0]["copy_embedder"].get("tta")
    header = (f"hard-edits: {params['n_train']} train, {params['n_holdout']} holdout "
              f"({params['dup_fraction']:.0%} near-duplicates of train), {params['n_novel']} novel samples, "
              f"{params['per_kind']} copies per kind; alpha {args.alpha:g}; copy embedder "
              f"{runs[0]['copy_embedder']['name']}, tta {','.join(tta_names or [])}")
    print(header)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"params": params | {"seed": args.seed, "alpha": args.alpha},
                               "results": runs, "table": header + "\n" + text}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
