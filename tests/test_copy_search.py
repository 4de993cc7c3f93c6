"""Copy search: the pixels copy descriptor, the test-time augmentations, absolute thresholds."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import FIXTURES, load_folder_as_tensor, run_cli
from ganaudit.search import augment
from ganaudit.config import AuditConfig
from ganaudit.search.copy_search import CopySearcher, Matches, _keep_best
from ganaudit.embedders import create_embedder
from ganaudit.embedders.pixels import COPY_BLUR_SIGMA, COPY_CENTRE, COPY_WINDOW, blur_matrix, gaussian_taps
from ganaudit.search.index import FlatIndex
from ganaudit.metrics.copy_stats import calibrate_threshold
from ganaudit.search.calibration import Reference, decide_flags, threshold_policy


def _reference_descriptor(x: torch.Tensor) -> np.ndarray:
    """pixels-copy written out independently: the centre part of each side resized back to 32 px,
    luminance, Gaussian window about the centre after removing the windowed mean,
    replicate-padded Gaussian convolution, unit norm."""
    n = x.shape[-1]
    border = round(n * (1 - COPY_CENTRE) / 2)  # 3 of 32 pixels per side: the centre 26
    x = F.interpolate(x[..., border : n - border, border : n - border], size=32, mode="bicubic", antialias=True,
                      align_corners=False).clamp(0, 1)
    y = 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    t = (torch.arange(32, dtype=torch.float32) + 0.5) / 32 - 0.5
    g = torch.exp(-(t**2) / (2 * COPY_WINDOW**2))
    window = g[:, None] * g[None, :]
    y = (y - (y * window).sum(dim=(2, 3), keepdim=True) / window.sum()) * window
    taps = gaussian_taps(COPY_BLUR_SIGMA).float()
    r = taps.numel() // 2
    y = F.pad(y, (r, r, r, r), mode="replicate")
    y = F.conv2d(y, taps.view(1, 1, 1, -1))
    y = F.conv2d(y, taps.view(1, 1, -1, 1))
    return F.normalize(y.flatten(1), dim=1).numpy()


@pytest.mark.parametrize("kind", ["noise", "fixture"])
def test_pixels_copy_is_a_blurred_windowed_luminance_image(kind):
    # The descriptor is the blurred image in another orthonormal basis (256 numbers, not
    # 1024): its inner products, all that copy search uses, are the written-out reference's.
    if kind == "noise":  # white noise: the most energy where the basis is truncated
        x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    else:
        x = load_folder_as_tensor(FIXTURES / "data" / "holdout")[::4]
    feats = create_embedder("pixels-copy", "cpu").embed(x).astype(np.float64)
    ref = _reference_descriptor(x).astype(np.float64)
    assert feats.shape == (len(x), 256)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(feats @ feats.T, ref @ ref.T, atol=1e-5)  # white noise: the most truncated
    matrix = blur_matrix(32, COPY_BLUR_SIGMA)
    np.testing.assert_allclose(matrix.sum(1).numpy(), 1.0, atol=1e-6)


def test_pixels_copy_ignores_brightness_and_contrast():
    x = 0.1 + 0.6 * torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    embed = create_embedder("pixels-copy", "cpu").embed
    np.testing.assert_allclose(embed(x * 1.15), embed(x), atol=1e-5)  # brighter, no clipping
    np.testing.assert_allclose(embed(x + 0.1), embed(x), atol=1e-5)  # a constant offset
    assert np.abs(embed(x.flip(-1)) - embed(x)).max() > 0.01  # but not a different picture


def test_pixels_declares_its_copy_descriptor_and_its_augmentations():
    pixels = create_embedder("pixels", "cpu")
    assert pixels.spec.copy_embedder == "pixels-copy"
    assert create_embedder("pixels-copy", "cpu").spec.copy_tta == ("flip", "shift-grid", "zoom", "rotate", "crop",
                                                                    "hue", "refine")


@pytest.mark.parametrize("augs", [(), ("flip",), ("shift",), ("flip", "shift"), ("shift-grid",),
                                  ("flip", "shift-grid", "zoom"), ("zoom",), ("rotate",), ("crop",), ("hue",),
                                  ("flip", "shift-grid", "zoom", "rotate", "crop", "hue")])
def test_variant_count_and_names(augs):
    x = torch.rand(2, 3, 32, 32)
    out = list(augment.variants(x, augs))
    shifts = 48 if "shift-grid" in augs else 8 if "shift" in augs else 0
    geometric = len(augment.ROTATE_DEGREES) * ("rotate" in augs) + 50 * ("crop" in augs)
    colour = 8 * ("hue" in augs)
    assert len(out) == 1 + ("flip" in augs) + shifts + 3 * ("zoom" in augs) + geometric + colour
    assert out[0][0] == "identity" and len({name for name, _ in out}) == len(out)
    assert all(v.shape == x.shape for _, v in out)


@pytest.mark.parametrize("size, zooms", [(1, 0), (2, 0), (4, 1), (6, 2), (7, 3), (32, 3)])
def test_zooms_that_leave_no_image_are_skipped(size, zooms):
    out = [name for name, _ in augment.variants(torch.rand(1, 3, size, size), ("zoom",))]
    assert out == ["identity"] + [f"zoom(-{c})" for c in (1, 2, 3)[:zooms]]


def test_shifts_invert_and_zoom_undoes_a_centred_crop():
    img = load_folder_as_tensor(FIXTURES / "data" / "train" / "circle_red")[:8]
    back = augment.shift(augment.shift(img, 3, -2), -3, 2)
    torch.testing.assert_close(back[..., 3:-3, 3:-3], img[..., 3:-3, 3:-3])
    for c in (1, 2, 3):
        cropped = F.interpolate(img[..., c:-c, c:-c], size=32, mode="bicubic", antialias=True,
                                align_corners=False).clamp(0, 1)
        restored = augment.zoom_out(cropped, c)
        inner = (slice(None), slice(None), slice(c + 1, -c - 1), slice(c + 1, -c - 1))
        error = (restored - img)[inner].abs().mean()
        assert error < 0.5 * (cropped - img)[inner].abs().mean(), c
    with pytest.raises(ValueError, match="cannot zoom out"):
        augment.zoom_out(img, 16)


@pytest.fixture(scope="module")
def shapes():
    """The fixture dataset's images, its copy features and a searcher as the audit builds it."""
    train = load_folder_as_tensor(FIXTURES / "data" / "train")
    holdout = load_folder_as_tensor(FIXTURES / "data" / "holdout")
    copy = create_embedder("pixels-copy", "cpu")
    feats = copy.embed(train)
    searcher = CopySearcher(FlatIndex(feats, copy.spec.metric), copy, copy.spec.copy_tta, copy_k=50,
                            embedder=create_embedder("pixels", "cpu"), train_features=feats)
    return train, holdout, searcher


