"""The HTML report: escaping, self-containment, re-rendering from JSON."""
from __future__ import annotations

import json
import shutil

from conftest import run_cli

EVIL = "<b onmouseover=alert(1)>x&y"


def test_file_names_with_html_are_escaped(tiny_sets, tmp_path, capsys):
    train = tmp_path / "train"
    shutil.copytree(tiny_sets["train"], train)
    first = sorted((train / "class_0").glob("*.png"))[0]
    first.rename(first.with_name(f"{EVIL}.png"))
    generator = tmp_path / f"{EVIL}.pt"
    shutil.copy(tiny_sets["copy_gen"], generator)
    html = tmp_path / "r.html"
    code, _, err = run_cli("check", "--generator", generator, "--train", train,
                           "--holdout", tiny_sets["holdout"], "--num-samples", "200", "--tta", "none",
                           "--html", html, "--json", tmp_path / "r.json", capsys=capsys)
    assert code == 1, err
    result = json.loads((tmp_path / "r.json").read_text())
    assert any(EVIL in e["train_path"] for e in result["memorization"]["leaked_train_examples"])
    text = html.read_text()
    assert EVIL not in text
    assert "&lt;b onmouseover=alert(1)&gt;x&amp;y" in text
    assert text.count("<script") == 1 and "<script src" not in text  # only the shipped inline script


def test_report_renders_again_from_json(tiny_sets, tmp_path, capsys):
    out = tmp_path / "r.json"
    run_cli("check", "--generator", tiny_sets["copy_gen"], "--train", tiny_sets["train"],
            "--holdout", tiny_sets["holdout"], "--num-samples", "120", "--tta", "none", "--json", out)
    code, stdout, _ = run_cli("report", out, "--html", tmp_path / "again.html", capsys=capsys)
    assert code == 0
    text = (tmp_path / "again.html").read_text()
    assert "FAIL" in text and "Leaked training data" in text


def test_report_of_a_missing_or_foreign_json_is_a_clean_error(tmp_path, capsys):
    code, _, err = run_cli("report", tmp_path / "nope.json", "--html", tmp_path / "x.html", capsys=capsys)
    assert code == 2 and "no such file" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = run_cli("report", bad, "--html", tmp_path / "x.html", capsys=capsys)
    assert code == 2 and "not a ganaudit JSON result" in err
    assert not (tmp_path / "x.html").exists()


def test_outputs_get_ordinary_file_permissions(tmp_path):
    import os
    import stat

    from ganaudit.plumbing import write_atomic

    path = tmp_path / "out.json"
    write_atomic(path, "{}")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
