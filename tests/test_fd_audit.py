"""FID∞, reference statistics files, `ganaudit stats`, and the FD options of `ganaudit check`.

The plumbing tests run the FID pipeline with a small stand-in network (``TinyFidNetwork``)
and check every figure against an independent computation on the same features; the slow
test runs the real FID Inception and reads ganaudit's statistics file with pytorch-fid.
"""
from __future__ import annotations

import json
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from fid_support import ganaudit_features, use_tiny_fid_network, write_fid_folder, write_weight_files
from ganaudit.config import resolve_config
from ganaudit.embedders.fid_protocols import PROTOCOLS, create_fid_embedder, inception_score_order
from ganaudit.errors import GanauditError
from ganaudit.metrics.fid import (
    extrapolate_in_inverse_n, features_to_statistics, fid_infinity, frechet_distance, kernel_distance,
    statistics_to_frechet_distance,
)
from ganaudit.metrics.inception_score import inception_score
from ganaudit.metrics.reference_stats import (
    ReferenceImages, ReferenceStatistics, protocol_hint, read_reference, write_statistics,
)

fid_score = pytest.importorskip("pytorch_fid.fid_score")


# ---------------------------------------------------------------- FID∞


def test_extrapolation_recovers_a_planted_line():
    sizes = np.array([500, 1000, 2000, 5000])
    intercept, slope = extrapolate_in_inverse_n(sizes, 3.25 + 870.0 / sizes)
    assert intercept == pytest.approx(3.25, abs=1e-10) and slope == pytest.approx(870.0, rel=1e-10)
    with pytest.raises(ValueError, match="two distinct"):
        extrapolate_in_inverse_n(np.array([10, 10]), np.array([1.0, 2.0]))


def test_fid_infinity_removes_the_small_sample_bias_of_planted_gaussians():
    # Reference: the population N(mu1, diag(v1)) itself; generated: draws of N(mu2, diag(v2)).
    # FD between the two Gaussians is known in closed form; FD on M draws is biased upward.
    rng = np.random.default_rng(0)
    d, m = 48, 2000
    mu1, v1 = rng.normal(size=d), rng.uniform(0.5, 2, d)
    mu2, v2 = mu1 + rng.normal(scale=0.3, size=d), rng.uniform(0.5, 2, d)
    truth = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    inf, full = [], []
    for seed in range(12):
        fake = (mu2 + rng.normal(size=(m, d)) * np.sqrt(v2)).astype(np.float32)
        result = fid_infinity((mu1, np.diag(v1)), fake, num_points=8, seed=seed)
        inf.append(result["value"])
        full.append(statistics_to_frechet_distance(mu1, np.diag(v1), *features_to_statistics(fake)))
    bias_full, bias_inf = np.mean(full) - truth, np.mean(inf) - truth
    assert bias_full > 0.3  # FD on 2000 samples of 48-d features: clearly biased
    assert abs(bias_inf) < 0.25 * bias_full


def test_fid_infinity_sizes_seed_and_arguments():
    fake = np.random.default_rng(1).normal(size=(500, 4)).astype(np.float32)
    a = fid_infinity((np.zeros(4), np.eye(4)), fake, seed=3)
    assert a == fid_infinity((np.zeros(4), np.eye(4)), fake, seed=3)
    assert a["sizes"][0] == 50 and a["sizes"][-1] == 500 and len(a["sizes"]) == len(a["fd"]) == 15
    with pytest.raises(ValueError, match="num_points"):
        fid_infinity((np.zeros(4), np.eye(4)), fake, num_points=1)
    with pytest.raises(ValueError, match="min_fraction"):
        fid_infinity((np.zeros(4), np.eye(4)), fake, min_fraction=1.5)


def test_fid_infinity_from_features_equals_from_their_statistics():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(30, 40)).astype(np.float32)  # fewer rows than dimensions: the (N, M) route
    fake = (rng.normal(size=(60, 40)) + 0.3).astype(np.float32)
    a = fid_infinity(real, fake, num_points=5, seed=1)
    b = fid_infinity(features_to_statistics(real), fake, num_points=5, seed=1)
    assert a["sizes"] == b["sizes"] and a["fd"] == pytest.approx(b["fd"], rel=1e-6)


# ---------------------------------------------------------------- statistics files


def _stats(rng, n=50, d=6):
    x = rng.normal(size=(n, d))
    return x.mean(axis=0), np.cov(x, rowvar=False), x.astype(np.float32)


