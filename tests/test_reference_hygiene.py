"""Reference hygiene and small sets (issue 16), on planted ground truth.

- A 64×64 photo-tile split (``photo_crops``) whose holdout holds near-duplicates of training
  tiles (3%, more than alpha): before hygiene the threshold collapsed to about zero and only
  exact copies were flagged; now the duplicates are found and excluded, and the flags are
  those of the same audit on the holdout without them.
- Duplicate groups planted in the training set are found (blockwise search, no N×N).
- Blank pages are low-information: never flagged, counted.
- A ~50/20 set audits: alpha=0.01 cannot be resolved, leave-one-out training images join
  the holdout, the finest attainable level is used and said; exit 2 only when no reference is left.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import SCHEMA, run_cli
from photo_crops import COPY_KINDS, blank_pages, edit, photo_tiles, planted_split, write_npz
from ganaudit.audit import audit, audit_with_context
from ganaudit.config import AuditConfig
from ganaudit.errors import GanauditError
from ganaudit.metrics.copy_stats import calibrate_threshold
from ganaudit.search import hygiene
from ganaudit.search.calibration import Reference, decide_flags, needed_references, threshold_policy
from ganaudit.search.copy_search import Matches
from ganaudit.search.index import FlatIndex

ALPHA = 0.01


def _tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def _flagged(result) -> np.ndarray:
    mem = result.memorization
    out = np.zeros(mem["n_samples"], bool)
    out[[e["sample_index"] for e in mem["flagged"]]] = True
    return out


# --- fast: the criteria themselves -------------------------------------------------------

def test_blank_pages_are_low_information_and_photo_tiles_mostly_not():
    rng = np.random.default_rng(0)
    blanks = hygiene.rms_contrast(_tensor(blank_pages(20, 64, rng)))
    assert hygiene.low_information(blanks).all()
    tiles, _ = photo_tiles(64)
    contrast = hygiene.rms_contrast(_tensor(tiles[::5]))
    # independent reference: the standard deviation of the mean of RGB at 32x32
    small = torch.nn.functional.interpolate(_tensor(tiles[::5]), size=32, mode="bicubic", antialias=True).clamp(0, 1)
    np.testing.assert_allclose(contrast, small.mean(1).flatten(1).numpy().std(1), atol=1e-6)
    assert hygiene.low_information(contrast).mean() < 0.1  # flat sky, black space, blank paper: a few


def test_near_duplicate_criterion_is_fixed_and_uses_no_quantile():
    score = np.array([0.0, 0.049, 0.05, 0.3, 0.9])
    sim = np.array([1.0, 0.9, 0.8, 0.76, 0.2])
    assert hygiene.near_duplicates(score, sim, None).tolist() == [True, True, False, False, False]
    assert hygiene.near_duplicates(score, sim, 0.75).tolist() == [True, True, True, True, False]
    # the same scores inside any other reference give the same verdicts
    assert hygiene.near_duplicates(score[::-1], sim[::-1], None).tolist() == [False, False, False, True, True]


def test_train_duplicate_groups_are_the_planted_ones_blockwise(monkeypatch):
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(300, 32)).astype(np.float32)
    planted = [[3, 150, 299], [10, 11], [40, 200]]
    for group in planted:
        for j in group[1:]:
            feats[j] = feats[group[0]] + rng.normal(scale=1e-3, size=32).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    index = FlatIndex(feats, "ip")
    informative = np.ones(300, bool)
    whole = hygiene.train_duplicate_groups(index, feats, informative, copy_k=50)
    monkeypatch.setattr(hygiene, "SEARCH_BLOCK", 7)  # blocks of 7: the same groups
    blocks = hygiene.train_duplicate_groups(index, feats, informative, copy_k=50)
    assert whole.groups == blocks.groups == sorted(planted, key=lambda g: (-len(g), g[0]))
    informative[150] = False  # a low-information member is never grouped
    assert hygiene.train_duplicate_groups(index, feats, informative, 50).groups[0] == [3, 299]


def _matches(scores) -> Matches:
    n = len(scores)
    return Matches(np.asarray(scores, float), np.ones(n), np.full(n, np.nan), np.zeros(n, np.int64),
                   np.zeros(n, np.int16), ["identity"])


def test_too_small_a_reference_calibrates_at_the_finest_level_and_says_so():
    assert needed_references(0.01) == 99 and needed_references(0.05) == 19
    ref = Reference(_matches(np.linspace(0.3, 1.0, 70)), None, {"method": "holdout", "n_reference": 70})
    gen = _matches([0.0, 0.29, 0.31, 0.5])
    policy = threshold_policy(type("S", (), {"copy_threshold": None})(), "calibrated")
    flags = decide_flags(gen, ref, policy, ALPHA, 0.05, 50)
    cal = flags.calibration
    assert cal["level"] == "finest-attainable" and cal["alpha_achieved"] == pytest.approx(1 / 71)
    assert "needs at least 99" in cal["level_note"] and flags.threshold == pytest.approx(0.3)
    assert flags.flagged.tolist() == [True, True, False, False]
    # exactly the conformal rule at level 1/71: score < the smallest reference score
    assert flags.threshold == calibrate_threshold(ref.matches.score, 1 / 71 + 1e-12)
    resolved = decide_flags(gen, Reference(_matches(np.linspace(0.3, 1, 99)), None, {"method": "holdout"}),
                            policy, ALPHA, 0.05, 50)
    assert resolved.calibration["level"] == "requested" and resolved.calibration["alpha_achieved"] <= ALPHA
    withheld = decide_flags(gen, ref, policy, ALPHA, 0.05, 50, withheld=np.array([True, False, False, False]))
    assert withheld.flagged.tolist() == [False, True, False, False] and withheld.calibration["n_withheld"] == 1
    with pytest.raises(GanauditError, match="no reference image left"):
        decide_flags(gen, Reference(_matches([]), None, {"method": "holdout", "n_searched": 5}), policy, ALPHA, 0.05, 50)


# --- the planted photo-tile split ----------------------------------------------------------

@pytest.fixture(scope="module")
def contaminated(tmp_path_factory):
    """The 64×64 split with 3% of the holdout duplicating training tiles, audited as is and
    with its planted duplicates and blanks taken out of the holdout (the oracle)."""
    split = planted_split(n_train=400, n_holdout=200, n_fresh=300, per_kind=10, dup_share=0.03, seed=0)
    root = tmp_path_factory.mktemp("contaminated")
    paths = write_npz(split, root)
    common = dict(train=paths["train"], samples=paths["samples"], alpha=ALPHA, no_cache=True, progress=False,
                  json=root / "result.json")
    result, context = audit_with_context(AuditConfig(holdout=paths["holdout"], **common))
    clean = (split.holdout_dup_source < 0) & ~split.holdout_blank
    np.savez(root / "oracle.npz", images=split.holdout[clean])
    oracle = audit(AuditConfig(holdout=root / "oracle.npz", **common))
    return split, result, oracle, context


@pytest.mark.slow
def test_holdout_duplicates_are_found_excluded_and_reported(contaminated):
    split, result, _, _ = contaminated
    h = result.memorization["hygiene"]
    found = {(p["reference_index"], p["train_index"]) for p in h["reference"]["pairs"]}
    planted = {(int(i), int(t)) for i, t in enumerate(split.holdout_dup_source) if t >= 0}
    exact = {(i, t) for k, (i, t) in enumerate(sorted(planted))
             if np.array_equal(split.holdout[i], split.train[t])}
    assert exact <= found  # every exact duplicate, and
    assert len(found & planted) >= len(planted) - 2  # most re-encoded and shifted ones
    assert len(found - planted) <= 1  # (a clean tile may have its own twin in the training set)
    assert h["reference"]["n_near_duplicates"] == len(found)
    assert h["low_information"]["n_reference"] >= split.holdout_blank.sum()
    cal = result.memorization["calibration"]
    assert cal["n_excluded"] == h["reference"]["n_near_duplicates"] + h["reference"]["n_low_information"]
    assert cal["n_reference"] == cal["n_searched"] - cal["n_excluded"]


@pytest.mark.slow
def test_edited_copies_are_found_at_the_clean_false_flag_rate(contaminated):
    split, result, oracle, _ = contaminated
    flagged = _flagged(result)
    # hygiene gives the flags of the audit whose holdout never held the duplicates
    assert result.memorization["threshold"] == pytest.approx(oracle.memorization["threshold"], rel=0.05)
    assert (flagged != _flagged(oracle)).sum() <= 2
    copies = np.isin(split.copy_kind, COPY_KINDS)
    informative_copies = copies & (hygiene.rms_contrast(_tensor(split.generated)) >= hygiene.LOW_INFORMATION_CONTRAST)
    recall = {k: flagged[informative_copies & (split.copy_kind == k)].mean() for k in COPY_KINDS}
    assert recall["exact"] == 1.0 and recall["hflip"] >= 0.8  # before hygiene: the only kinds found
    assert flagged[informative_copies].mean() >= 0.55, recall  # before: 18 of 60, 0 of 10 JPEG-q40
    assert recall["jpeg40"] > 0
    fresh = split.copy_kind == "fresh"
    assert flagged[fresh].mean() <= ALPHA + 0.01
    assert not flagged[split.copy_kind == "blank"].any()


@pytest.mark.slow
def test_training_duplicate_groups_and_the_report(contaminated, tmp_path):
    split, result, _, context = contaminated
    groups = [[m["train_index"] for m in g["members"]] for g in result.memorization["hygiene"]["train_duplicates"]["groups"]]
    for planted in split.train_groups:
        assert any(set(planted) <= set(g) for g in groups), planted
    assert not any(split.train_blank[t] for g in groups for t in g)
    assert result.memorization["hygiene"]["low_information"]["n_train"] >= split.train_blank.sum()
    import jsonschema

    from ganaudit.report.html import render_html
    from ganaudit.report.images import collect_images

    jsonschema.validate(json.loads(json.dumps(result.to_dict())), SCHEMA)
    images = collect_images(result, context)
    pairs = result.memorization["hygiene"]["reference"]["pairs"]
    assert all(f"holdout:{p['reference_index']}" in images and f"train:{p['train_index']}" in images for p in pairs)
    html = render_html(result, images)
    section = html[html.index('id="reference-duplicates"'):html.index('id="train-duplicates"')]
    assert section.count("<img") == 2 * len(pairs)  # each pair side by side
    assert images[f"holdout:{pairs[0]['reference_index']}"] in section


# --- small sets ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """50 training and 20 holdout 32×32 tiles; 40 samples: 16 edited copies and 24 fresh tiles."""
    root = tmp_path_factory.mktemp("small")
    split = planted_split(n_train=50, n_holdout=20, n_fresh=24, per_kind=0, dup_share=0.0, n_train_groups=0,
                          n_blank=0, size=32, seed=3)
    rng = np.random.default_rng(0)
    kinds = ("exact", "hflip", "noise", "brightness") * 4
    sources = rng.choice(50, size=len(kinds), replace=False)
    copies = np.stack([edit(split.train[t], k, rng) for t, k in zip(sources, kinds)])
    np.savez(root / "train.npz", images=split.train, labels=split.train_photo)  # modes from labels: fast
    np.savez(root / "holdout.npz", images=split.holdout)
    np.savez(root / "samples.npz", images=np.concatenate([copies, split.generated]))
    return root, len(copies), sources


def test_fifty_training_and_twenty_holdout_images_audit_honestly(small_set, capsys):
    root, n_copies, sources = small_set
    out = root / "result.json"
    code, stdout, _ = run_cli("check", "--train", root / "train.npz", "--holdout", root / "holdout.npz",
                              "--samples", root / "samples.npz", "--json", out, "--html", root / "report.html",
                              "--no-cache", capsys=capsys)
    assert code in (0, 1)
    r = json.loads(out.read_text())
    mem, cal = r["memorization"], r["memorization"]["calibration"]
    assert cal["method"] == "holdout+train-leave-one-out" and cal["n_holdout"] + cal["n_train"] == cal["n_reference"]
    assert cal["level"] == "finest-attainable" and cal["alpha_achieved"] == pytest.approx(1 / (cal["n_reference"] + 1))
    assert "finest level" in stdout and "not attainable" in stdout
    flagged = {e["sample_index"]: e["train_index"] for e in mem["flagged"]}
    found = [i for i in range(n_copies) if flagged.get(i) == sources[i]]
    informative = hygiene.rms_contrast(torch.from_numpy(np.load(root / "samples.npz")["images"][:n_copies])
                                       .permute(0, 3, 1, 2).float() / 255) >= hygiene.LOW_INFORMATION_CONTRAST
    assert len(found) >= 0.75 * informative.sum()
    n_fresh_flagged = sum(1 for i in flagged if i >= n_copies)
    assert n_fresh_flagged <= 2  # of 24 fresh tiles, at level ~1/71
    html = (root / "report.html").read_text()
    assert "Calibration level" in html and cal["level_note"] in html
    assert r["timings"]["total"] < 60


def test_alpha_the_holdout_resolves_needs_no_training_images(small_set):
    root, _, _ = small_set
    result = audit(AuditConfig(train=root / "train.npz", holdout=root / "holdout.npz", samples=root / "samples.npz",
                               alpha=0.05, no_cache=True, progress=False))
    cal = result.memorization["calibration"]
    assert cal["method"] == "holdout" and cal["level"] == "requested" and cal["alpha_achieved"] <= 0.05


def test_no_honest_calibration_is_exit_2_with_the_reason(tmp_path, capsys):
    tile = photo_tiles(32)[0][100]
    same = np.stack([tile] * 8)  # every image a duplicate of every other: no reference survives
    np.savez(tmp_path / "train.npz", images=same)
    np.savez(tmp_path / "holdout.npz", images=same[:3])
    code, _, err = run_cli("check", "--train", tmp_path / "train.npz", "--holdout", tmp_path / "holdout.npz",
                           "--samples", tmp_path / "train.npz", "--no-cache", capsys=capsys)
    assert code == 2 and "no reference image left" in err and err.count("\n") == 1


def test_training_duplicate_search_is_capped_and_still_finds_planted_groups():
    """Past max_queries a seeded subset is searched against the whole set (linear cost); a planted
    group is found whenever one of its members is searched, and the result says how many were."""
    from ganaudit.search import hygiene
    from ganaudit.search.index import FlatIndex

    rng = np.random.default_rng(3)
    feats = rng.standard_normal((600, 16)).astype(np.float32)
    groups = [[10, 200, 410], [55, 56], [300, 599]]
    for g in groups:
        for member in g[1:]:
            feats[member] = feats[g[0]] + 1e-4 * rng.standard_normal(16).astype(np.float32)
    informative = np.ones(600, bool)
    full = hygiene.train_duplicate_groups(FlatIndex(feats), feats, informative, 5)
    assert full.n_searched == 600 and sorted(full.groups) == sorted(groups)
    capped = hygiene.train_duplicate_groups(FlatIndex(feats), feats, informative, 5, seed=1, max_queries=200)
    assert capped.n_searched == 200
    searched = set(np.sort(np.random.default_rng([1, 17]).choice(600, 200, replace=False)).tolist())
    expected = [g for g in groups if searched & set(g)]
    assert expected and sorted(capped.groups) == sorted(expected)
