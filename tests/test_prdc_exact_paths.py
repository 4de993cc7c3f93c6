"""The float32 fast path of PRDC against its exact fallbacks and the ``prdc`` package.

``ganaudit.metrics.tiles`` decides most comparisons from float32 GEMM tiles and a
rigorous error bound, recomputing in float64 only the pairs the bound cannot decide. These
tests feed it inputs where the bound is tight or useless (ties on a lattice, a large common
offset, norms far outside float32's comfortable range) and force every pair through the
exact paths with the module's test hooks: the results must not change.
"""
import numpy as np
import pytest

from ganaudit.metrics import tiles
from ganaudit.metrics.coverage import knn_radii, prdc, prdc_from_radii

prdc_ref = pytest.importorskip("prdc")

KEYS = ("precision", "recall", "density", "coverage")


def _reference(real, fake, k):
    return {key: float(v) for key, v in prdc_ref.compute_prdc(real, fake, k).items()}


def _gaussian(rng, n, d, scale=1.0, shift=0.0):
    return (rng.normal(size=(n, d)) * scale + shift).astype(np.float32)


def _cases():
    rng = np.random.default_rng(11)
    lattice_real = rng.integers(0, 3, size=(300, 6)).astype(np.float32)  # many exact ties
    lattice_fake = rng.integers(0, 3, size=(250, 6)).astype(np.float32)
    offset = 1000.0  # |x|² ≫ |x - y|²: the GEMM expansion cancels, the bound decides little
    return {
        "lattice": (lattice_real, lattice_fake, 4),
        "large_offset": (_gaussian(rng, 300, 16, shift=offset), _gaussian(rng, 280, 16, 1.2, offset), 5),
        "huge_norms": (_gaussian(rng, 200, 8, scale=2.0**50), _gaussian(rng, 210, 8, scale=2.0**50), 3),
        "tiny_norms": (_gaussian(rng, 200, 8, scale=2.0**-50), _gaussian(rng, 190, 8, scale=2.0**-50), 3),
        "gaussian": (_gaussian(rng, 400, 32), _gaussian(rng, 350, 32, 1.1, 0.1), 5),
    }


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_fast_path_equals_prdc_package(name):
    real, fake, k = CASES[name]
    ours = prdc(real, fake, nearest_k=k, block_size=64)
    ref = _reference(real, fake, k)
    for key in KEYS:
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key


@pytest.mark.parametrize("name", sorted(CASES))
def test_radii_equal_prdc_package_bitwise(name):
    real, _, k = CASES[name]
    expected = prdc_ref.prdc.compute_nearest_neighbour_distances(real, k).astype(np.float32)
    np.testing.assert_array_equal(knn_radii(real, k, block_size=64), expected)


@pytest.mark.parametrize("name", ["lattice", "gaussian", "large_offset"])
@pytest.mark.parametrize(("error_scale", "order_scale"), [(1e12, 1.0), (1e12, 1e12)])
def test_forcing_every_pair_through_the_exact_paths_changes_nothing(monkeypatch, name, error_scale, order_scale):
    # A huge float32 error bound sends every pair to the float64 recomputation (and every
    # radius to the full search); a huge order bound then sends every recomputed pair to the
    # reference tiles. Both only cost time: the results must be the same.
    real, fake, k = CASES[name]
    fast_radii = knn_radii(real, k, block_size=64)
    fast = prdc(real, fake, nearest_k=k, block_size=64)
    monkeypatch.setattr(tiles, "_ERROR_BOUND_SCALE", error_scale)
    monkeypatch.setattr(tiles, "_ORDER_BOUND_SCALE", order_scale)
    calls = {"_radii_full_search": 0, "_sklearn_sq_distances": 0, "_reference_distances": 0}
    for fn in calls:
        original = getattr(tiles, fn)

        def counted(*args, _fn=fn, _original=original):
            calls[_fn] += 1
            return _original(*args)

        monkeypatch.setattr(tiles, fn, counted)
    np.testing.assert_array_equal(knn_radii(real, k, block_size=64), fast_radii)
    assert prdc(real, fake, nearest_k=k, block_size=64) == fast
    assert calls["_radii_full_search"] > 0 and calls["_sklearn_sq_distances"] > 0  # the paths did run
    assert (calls["_reference_distances"] > 0) == (order_scale > 1)


def test_self_candidates_are_the_smallest_float32_values():
    # The symmetric tile walk must give each row its n smallest ŝ to other rows.
    rng = np.random.default_rng(3)
    x = _gaussian(rng, 150, 12)
    sq = tiles._squared_norms(x, 64)
    ops = tiles._Operands(sq, x.shape[1], 1.0)
    idx, val = tiles._self_candidates(x, ops, 7, tile=40)
    full = sq[:, None] + sq[None, :] - 2.0 * (x.astype(np.float64) @ x.astype(np.float64).T)
    np.fill_diagonal(full, np.inf)
    expected = np.sort(full, axis=1)[:, :7]
    assert np.all(idx != np.arange(150)[:, None])
    np.testing.assert_allclose(val, expected, rtol=0, atol=1e-3)  # float32 GEMM against float64
    np.testing.assert_allclose(full[np.arange(150)[:, None], idx], expected, rtol=0, atol=2e-3)


def test_infinite_radii_hold_every_point():
    rng = np.random.default_rng(5)
    real, fake = _gaussian(rng, 60, 4), _gaussian(rng, 50, 4)
    real_radii = np.full(60, np.inf, np.float32)
    fake_radii = np.zeros(50, np.float32)
    out = prdc_from_radii(real, fake, real_radii, fake_radii, nearest_k=3)
    assert out == {"precision": 1.0, "recall": 0.0, "density": 60 / 3, "coverage": 1.0}
