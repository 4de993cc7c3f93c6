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
