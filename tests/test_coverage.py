import numpy as np
import pytest

prdc_ref = pytest.importorskip("prdc")

from ganaudit.metrics.coverage import (  # noqa: E402
    collapse_threshold,
    duplicate_fraction,
    knn_radii,
    leave_one_out_nn_distances,
    nn_distance_summary,
    prdc,
    prdc_from_radii,
)

KEYS = ("precision", "recall", "density", "coverage")


def _gaussian(rng, n, d, scale=1.0, shift=0.0):
    return (rng.normal(size=(n, d)) * scale + shift).astype(np.float32)


def _reference(real, fake, k):
    return {key: float(v) for key, v in prdc_ref.compute_prdc(real, fake, k).items()}


CASE_SEEDS = {"same_distribution": 0, "shifted_wider": 1, "duplicates": 2, "duplicates_k1": 3}


def _case(name):
    rng = np.random.default_rng(CASE_SEEDS[name])
    if name == "same_distribution":
        return _gaussian(rng, 400, 32), _gaussian(rng, 300, 32), 5
    if name == "shifted_wider":
        return _gaussian(rng, 300, 16), _gaussian(rng, 350, 16, 1.3, 0.4), 3
    if name == "duplicates":
        real = _gaussian(rng, 300, 8)
        real[150:] = real[:150]  # every real point twice
        fake = _gaussian(rng, 250, 8, 1.1)
        fake[:60] = real[:60]  # fakes that copy reals exactly
        fake[200:] = fake[100:150]  # and fakes duplicated among themselves
        return real, fake, 4
    if name == "duplicates_k1":
        real = _gaussian(rng, 200, 4)
        real[100:150] = real[150:]
        return real, _gaussian(rng, 200, 4), 1
    raise KeyError(name)


@pytest.mark.parametrize("name", ["same_distribution", "shifted_wider", "duplicates", "duplicates_k1"])
@pytest.mark.parametrize("block_size", [64, 2048])
def test_prdc_equals_reference_package(name, block_size):
    real, fake, k = _case(name)
    ours = prdc(real, fake, nearest_k=k, block_size=block_size)
    ref = _reference(real, fake, k)
    assert set(ours) == set(KEYS)
    for key in KEYS:
        assert isinstance(ours[key], float)
        assert ours[key] == pytest.approx(ref[key], abs=1e-9), key


@pytest.mark.parametrize("name", ["same_distribution", "duplicates"])
def test_knn_radii_equal_reference_radii_bitwise(name):
    real, _, k = _case(name)
    ref = prdc_ref.prdc.compute_nearest_neighbour_distances(real, k)
    np.testing.assert_array_equal(knn_radii(real, k, block_size=50), ref.astype(np.float32))


def test_prdc_from_precomputed_radii_matches_prdc():
    real, fake, k = _case("shifted_wider")
    radii = knn_radii(real, k), knn_radii(fake, k)
    assert prdc_from_radii(real, fake, *radii, nearest_k=k) == prdc(real, fake, k)


def test_argument_order_is_real_then_fake():
    rng = np.random.default_rng(3)
    real = _gaussian(rng, 500, 8, scale=3.0)  # wide spread
    fake = _gaussian(rng, 500, 8, scale=0.3)  # tight cluster inside it
    result = prdc(real, fake, nearest_k=5)
    assert result["precision"] > 0.9 and result["recall"] < 0.1
    swapped = prdc(fake, real, nearest_k=5)
    assert swapped["precision"] < 0.1 and swapped["recall"] > 0.9
    assert result == pytest.approx(_reference(real, fake, 5), abs=1e-9)


def test_identical_inputs_are_fully_covered():
    x = _gaussian(np.random.default_rng(4), 300, 16)
    result = prdc(x, x.copy(), nearest_k=5)
    assert result["precision"] == result["recall"] == result["coverage"] == 1.0
    assert result["density"] >= 1.0  # each point sits inside its own k-NN ball too