def test_written_statistics_are_read_by_pytorch_fid(tmp_path):
    mu, sigma, _ = _stats(np.random.default_rng(0))
    path = write_statistics(tmp_path / "s.npz", mu, sigma, n=50, protocol="pytorch-fid", embedder="inception")
    m, s = fid_score.compute_statistics_of_path(str(path), None, 50, 6, "cpu")
    np.testing.assert_array_equal(m, mu) and np.testing.assert_array_equal(s, sigma)
    back = read_reference(path)
    assert isinstance(back, ReferenceStatistics) and back.n == 50 and back.format == "mu-sigma"
    np.testing.assert_array_equal(back.sigma, sigma)
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file is gone


def test_reads_pytorch_fid_clean_fid_and_adm_files(tmp_path):
    rng = np.random.default_rng(1)
    mu, sigma, feats = _stats(rng)
    np.savez_compressed(tmp_path / "pf.npz", mu=mu, sigma=sigma)  # what pytorch-fid --save-stats writes
    np.savez_compressed(tmp_path / "cifar10_legacy_tensorflow_train_32.npz", mu=mu, sigma=sigma)
    np.savez_compressed(tmp_path / "cifar10_clean_train_32_kid.npz", feats=feats)
    images = rng.integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "adm.npz", arr_0=images, mu=mu, sigma=sigma, mu_s=mu[:2], sigma_s=sigma[:2, :2])
    np.savez(tmp_path / "adm_images.npz", arr_0=images)
    plain = read_reference(tmp_path / "pf.npz")
    assert plain.format == "mu-sigma" and plain.protocol_hint is None and plain.n is None
    assert read_reference(tmp_path / "cifar10_legacy_tensorflow_train_32.npz").protocol_hint == "torch-fidelity"
    kid = read_reference(tmp_path / "cifar10_clean_train_32_kid.npz")
    assert kid.format == "clean-fid-features" and kid.protocol_hint == "clean-fid" and kid.n == 50
    np.testing.assert_allclose(kid.mu, feats.mean(axis=0, dtype=np.float64), atol=1e-12)
    np.testing.assert_allclose(kid.sigma, np.cov(feats.astype(np.float64), rowvar=False), atol=1e-12)
    adm = read_reference(tmp_path / "adm.npz")
    assert adm.format == "adm-mu-sigma" and adm.mu.shape == (6,)
    only_images = read_reference(tmp_path / "adm_images.npz")
    assert isinstance(only_images, ReferenceImages) and only_images.n == 5
    assert protocol_hint("ffhq_legacy_pytorch_trainval_1024.npz") == "clean-fid-legacy"


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: None, "no such file"),
    (lambda p: p.write_text("mu,sigma\n"), "not a readable .npz"),
    (lambda p: np.save(p, np.zeros(3)), "bare .npy"),
    (lambda p: np.savez(p, m=np.zeros(3)), "no statistics; expected keys mu and sigma.*found m"),
    (lambda p: np.savez(p, mu=np.zeros(3), sigma=np.eye(4)), r"mu must be \(D,\) and sigma \(D, D\)"),
    (lambda p: np.savez(p, mu=np.full(3, np.nan), sigma=np.eye(3)), "NaN or infinite"),
    (lambda p: np.savez(p, mu=np.array([None] * 3, dtype=object), sigma=np.eye(3)), "not a readable .npz"),
    (lambda p: np.savez(p, arr_0=np.zeros((2, 8, 8))), r"\(N, H, W, 3\)"),
    (lambda p: np.savez(p, feats=np.zeros(3)), "'feats' must be"),
])
def test_bad_statistics_files_get_one_line_errors(tmp_path, make, message):
    path = tmp_path / "bad.npz"
    make(path)
    if not path.exists() and (tmp_path / "bad.npz.npy").exists():
        (tmp_path / "bad.npz.npy").rename(path)
    with pytest.raises(GanauditError, match=message) as err:
        read_reference(path)
    assert "\n" not in str(err.value)


def test_statistics_output_must_end_in_npz(tmp_path):
    with pytest.raises(GanauditError, match="must end in .npz"):
        write_statistics(tmp_path / "stats.txt", np.zeros(2), np.eye(2))


# ---------------------------------------------------------------- the check and stats commands (stand-in network)


@pytest.fixture
def tiny_fid(monkeypatch, tmp_path) -> Path:
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return use_tiny_fid_network(monkeypatch, tmp_path / "torch_home")


def _check(capsys, tiny_sets, out: Path, *extra) -> tuple[int, dict, str]:
    code, stdout, stderr = run_cli("check", "--samples", tiny_sets["holdout"], "--train", tiny_sets["train"],
                                   "--no-cache", "--tta", "none", "--json", out, *extra, capsys=capsys)
    return code, (json.loads(out.read_text()) if out.exists() else {}), stdout + stderr


