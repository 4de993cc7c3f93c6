"""A second audit against the same training set reuses its cached features."""
from __future__ import annotations

from pathlib import Path

import ganaudit.audit as audit_module
import ganaudit.embedders.cache as cache_module
from ganaudit.config import AuditConfig


def test_second_checkpoint_does_not_embed_the_training_set_again(tiny_sets, tmp_path, monkeypatch):
    train_batches: list[int] = []
    original = cache_module.embed_image_set  # what the local engine calls (ganaudit/engines)

    def counting(images, embedder, *args, **kwargs):
        before = embedder.calls
        out = original(images, embedder, *args, **kwargs)
        train_batches.append(embedder.calls - before)
        return out

    monkeypatch.setattr(cache_module, "embed_image_set", counting)  # the engine's training features
    monkeypatch.setattr(audit_module, "embed_image_set", counting)  # hygiene's contrast, called by the audit
    common = dict(train=Path(tiny_sets["train"]), holdout=Path(tiny_sets["holdout"]), num_samples=60,
                  tta=(), cache_dir=tmp_path / "cache")
    first = audit_module.audit(AuditConfig(generator=Path(tiny_sets["fresh_gen"]), **common))
    second = audit_module.audit(AuditConfig(generator=Path(tiny_sets["copy_gen"]), **common))
    # Three feature sets per audit: the embedder's (pixels), copy search's (pixels-copy) and
    # the RMS contrast reference hygiene reads (issue 16).
    assert len(train_batches) == 6
    assert all(n > 0 for n in train_batches[:3]) and train_batches[3:] == [0, 0, 0]
    assert first.train["fingerprint"] == second.train["fingerprint"]
    no_cache = audit_module.audit(AuditConfig(generator=Path(tiny_sets["copy_gen"]), no_cache=True, **common))
    assert all(n > 0 for n in train_batches[6:9])
    assert no_cache.memorization["n_flagged"] == second.memorization["n_flagged"]


def test_an_approximate_index_is_cached_beside_the_training_features(tiny_sets, tmp_path):
    common = dict(generator=Path(tiny_sets["copy_gen"]), train=Path(tiny_sets["train"]),
                  holdout=Path(tiny_sets["holdout"]), num_samples=60, tta=(), index="hnsw",
                  cache_dir=tmp_path / "cache")
    first = audit_module.audit(AuditConfig(**common))
    second = audit_module.audit(AuditConfig(**common))
    assert first.memorization["index"] | {"cached": True} == second.memorization["index"]
    assert not first.memorization["index"]["cached"] and second.memorization["index"]["device"] == "cpu"
    (written,) = (tmp_path / "cache").glob("indexes/hnsw-*.faiss")  # beside features/ in the cache
    assert second.memorization["n_flagged"] == first.memorization["n_flagged"]
    uncached = audit_module.audit(AuditConfig(**common | {"no_cache": True, "cache_dir": None}))
    assert not uncached.memorization["index"]["cached"]
