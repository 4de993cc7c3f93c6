"""Evidence per leaked training image: duplicates within the training set against
planted ones, the duplicate rule in closed form, and the evidence order."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import BankGenerator, run_cli, save_torchscript
from ganaudit.search.index import FlatIndex
from ganaudit.review.evidence import MAX_DUPLICATES, duplicate_run, evidence_table, train_duplicates


def test_duplicate_run_follows_the_flag_rule():
    # Two copies at distance 0.01, then ordinary neighbours at 1: both pass d_r / mean(next k) < 0.5.
    dist = np.array([0.01, 0.01, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert duplicate_run(dist, None, "score", 0.5, k=3) == 2
    # The first neighbour alone is not close enough: 0.6 / mean(1, 1, 1) = 0.6.
    assert duplicate_run(np.array([0.6, 1.0, 1.0, 1.0]), None, "score", 0.5, k=3) == 0
    # All-zero distances (identical images throughout) count as copies, as relative_nn_score scores them 0.
    assert duplicate_run(np.zeros(5), None, "score", 0.5, k=2) == 4
    assert duplicate_run(np.array([0.1, 0.2, 0.3]), None, "distance", 0.2, k=1) == 2
    assert duplicate_run(np.array([0.1, 0.2, 0.3]), np.array([0.99, 0.9, 0.8]), "similarity", 0.9, k=1) == 2
    assert duplicate_run(np.zeros(40), None, "distance", 1.0, k=1, limit=MAX_DUPLICATES) == MAX_DUPLICATES


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_train_duplicates_finds_planted_copies_in_an_index(metric):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((300, 16)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    feats[10] = feats[3]                                    # an exact duplicate of 3
    feats[20] = feats[3] + 0.01 * feats[7]                  # a near one
    feats[20] /= np.linalg.norm(feats[20])
    found = train_duplicates(FlatIndex(feats, metric), feats, [3, 7, 10], "score", 0.3, copy_k=20)
    assert sorted(found[3][0]) == [10, 20] and found[3][1] is False
    assert sorted(found[10][0]) == [3, 20]
    assert found[7] == ([], False)


@pytest.fixture(scope="module")
def planted(tiny_sets, tmp_path_factory) -> dict:
    """A training set with a byte copy of image A and a re-noised copy of image B; a generator that
    emits A, B and C (no duplicates), audited once."""
    root = tmp_path_factory.mktemp("planted")
    train = root / "train"
    shutil.copytree(tiny_sets["train"], train)
    a, b, c = "class_0/0000.png", "class_1/0000.png", "class_2/0005.png"
    shutil.copy(train / a, train / "class_0/zz_same.png")
    near = np.asarray(Image.open(train / b), dtype=np.int16)
    near[::5, ::3] += np.where(near[::5, ::3] > 128, -2, 2).astype(np.int16)
    Image.fromarray(near.astype(np.uint8)).save(train / "class_1/zz_near.png")
    bank = torch.stack([torch.from_numpy(np.asarray(Image.open(train / p), dtype=np.float32) / 255).permute(2, 0, 1)
                        for p in (a, b, c)])
    generator = save_torchscript(BankGenerator(bank), root / "bank.pt")
    out = root / "r.json"
    code, _, _ = run_cli("check", "--generator", generator, "--train", train, "--holdout", tiny_sets["holdout"],
                         "--num-samples", "60", "--tta", "none", "--json", out)
    assert code == 1
    return {"result": json.loads(out.read_text()), "a": a, "b": b, "c": c}


def test_duplicates_within_the_training_set_are_the_planted_ones(planted):
    leaked = {e["train_path"]: e for e in planted["result"]["memorization"]["leaked_train_examples"]}
    pairs = {planted["a"]: "class_0/zz_same.png", planted["b"]: "class_1/zz_near.png"}
    pairs.update({v: k for k, v in pairs.items()})
    assert set(leaked) <= set(pairs) | {planted["c"]} and planted["c"] in leaked
    assert {planted["a"], "class_0/zz_same.png"} & set(leaked) and {planted["b"], "class_1/zz_near.png"} & set(leaked)
    for path, entry in leaked.items():
        got = [(d["train_path"], d["same_content"]) for d in entry["duplicates"]]
        if path == planted["c"]:
            assert got == []
        else:
            same = path in (planted["a"], "class_0/zz_same.png")
            assert got == [(pairs[path], same)], path
            assert (entry["duplicates"][0]["train_sha256"] == entry["train_sha256"]) == same


def test_evidence_rows_are_sorted_by_evidence_and_count_every_hit(planted):
    result = planted["result"]
    rows = evidence_table(result)
    flagged = result["memorization"]["flagged"]
    assert sum(r["n_hits"] for r in rows) == len(flagged)
    for row in rows:
        hits = [f for f in flagged if f["train_index"] == row["train_index"]]
        assert row["n_hits"] == len(hits) and row["min_p_value"] == min(f["p_value"] for f in hits)
        assert len(row["best"]) == min(3, len(hits)) and row["waived"] == "none"
        assert [f["p_value"] for f in row["best"]] == sorted(f["p_value"] for f in hits)[:3]
    keys = [(-r["n_hits"], r["min_p_value"], r["min_score"]) for r in rows]
    assert keys == sorted(keys)


def test_evidence_reports_waived_state_per_image():
    def entry(i, t, p, waived):
        return {"sample_index": i, "train_index": t, "train_path": f"{t}.png", "p_value": p, "score": p,
                "waived_by": waived, "augmentation": "identity"}

    result = {"memorization": {
        "flagged": [entry(0, 5, 0.2, 1), entry(1, 5, 0.1, 1), entry(2, 6, 0.05, None), entry(3, 6, 0.3, 2),
                    entry(4, 7, 0.01, None)],
        "leaked_train_examples": [{"train_index": t, "train_path": f"{t}.png", "count": n} for t, n in ((5, 2), (6, 2), (7, 1))],
    }}
    rows = evidence_table(result, best=1)
    assert [(r["train_index"], r["waived"], r["waivers"]) for r in rows] == [(6, "some", [2]), (5, "all", [1]),
                                                                             (7, "none", [])]
    assert rows[1]["best"][0]["sample_index"] == 1 and rows[0]["min_p_value"] == 0.05
