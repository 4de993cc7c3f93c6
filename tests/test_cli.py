"""The CLI's contract: exit codes, one-line errors, outputs written only on success."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
import torch

from conftest import FunctionGenerator, run_cli, save_torchscript
from ganaudit.cli import main

FAST = ("--num-samples", "120", "--tta", "none")


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_good_generator_passes_and_writes_outputs(tiny_sets, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        "check", "--generator", tiny_sets["fresh_gen"], "--train", tiny_sets["train"],
        "--holdout", tiny_sets["holdout"], *FAST,
        "--json", out / "r.json", "--html", out / "r.html", "--junit", out / "r.xml", capsys=capsys)
    assert code == 0, stdout + err
    assert "PASS" in stdout and "report: " in stdout
    result = json.loads((out / "r.json").read_text())
    assert result["verdict"] == "pass"
    suite = ET.parse(out / "r.xml").getroot()
    assert len(suite.findall("testcase")) == len(result["gates"])
    assert "<html" in (out / "r.html").read_text()
    # Not a terminal: no progress bars on stderr.
    assert "it/s" not in err and "img/s" not in err


def test_copying_generator_fails_the_leak_gate(tiny_sets, tmp_path, capsys):
    code, stdout, _ = run_cli(
        "check", "--generator", tiny_sets["copy_gen"], "--train", tiny_sets["train"],
        "--holdout", tiny_sets["holdout"], *FAST, "--json", tmp_path / "r.json", capsys=capsys)
    assert code == 1
    result = json.loads((tmp_path / "r.json").read_text())
    leaks = next(g for g in result["gates"] if g["name"] == "leaks")
    assert leaks["status"] == "fail"
    assert result["memorization"]["flagged_fraction"] > 0.9


def test_warn_only_reports_but_exits_zero(tiny_sets, capsys):
    code, stdout, _ = run_cli("check", "--generator", tiny_sets["copy_gen"], "--train", tiny_sets["train"],
                              "--holdout", tiny_sets["holdout"], *FAST, "--warn-only", capsys=capsys)
    assert code == 0
    assert "FAIL" in stdout  # the failed gate is still reported


def test_progress_bars_when_asked(tiny_sets, capsys):
    code, _, err = run_cli("check", "--generator", tiny_sets["fresh_gen"], "--train", tiny_sets["train"],
                           "--holdout", tiny_sets["holdout"], *FAST, "--progress", capsys=capsys)
    assert code == 0
    assert "embedding train" in err and "sampling + search" in err


def _bad(capsys, *args) -> str:
    code, _, err = run_cli(*args, capsys=capsys)
    assert code == 2, err
    return _one_line_error(err)


def test_missing_train_path(tiny_sets, tmp_path, capsys):
    msg = _bad(capsys, "check", "--generator", tiny_sets["fresh_gen"], "--train", tmp_path / "nope")
    assert "no such file or directory" in msg and "nope" in msg


def test_train_is_required(tiny_sets, capsys):
    assert "--train is required" in _bad(capsys, "check", "--generator", tiny_sets["fresh_gen"])


def test_generator_and_samples_are_exclusive(tiny_sets, capsys):
    msg = _bad(capsys, "check", "--generator", tiny_sets["fresh_gen"], "--samples", tiny_sets["holdout"],
               "--train", tiny_sets["train"])
    assert "exactly one of --generator" in msg


def test_empty_train_folder(tiny_sets, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    msg = _bad(capsys, "check", "--generator", tiny_sets["fresh_gen"], "--train", tmp_path / "empty")
    assert "no images found" in msg


def test_corrupt_image_names_the_file(tiny_sets, tmp_path, capsys):
    import shutil

    train = tmp_path / "train"
    shutil.copytree(tiny_sets["train"], train)
    (train / "class_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    out = tmp_path / "r.json"
    msg = _bad(capsys, "check", "--generator", tiny_sets["fresh_gen"], "--train", train, *FAST, "--json", out)
    assert "broken.png" in msg and "--skip-corrupt" in msg
    assert not out.exists()  # nothing half-written


def test_untrusted_pickle_is_refused_and_its_payload_never_runs(tiny_sets, tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save(_Payload(str(marker)), path)
    msg = _bad(capsys, "check", "--generator", path, "--train", tiny_sets["train"], *FAST)
    assert "full pickle" in msg and "--trust-checkpoint" in msg
    assert not marker.exists()


class _Payload:
    """Unpickling this object would create a file: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_generator_output_with_nan(tiny_sets, tmp_path, capsys):
    gen = save_torchscript(FunctionGenerator(4, "nan"), tmp_path / "nan.pt")
    assert "NaN or Inf" in _bad(capsys, "check", "--generator", gen, "--train", tiny_sets["train"], *FAST)


def test_generator_output_not_an_image_batch(tiny_sets, tmp_path, capsys):
    gen = save_torchscript(FunctionGenerator(4, "flat"), tmp_path / "flat.pt")
    assert "not an image batch" in _bad(capsys, "check", "--generator", gen, "--train", tiny_sets["train"], *FAST)


def test_z_dim_mismatch(tiny_sets, capsys):
    msg = _bad(capsys, "check", "--generator", tiny_sets["fresh_gen"], "--train", tiny_sets["train"],
               "--z-dim", "5", *FAST)
    assert "--z-dim 5 does not match" in msg


