"""The embedding cache: hits, invalidation, resumption after an interruption, corruption."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
from PIL import Image

from conftest import write_image_folder
from ganaudit.embedders import create_embedder
from ganaudit.embedders.cache import cache_key, default_cache_dir, embed_image_set
from ganaudit.sources.datasets import open_image_set

BATCH, CHUNK = 4, 8  # 30 images: chunks of 8, 8, 8, 6 rows; two embedder calls per chunk


class Interrupted(Exception):
    pass


def CountingPixels(fail_at: int | None = None):
    """The pixels embedder (it counts its calls); raises on its ``fail_at``-th call if given."""
    embedder = create_embedder("pixels", "cpu")
    original = embedder.embed

    def embed(images):
        if fail_at is not None and embedder.calls + 1 == fail_at:
            raise Interrupted(f"killed at call {fail_at}")
        return original(images)

    embedder.embed = embed
    return embedder


@pytest.fixture
def image_dir(tmp_path):
    return write_image_folder(tmp_path / "train", n_classes=3, per_class=10, size=16)


def _embed(images, embedder, cache_dir):
    return embed_image_set(images, embedder, BATCH, cache_dir, "test", False, chunk_size=CHUNK)


def _chunks(cache_dir):
    return sorted(cache_dir.glob("features/*/chunk-*.bin"))


def test_a_second_run_reads_the_cache_and_embeds_nothing(image_dir, tmp_path):
    cache = tmp_path / "cache"
    uncached = _embed(open_image_set(image_dir), CountingPixels(), None)
    first_embedder, second_embedder = CountingPixels(), CountingPixels()
    first = _embed(open_image_set(image_dir), first_embedder, cache)
    second = _embed(open_image_set(image_dir), second_embedder, cache)
    assert first_embedder.calls == 8 and second_embedder.calls == 0
    assert first.shape == (30, 3072) and first.dtype == np.float32
    np.testing.assert_array_equal(second, first)
    np.testing.assert_array_equal(first, uncached)
    # The complete entry is one matrix, memory-mapped read-only; its chunks are gone.
    assert not _chunks(cache) and not list(cache.rglob("*.tmp"))
    assert len(list(cache.glob("features/*/features.npy"))) == 1
    for feats in (first, second):
        assert isinstance(feats, np.memmap) and not feats.flags.writeable
    assert not isinstance(uncached, np.memmap)


def test_changed_data_is_a_new_entry(image_dir, tmp_path):
    cache = tmp_path / "cache"
    before = _embed(open_image_set(image_dir), CountingPixels(), cache)
    victim = sorted(image_dir.rglob("*.png"))[13]
    pixels = np.asarray(Image.open(victim)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(victim)
    embedder = CountingPixels()
    after = _embed(open_image_set(image_dir), embedder, cache)
    assert embedder.calls == 8  # a different fingerprint: embedded again
    changed = np.flatnonzero((after != before).any(axis=1))
    np.testing.assert_array_equal(changed, [13])


def test_the_key_covers_embedder_spec_and_weights(image_dir):
    images = open_image_set(image_dir)
    embedder = CountingPixels()
    key, material = cache_key(images, embedder)
    assert material["fingerprint"] == images.fingerprint() and material["embedder"]["weights_sha256"] == "none"
    embedder.spec = dataclasses.replace(embedder.spec, input_size=(16, 16), dim=768)
    assert cache_key(images, embedder)[0] != key
    embedder.spec = dataclasses.replace(embedder.spec, input_size=(32, 32), dim=3072)
    assert cache_key(images, embedder)[0] == key
    embedder._weights_sha256, embedder.weights_path = "0" * 64, image_dir
    assert cache_key(images, embedder)[0] != key


def test_an_interrupted_run_resumes_after_its_last_complete_chunk(image_dir, tmp_path):
    cache = tmp_path / "cache"
    reference = _embed(open_image_set(image_dir), CountingPixels(), None)
    with pytest.raises(Interrupted):
        _embed(open_image_set(image_dir), CountingPixels(fail_at=6), cache)  # dies inside chunk 2
    assert [p.name for p in _chunks(cache)] == ["chunk-000000.bin", "chunk-000001.bin"]
    resumed_embedder = CountingPixels()
    resumed = _embed(open_image_set(image_dir), resumed_embedder, cache)
    assert resumed_embedder.calls == 4  # chunks 2 and 3 only
    np.testing.assert_array_equal(resumed, reference)


def _damage(path, damage: str) -> None:
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) // 3:]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_corrupt_chunk_is_detected_and_rebuilt(image_dir, tmp_path, caplog, damage):
    cache = tmp_path / "cache"
    reference = _embed(open_image_set(image_dir), CountingPixels(), None)
    with pytest.raises(Interrupted):
        _embed(open_image_set(image_dir), CountingPixels(fail_at=6), cache)  # chunks 0 and 1 written
    chunk = _chunks(cache)[1]
    _damage(chunk, damage)
    embedder = CountingPixels()
    with caplog.at_level(logging.WARNING, logger="ganaudit.embedders.cache"):
        rebuilt = _embed(open_image_set(image_dir), embedder, cache)
    assert embedder.calls == 6  # that chunk and the two never written
    assert "corrupt" in caplog.text and chunk.name in caplog.text
    np.testing.assert_array_equal(rebuilt, reference)
    again = CountingPixels()
    _embed(open_image_set(image_dir), again, cache)
    assert again.calls == 0


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_corrupt_matrix_is_detected_and_embedded_again(image_dir, tmp_path, caplog, damage):
    cache = tmp_path / "cache"
    reference = np.array(_embed(open_image_set(image_dir), CountingPixels(), cache))
    matrix = next(cache.glob("features/*/features.npy"))
    _damage(matrix, damage)
    embedder = CountingPixels()
    with caplog.at_level(logging.WARNING, logger="ganaudit.embedders.cache"):
        rebuilt = _embed(open_image_set(image_dir), embedder, cache)
    assert embedder.calls == 8 and "corrupt" in caplog.text and "features.npy" in caplog.text
    np.testing.assert_array_equal(rebuilt, reference)


def test_a_run_killed_while_joining_embeds_only_the_chunks_it_deleted(image_dir, tmp_path, monkeypatch):
    import ganaudit.embedders.cache as cache_module

    cache = tmp_path / "cache"
    reference = _embed(open_image_set(image_dir), CountingPixels(), None)
    real = cache_module.write_atomic_parts

    def dies_after_two_chunks(path, parts):
        for i, _ in enumerate(parts):  # the header, then one part per chunk
            if i == 2:
                raise Interrupted("killed while joining")

    monkeypatch.setattr(cache_module, "write_atomic_parts", dies_after_two_chunks)
    with pytest.raises(Interrupted):
        _embed(open_image_set(image_dir), CountingPixels(), cache)
    assert [p.name for p in _chunks(cache)] == ["chunk-000001.bin", "chunk-000002.bin", "chunk-000003.bin"]
    monkeypatch.setattr(cache_module, "write_atomic_parts", real)
    embedder = CountingPixels()
    np.testing.assert_array_equal(_embed(open_image_set(image_dir), embedder, cache), reference)
    assert embedder.calls == 2 and not _chunks(cache)


def test_an_unreadable_manifest_rebuilds_the_entry(image_dir, tmp_path, caplog):
    cache = tmp_path / "cache"
    reference = _embed(open_image_set(image_dir), CountingPixels(), cache)
    next(cache.glob("features/*/entry.json")).write_text("{not json")
    embedder = CountingPixels()
    with caplog.at_level(logging.WARNING, logger="ganaudit.embedders.cache"):
        np.testing.assert_array_equal(_embed(open_image_set(image_dir), embedder, cache), reference)
    assert embedder.calls == 8 and "manifest" in caplog.text


def test_skipped_corrupt_images_are_counted_on_a_hit_too(image_dir, tmp_path):
    (image_dir / "class_1" / "0003.png").write_bytes(b"not a png")
    cache = tmp_path / "cache"
    first_set, second_set = (open_image_set(image_dir, skip_corrupt=True) for _ in range(2))
    first = _embed(first_set, CountingPixels(), cache)
    embedder = CountingPixels()
    second = _embed(second_set, embedder, cache)
    assert first.shape == (29, 3072) and embedder.calls == 0
    np.testing.assert_array_equal(second, first)
    assert first_set.n_corrupt == second_set.n_corrupt == 1
    assert len(first_set) == len(second_set) == 29 and "class_1/0003.png" not in second_set.paths


def test_array_sets_are_cached_by_their_bytes(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "train.npz"
    np.savez(path, images=rng.integers(0, 256, size=(10, 8, 8, 3), dtype=np.uint8))
    cache = tmp_path / "cache"
    first = _embed(open_image_set(path), CountingPixels(), cache)
    embedder = CountingPixels()
    np.testing.assert_array_equal(_embed(open_image_set(path), embedder, cache), first)
    assert embedder.calls == 0 and first.shape == (10, 3072)


def test_the_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "ganaudit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "ganaudit"
