"""Memory that stays flat: searches and passes over a memory-mapped feature matrix hold about
one block of it resident, and give what the same computation in memory gives."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ganaudit.features as features_module
from ganaudit.metrics.clustering import nearest_centroid
from ganaudit.metrics.memorization import authentic_mask, mia_auc, within_cell_nearest_distances
from ganaudit.metrics.modes import class_distances
from ganaudit.search.index import FlatIndex, grouped_knn


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.maximum((a**2).sum(1)[:, None] - 2 * a @ b.T + (b**2).sum(1)[None], 0.0)


@pytest.fixture
def mapped(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16_384, 1024), dtype=np.float32)  # 64 MiB
    x[100] = x[7]  # an exact duplicate: leave-one-out must still find distance 0
    path = tmp_path / "features.npy"
    np.save(path, x)
    return x, np.load(path, mmap_mode="r")


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_search_over_a_memory_map_equals_search_in_memory(mapped, metric):
    x, mm = mapped
    q = np.random.default_rng(1).standard_normal((37, 1024), dtype=np.float32)
    d_mem, i_mem = FlatIndex(x, metric, block_size=5000).search(q, 5)
    d_map, i_map = FlatIndex(mm, metric, block_size=5000).search(q, 5)
    np.testing.assert_array_equal(i_map, i_mem)
    np.testing.assert_allclose(d_map, d_mem, rtol=1e-6)
    score = q @ x.T if metric == "ip" else -_sq_dist(q, x)
    np.testing.assert_array_equal(i_mem[:, 0], np.argmax(score, axis=1))  # numpy, brute force


def test_a_search_holds_about_one_block_of_a_memory_map(mapped, monkeypatch):
    x, mm = mapped
    if not _reset_peak():
        pytest.skip("/proc/self/clear_refs cannot be written here")
    monkeypatch.setattr(features_module, "RESIDENT_BLOCK_BYTES", 2 << 20)  # 2 MiB blocks
    q = np.random.default_rng(1).standard_normal((64, 1024), dtype=np.float32)
    index = FlatIndex(mm, "l2")
    del x
    _reset_peak()
    before = _status_kib("VmRSS")
    index.search(q, 3)
    labels = nearest_centroid(mm, q[:4])
    grown_mib = (_status_kib("VmHWM") - before) / 1024
    assert grown_mib < 24, f"peak grew by {grown_mib:.0f} MiB over a 64 MiB memory map"
    assert labels.shape == (mm.shape[0],)


def test_memory_mapped_queries_are_read_a_block_at_a_time(mapped, monkeypatch):
    """The MIA scores every training image (the queries) against the samples, and C_T finds
    each query's nearest training point within its cell: neither holds the whole training
    matrix resident, and both give what the same computation in memory gives."""
    x, mm = mapped
    if not _reset_peak():
        pytest.skip("/proc/self/clear_refs cannot be written here")
    monkeypatch.setattr(features_module, "RESIDENT_BLOCK_BYTES", 2 << 20)  # 2 MiB blocks
    rng = np.random.default_rng(3)
    gen, holdout = rng.standard_normal((50, 1024), dtype=np.float32), rng.standard_normal((40, 1024), dtype=np.float32)
    cells = rng.integers(0, 5, size=len(mm))
    query_cells = rng.integers(0, 6, size=len(gen))  # cell 5 holds no training point
    expected_d, expected_i = FlatIndex(gen, "l2").search(x, 2)
    expected_auc = mia_auc(x, holdout, gen)
    expected_cells = within_cell_nearest_distances(x, cells, gen, query_cells)
    del x
    _reset_peak()
    before = _status_kib("VmRSS")
    d, i = FlatIndex(gen, "l2").search(mm, 2)
    auc = mia_auc(mm, holdout, gen)
    in_cells = within_cell_nearest_distances(mm, cells, gen, query_cells)
    grown_mib = (_status_kib("VmHWM") - before) / 1024
    assert grown_mib < 24, f"peak grew by {grown_mib:.0f} MiB over a 64 MiB memory map"
    np.testing.assert_array_equal(i, expected_i)
    np.testing.assert_allclose(d, expected_d, rtol=1e-6)
    assert auc == pytest.approx(expected_auc, abs=1e-12)
    np.testing.assert_allclose(in_cells, expected_cells, rtol=1e-6)
    assert np.isnan(in_cells[query_cells == 5]).all() and not np.isnan(in_cells[query_cells < 5]).any()


def test_within_cell_distances_equal_brute_force(mapped):
    x, _ = mapped
    train, queries = x[:2000], x[2000:2100] + 0.01
    rng = np.random.default_rng(4)
    cells, query_cells = rng.integers(0, 4, size=len(train)), rng.integers(0, 4, size=len(queries))
    d = np.sqrt(_sq_dist(queries, train))
    d[query_cells[:, None] != cells[None, :]] = np.inf
    np.testing.assert_allclose(within_cell_nearest_distances(train, cells, queries, query_cells), d.min(1),
                               rtol=1e-5)


def test_authenticity_needs_only_the_matched_rows_and_agrees_with_brute_force(mapped):
    x, mm = mapped
    train = mm[:3000]
    rng = np.random.default_rng(2)
    gen = np.concatenate([x[[7, 11, 12]] + 1e-4, rng.standard_normal((20, 1024), dtype=np.float32)])
    d = np.sqrt(_sq_dist(gen, x[:3000]))
    nearest = d.argmin(1)
    own = np.sqrt(_sq_dist(x[:3000], x[:3000]))
    np.fill_diagonal(own, np.inf)
    expected = d[np.arange(len(gen)), nearest] > own.min(1)[nearest]
    np.testing.assert_array_equal(authentic_mask(train, gen), expected)
    assert not authentic_mask(train, gen)[1:3].any()  # near copies of training images


def test_grouped_search_equals_one_brute_force_search_per_group(mapped):
    x, mm = mapped
    groups = np.random.default_rng(2).integers(0, 5, x.shape[0])
    groups[groups == 3] = 4  # group 3 is empty
    q = np.random.default_rng(3).standard_normal((9, 1024), dtype=np.float32)
    ks = np.array([4, 1, 6, 0, 3])
    dist, rows = grouped_knn(mm, groups, q, ks, block_size=3000)
    assert dist[3].shape == rows[3].shape == (9, 0)
    for g in (0, 1, 2, 4):
        members = np.flatnonzero(groups == g)
        sq = _sq_dist(q, x[members])  # numpy, brute force
        best = np.argsort(sq, axis=1, kind="stable")[:, : ks[g]]
        np.testing.assert_array_equal(rows[g], members[best])
        np.testing.assert_allclose(dist[g], np.sqrt(np.take_along_axis(sq, best, 1)), rtol=1e-4)


def test_mode_distances_hold_about_one_block_of_a_memory_map(mapped, monkeypatch):
    """The modes' margin calibration searches each mode's training rows: without gathering them
    (a gather of every mode's rows in turn left the whole 1.2 GB pixels matrix resident in the
    100k scale benchmark), and with the same distances as the gathered search."""
    x, mm = mapped
    if not _reset_peak():
        pytest.skip("/proc/self/clear_refs cannot be written here")
    labels = np.random.default_rng(4).integers(0, 4, x.shape[0])
    q = np.random.default_rng(5).standard_normal((16, 1024), dtype=np.float32)
    rows = np.arange(0, x.shape[0], 997)
    expected = class_distances(x, labels, x[rows], n_modes=4, k=3, self_index=rows)
    monkeypatch.setattr(features_module, "RESIDENT_BLOCK_BYTES", 2 << 20)  # 2 MiB blocks
    reference = features_module.take_rows(mm, rows)
    del x
    _reset_peak()
    before = _status_kib("VmRSS")
    got = class_distances(mm, labels, reference, n_modes=4, k=3, self_index=rows)
    gen = class_distances(mm, labels, q, n_modes=4, k=3)
    grown_mib = (_status_kib("VmHWM") - before) / 1024
    assert grown_mib < 24, f"peak grew by {grown_mib:.0f} MiB over a 64 MiB memory map"
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert gen.shape == (16, 4) and np.isfinite(gen).all()