def test_unknown_embedder(tiny_sets, capsys):
    msg = _bad(capsys, "check", "--generator", tiny_sets["fresh_gen"], "--train", tiny_sets["train"],
               "--embedder", "nonsense", *FAST)
    assert "unknown embedder 'nonsense'" in msg and "pixels" in msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(tiny_sets, capsys):
    msg = _bad(capsys, "check", "--generator", tiny_sets["fresh_gen"], "--train", tiny_sets["train"],
               "--device", "cuda", *FAST)
    assert "--device cuda" in msg and "not available" in msg


@pytest.mark.parametrize("args, expected", [
    (("--tta", "spin"), "unknown test-time augmentation"),
    (("--num-samples", "3"), "--num-samples must be an integer of at least 10"),
    (("--alpha", "0.7"), "--alpha must be a number in (0, 0.5)"),
    (("--output-range", "0,2"), "--output-range must be one of"),
    (("--num-samples", "many"), "invalid int value"),
])
def test_bad_flag_values(tiny_sets, capsys, args, expected):
    msg = _bad(capsys, "check", "--generator", tiny_sets["fresh_gen"], "--train", tiny_sets["train"], *args)
    assert expected in msg


def test_config_file_with_unknown_key_is_an_error(tiny_sets, tmp_path, capsys):
    cfg = tmp_path / "ganaudit.toml"
    cfg.write_text("num_sample = 100\n")
    msg = _bad(capsys, "check", "--generator", tiny_sets["fresh_gen"], "--train", tiny_sets["train"], "--config", cfg)
    assert "unknown setting 'num_sample'" in msg


@pytest.mark.parametrize("setting, expected", [("copy_k = 5000", "copy_k must be an integer in [1, 1000]"),
                                               ("copy_k = 0", "copy_k must be an integer in [1, 1000]")])
def test_config_file_with_a_bad_value_is_an_error(tiny_sets, tmp_path, capsys, setting, expected):
    cfg = tmp_path / "ganaudit.toml"
    cfg.write_text(setting + "\n")
    msg = _bad(capsys, "check", "--generator", tiny_sets["fresh_gen"], "--train", tiny_sets["train"], "--config", cfg)
    assert expected in msg


def test_config_file_sets_values_and_flags_override(tiny_sets, tmp_path, capsys):
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text("[tool.ganaudit]\nnum_samples = 150\ntta = []\nseed = 3\n")
    out = tmp_path / "r.json"
    code, _, _ = run_cli("check", "--generator", tiny_sets["fresh_gen"], "--train", tiny_sets["train"],
                         "--holdout", tiny_sets["holdout"], "--config", cfg, "--seed", "4", "--json", out,
                         capsys=capsys)
    assert code == 0
    result = json.loads(out.read_text())
    assert result["memorization"]["n_samples"] == 150 and result["config"]["seed"] == 4


def test_embedders_lists_the_registry(capsys):
    code, stdout, _ = run_cli("embedders", capsys=capsys)
    assert code == 0 and "pixels" in stdout and "3072" in stdout


def test_approximate_index_reports_its_measured_recall(tiny_sets, tmp_path, capsys):
    out = tmp_path / "r.json"
    code, _, err = run_cli("check", "--generator", tiny_sets["copy_gen"], "--train", tiny_sets["train"],
                           "--holdout", tiny_sets["holdout"], *FAST, "--index", "hnsw", "--json", out, capsys=capsys)
    assert code == 1, err
    index = json.loads(out.read_text())["memorization"]["index"]
    assert index["kind"] == "hnsw" and 0.9 <= index["recall_at_1"] <= 1.0 and index["n_recall_queries"] == 120


def test_missing_embedder_weights_name_the_file_and_the_fetch_command(tiny_sets, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    msg = _bad(capsys, "check", "--generator", tiny_sets["fresh_gen"], "--train", tiny_sets["train"],
               "--embedder", "inception", *FAST)
    assert "pt_inception-2015-12-05-6726825d.pth" in msg and "ganaudit fetch-weights inception" in msg


def test_fetch_weights_of_an_embedder_without_weights(capsys):
    msg = _bad(capsys, "fetch-weights", "pixels")
    assert "no downloadable weights" in msg


@pytest.mark.parametrize("argv, hint", [
    (["check", "--no-such-flag"], "see `ganaudit --help`"),
    (["check", "--num-samples", "many"], "see `ganaudit check --help`"),
    (["no-such-command"], "see `ganaudit --help`"),
    (["mlflow", "gate"], "see `ganaudit mlflow gate --help`"),
])
def test_usage_errors_name_the_help_of_the_command_that_failed(argv, hint, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and hint in err and "ganaudit ganaudit" not in err


def test_the_python_api_is_callable_after_the_cli_module_is_imported(tiny_sets):
    """``ganaudit.audit`` names both the documented function and a submodule: importing the
    submodule (the CLI does) must not turn ``ganaudit.audit(config)`` into 'module not callable'."""
    import ganaudit
    import ganaudit.audit  # noqa: F401  (what the CLI and the benchmarks import)

    result = ganaudit.audit(ganaudit.AuditConfig(generator=tiny_sets["fresh_gen"], train=tiny_sets["train"],
                                                 holdout=tiny_sets["holdout"], num_samples=120, tta=(), progress=False))
    assert result.verdict in ("pass", "fail") and result.memorization["n_samples"] == 120
