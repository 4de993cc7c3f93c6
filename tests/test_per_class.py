"""Conditional generators: memorisation and coverage reported per class."""
from __future__ import annotations

import json

import torch

from conftest import ProceduralGenerator, load_folder_as_tensor, run_cli, save_torchscript


class LeaksClassOne(torch.nn.Module):
    """Conditional generator: class 1 returns training images of class 1, others are fresh draws."""

    def __init__(self, fresh: ProceduralGenerator, class_one_images: torch.Tensor):
        super().__init__()
        self.fresh = fresh
        self.register_buffer("bank", class_one_images * 2 - 1)
        self.z_dim = fresh.z_dim

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # Fresh draws of the requested class: pin the class coordinate of z to the class.
        pinned = z.clone()
        pinned[:, 0] = torch.special.ndtri((labels.to(z.dtype) + 0.5) / 3)
        j = (torch.special.ndtr(z[:, 1]) * self.bank.shape[0]).long().clamp(max=self.bank.shape[0] - 1)
        copies = self.bank[j]
        return torch.where((labels == 1)[:, None, None, None], copies, self.fresh(pinned))


def test_leaks_are_reported_for_the_class_that_leaks(tiny_sets, tmp_path, capsys):
    class_one = load_folder_as_tensor(tiny_sets["train"] / "class_1")
    gen = save_torchscript(LeaksClassOne(ProceduralGenerator(), class_one), tmp_path / "cond.pt")
    out = tmp_path / "r.json"
    code, _, err = run_cli("check", "--generator", gen, "--num-classes", "3", "--train", tiny_sets["train"],
                           "--holdout", tiny_sets["holdout"], "--num-samples", "180", "--tta", "none",
                           "--json", out, "--html", tmp_path / "r.html", capsys=capsys)
    assert code == 1, err
    result = json.loads(out.read_text())
    rows = {r["name"]: r for r in result["memorization"]["per_class"]}
    assert set(rows) == {"class_0", "class_1", "class_2"}
    assert rows["class_1"]["flagged_fraction"] > 0.9
    assert rows["class_0"]["flagged_fraction"] < 0.1 and rows["class_2"]["flagged_fraction"] < 0.1
    coverage = {r["name"]: r for r in result["coverage"]["per_class"]}
    assert coverage["class_0"]["precision"] > 0.5  # fresh draws of the right class
    assert sum(r["n_samples"] for r in rows.values()) == 180
    assert "Per class (conditional generator)" in (tmp_path / "r.html").read_text()


def test_per_class_prdc_is_capped_like_the_whole_sets(tmp_path):
    """A class's PRDC reads at most coverage_max_real of its training rows (seeded, from a memory
    map span by span); below the cap it is PRDC of the whole class."""
    from types import SimpleNamespace

    import numpy as np

    from ganaudit.config import AuditConfig
    from ganaudit.findings.per_class import per_class_sections
    from ganaudit.metrics import coverage as cov

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], [300, 40])
    feats = (rng.standard_normal((340, 8)) + labels[:, None] * 3).astype(np.float32)
    np.save(tmp_path / "f.npy", feats)
    mapped = np.load(tmp_path / "f.npy", mmap_mode="r")
    gen = (rng.standard_normal((60, 8)) + np.repeat([0, 1], 30)[:, None] * 3).astype(np.float32)
    evidence = SimpleNamespace(
        train=SimpleNamespace(labels=labels, class_names=["a", "b"]), train_features=mapped,
        generated=SimpleNamespace(class_labels=np.repeat([0, 1], 30), features=gen),
        flags=SimpleNamespace(flagged=np.zeros(60, bool)))
    config = AuditConfig(generator=tmp_path / "g.pt", train=tmp_path, coverage_max_real=100, nearest_k=5)
    _, rows = per_class_sections(evidence, config)
    assert rows[0]["n_real"] == 100 and rows[1]["n_real"] == 40
    whole_b = cov.prdc(feats[labels == 1], gen[30:], nearest_k=5)
    assert {k: rows[1][k] for k in whole_b} == whole_b
    again = per_class_sections(evidence, config)[1]
    assert again == rows  # seeded