def test_check_reports_fid_under_the_chosen_protocol_and_fd_per_embedder(tiny_sets, tiny_fid, tmp_path, capsys):
    html = tmp_path / "r.html"
    code, result, output = _check(capsys, tiny_sets, tmp_path / "r.json", "--fid-protocol", "clean-fid",
                                  "--fd-embedders", "inception,pixels", "--fid-infinity", "--html", html)
    assert code in (0, 1), output
    cov = result["coverage"]
    entry = cov["fid"]
    assert (entry["protocol"], entry["protocol_default"], entry["embedder"]) == ("clean-fid", False, "inception")
    real = ganaudit_features(tiny_sets["train"], "clean-fid", tiny_fid)
    fake = ganaudit_features(tiny_sets["holdout"], "clean-fid", tiny_fid)
    assert entry["value"] == pytest.approx(frechet_distance(real, fake), rel=1e-9)
    assert (entry["n_samples"], entry["n_reference"], entry["reference"]["kind"]) == (120, 120, "train")
    assert entry["kid"] == pytest.approx(kernel_distance(real, fake, num_subsets=10, seed=0), rel=1e-9)
    logits = create_fid_embedder("clean-fid", "cpu").class_logits(fake)
    assert entry["inception_score"] == pytest.approx(inception_score(logits, splits=10)[0], rel=1e-9)
    assert entry["inception_score_order"] == "as-given"
    assert entry["fid_infinity"]["value"] == pytest.approx(
        fid_infinity(real, fake, seed=0)["value"], rel=1e-9)
    assert cov["fd_embedders"]["inception"]["value"] == entry["value"]
    # pixels is the audit's own embedder: its FD reuses the audit's features, so it is coverage.fd.
    assert cov["fd_embedders"]["pixels"]["value"] == pytest.approx(cov["fd"], rel=1e-12)
    assert cov["fd_embedders"]["pixels"]["preprocessing"] == "the embedder's own"
    assert "fid       " in output and "clean-fid protocol" in output and "FID∞" in output
    assert "FID, clean-fid protocol" in html.read_text()


def test_check_against_reference_statistics_uses_the_default_protocol(tiny_sets, tiny_fid, tmp_path, capsys):
    fake = ganaudit_features(tiny_sets["holdout"], "torch-fidelity", tiny_fid)
    mu, sigma = features_to_statistics(ganaudit_features(tiny_sets["train"], "torch-fidelity", tiny_fid) + 0.5)
    sigma += 0.01 * np.eye(len(mu))  # full rank, as statistics of 50,000 images are
    stats = write_statistics(tmp_path / "published.npz", mu, sigma)
    code, result, output = _check(capsys, tiny_sets, tmp_path / "r.json", "--reference-stats", stats)
    assert code in (0, 1), output
    entry = result["coverage"]["fid"]
    assert entry["protocol"] == "torch-fidelity" and entry["protocol_default"] is True
    assert entry["value"] == pytest.approx(statistics_to_frechet_distance(mu, sigma, *features_to_statistics(fake)),
                                           rel=1e-9)
    assert entry["reference"]["kind"] == "statistics" and entry["n_reference"] is None
    assert entry["kid"] is None and "holds no features" in entry["kid_note"]
    order = inception_score_order(PROTOCOLS["torch-fidelity"], len(fake))
    logits = create_fid_embedder(None, "cpu").class_logits(fake)
    assert entry["inception_score"] == pytest.approx(inception_score(logits[order], splits=10)[0], rel=1e-9)
    assert list(result["coverage"]["fd_embedders"]) == ["inception"]


def test_check_against_an_image_only_reference_batch(tiny_sets, tiny_fid, tmp_path, capsys):
    from conftest import load_folder_as_tensor

    images = (load_folder_as_tensor(tiny_sets["train"])[:60] * 255).round().byte().permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "ref.npz", arr_0=images)
    code, result, output = _check(capsys, tiny_sets, tmp_path / "r.json", "--reference-stats", tmp_path / "ref.npz",
                                  "--fd-embedders", "inception,pixels")
    assert code in (0, 1), output
    rows = result["coverage"]["fd_embedders"]
    assert rows["inception"]["reference"]["kind"] == "images" and rows["inception"]["n_reference"] == 60
    assert rows["pixels"]["reference"]["kind"] == "images"
    assert result["coverage"]["fid"]["kid"] is not None