def test_slightly_cropped_copies_are_found(shapes):
    train, holdout, searcher = shapes
    threshold = calibrate_threshold(searcher(holdout)[2].score, alpha=0.01)
    picked = np.random.default_rng(0).choice(len(train), 60, replace=False)
    for c, share in ((1, 0.95), (2, 0.85), (3, 0.6)):
        cropped = F.interpolate(train[picked][..., c:-c, c:-c], size=32, mode="bicubic", antialias=True,
                                align_corners=False).clamp(0, 1)
        _, _, found = searcher(cropped)
        caught = (found.score < threshold) & (found.train_index == picked)
        assert caught.mean() >= share, f"crop {c}px: {caught.sum()} of {len(picked)}"
        assert {found.names[a].split("(")[0] for a in found.augmentation[caught]} & {"zoom", "crop", "refined"}


def test_images_of_the_distribution_are_flagged_at_rate_alpha(shapes):
    """A perfect generator: half the holdout calibrates, the other half is 'generated'."""
    _, holdout, searcher = shapes
    order = np.random.default_rng(1).permutation(len(holdout))
    reference, fresh = searcher(holdout[order[:240]])[2].score, searcher(holdout[order[240:]])[2].score
    alpha = 0.05
    flagged = (fresh < calibrate_threshold(reference, alpha)).mean()
    assert abs(flagged - alpha) < 4 * np.sqrt(alpha * (1 - alpha) * (1 / 240 + 1 / 240))


