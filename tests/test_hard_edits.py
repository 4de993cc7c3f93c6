"""Harder edits (issue 16): rotations and crops undone by test-time augmentations, families
calibrated apart, and recall per kind on a small planted set of package-shipped images."""
from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO
from ganaudit.embedders import create_embedder
from ganaudit.search import augment
from ganaudit.search.calibration import Reference, decide_flags, family_scaled_scores, threshold_policy
from ganaudit.search.copy_search import CopySearcher, Matches
from ganaudit.search.index import FlatIndex


def _bench():
    spec = importlib.util.spec_from_file_location("hard_edits", REPO / "benchmarks" / "hard_edits.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("hard_edits", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_rotate_variant_undoes_a_rotation():
    x = F.interpolate(torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)), size=64,
                      mode="bicubic", align_corners=False).clamp(0, 1)
    rotated = augment.affine(x, angle=6)
    back = augment.affine(rotated, angle=-6)
    inner = (slice(None), slice(None), slice(16, 48), slice(16, 48))
    assert (back - x)[inner].abs().mean() < 0.2 * (rotated - x)[inner].abs().mean()


def test_crop_variant_undoes_an_off_centre_crop():
    x = F.interpolate(torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)), size=64,
                      mode="bicubic", align_corners=False).clamp(0, 1)
    # keep 0.86 of the side, the box's centre at (+0.12, -0.06) half-sides: pixels 3.84..58.88 across
    f, u, v = 0.86, 0.12, -0.06
    left, top = round((1 + u - f) * 32), round((1 + v - f) * 32)
    side = round(f * 64)
    copy = F.interpolate(x[..., top : top + side, left : left + side], size=64, mode="bilinear", align_corners=False)
    names = dict(augment.variants(copy, ("crop",)))
    restored = names[f"crop({f:g},{u:+g},{v:+g})"]
    inner = (slice(None), slice(None), slice(top + 2, top + side - 2), slice(left + 2, left + side - 2))
    assert (restored - x)[inner].abs().mean() < 0.25 * (copy - x)[inner].abs().mean()
    assert {augment.family(n) for n, _ in augment.variants(copy, ("flip", "shift", "zoom", "rotate", "crop", "hue"))} == \
        {"aligned", "shift", "geometric", "colour"}


def test_hue_variant_undoes_a_hue_shift_in_the_luminance_descriptor():
    """A copy whose hue was rotated (PIL's HSV, as photo editors do) has another luminance;
    the hue variant nearest the shift gives the source's descriptor back, closer than the copy."""
    from PIL import Image

    x = F.interpolate(torch.rand(4, 3, 6, 6, generator=torch.Generator().manual_seed(2)), size=32,
                      mode="bicubic", align_corners=False).clamp(0, 1)
    shifted = []
    for img in (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8):
        hsv = np.asarray(Image.fromarray(img).convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + 23) % 256  # +0.09 of the wheel
        shifted.append(np.asarray(Image.fromarray(hsv, "HSV").convert("RGB")))
    copy = _tensor(shifted)
    embed = create_embedder("pixels-copy", "cpu").embed
    source = embed(_tensor(list((x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8))))
    restored = dict(augment.variants(copy, ("hue",)))["hue(-0.09)"]
    assert augment.family("hue(-0.09)") == "colour"
    before = 1 - (embed(copy) * source).sum(1)
    after = 1 - (embed(restored) * source).sum(1)
    assert (after < 0.2 * before).all(), (before, after)


