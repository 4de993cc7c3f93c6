"""Local alignment (``ganaudit.search.align``): the grid variants' parameters, the refinement
that aligns a cropped and rotated copy with its source, and the searcher's "refine" step."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ganaudit.embedders import create_embedder
from ganaudit.search import align, augment
from ganaudit.search.copy_search import CopySearcher
from ganaudit.search.index import FlatIndex


def _smooth(n: int, size: int, seed: int) -> torch.Tensor:
    """Random images with structure at several scales (a photo's spectrum, roughly)."""
    g = torch.Generator().manual_seed(seed)
    out = sum(F.interpolate(torch.rand(n, 3, s, s, generator=g), size=size, mode="bicubic", align_corners=False)
              / (size // s) ** 0.5 for s in (4, 8, 16))
    out = out - out.amin(dim=(1, 2, 3), keepdim=True)
    return (out / out.amax(dim=(1, 2, 3), keepdim=True)).clamp(0, 1)


@pytest.mark.parametrize("size", [32, 64])
def test_variant_params_give_the_variants_the_grid_made(size):
    x = _smooth(2, size, 0)
    inner = (slice(None), slice(None), slice(size // 4, -size // 4), slice(size // 4, -size // 4))
    checked = 0
    for name, view in augment.variants(x, ("flip", "shift-grid", "zoom", "rotate", "crop", "hue")):
        params = align.variant_params(name, size, size)
        if name == "hflip" or name.startswith("hue"):
            assert params is None, name
            continue
        warped = align.warp(x, torch.tensor([params] * len(x), dtype=torch.float32))
        # zooms are resized bicubic by the grid, bilinear here: equal up to interpolation
        tol = 0.03 if name.startswith("zoom") else 2e-3
        assert (warped - view)[inner].abs().mean() < tol, name
        checked += 1
    assert checked == 1 + 48 + 3 + 6 + 50


def test_refine_aligns_a_cropped_rotated_copy_with_its_source():
    source = _smooth(6, 64, 1)
    truth = torch.tensor([[7.0, math.log(0.87), 0.08, -0.05]] * 6)
    copy_img = align.warp(source, truth)
    embedder = create_embedder("pixels-copy", "cpu")
    target = embedder.embed(source)
    # the best variant of the grid is where refinement starts
    best, start = np.full(6, -2.0), [None] * 6
    for name, view in augment.variants(copy_img, ("rotate", "crop")):
        cos = (embedder.embed(view) * target).sum(1)
        for i in np.flatnonzero(cos > best):
            best[i], start[i] = cos[i], align.variant_params(name, 64, 64)
    params, agreement = align.refine(embedder, copy_img, np.array(start), target)
    # the copy is the source warped by `truth`; the inverse maps it back (angle -7, scale 1/0.87)
    assert (agreement >= best - 1e-6).all()
    assert ((1 - agreement) < 0.6 * (1 - best)).all() and np.median(agreement) > 0.97, (best, agreement)
    refined = embedder.embed(align.warp(copy_img, torch.as_tensor(params, dtype=torch.float32)))
    np.testing.assert_allclose((refined * target).sum(1), agreement, atol=1e-5)


def test_refine_needs_the_training_features():
    copy = create_embedder("pixels-copy", "cpu")
    index = FlatIndex(copy.embed(_smooth(10, 32, 2)), "ip")
    with pytest.raises(ValueError, match="train_features"):
        CopySearcher(index, copy, ("crop", "refine"), copy_k=5)


def test_searcher_refines_only_below_the_screen_and_scores_in_the_geometric_family():
    copy = create_embedder("pixels-copy", "cpu")
    train = _smooth(60, 64, 3)
    feats = copy.embed(train)
    index = FlatIndex(feats, "ip")
    truth = torch.tensor([[0.0, math.log(0.88), 0.07, 0.1]] * 4)
    queries = torch.cat([align.warp(train[:4], truth), _smooth(4, 64, 4)])  # 4 crop copies, 4 novel
    plain = CopySearcher(index, copy, ("flip", "shift-grid", "crop"), copy_k=20)
    refining = CopySearcher(index, copy, ("flip", "shift-grid", "crop", "refine"), copy_k=20, train_features=feats)
    before, after = plain(queries)[2], refining(queries)[2]
    assert after.names == before.names + ["refined"]
    geo = after.families.index("geometric")
    refined = after.augmentation == len(after.names) - 1
    assert refined[:4].all() and (after.train_index[:4] == np.arange(4)).all()
    assert (after.family_score[:4, geo] < 0.5 * before.family_score[:4, geo]).all()
    screened = np.minimum(before.family_score[:, after.families.index("shift")], before.family_score[:, geo])
    untouched = screened >= align.REFINE_BELOW
    assert untouched[4:].any()  # the screen leaves novel images as they were
    np.testing.assert_array_equal(after.family_score[untouched], before.family_score[untouched])
    np.testing.assert_array_equal(after.score[untouched], before.score[untouched])
    # every family other than the geometric one is untouched, refined or not
    others = [j for j in range(len(after.families)) if j != geo]
    np.testing.assert_array_equal(after.family_score[:, others], before.family_score[:, others])
