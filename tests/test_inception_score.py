import math

import numpy as np
import pytest

from ganaudit.metrics.inception_score import inception_score, inception_score_splits

N_CLASSES = 1008  # the FID Inception network's logits


def _reference_inception_score(logits, splits):
    """The definition written out: a softmax per sample, p(y) per split, KL per sample."""
    n = logits.shape[0]
    scores = []
    for i in range(splits):
        part = logits[i * n // splits : (i + 1) * n // splits].astype(np.float64)
        probs = []
        for row in part:
            e = np.exp(row - row.max())
            probs.append(e / e.sum())
        marginal = np.mean(probs, axis=0)
        kls = [float(np.sum(p * (np.log(p) - np.log(marginal)))) for p in probs]
        scores.append(math.exp(np.mean(kls)))
    return float(np.mean(scores)), float(np.std(scores))


def _softmax64(logits):
    x = logits.astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(("n", "splits", "scale"), [(500, 10, 3.0), (333, 7, 1.0), (120, 1, 6.0)])
def test_matches_reference_computation(n, splits, scale):
    rng = np.random.default_rng(n)
    logits = (rng.normal(size=(n, N_CLASSES)) * scale).astype(np.float32)
    mean, std = inception_score(logits, splits=splits)
    ref_mean, ref_std = _reference_inception_score(logits, splits)
    assert mean == pytest.approx(ref_mean, rel=1e-10)
    assert std == pytest.approx(ref_std, rel=1e-8, abs=1e-12)
    assert isinstance(mean, float) and isinstance(std, float)


def test_splits_are_contiguous_chunks_in_the_given_order():
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(103, 50)) * 4).astype(np.float32)  # 103: uneven chunks
    per_split = inception_score_splits(logits, splits=4)
    bounds = [0, 25, 51, 77, 103]  # i * N // splits
    for i in range(4):
        alone = inception_score(logits[bounds[i] : bounds[i + 1]], splits=1)[0]
        assert per_split[i] == pytest.approx(alone, rel=1e-12)
    assert inception_score(logits, splits=4) == pytest.approx(
        (per_split.mean(), per_split.std())
    )


def test_uniform_predictions_give_one():
    mean, std = inception_score(np.zeros((200, N_CLASSES), dtype=np.float32))
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    probs = np.full((200, 40), 1 / 40, dtype=np.float32)
    assert inception_score(probs, from_logits=False)[0] == pytest.approx(1.0, abs=1e-6)


def _one_hot_labels(n_classes_used, per_class_per_split, splits):
    # Each split holds every class the same number of times.
    return np.tile(np.arange(n_classes_used), per_class_per_split * splits)


@pytest.mark.parametrize("k", [1, 2, 10, 37])
def test_even_one_hot_probabilities_give_k(k):
    labels = _one_hot_labels(k, per_class_per_split=3, splits=10)
    probs = np.zeros((labels.size, N_CLASSES), dtype=np.float32)
    probs[np.arange(labels.size), labels] = 1.0
    mean, std = inception_score(probs, splits=10, from_logits=False)
    assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)


def test_even_one_hot_logits_give_k():
    k = 10
    labels = _one_hot_labels(k, per_class_per_split=5, splits=10)
    logits = np.zeros((labels.size, N_CLASSES), dtype=np.float32)
    logits[np.arange(labels.size), labels] = 200.0  # other classes get e^-200 each
    mean, std = inception_score(logits, splits=10)
    assert mean == pytest.approx(k, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)


def test_order_matters_one_class_per_split_gives_one():
    labels = np.repeat(np.arange(10), 20)  # split i holds class i only
    probs = np.zeros((labels.size, 10), dtype=np.float32)
    probs[np.arange(labels.size), labels] = 1.0
    assert inception_score(probs, splits=10, from_logits=False)[0] == pytest.approx(1.0)
    shuffled = probs[np.random.default_rng(0).permutation(labels.size)]
    assert inception_score(shuffled, splits=10, from_logits=False)[0] > 5.0


def test_huge_logits_are_stable_and_shift_invariant():
    rng = np.random.default_rng(2)
    base = rng.integers(-60, 60, size=(300, N_CLASSES)).astype(np.float32)
    offsets = (rng.integers(0, 1024, size=(300, 1)) * 1024).astype(np.float32)  # exact in f32
    mean, std = inception_score(base, splits=5)
    assert np.isfinite(mean) and np.isfinite(std)
    assert inception_score(base + offsets, splits=5) == pytest.approx((mean, std), rel=1e-8)
    assert inception_score(base * 1e4, splits=5)[0] <= N_CLASSES


def test_probabilities_agree_with_logits():
    rng = np.random.default_rng(3)
    logits = (rng.normal(size=(400, 100)) * 2).astype(np.float32)
    probs = _softmax64(logits).astype(np.float32)
    assert inception_score(probs, from_logits=False) == pytest.approx(
        inception_score(logits), rel=1e-5
    )


@pytest.mark.parametrize("splits", [0, -3, 1.5, True, "10", None])
def test_bad_splits_are_rejected(splits):
    with pytest.raises(ValueError, match="splits"):
        inception_score(np.zeros((20, 5), dtype=np.float32), splits=splits)


def test_more_splits_than_samples_is_rejected():
    with pytest.raises(ValueError, match="splits=10 needs at least 10 samples, got 9"):
        inception_score(np.zeros((9, 5), dtype=np.float32), splits=10)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.zeros(10, dtype=np.float32), "2-D"),
        (np.full((10, 4), np.nan, dtype=np.float32), "NaN"),
        (np.zeros((10, 0), dtype=np.float32), "no feature columns"),
    ],
)
def test_bad_arrays_are_rejected(x, match):
    with pytest.raises(ValueError, match=match):
        inception_score(x, splits=2)


def test_invalid_probabilities_are_rejected():
    logits = np.random.default_rng(4).normal(size=(20, 6)).astype(np.float32)
    with pytest.raises(ValueError, match="sum to 1"):
        inception_score(np.abs(logits), splits=2, from_logits=False)
    probs = np.full((20, 4), 0.25, dtype=np.float32)
    probs[0] = [-0.5, 0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match=">= 0"):
        inception_score(probs, splits=2, from_logits=False)