def test_without_fd_options_nothing_more_is_computed(tiny_sets, tmp_path, capsys):
    code, result, output = _check(capsys, tiny_sets, tmp_path / "r.json")
    assert code in (0, 1), output
    assert result["coverage"]["fid"] is None and result["coverage"]["fd_embedders"] == {}
    assert "fd" not in result["timings"] and "fid  " not in output


@pytest.mark.parametrize(("flags", "message"), [
    (("--fid-protocol", "tf1"), "unknown --fid-protocol 'tf1'"),
    (("--fd-embedders", "inception,nope"), "--fd-embedders: unknown embedder 'nope'"),
    (("--fd-embedders", "pixels,pixels"), "names an embedder twice"),
    (("--reference-stats", "/nonexistent/stats.npz"), "--reference-stats /nonexistent/stats.npz: no such file"),
    (("--fd-embedders", "pixels", "--fid-infinity"), "--fid-infinity: FID options, so --fd-embedders must include inception"),
])
def test_bad_fd_options_exit_2_with_one_line(tiny_sets, tmp_path, capsys, flags, message):
    code, _, output = _check(capsys, tiny_sets, tmp_path / "r.json", *flags)
    assert code == 2 and message in output and output.count("\n") == 1


def test_reference_statistics_of_another_dimension_are_refused(tiny_sets, tiny_fid, tmp_path, capsys):
    stats = write_statistics(tmp_path / "s.npz", np.zeros(10), np.eye(10))
    code, _, output = _check(capsys, tiny_sets, tmp_path / "r.json", "--reference-stats", stats)
    assert code == 2 and "statistics of 10-d features, but inception features are 2048-d" in output


def test_fd_embedders_from_a_config_file_list():
    config = resolve_config({"fd_embedders": ["inception", " pixels "], "train": ".", "samples": "."}, {})
    assert config.fd_embedders == ("inception", "pixels")
    with pytest.raises(GanauditError, match="comma list of embedder names"):
        resolve_config({"fd_embedders": ["inception", 3], "train": ".", "samples": "."}, {})


def test_stats_command_writes_what_pytorch_fid_reads(tiny_sets, tiny_fid, tmp_path, capsys):
    out = tmp_path / "train_stats.npz"
    code, stdout, _ = run_cli("stats", tiny_sets["train"], "-o", out, "--fid-protocol", "pytorch-fid", capsys=capsys)
    assert code == 0 and "statistics of 120 images (inception, pytorch-fid protocol, 2048-d)" in stdout
    m, s = fid_score.compute_statistics_of_path(str(out), None, 50, 2048, "cpu")
    expected = features_to_statistics(ganaudit_features(tiny_sets["train"], "pytorch-fid", tiny_fid))
    np.testing.assert_allclose(m, expected[0], rtol=1e-12) and np.testing.assert_allclose(s, expected[1], rtol=1e-12)
    assert read_reference(out).n == 120


