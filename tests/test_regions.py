"""Region search on planted ground truth: partial copies of scikit-image photographs.

A planted sample is a novel image (another photo's crop, or noise) with a square of half
the side (a quarter of the area) of a training image pasted in, at its own position or
moved anywhere (tests/regions_support.py). Region search must flag them at recall ≥ 0.8
while flagging novel samples (exchangeable with the holdout) at most at alpha + 0.01, and
name the region in both images.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("skimage")

from conftest import run_cli  # noqa: E402
from regions_support import ArraySource as _Arrays, overlap, planted_sets  # noqa: E402
from ganaudit.embedders.pixels import create_tile  # noqa: E402
from ganaudit.metrics import copy_stats  # noqa: E402
from ganaudit.search import regions as rg  # noqa: E402
from ganaudit.search.index import build_index  # noqa: E402


def _search(sets: dict, alpha: float, holdout: bool = True):
    emb = create_tile(torch.device("cpu"))
    train = _Arrays(sets["train"])
    tiles = rg.tile_training_set(train, emb, 64)
    searcher = rg.RegionSearcher(build_index(tiles.features, "ip"), tiles, emb, copy_k=50)
    ref, info = rg.reference_regions(train, _Arrays(sets["holdout"]) if holdout else None, searcher, 0, 5000, 64,
                                     False)
    threshold = copy_stats.calibrate_threshold(ref.score, alpha)
    found = {k: rg.search_regions(_Arrays(sets[k]), searcher, 64, k, False) for k in ("novel", "own", "moved")}
    return tiles, threshold, found, info


def _check(sets, tiles, threshold, found, alpha, n_reference, min_recall=0.8):
    """Recall of planted copies, boxes, and the novel samples' false flags.

    Under exchangeability the number of M novel samples scoring below the j-th smallest of n
    reference scores is beta-binomial(M, j, n + 1 - j) (the conformal threshold's own spread
    included): the count must lie below its 97.5% quantile.
    """
    from scipy.stats import betabinom

    n_false = int((found["novel"].score < threshold).sum())
    m, j = len(found["novel"].score), int(np.floor(alpha * (n_reference + 1) * (1 + 1e-9)))
    assert n_false <= betabinom.ppf(0.975, m, j, n_reference + 1 - j), (n_false, m)
    for kind in ("own", "moved"):
        m, truth = found[kind], sets[f"{kind}_truth"]
        hits = [i for i in range(len(truth)) if m.score[i] < threshold and m.train_index[i] == truth[i]["train_index"]]
        assert len(hits) / len(truth) >= min_recall, (kind, len(hits), len(truth))
        for i in hits:  # the boxes name the planted region in both images
            sample_box, train_box = rg.matched_boxes(m, i, tiles, threshold)
            assert overlap(sample_box, truth[i]["sample_box"]) >= 0.75, (kind, i, sample_box, truth[i])
            assert overlap(train_box, truth[i]["train_box"]) >= 0.75, (kind, i, train_box, truth[i])
    return n_false / len(found["novel"].score)


def test_tile_grid_covers_the_image_and_contains_a_tile_in_every_half_side_region():
    for size in (32, 64, 96, 128, 100):
        train = rg.TileGrid.of((size, size), rg.TRAIN_STRIDE_FRACTION)
        query = rg.TileGrid.of((size, size), rg.QUERY_STRIDE_FRACTION)
        for grid in (train, query):
            assert grid.positions.min() == 0 and grid.positions.max() == size - grid.tile[0]
        side = size // 2
        ys = np.unique(train.positions[:, 0])
        for start in range(size - side + 1):  # any half-side square contains a whole training tile
            assert ((ys >= start) & (ys + train.tile[0] <= start + side)).any(), (size, start)


def test_flat_tiles_are_skipped_and_never_flag():
    rng = np.random.default_rng(0)
    sets = planted_sets(64, 40, 40, 20, 1, seed=1)
    sets["train"][:5] = 128  # blank training images: no tiles
    flat = np.full((20, 64, 64, 3), 200, np.uint8)  # blank samples match blank regions everywhere
    flat += rng.integers(0, 2, size=flat.shape, dtype=np.uint8)  # below MIN_TILE_STD
    emb = create_tile(torch.device("cpu"))
    tiles = rg.tile_training_set(_Arrays(sets["train"]), emb, 64)
    assert tiles.n_skipped >= 5 * 36 and not np.isin(np.arange(5), tiles.image).any()
    searcher = rg.RegionSearcher(build_index(tiles.features, "ip"), tiles, emb, copy_k=20)
    found = rg.search_regions(_Arrays(flat), searcher, 64, "flat", False)
    assert found.n_skipped == 20 * len(found.grid.positions)
    assert np.isinf(found.score).all() and (found.train_index == -1).all()


def test_first_per_row_marks_first_occurrences():
    labels = np.array([[3, 1, 3, 2, 1], [0, 0, 0, 0, 0]])
    assert rg._first_per_row(labels).tolist() == [[True, True, False, True, False], [True, False, False, False, False]]


def test_planted_partial_copies_are_flagged_at_64px():
    """Small and fast: 60 training cells, 40 holdout, 40 novel, 10 planted of each kind."""
    alpha = 0.05
    sets = planted_sets(64, 60, 40, 40, 10, seed=0)
    tiles, threshold, found, info = _search(sets, alpha)
    assert info["method"] == "holdout"
    _check(sets, tiles, threshold, found, alpha, info["n_reference"])


def test_audit_reports_regions_in_json_report_and_summary(tmp_path, capsys):
    sets = planted_sets(64, 40, 30, 10, 10, seed=2)
    np.savez(tmp_path / "train.npz", images=sets["train"])
    np.savez(tmp_path / "holdout.npz", images=sets["holdout"])
    np.savez(tmp_path / "samples.npz", images=np.concatenate([sets["novel"], sets["moved"]]))
    out = tmp_path / "result.json"
    code, stdout, _ = run_cli("check", "--train", tmp_path / "train.npz", "--holdout", tmp_path / "holdout.npz",
                              "--samples", tmp_path / "samples.npz", "--regions", "--alpha", "0.05", "--json", out,
                              "--html", tmp_path / "report.html", "--no-cache", "--warn-only", "--tta", "none",
                              capsys=capsys)
    assert code == 0
    result = json.loads(out.read_text())  # run_cli validated it against the schema
    reg = result["memorization"]["regions"]
    truth = {10 + i: t for i, t in enumerate(sets["moved_truth"])}
    hits = [e for e in reg["flagged"] if e["sample_index"] in truth
            and e["train_index"] == truth[e["sample_index"]]["train_index"]]
    assert len(hits) >= 8, reg["flagged"]
    for e in hits:
        t = truth[e["sample_index"]]
        assert overlap(tuple(e["sample_box"].values()), t["sample_box"]) >= 0.75
        assert overlap(tuple(e["train_box"].values()), t["train_box"]) >= 0.75
        assert e["sample_path"] == f"samples.npz[{e['sample_index']}]" or "sample_path" in e
    assert reg["tiles"]["tiles_per_train_image"] == 36 and reg["tiles"]["n_train_tiles"] > 0
    assert reg["tiles"]["descriptor"] == "pixels-tile"  # pixels-copy names its own tile descriptor
    assert reg["calibration"]["method"] == "holdout" and reg["n_samples"] == 20
    assert {"region_index", "region_calibrate"} <= result["timings"].keys()
    html = (tmp_path / "report.html").read_text()
    assert 'id="regions"' in html and html.count('class="box"') == 2 * min(len(reg["flagged"]), 24)
    assert f"regions   {reg['n_flagged']} of 20 samples copy a region" in stdout


def test_regions_are_off_by_default_and_their_setting_is_checked():
    from ganaudit.config import AuditConfig
    from ganaudit.errors import GanauditError

    assert AuditConfig().regions is False
    with pytest.raises(GanauditError, match="region_max_tiles"):
        AuditConfig(region_max_tiles=10).validate()
    with pytest.raises(GanauditError, match="regions"):
        AuditConfig(regions="yes").validate()


def test_regions_on_images_too_small_to_tile_is_a_clear_error(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", images=rng.integers(0, 256, size=(30, 8, 8, 3), dtype=np.uint8))
    np.savez(tmp_path / "samples.npz", images=rng.integers(0, 256, size=(10, 8, 8, 3), dtype=np.uint8))
    code, _, err = run_cli("check", "--train", tmp_path / "train.npz", "--samples", tmp_path / "samples.npz",
                           "--regions", "--alpha", "0.1", "--no-cache", capsys=capsys)
    assert code == 2 and "--regions: training images of 8x8 px are too small" in err


@pytest.mark.slow
def test_planted_partial_copies_at_64_and_128px_holdout_and_leave_one_out():
    """Recall ≥ 0.8 at both sizes (own position and moved), novel false flags consistent with alpha.

    The false-flag rate given one reference of 100 images spreads by about ±0.02 around
    alpha (the conformal threshold's own Beta(5, 97) spread), so the check is the exact
    beta-binomial bound of ``_check``, not the issue's alpha + 0.01 (which needs a reference
    of many hundreds; docs/regions.md records the measured rates).
    """
    alpha = 0.05
    for size, n_train in ((64, 200), (128, 120)):
        sets = planted_sets(size, n_train, 100, 150, 25, seed=size)
        tiles, threshold, found, info = _search(sets, alpha)
        _check(sets, tiles, threshold, found, alpha, info["n_reference"])
    # without a holdout, leave-one-out training images calibrate: a smaller 64 px set (every
    # training image is searched as a reference, so the 200-image set cost 1.4 times the above)
    sets = planted_sets(64, 120, 0, 100, 20, seed=65)
    tiles, threshold, found, info = _search(sets, alpha, holdout=False)
    assert info["method"] == "train-leave-one-out" and info["n_reference"] == 120
    _check(sets, tiles, threshold, found, alpha, info["n_reference"])
