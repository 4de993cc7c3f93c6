"""End to end on the shipped fixtures: the three verdicts, planted leaks, missing modes, JSON fields."""
from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

from conftest import FIXTURES, run_cli
from ganaudit.sources.generators import load_generator

GENERATORS = FIXTURES / "generators"
NUM_SAMPLES = 1000
SEED = 0
COMMON = ("--train", FIXTURES / "data" / "train", "--holdout", FIXTURES / "data" / "holdout",
          "--num-samples", str(NUM_SAMPLES), "--seed", str(SEED))


@pytest.fixture(scope="module")
def audits(tmp_path_factory) -> dict:
    """Audit each fixture generator once: {name: (exit code, result dict, output folder)}."""
    out = {}
    for name in ("dcgan", "leaky", "collapsed"):
        folder = tmp_path_factory.mktemp(name)
        code, _, _ = run_cli("check", "--generator", GENERATORS / f"{name}.pt2", *COMMON,
                             "--json", folder / "result.json", "--html", folder / "report.html",
                             "--junit", folder / "junit.xml")
        out[name] = (code, json.loads((folder / "result.json").read_text()), folder)
    return out


def _gate(result: dict, name: str) -> dict:
    return next(g for g in result["gates"] if g["name"] == name)


def test_trained_dcgan_passes(audits):
    code, result, _ = audits["dcgan"]
    assert code == 0 and result["verdict"] == "pass", [g["message"] for g in result["gates"]]
    assert result["coverage"]["modes"]["covered"] == 12


def test_leaky_generator_fails_the_leak_gate(audits):
    code, result, _ = audits["leaky"]
    assert code == 1 and result["verdict"] == "fail"
    assert _gate(result, "leaks")["status"] == "fail"


def test_collapsed_generator_fails_with_exactly_its_missing_modes(audits):
    code, result, _ = audits["collapsed"]
    manifest = json.loads((GENERATORS / "collapsed_manifest.json").read_text())
    assert code == 1 and _gate(result, "modes")["status"] == "fail"
    assert _gate(result, "collapse")["status"] == "fail"
    assert sorted(result["coverage"]["modes"]["missing"]) == sorted(manifest["missing_modes"])


def _planted_leaks(manifest: dict) -> dict[int, dict]:
    """Recompute the leaky generator's rule from the latents ganaudit draws: {sample: bank entry}."""
    bank = manifest["bank"]
    generator = load_generator(GENERATORS / "leaky.pt2", torch.device("cpu"))
    z = generator.latents(np.arange(NUM_SAMPLES), SEED).double()
    u0, u1 = torch.special.ndtr(z[:, 0]), torch.special.ndtr(z[:, 1])
    leaks = {}
    for i in np.flatnonzero((u0 < manifest["leak_rate"]).numpy()):
        j = min(int(math.floor(float(u1[i]) * len(bank))), len(bank) - 1)
        leaks[int(i)] = bank[j]
    return leaks


def test_leaks_are_found_with_the_training_image_they_copy(audits):
    _, result, _ = audits["leaky"]
    manifest = json.loads((GENERATORS / "leaky_manifest.json").read_text())
    planted = _planted_leaks(manifest)
    flagged = {f["sample_index"]: f for f in result["memorization"]["flagged"]}
    found = [i for i in planted if i in flagged]
    assert len(found) / len(planted) >= 0.95, "recall of planted leaks"
    false_flags = [i for i in flagged if i not in planted]
    assert len(false_flags) <= 0.02 * (NUM_SAMPLES - len(planted)), "false flags among generated samples"
    right = [i for i in found if flagged[i]["train_path"] == planted[i]["train_path"]]
    assert len(right) / len(found) >= 0.95, "flagged samples name the training image they copy"


def _caught(result: dict, transform: str) -> tuple[int, int]:
    manifest = json.loads((GENERATORS / "leaky_manifest.json").read_text())
    planted = {i: e for i, e in _planted_leaks(manifest).items() if e["transform"] == transform}
    assert planted, f"no {transform} leak among the samples"
    flagged = {f["sample_index"] for f in result["memorization"]["flagged"]}
    return sum(i in flagged for i in planted), len(planted)