@pytest.mark.parametrize(("args", "message"), [
    (("-o", "stats.txt"), "must end in .npz"),
    (("-o", "s.npz", "--fid-protocol", "nope"), "unknown --fid-protocol"),
    (("-o", "s.npz", "--embedder", "pixels", "--fid-protocol", "clean-fid"), "applies to the inception embedder"),
    (("-o", "s.npz", "--batch-size", "0"), "--batch-size must be positive"),
])
def test_stats_command_bad_input(tiny_sets, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_cli("stats", tiny_sets["train"], *args, capsys=capsys)
    assert code == 2 and message in stderr
    assert not list(tmp_path.glob("*.npz"))


def test_stats_command_without_weights_says_which_file(tiny_sets, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    code, _, stderr = run_cli("stats", tiny_sets["train"], "-o", tmp_path / "s.npz", capsys=capsys)
    assert code == 2 and "pt_inception-2015-12-05-6726825d.pth" in stderr


def _published(tiny_sets, tiny_fid, tmp_path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A statistics file as a paper would publish it: no features, full rank."""
    mu, sigma = features_to_statistics(ganaudit_features(tiny_sets["train"], "torch-fidelity", tiny_fid) + 0.5)
    sigma += 0.01 * np.eye(len(mu))
    return write_statistics(tmp_path / "published.npz", mu, sigma), mu, sigma


def test_fd_command_needs_no_training_set_and_equals_checks_fid(tiny_sets, tiny_fid, tmp_path, capsys):
    stats, mu, sigma = _published(tiny_sets, tiny_fid, tmp_path)
    out = tmp_path / "fd.json"
    code, stdout, stderr = run_cli("fd", "--samples", tiny_sets["holdout"], "--reference-stats", stats, "--json", out,
                                   capsys=capsys)
    assert code == 0, stdout + stderr
    entry = json.loads(out.read_text())["fid"]
    fake = ganaudit_features(tiny_sets["holdout"], "torch-fidelity", tiny_fid)
    assert entry["value"] == pytest.approx(statistics_to_frechet_distance(mu, sigma, *features_to_statistics(fake)),
                                           rel=1e-9)
    assert (entry["protocol"], entry["n_samples"], entry["reference"]["kind"]) == ("torch-fidelity", 120, "statistics")
    assert entry["kid"] is None and "holds no features" in entry["kid_note"]
    assert "fid       " in stdout and "kid       not computed" in stdout
    _, result, _ = _check(capsys, tiny_sets, tmp_path / "r.json", "--reference-stats", stats)
    assert result["coverage"]["fid"]["value"] == pytest.approx(entry["value"], rel=1e-12)  # the same FID as check's


def test_fd_command_samples_a_generator(tiny_sets, tiny_fid, tmp_path, capsys):
    stats, _, _ = _published(tiny_sets, tiny_fid, tmp_path)
    out = tmp_path / "fd.json"
    code, stdout, stderr = run_cli("fd", "--generator", tiny_sets["fresh_gen"], "--num-samples", "24", "--seed", "3",
                                   "--reference-stats", stats, "--fid-infinity", "--json", out, capsys=capsys)
    assert code == 0, stdout + stderr
    first = json.loads(out.read_text())
    assert first["generator"] == {"path": str(tiny_sets["fresh_gen"]), "kind": "generator", "n_samples": 24, "seed": 3}
    assert first["fid"]["n_samples"] == 24 and first["fid"]["fid_infinity"]["value"] is not None
    assert run_cli("fd", "--generator", tiny_sets["fresh_gen"], "--num-samples", "24", "--seed", "3",
                   "--reference-stats", stats, "--json", out, capsys=capsys)[0] == 0
    assert json.loads(out.read_text())["fid"]["value"] == first["fid"]["value"]  # sample i from seed [3, i]


@pytest.mark.parametrize("args, message", [
    ((), "ganaudit fd needs --reference-stats"),
    (("--reference-stats", "STATS"), "give exactly one of --generator"),
    (("--reference-stats", "STATS", "--fd-embedders", "inception,pixels"), "holds Inception statistics only"),
    (("--reference-stats", "STATS", "--json", "TMP"), "is a folder"),
    (("--reference-stats", "STATS", "--num-samples", "0"), "--num-samples"),
])
def test_fd_command_bad_input_exits_2_with_one_line(tiny_sets, tiny_fid, tmp_path, capsys, args, message):
    stats, _, _ = _published(tiny_sets, tiny_fid, tmp_path)
    args = [str(stats) if a == "STATS" else str(tmp_path) if a == "TMP" else a for a in args]
    source = [] if "give exactly one" in message else ["--samples", str(tiny_sets["holdout"])]
    if "--num-samples" in args:
        source = ["--generator", str(tiny_sets["fresh_gen"])]
    code, stdout, stderr = run_cli("fd", *source, *args, capsys=capsys)
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr


# ---------------------------------------------------------------- the real network (slow)


@pytest.mark.slow
def test_stats_file_and_audit_fid_equal_pytorch_fids(tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    write_weight_files(tmp_path / "th")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    real = write_fid_folder(tmp_path / "real", 30, (32, 32), seed=5)
    fake = write_fid_folder(tmp_path / "fake", 24, (32, 32), seed=6, tint=0.2)
    stats = tmp_path / "real.npz"
    assert run_cli("stats", real, "-o", stats, "--fid-protocol", "pytorch-fid", capsys=capsys)[0] == 0
    code, out, err = run_cli("check", "--samples", fake, "--train", real, "--reference-stats", stats, "--fid-protocol",
                             "pytorch-fid", "--alpha", "0.1", "--tta", "none", "--no-cache", "--json", tmp_path / "r.json",
                             capsys=capsys)
    assert code in (0, 1), out + err
    ours = json.loads((tmp_path / "r.json").read_text())["coverage"]["fid"]["value"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = fid_score.calculate_fid_given_paths([str(stats), str(fake)], 50, "cpu", 2048, num_workers=0)
    assert ours == pytest.approx(peer, rel=1e-4)
    # ganaudit fd: the same FID with no training set at all
    code, out, err = run_cli("fd", "--samples", fake, "--reference-stats", stats, "--fid-protocol", "pytorch-fid",
                             "--json", tmp_path / "fd.json", capsys=capsys)
    assert code == 0, out + err
    assert json.loads((tmp_path / "fd.json").read_text())["fid"]["value"] == pytest.approx(peer, rel=1e-4)