def test_search_returns_both_feature_sets(shapes):
    train, _, searcher = shapes
    feats, copy_feats, matches = searcher(train[:5])
    np.testing.assert_array_equal(feats, train[:5].flatten(1).numpy())
    np.testing.assert_allclose(np.linalg.norm(copy_feats, axis=1), 1.0, atol=1e-5)
    assert (matches.train_index == np.arange(5)).all() and matches.names[0] == "identity"


def _matches(score, distance, similarity) -> Matches:
    n = len(score)
    return Matches(np.array(score, float), np.array(distance, float), np.array(similarity, float),
                   np.arange(n), np.zeros(n, np.int16), ["identity"])


def test_best_variant_is_picked_by_the_flagged_quantity():
    a, b = _matches([0.5, 0.2], [1.0, 1.0], [0.1, 0.9]), _matches([0.3, 0.4], [0.5, 2.0], [0.8, 0.2])
    assert _keep_best(_copy(a), b, "score").score.tolist() == [0.3, 0.2]
    assert _keep_best(_copy(a), b, "similarity").similarity.tolist() == [0.8, 0.9]
    assert _keep_best(_copy(a), b, "distance").distance.tolist() == [0.5, 1.0]
    with pytest.raises(ValueError, match="rank_by"):
        CopySearcher(FlatIndex(np.eye(4, dtype=np.float32)), None, (), 1, rank_by="p")


def _copy(m: Matches) -> Matches:
    return Matches(m.score.copy(), m.distance.copy(), m.similarity.copy(), m.train_index.copy(),
                   m.augmentation.copy(), list(m.names))


def _spec(metric: str, published: float | None = None):
    return SimpleNamespace(name="x", metric=metric, copy_threshold=published, copy_threshold_source="paper")


def test_absolute_thresholds_come_from_the_user_or_the_embedder():
    published = threshold_policy(_spec("ip", 0.75), "auto")
    assert (published.absolute, published.origin, published.source) == (0.75, "published", "paper")
    assert threshold_policy(_spec("ip", 0.75), "calibrated").absolute is None
    assert threshold_policy(_spec("l2"), "auto").absolute is None
    assert (threshold_policy(_spec("l2"), 0.3).absolute, threshold_policy(_spec("l2"), 0.3).origin) == (0.3, "user")
    assert threshold_policy(_spec("ip", 0.75), "auto").rank_by == "similarity"
    assert threshold_policy(_spec("l2"), 0.3).rank_by == "distance"
    assert threshold_policy(_spec("l2"), "auto").rank_by == "score"
    with pytest.raises(Exception, match=r"must lie in \[-1, 1\]"):
        threshold_policy(_spec("ip"), 2.0)


def test_an_absolute_threshold_flags_by_similarity():
    gen = _matches([0.9, 0.1, 0.8], [0.1, 0.5, 0.3], [0.99, 0.7, 0.8])
    gen.names = ["identity"]
    reference = Reference(_matches(list(np.linspace(0.2, 1.0, 200)), [1.0] * 200, [0.5] * 200), None,
                          {"method": "holdout", "n_reference": 200})
    flags = decide_flags(gen, reference, threshold_policy(_spec("ip"), 0.8), alpha=0.01, fdr_q=0.05, copy_k=50)
    assert flags.flagged.tolist() == [True, False, True]
    assert flags.threshold == 0.8 and flags.calibration["method"] == "user"
    assert flags.calibration["threshold_on"] == "similarity"
    assert flags.calibration["p_value_reference"] == "holdout"