@pytest.mark.parametrize("transform", ["exact", "hflip", "shift", "noise", "jpeg", "brightness"])
def test_each_transformation_is_caught(audits, transform):
    caught, planted = _caught(audits["leaky"][1], transform)
    assert caught / planted >= 0.95, f"{caught} of {planted} {transform} copies caught"


def test_json_has_the_fields_of_the_contract(audits):
    _, result, _ = audits["leaky"]
    for key in ("schema_version", "verdict", "gates", "memorization", "coverage", "embedder", "generator",
                "train", "timings", "versions"):
        assert key in result, key
    for gate in result["gates"]:
        assert {"name", "metric", "value", "threshold", "op", "passed"} <= gate.keys()
    mem = result["memorization"]
    for key in ("n_samples", "n_flagged", "flagged_fraction", "threshold", "calibration", "flagged",
                "leaked_train_examples", "ct_statistic", "authenticity", "mia_auc"):
        assert key in mem, key
    assert {"sample_index", "train_index", "train_path", "score"} <= mem["flagged"][0].keys()
    cov = result["coverage"]
    for key in ("precision", "recall", "density", "coverage", "fd", "kd", "duplicate_fraction", "modes"):
        assert key in cov, key
    assert {"source", "total", "covered", "per_mode"} <= cov["modes"].keys()
    assert mem["mia_auc"] > 0.5
    # A quarter of copies among blurrier-than-data samples: C_T moves towards copying.
    assert mem["ct_statistic"] < audits["dcgan"][1]["memorization"]["ct_statistic"]


def test_report_and_junit_are_written(audits):
    _, result, folder = audits["leaky"]
    html = (folder / "report.html").read_text()
    assert "FAIL" in html and "Leaked training data" in html
    assert html.count("data:image/png;base64,") >= 10  # gallery thumbnails inline
    assert html.count("<script") == 1 and "<script src" not in html  # only the shipped inline script
    assert "http://" not in html and "https://" not in html
    cases = ET.parse(folder / "junit.xml").getroot().findall("testcase")
    assert {c.get("name") for c in cases} == {g["name"] for g in result["gates"]}
    assert any(c.find("failure") is not None for c in cases)


def test_torchscript_and_export_fixtures_give_the_same_samples():
    indices = np.arange(6)
    for name in ("dcgan", "leaky", "collapsed"):
        a = load_generator(GENERATORS / f"{name}.pt2", torch.device("cpu")).sample(indices, SEED)
        b = load_generator(GENERATORS / f"{name}.torchscript.pt", torch.device("cpu")).sample(indices, SEED)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_fresh_images_of_the_training_distribution_are_flagged_at_rate_alpha(tmp_path):
    """A perfect generator: new draws of the fixture dataset (another seed), audited as samples."""
    import subprocess
    import sys

    subprocess.run([sys.executable, str(FIXTURES / "make_dataset.py"), "--out", str(tmp_path / "fresh"), "--seed", "7"],
                   check=True, capture_output=True)
    out, alpha = tmp_path / "r.json", 0.05
    code, _, _ = run_cli("check", "--samples", tmp_path / "fresh" / "train", "--train", FIXTURES / "data" / "train",
                         "--holdout", FIXTURES / "data" / "holdout", "--alpha", str(alpha), "--json", out)
    mem = json.loads(out.read_text())["memorization"]
    n, n_ref = mem["n_samples"], mem["calibration"]["n_reference"]
    # At alpha 0.05 the default leaks gate (flagged fraction <= 0.05) sits at the expected rate
    # itself, so the verdict is a coin toss here: the rate is what this test checks.
    assert code in (0, 1) and n == 1440
    # reference hygiene may set aside a holdout image or two that near-duplicate a training
    # image (one green square is a brighter twin of another: the copy descriptor ignores level)
    hygiene = mem["hygiene"]["reference"]
    excluded = hygiene["n_near_duplicates"] + hygiene["n_low_information"]
    assert excluded <= 2 and n_ref == 480 - excluded
    # The threshold's noise and the flags' noise: two binomial variances; 4 standard deviations.
    assert abs(mem["flagged_fraction"] - alpha) < 4 * math.sqrt(alpha * (1 - alpha) * (1 / n + 1 / n_ref))
