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
    refined = align.embed_transformed(embedder, copy_img, params)
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
    plain = CopySearcher(index, copy, ("flip", "shift-grid", "crop", "hue"), copy_k=20)
    refining = CopySearcher(index, copy, ("flip", "shift-grid", "crop", "hue", "refine"), copy_k=20,
                            train_features=feats)
    before, after = plain(queries)[2], refining(queries)[2]
    assert after.names == before.names + ["refined"]
    geo = after.families.index("geometric")
    refined = after.augmentation == len(after.names) - 1
    assert refined[:4].all() and (after.train_index[:4] == np.arange(4)).all()
    assert (after.family_score[:4, geo] < 0.5 * before.family_score[:4, geo]).all()
    # the screen is the best score among the families refinement starts from or combines
    screened = before.family_score[:, [after.families.index(f) for f in ("shift", "geometric", "colour")]].min(1)
    untouched = screened >= align.REFINE_BELOW
    assert untouched[4:].any()  # the screen leaves novel images as they were
    np.testing.assert_array_equal(after.family_score[untouched], before.family_score[untouched])
    np.testing.assert_array_equal(after.score[untouched], before.score[untouched])
    # every family other than the geometric one is untouched, refined or not
    others = [j for j in range(len(after.families)) if j != geo]
    np.testing.assert_array_equal(after.family_score[:, others], before.family_score[:, others])


def test_hue_shift_is_torchvisions_per_image():
    from torchvision.transforms.functional import adjust_hue

    x = _smooth(3, 16, 5)
    x[0] = x[0, :1].expand(3, 16, 16)  # a grey image: no hue to rotate
    x[1, :, :3] = 0.0  # black and white rows
    x[1, :, 3:6] = 1.0
    for d in (-0.12, -0.03, 0.0, 0.05, 0.3, 0.5):
        torch.testing.assert_close(align.hue_shift(x, torch.full((3,), d)), adjust_hue(x, d), atol=2e-6, rtol=0)
    np.testing.assert_allclose(align.hue_shift(x, torch.zeros(3))[0], x[0], atol=1e-6)
    per_image = align.hue_shift(x, torch.tensor([0.1, -0.05, 0.2]))
    for i, d in enumerate((0.1, -0.05, 0.2)):
        torch.testing.assert_close(per_image[i], adjust_hue(x[i : i + 1], d)[0], atol=2e-6, rtol=0)


def test_start_candidates_combine_one_edits_crop_with_the_others_rotation():
    start = np.array([[6.0, 0.0, 0.0, 0.0], [0.0, math.log(0.86), 0.14, 0.0]])  # a rotate and a crop variant
    blocks = align.start_candidates(start)
    n_crops = 1 + len(augment.CROP_KEEP) * len(align.START_OFFSETS) ** 2
    assert [len(b) for b in blocks] == [1, 1 + len(augment.ROTATE_DEGREES), n_crops, n_crops]
    np.testing.assert_array_equal(blocks[0][0], start)
    rotated_crops = blocks[2][:, 0]  # the rotate variant's angle with every grid crop
    assert (rotated_crops[:, 0] == 6.0).all() and np.isclose(rotated_crops[:, 1], math.log(0.91)).any()
    assert (blocks[3][:, 0, 0] == 0.0).all()  # the grid crops with no rotation, whatever the start
    cropped_rotations = blocks[1][:, 1]  # the crop variant's box with every grid angle
    np.testing.assert_array_equal(cropped_rotations[:, 0], [0.0, *augment.ROTATE_DEGREES])
    assert (cropped_rotations[:, 1:] == start[1, 1:]).all()