def test_cli_copy_embedder_and_threshold(tiny_sets, tmp_path):
    out = tmp_path / "r.json"
    common = ("--generator", tiny_sets["copy_gen"], "--train", tiny_sets["train"], "--holdout", tiny_sets["holdout"],
              "--num-samples", "60", "--json", out)
    code, _, _ = run_cli("check", *common, "--copy-embedder", "pixels", "--tta", "flip")
    import json

    mem = json.loads(out.read_text())["memorization"]
    assert code == 1 and mem["copy_embedder"]["name"] == "pixels" and mem["copy_embedder"]["tta"] == ["flip"]
    assert mem["calibration"]["augmentations"] == ["identity", "hflip"]
    code, _, _ = run_cli("check", *common, "--copy-threshold", "0.999")
    mem = json.loads(out.read_text())["memorization"]
    assert mem["copy_embedder"]["name"] == "pixels-copy" and mem["calibration"]["method"] == "user"
    assert all(f["similarity"] >= 0.999 for f in mem["flagged"])


@pytest.mark.parametrize("flags, message", [
    (("--copy-threshold", "high"), "expected auto, calibrated or a number"),
    (("--copy-threshold", "1.5"), "must lie in [-1, 1]"),
    (("--copy-embedder", "nope"), "unknown embedder 'nope'"),
    (("--copy-weights", "README.md"), "--copy-weights needs --copy-embedder"),
    (("--copy-embedder", "pixels-copy", "--copy-weights", "README.md"), "has no weights"),
    (("--tta", "flip,spin"), "unknown test-time augmentation"),
])
def test_bad_copy_search_flags_are_one_line_errors(tiny_sets, capsys, flags, message):
    code, _, err = run_cli("check", "--generator", tiny_sets["copy_gen"], "--train", tiny_sets["train"],
                           "--num-samples", "20", *flags, capsys=capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_pixels_copy_basis_does_not_depend_on_the_lapack_build():
    # torch and numpy ship different LAPACKs, which may return singular vectors with other signs.
    from ganaudit.embedders.pixels import fix_signs

    blur = blur_matrix(32, COPY_BLUR_SIGMA).double()
    from_torch = fix_signs(torch.linalg.svd(blur)[0][:, :16])
    from_numpy = fix_signs(torch.from_numpy(np.linalg.svd(blur.numpy())[0][:, :16]))
    flipped = fix_signs(-from_torch)  # every sign the other way round
    torch.testing.assert_close(from_torch, from_numpy, atol=1e-12, rtol=0)
    torch.testing.assert_close(flipped, from_torch, atol=0, rtol=0)


def test_variants_of_large_images_are_made_at_a_bounded_size():
    """A 256 px image's variants are made at about four times the descriptor's input side,
    its identity at full size as the training images are; each variant's descriptor agrees
    with the same variant made at full size."""
    pytest.importorskip("skimage")
    from photo_crops import photo_tiles
    from ganaudit.search import align
    from ganaudit.search.copy_search import embed_variants

    tiles, _ = photo_tiles(256)
    x = torch.from_numpy(tiles[::9]).permute(0, 3, 1, 2).float() / 255
    copy = create_embedder("pixels-copy", "cpu")
    augs = tuple(a for a in copy.spec.copy_tta if a != "refine")
    seen, embed = [], copy.embed
    copy.embed = lambda images: (seen.append(tuple(images.shape[-2:])), embed(images))[1]
    names, feats, _ = embed_variants(x, augs, copy)
    small = align.refine_size((256, 256), copy.spec, align.VARIANT_SIDE)
    assert max(small) <= align.VARIANT_SIDE * 32 and seen[0] == (256, 256) and set(seen[1:]) == {small}
    full = {name: embed(view) for name, view in augment.variants(x, augs)}
    assert list(full) == names
    np.testing.assert_array_equal(feats[0], full["identity"])  # an exact copy still matches exactly
    cosines = {name: (f * full[name]).sum(1) for name, f in zip(names, feats)}
    for name, cosine in cosines.items():
        # a crop resamples bilinearly at either size: a fine texture differs most (at twice the
        # input side, as refinement works, the identity alone lost up to 0.011 on these tiles)
        assert cosine.min() > (0.99 if name.startswith("crop") else 0.999), (name, cosine)
    assert np.median(np.concatenate(list(cosines.values()))) > 0.99999