def test_family_scaling_keeps_the_false_flag_rate_and_the_aligned_threshold():
    rng = np.random.default_rng(0)
    n, m, alpha = 400, 20_000, 0.05

    def scores(k):  # three families; the later ones are minima over more chances (lower scores)
        base = rng.uniform(0.3, 1.0, (k, 1))
        return np.concatenate([base, np.minimum(base, rng.uniform(0.2, 1.0, (k, 1))),
                               np.minimum(base, rng.uniform(0.1, 1.0, (k, 1)))], axis=1)

    ref, gen = scores(n), scores(m)
    gen_u, ref_u, scales = family_scaled_scores(gen, ref)
    np.testing.assert_allclose(scales, np.quantile(ref, 0.1, axis=0))
    fams = ["aligned", "shift", "geometric"]
    flags = decide_flags(_matches(gen, fams), Reference(_matches(ref, fams), None, {"method": "holdout", "n_reference": n}),
                         threshold_policy(create_embedder("pixels-copy", "cpu").spec, "auto"), alpha, 0.05, 5)
    rate = flags.flagged.mean()
    assert rate <= alpha + 4 * math.sqrt(alpha * (1 - alpha) / n), rate  # conformal: at most alpha, up to noise
    thresholds = flags.calibration["family_thresholds"]
    by_family = np.any([gen[:, f] < thresholds[name] for f, name in enumerate(fams)], axis=0)
    np.testing.assert_array_equal(by_family, flags.flagged)  # the rule read per family
    # the aligned family's bar is not the one the many-chance family would set on its own
    assert thresholds["aligned"] > np.quantile(ref.min(axis=1), alpha)


def _matches(per_family: np.ndarray, families: list[str]) -> Matches:
    k = len(per_family)
    return Matches(per_family.min(axis=1), np.ones(k), np.full(k, np.nan), np.arange(k), np.zeros(k, np.int16),
                   ["identity"], family_score=per_family, families=families)


# Kinds whose recall the small set must show, at least (the benchmark's full sets give the
# figures in docs/benchmarks.md; this small set has 8 copies per kind, so the floor is lower).
# Crops and pairs with JPEG-30 miss the 0.9 on the full sets too (docs/benchmarks.md):
# here they must at least be found at all. hue+crop: 6 of 8 here since refinement starts from
# the best grid hue shift, 3 of 8 before.
FLOOR = {"exact": 0.75, "hflip": 0.75, "jpeg70": 0.75, "brightness": 0.75, "grayscale": 0.75, "rotate": 0.75,
         "saturation": 0.75, "grayscale+rotate": 0.75, "jpeg30": 0.5, "shift": 0.5, "rotate+jpeg30": 0.125,
         "crop": 0.125, "hue": 0.75, "crop+rotate": 0.5, "hue+crop": 0.625}


def test_small_planted_set_recall_per_kind_and_false_flags():
    pytest.importorskip("skimage")
    bench = _bench()
    kinds = list(FLOOR)
    planted = bench.build_set(32, seed=3, n_train=150, n_holdout=110, n_novel=150, per_kind=8, dup_fraction=0.0,
                              kinds=kinds)
    copy = create_embedder("pixels-copy", "cpu")
    train = _tensor(planted.train)
    train_feats = copy.embed(train)
    index = FlatIndex(train_feats, copy.spec.metric)

    def flags_for(tta):
        searcher = CopySearcher(index, copy, tta, copy_k=50, train_features=train_feats)
        gen, ref = searcher(_tensor(planted.samples))[2], searcher(_tensor(planted.holdout))[2]
        reference = Reference(ref, None, {"method": "holdout", "n_reference": len(planted.holdout)})
        return decide_flags(gen, reference, threshold_policy(copy.spec, "auto"), 0.01, 0.05, 50).flagged

    full, aligned_only = flags_for(copy.spec.copy_tta), flags_for(("flip", "shift-grid", "zoom"))
    kind_of = np.array(planted.kinds)
    recall = {k: full[kind_of == k].mean() for k in kinds}
    assert all(recall[k] >= FLOOR[k] for k in kinds), {k: round(float(v), 2) for k, v in recall.items()}
    novel = kind_of == "novel"
    assert full[novel].mean() <= 0.01 + 0.025, full[novel].mean()  # 150 novel images: alpha + 3 sigma
    # rotations and crops do not cost the kinds the aligned families already caught
    for k in ("exact", "hflip", "jpeg70", "brightness", "grayscale"):
        assert full[kind_of == k].sum() >= aligned_only[kind_of == k].sum() - 1, k


def _tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