def test_refine_undoes_a_hue_shift_and_a_crop_together():
    """A copy cropped (off centre) and hue-shifted is undone by no single grid variant; the
    refinement finds the shift's inverse and the box, starting from the grid's best variant."""
    source = _smooth(6, 64, 7)
    hues = torch.tensor([0.1, -0.11, 0.07, -0.06, 0.12, -0.09])
    truth = torch.tensor([[0.0, -math.log(0.88), 0.1, -0.06]] * 6)  # the box of 88% of the side, enlarged
    copy_img = align.warp(align.hue_shift(source, hues), truth).clamp(0, 1)
    embedder = create_embedder("pixels-copy", "cpu")
    target = embedder.embed(source)
    best, start = np.full(6, -2.0), [None] * 6
    for name, view in augment.variants(copy_img, ("shift-grid", "rotate", "crop")):
        cos = (embedder.embed(view) * target).sum(1)
        for i in np.flatnonzero(cos > best):
            best[i], start[i] = cos[i], align.variant_params(name, 64, 64)
    params, agreement = align.refine(embedder, copy_img, np.array(start), target)
    assert params.shape == (6, len(align.PARAMS))
    np.testing.assert_allclose(params[:, 4], -hues.numpy(), atol=0.02)  # the hue shift undone
    np.testing.assert_allclose(params[:, 1], math.log(0.88), atol=0.02)  # the crop's zoom undone
    assert (agreement > 0.99).all() and (1 - agreement < 0.3 * (1 - best)).all(), (best, agreement)
    refined = align.embed_transformed(embedder, copy_img, params)
    np.testing.assert_allclose((refined * target).sum(1), agreement, atol=1e-5)


def test_large_images_are_refined_at_a_bounded_size():
    embedder = create_embedder("pixels-copy", "cpu")
    big = _smooth(2, 512, 8)
    small = align.reduced(embedder, big)
    assert 32 <= small.shape[-1] <= align.REFINE_SIDE * 32 and small.shape[-2] == small.shape[-1]
    assert align.reduced(embedder, small).shape == small.shape  # within the bound: untouched
    # the descriptor barely notices: it sees the image at 32 px, framed alike (a 64 px
    # reduction would frame it 1% of the side differently: cosine 0.998)
    full, reduced = embedder.embed(big), embedder.embed(small)
    assert ((full * reduced).sum(1) > 0.9998).all(), (full * reduced).sum(1)
    assert align.refine_size((1024, 768), embedder.spec)[0] <= 64


def test_the_screen_counts_the_colour_family(monkeypatch):
    """A hue-shifted copy scores best among the hue variants; refinement, which can combine a
    hue shift with a geometry, looks at it when that score passes the screen, whatever the
    shift and geometric families scored."""
    copy = create_embedder("pixels-copy", "cpu")
    train = _smooth(60, 64, 9)
    feats = copy.embed(train)
    index = FlatIndex(feats, "ip")
    queries = align.hue_shift(train[:3], torch.tensor([0.09, -0.09, 0.06]))
    tta = ("shift-grid", "crop", "hue")
    before = CopySearcher(index, copy, tta, copy_k=20)(queries)[2]
    fam = {f: before.family_score[:, before.families.index(f)] for f in before.families}
    grid_best = np.minimum(fam["shift"], fam["geometric"])
    assert (fam["colour"] < grid_best).all()
    monkeypatch.setattr(align, "REFINE_BELOW", float(np.max(fam["colour"]) + np.min(grid_best)) / 2)
    assert (fam["colour"] < align.REFINE_BELOW).all() and (grid_best >= align.REFINE_BELOW).all()
    searcher = CopySearcher(index, copy, (*tta, "refine"), copy_k=20, train_features=feats)
    after = searcher(queries)[2]
    assert searcher.refined_images == 3
    assert (after.family_score[:, after.families.index("geometric")] < fam["geometric"]).all()


def test_the_summary_counts_grid_variants_and_says_how_many_were_refined():
    from ganaudit.report.summary import _search_words

    mem = {"copy_embedder": {"name": "pixels-copy", "tta": ["flip", "refine"], "refined_fraction": 0.381},
           "calibration": {"augmentations": ["identity", "hflip", "refined"]}}
    assert _search_words(mem).endswith("(2 variants per image; 38% of samples refined)")
    mem = {"copy_embedder": {"name": "pixels-copy", "tta": ["flip"]}, "calibration": {"augmentations": ["identity", "hflip"]}}
    assert _search_words(mem).endswith("(2 variants per image)")
