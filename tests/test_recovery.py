"""Latent recovery (``--recover N``, issue 17): the metrics against references and planted truth,
the optimiser on generators whose latents are known, the notes for sources without gradients,
and (slow) the shipped memorising and healthy DCGANs."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import FIXTURES, run_cli, save_torchscript
from ganaudit.device import OomSplitter
from ganaudit.metrics import copy_stats
from ganaudit.metrics.recovery import auc_confidence_interval, min_reference_for, recovery_auc, recovery_flags
from ganaudit.search.recovery import LatentRecovery, RecoverySettings, gradient_problem
from ganaudit.sources.generators import Generator


# ---------------------------------------------------------------- metrics


def test_recovery_auc_is_sklearns_with_members_positive_and_closer_scoring_higher():
    rng = np.random.default_rng(0)
    train, holdout = rng.gamma(2.0, size=30), rng.gamma(2.5, size=41)
    train[:5] = holdout[:5]  # ties count one half, as sklearn's
    expected = roc_auc_score(np.r_[np.ones(30), np.zeros(41)], -np.r_[train, holdout])
    assert recovery_auc(train, holdout) == pytest.approx(expected, abs=1e-12)
    assert recovery_auc(np.zeros(3), np.ones(4)) == 1.0  # argument order: members first
    assert recovery_auc(np.ones(3), np.zeros(4)) == 0.0


def test_auc_interval_covers_the_true_auc_at_its_level_on_binormal_data():
    """Planted truth: distances ~ N(0, 1) vs N(delta, 1) have AUC Phi(delta / sqrt 2)."""
    from scipy.stats import norm

    rng = np.random.default_rng(1)
    for delta, m in ((0.0, 12), (1.0, 20), (2.0, 24)):
        truth = norm.cdf(delta / math.sqrt(2))
        covered = 0
        for _ in range(300):
            holdout = rng.normal(delta, 1.0, m) + 10
            train = rng.normal(0.0, 1.0, m) + 10
            low, high = auc_confidence_interval(recovery_auc(train, holdout), m, m)
            covered += low <= truth <= high
        assert 0.91 <= covered / 300 <= 0.995, (delta, covered)


def test_auc_interval_is_not_a_point_at_the_extremes_and_holds_the_estimate():
    low, high = auc_confidence_interval(1.0, 24, 24)
    assert high == 1.0 and 0.85 < low < 0.97
    low, high = auc_confidence_interval(0.0, 24, 24)
    assert low == 0.0 and 0.03 < high < 0.15
    for auc in (0.1, 0.5, 0.73):
        low, high = auc_confidence_interval(auc, 10, 15)
        assert low < auc < high
    wide, narrow = auc_confidence_interval(0.7, 10, 10), auc_confidence_interval(0.7, 400, 400)
    assert wide[1] - wide[0] > 3 * (narrow[1] - narrow[0])
    with pytest.raises(ValueError):
        auc_confidence_interval(1.2, 5, 5)
    with pytest.raises(ValueError):
        auc_confidence_interval(0.5, 0, 5)


def test_flags_are_the_conformal_rule_of_copy_search_and_hold_alpha_under_exchangeability():
    rng = np.random.default_rng(2)
    train, holdout = rng.random(50), rng.random(199)
    out = recovery_flags(train, holdout, alpha=0.05)
    np.testing.assert_array_equal(out["p_values"], copy_stats.empirical_p_values(train, holdout))
    np.testing.assert_array_equal(out["flagged"], out["p_values"] <= 0.05)
    assert out["threshold"] == copy_stats.calibrate_threshold(holdout, 0.05)
    rate = np.mean([recovery_flags(rng.random(40), rng.random(39), alpha=0.05)["flagged"].mean()
                    for _ in range(400)])
    assert rate <= 0.05 + 0.01  # same distribution: flagged at most alpha of the time
    planted = recovery_flags(np.r_[np.full(5, 0.001), rng.random(5)], rng.random(39) + 0.01, alpha=0.05)
    assert planted["flagged"][:5].all()


def test_too_few_holdout_images_for_alpha_flag_nothing_and_say_so():
    out = recovery_flags(np.zeros(8), np.ones(8), alpha=0.01)
    assert out["threshold"] is None and not out["flagged"].any()
    assert min_reference_for(0.01) == 99 and min_reference_for(0.05) == 19


# ---------------------------------------------------------------- the optimiser


class LinearTanh(torch.nn.Module):
    """G(z) = tanh(A z) as a (3, 8, 8) image in [-1, 1]: every image of its range has a known latent."""

    def __init__(self, z_dim: int = 6):
        super().__init__()
        self.z_dim = z_dim
        self.register_buffer("a", torch.randn(3 * 8 * 8, z_dim, generator=torch.Generator().manual_seed(0)) * 0.4)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.a.T).reshape(-1, 3, 8, 8)


class OomAbove(torch.nn.Module):
    """Wraps a module; raises the CUDA-style out-of-memory error for batches above ``limit``."""

    def __init__(self, inner: torch.nn.Module, limit: int):
        super().__init__()
        self.inner, self.limit, self.z_dim = inner, limit, inner.z_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[0] > self.limit:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(z)


def _generator(module) -> Generator:
    return Generator(module.eval(), module.z_dim, torch.device("cpu"), {"format": "test"}, value_range=(-1.0, 1.0))


def _images_of(module, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return (module(z) + 1) / 2


def test_recovery_finds_planted_latents_and_not_images_outside_the_range():
    module = LinearTanh()
    members = _images_of(module, torch.randn(6, 6, generator=torch.Generator().manual_seed(5)))
    strangers = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(6))  # no latent makes these
    rec = LatentRecovery(_generator(module), RecoverySettings(steps=150, restarts=2, lr=0.1))
    found = rec.recover(torch.cat([members, strangers]), np.arange(12), chunk=64)
    assert found.distance[:6].max() < 0.01 < 0.15 < found.distance[6:].min()
    assert recovery_auc(found.distance[:6], found.distance[6:]) == 1.0
    # the kept latents are those whose images were measured
    recon = rec.reconstruct(found.latents, batch_size=5)
    measured = (recon - torch.cat([members, strangers])).pow(2).flatten(1).mean(1).sqrt().double().numpy()
    np.testing.assert_allclose(measured, found.distance, atol=1e-6)


def test_results_do_not_depend_on_chunks_or_out_of_memory_splits(caplog):
    module = LinearTanh()
    targets = _images_of(module, torch.randn(5, 6, generator=torch.Generator().manual_seed(7))) * 0.9
    settings = RecoverySettings(steps=30, restarts=3, lr=0.1, seed=4)
    whole = LatentRecovery(_generator(module), settings).recover(targets, np.arange(5), chunk=5)
    one_by_one = LatentRecovery(_generator(module), settings).recover(targets, np.arange(5), chunk=1)
    squeezed = LatentRecovery(_generator(OomAbove(module, limit=6)), settings)
    split = squeezed.recover(targets, np.arange(5), chunk=5)  # 15 latents > 6: halves until 2 targets (6)
    assert squeezed._splitter.limit == 2 and "out of memory" in caplog.text
    for other in (one_by_one, split):
        np.testing.assert_allclose(other.distance, whole.distance, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(other.restart, whole.restart)


def test_progress_counts_every_target_step():
    steps = []
    rec = LatentRecovery(_generator(LinearTanh()), RecoverySettings(steps=7, restarts=2), on_step=steps.append)
    rec.recover(torch.rand(5, 3, 8, 8), np.arange(5), chunk=2)
    assert sum(steps) == 5 * 7


class Rounded(torch.nn.Module):
    """Quantises its output to 8 bits inside: the gradient with respect to z is zero."""

    def __init__(self):
        super().__init__()
        self.z_dim = 4

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.round(torch.tanh(z[:, :3, None, None]).expand(-1, 3, 8, 8) * 127) / 127


class NoGrad(torch.nn.Module):
    """Runs its forward without autograd."""

    def __init__(self):
        super().__init__()
        self.z_dim = 4

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.tanh(z[:, :3, None, None]).expand(-1, 3, 8, 8).clone()


def test_generators_without_gradients_are_named_not_run(tmp_path):
    assert gradient_problem(_generator(LinearTanh())) is None
    assert "zero" in gradient_problem(_generator(Rounded()))
    scripted = torch.jit.load(str(save_torchscript(NoGrad(), tmp_path / "nograd.pt")))
    scripted.z_dim = 4
    assert "no gradient" in gradient_problem(Generator(scripted, 4, torch.device("cpu"), value_range=(-1.0, 1.0)))
    conditional = _generator(LinearTanh())
    conditional.num_classes = 3
    assert "conditional" in gradient_problem(conditional)


@pytest.mark.parametrize("name, arch", [("dcgan.pt2", None), ("dcgan.torchscript.pt", None),
                                        ("dcgan_state_dict.pt", "fixtures.dcgan:Generator")])
def test_every_checkpoint_format_gives_gradients_and_one_recovery_step_lowers_the_loss(name, arch):
    from ganaudit.sources.generators import load_generator

    g = load_generator(FIXTURES / "generators" / name, torch.device("cpu"), arch=arch,
                       arch_kwargs='{"z_dim": 64, "ngf": 32}' if arch else None, value_range=(-1.0, 1.0))
    assert gradient_problem(g) is None
    target = g.decode(torch.ones(1, 64)).detach()
    far = LatentRecovery(g, RecoverySettings(steps=1, restarts=1, lr=1e-9)).recover(target, np.arange(1), chunk=1)
    near = LatentRecovery(g, RecoverySettings(steps=10, restarts=1, lr=0.05)).recover(target, np.arange(1), chunk=1)
    assert near.distance[0] < 0.8 * far.distance[0]


# ---------------------------------------------------------------- through the CLI


@pytest.mark.slow
def test_a_generator_without_gradients_gets_a_note_in_json_summary_and_report(tmp_path, tiny_sets, capsys):
    gen = save_torchscript(NoGrad(), tmp_path / "nograd.pt")
    out = tmp_path / "r.json"
    code, stdout, err = run_cli("check", "--generator", gen, "--z-dim", "4", "--train", tiny_sets["train"],
                                "--holdout", tiny_sets["holdout"], "--num-samples", "20", "--tta", "none", "--recover", "4",
                                "--json", out, "--html", tmp_path / "r.html", capsys=capsys)
    assert code in (0, 1), err
    rec = json.loads(out.read_text())["recovery"]
    assert rec["status"] == "skipped" and "no gradient" in rec["note"] and rec["auc"] is None
    assert "recovery  skipped: latent recovery not run" in stdout
    assert "Not run: latent recovery not run" in (tmp_path / "r.html").read_text()


def test_recover_on_a_tiny_generator_writes_every_output(tmp_path, tiny_sets, capsys):
    gen = save_torchscript(LinearSized16(), tmp_path / "lin.pt")
    out, html = tmp_path / "r.json", tmp_path / "r.html"
    code, stdout, err = run_cli("check", "--generator", gen, "--train", tiny_sets["train"], "--holdout",
                                tiny_sets["holdout"], "--num-samples", "20", "--tta", "none", "--recover", "5", "--recover-steps", "5",
                                "--recover-restarts", "2", "--alpha", "0.2", "--json", out, "--html", html,
                                capsys=capsys)
    assert code in (0, 1), err
    result = json.loads(out.read_text())
    rec = result["recovery"]
    assert rec["status"] == "done" and rec["n_train"] == rec["n_holdout"] == 5 and rec["steps"] == 5
    assert [t["distance"] for t in rec["train"]] == sorted(t["distance"] for t in rec["train"])
    assert all("latent" in t and len(t["latent"]) == 6 for t in rec["train"])
    assert rec["output_size"] == [16, 16] and "recovery" in result["timings"]
    assert "recovery  AUC" in stdout
    page = html.read_text()
    assert "Most recoverable training images" in page and page.count('alt="reconstruction of training image') == 5


class LinearSized16(LinearTanh):
    """LinearTanh at 16 x 16 (the tiny sets' size)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("a", torch.randn(3 * 16 * 16, 6, generator=torch.Generator().manual_seed(0)) * 0.4)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.a.T).reshape(-1, 3, 16, 16)


# ---------------------------------------------------------------- the shipped fixtures (slow)

GENERATORS = FIXTURES / "generators"
DATA = FIXTURES / "data"


def _recover(tmp_path, capsys, generator, train, n, *extra):
    out = tmp_path / "r.json"
    code, _, err = run_cli("check", "--generator", generator, "--train", train, "--holdout", DATA / "holdout",
                           "--num-samples", "20", "--tta", "none", "--recover", str(n), "--recover-steps", "100",
                           "--recover-restarts", "2", "--alpha", "0.05", "--json", out, *extra, capsys=capsys)
    assert code in (0, 1), err
    return json.loads(out.read_text())["recovery"]


@pytest.mark.slow
def test_the_memorising_dcgan_reconstructs_its_training_images(tmp_path, capsys):
    manifest = json.loads((GENERATORS / "memorised_manifest.json").read_text())
    rec = _recover(tmp_path, capsys, GENERATORS / "memorised.pt2", DATA / "memorised_train", 24)
    assert rec["n_train"] == 24 and rec["auc"] >= 0.9 and rec["auc_ci95"][0] > 0.75, rec["auc"]
    assert rec["n_flagged"] >= 12
    assert {t["train_path"] for t in rec["train"]} == set(manifest["subset"]["train_paths"])
    # pooled over training and held-out images, the most recoverable are the training images
    pooled = sorted([(t["distance"], "train") for t in rec["train"]] + [(h["distance"], "holdout") for h in rec["holdout"]])
    assert [kind for _, kind in pooled[:8]] == ["train"] * 8
    assert sum(kind == "train" for _, kind in pooled[:24]) >= 20


@pytest.mark.slow
def test_the_healthy_dcgan_treats_training_and_holdout_images_alike(tmp_path, capsys):
    rec = _recover(tmp_path, capsys, GENERATORS / "dcgan.pt2", DATA / "train", 24)
    low, high = rec["auc_ci95"]
    assert low <= 0.5 <= high and 0.25 <= rec["auc"] <= 0.75, rec
    assert rec["n_flagged"] <= 4