@pytest.mark.slow
def test_readme_example_gaussian_1000d():
    # prdc README: N(0, I), 1000-d, 10k real and 10k fake, k=5.
    rng = np.random.default_rng(0)
    real, fake = _gaussian(rng, 10_000, 1000), _gaussian(rng, 10_000, 1000)
    result = prdc(real, fake, nearest_k=5)
    expected = {"precision": 0.477, "recall": 0.471, "density": 1.06, "coverage": 0.974}
    # Density varies by ~0.1 from one draw to the next at this size (hubness in 1000-d).
    tolerance = {"precision": 0.03, "recall": 0.03, "density": 0.2, "coverage": 0.03}
    for key in KEYS:
        assert abs(result[key] - expected[key]) < tolerance[key], (key, result[key])


@pytest.mark.parametrize(
    ("real", "fake", "k", "message"),
    [
        (np.zeros(10, np.float32), np.zeros((10, 2), np.float32), 2, "2-D"),
        (np.zeros((10, 3), np.float32), np.zeros((10, 2), np.float32), 2, "dimension mismatch"),
        (np.zeros((5, 2), np.float32), np.zeros((10, 2), np.float32), 5, "at least 6 rows"),
        (np.zeros((10, 2), np.float32), np.zeros((10, 2), np.float32), 0, "nearest_k"),
        (np.full((10, 2), np.nan, np.float32), np.zeros((10, 2), np.float32), 2, "NaN"),
    ],
)
def test_prdc_rejects_bad_input(real, fake, k, message):
    with pytest.raises(ValueError, match=message):
        prdc(real, fake, nearest_k=k)


def test_prdc_from_radii_rejects_wrong_radii_shape():
    real, fake, k = _case("shifted_wider")
    with pytest.raises(ValueError, match="radii must have shapes"):
        prdc_from_radii(real, fake, knn_radii(fake, k), knn_radii(real, k), nearest_k=k)


def test_collapsed_fake_set_is_all_duplicates():
    rng = np.random.default_rng(5)
    real = _gaussian(rng, 2000, 16)
    threshold = collapse_threshold(real, quantile=0.01)
    centres = real[:4]
    fake = np.repeat(centres, 50, axis=0) + _gaussian(rng, 200, 16, scale=1e-3)
    assert duplicate_fraction(fake, threshold) == 1.0
    summary = nn_distance_summary(real, fake)
    assert summary["median_nn_ratio"] < 0.01


def test_independent_fake_set_duplicates_at_about_the_quantile():
    rng = np.random.default_rng(6)
    real, fake = _gaussian(rng, 5000, 8), _gaussian(rng, 5000, 8)
    threshold = collapse_threshold(real, quantile=0.01)
    assert 0.004 <= duplicate_fraction(fake, threshold) <= 0.02
    assert nn_distance_summary(real, fake)["median_nn_ratio"] == pytest.approx(1.0, abs=0.05)


def test_precomputed_nn_distances_are_reused():
    rng = np.random.default_rng(7)
    real, fake = _gaussian(rng, 500, 8), _gaussian(rng, 400, 8)
    real_nn, fake_nn = leave_one_out_nn_distances(real), leave_one_out_nn_distances(fake)
    assert collapse_threshold(None, 0.05, real_nn_distances=real_nn) == collapse_threshold(real, 0.05)
    threshold = float(np.quantile(real_nn, 0.05))
    assert duplicate_fraction(None, threshold, fake_nn_distances=fake_nn) == duplicate_fraction(
        fake, threshold
    )
    assert nn_distance_summary(None, None, real_nn, fake_nn) == nn_distance_summary(real, fake)


def test_leave_one_out_nn_distances_ignore_self_but_see_duplicates():
    x = np.array([[0.0, 0.0], [3.0, 4.0], [3.0, 4.0], [10.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(leave_one_out_nn_distances(x), [5.0, 0.0, 0.0, np.hypot(7, 4)])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: collapse_threshold(np.zeros((10, 2), np.float32), quantile=1.5), "quantile"),
        (lambda: collapse_threshold(None), "give either real"),
        (lambda: duplicate_fraction(np.zeros((10, 2), np.float32), -1.0), "threshold"),
        (lambda: duplicate_fraction(np.zeros((1, 2), np.float32), 1.0), "at least 2 rows"),
        (
            lambda: duplicate_fraction(np.zeros((10, 2), np.float32), 1.0, np.zeros(3)),
            "3 entries for 10",
        ),
    ],
)
def test_collapse_functions_reject_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
