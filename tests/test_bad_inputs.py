"""Bad inputs and odd-but-legal data, as a gate meets them: one table, each case run through the CLI.

Every case ends in one of two ways, and never in a traceback:

- ``"error"``: exit 2, one ``error: ...`` line on stderr matching the case's pattern, and no
  output file written;
- ``"audit"``: a full audit (exit 0 or 1, or exactly the code given) whose JSON validates
  against the schema; legal data, however odd, is audited, not refused.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import BankGenerator, ProceduralGenerator, load_folder_as_tensor, run_cli, save_torchscript, write_image_folder


class ConstantGenerator(torch.nn.Module):
    """Every sample the same image: ``value`` everywhere (0: a blank, collapsed generator)."""

    def __init__(self, value: float = 0.0, size: int = 16, z_dim: int = 8):
        super().__init__()
        self.value, self.size, self.z_dim = value, size, z_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.full((z.shape[0], 3, self.size, self.size), self.value) + 0 * z[:, :1, None, None]


class SizedGenerator(torch.nn.Module):
    """Random images of ``size`` × ``size`` pixels in [-1, 1]."""

    def __init__(self, size: int, z_dim: int = 8):
        super().__init__()
        self.size, self.z_dim = size, z_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        g = torch.tanh(z[:, :3, None, None]).expand(-1, 3, self.size, self.size)
        return g * torch.linspace(0.2, 1.0, self.size)[None, None, None, :]


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_sets) -> dict:
    """Everything the cases point at, made once."""
    root = tmp_path_factory.mktemp("bad")
    e = dict(tiny_sets)
    e["out"] = root / "out"
    e["out"].mkdir()
    rng = np.random.default_rng(0)
    # legal but odd training sets
    black = write_image_folder(root / "with_black", per_class=20, seed=3)
    for c in range(3):
        _png(black / f"class_{c}" / "black.png", np.zeros((16, 16, 3), np.uint8))
    e["train_black"] = black
    e["train_constant"] = root / "constant"
    for i in range(30):
        _png(e["train_constant"] / f"{i:03d}.png", np.full((16, 16, 3), 128, np.uint8))
    mixed = root / "mixed_modes"
    for i in range(12):
        _png(mixed / f"{i:02d}_gray.png", rng.integers(0, 255, (16, 16), dtype=np.uint8), "L")
        _png(mixed / f"{i:02d}_rgba.png", rng.integers(0, 255, (16, 16, 4), dtype=np.uint8), "RGBA")
        _png(mixed / f"{i:02d}_big.png", rng.integers(0, 255, (40, 24, 3), dtype=np.uint8))
        rgb = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
        rgb.convert("CMYK").save(mixed / f"{i:02d}_cmyk.jpg")
        _png(mixed / f"{i:02d}_16bit.png", rng.integers(0, 65535, (16, 16), dtype=np.uint16))  # mode I;16
    e["train_mixed"] = mixed
    e["train_unicode"] = root / "trâin sét ✓"
    write_image_folder(e["train_unicode"], per_class=12, seed=4)
    e["train_huge"] = root / "huge"
    _png(e["train_huge"] / "a_huge.png", rng.integers(0, 255, (3000, 2600, 3), dtype=np.uint8))
    for i in range(9):
        _png(e["train_huge"] / f"b{i}.png", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    one_bad = root / "one_bad"
    write_image_folder(one_bad, per_class=15, seed=5)
    (one_bad / "class_1" / "0007.png").write_bytes(b"")  # a zero-byte file among good ones
    e["train_one_bad"] = one_bad
    e["empty_dir"] = root / "empty"
    e["empty_dir"].mkdir()
    e["text_file"] = root / "notes.txt"
    e["text_file"].write_text("not images")
    # arrays
    arr = rng.uniform(0, 255, (40, 16, 16, 3))
    np.save(root / "float64_255.npy", arr)
    e["npy_float64_255"] = root / "float64_255.npy"
    np.savez(root / "wrong_key.npz", pictures=arr.astype(np.uint8))
    e["npz_wrong_key"] = root / "wrong_key.npz"
    nan = arr.copy()
    nan[3, 2, 2, 1] = np.nan
    np.save(root / "nan.npy", nan)
    e["npy_nan"] = root / "nan.npy"
    np.save(root / "five_d.npy", np.zeros((4, 2, 16, 16, 3), np.uint8))
    e["npy_5d"] = root / "five_d.npy"
    e["samples_3"] = root / "three_samples"
    for i in range(3):
        _png(e["samples_3"] / f"{i}.png", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    # generators
    e["zero_gen"] = save_torchscript(ConstantGenerator(0.0), root / "zero.pt")
    e["const_gen"] = save_torchscript(ConstantGenerator(0.3), root / "const.pt")
    e["tiny_gen"] = save_torchscript(SizedGenerator(4), root / "tiny4.pt")
    e["onepx_gen"] = save_torchscript(SizedGenerator(1), root / "tiny1.pt")
    e["procedural"] = save_torchscript(ProceduralGenerator(), root / "proc.pt")
    e["copy_gen_black"] = save_torchscript(BankGenerator(load_folder_as_tensor(black)), root / "bank_black.pt")
    torch.export.save(torch.export.export(BankGenerator(load_folder_as_tensor(tiny_sets["train"])),
                                          (torch.zeros(2, 8),)), root / "bank.pt2")
    e["gen_pt2"] = root / "bank.pt2"
    np.savez(root / "one.npz", images=rng.integers(0, 255, (1, 16, 16, 3), dtype=np.uint8))
    e["npz_one"] = root / "one.npz"
    np.save(root / "gray.npy", rng.integers(0, 255, (40, 16, 16), dtype=np.uint8))
    e["npy_gray"] = root / "gray.npy"
    np.save(root / "objects.npy", np.array([{"a": 1}] * 5, dtype=object), allow_pickle=True)
    e["npy_object"] = root / "objects.npy"
    e["holdout_two"] = root / "holdout_two"
    for i in range(2):
        _png(e["holdout_two"] / f"{i}.png", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    e["baseline_ok"] = root / "baseline_ok.json"
    e["baseline_ok"].write_text("{}")
    e["baseline_bad"] = root / "bad.json"
    e["baseline_bad"].write_text('{"verdict": "pass"}')
    e["file_as_dir"] = root / "regular_file"
    e["file_as_dir"].write_text("x")
    e["unwritable"] = Path("/proc/ganaudit-test")  # no file can be made under /proc, not even by root
    e["config_dir"] = root / "cfg"
    e["config_dir"].mkdir()
    return e


@dataclass
class Case:
    """One row of the table: CLI arguments built from ``env``; what must happen."""

    id: str
    args: callable
    expect: str  # "error" or "audit"
    pattern: str = ""  # regex the error line (or, for audits, stderr) must match
    codes: tuple[int, ...] = (0, 1)  # accepted exit codes of an audit
    config: str | None = None  # a ganaudit.toml written beside, passed with --config
    check: callable = None  # more assertions on an audit's result dict
    outputs: tuple[str, ...] = field(default=("json",))


def common(e, *extra, train="train", holdout="holdout", gen="fresh_gen", n="40"):
    args = ["--train", e[train]] if train else []
    args += ["--holdout", e[holdout]] if holdout else []
    args += ["--generator", e[gen]] if gen else []
    return [*args, "--num-samples", n, *extra]


def _collapsed(result):
    gates = {g["name"]: g for g in result["gates"]}
    assert result["verdict"] == "fail" and gates["collapse"]["status"] == "fail"
    assert result["coverage"]["duplicate_fraction"] == 1.0


CASES = [
    # ---- the table -------------------------------------------------------------------
    Case("train-with-black-images", lambda e: common(e, train="train_black"), "audit"),
    Case("all-zero-generator", lambda e: common(e, gen="zero_gen"), "audit", codes=(1,), check=_collapsed),
    Case("generator-4px", lambda e: common(e, gen="tiny_gen"), "audit"),
    Case("samples-folder-of-3", lambda e: [*common(e, gen=None), "--samples", e["samples_3"]], "audit"),
    Case("seed-negative", lambda e: common(e, "--seed", "-1"), "error", r"--seed must be an integer in \[0, 2\*\*63\)"),
    Case("seed-2**70", lambda e: common(e, "--seed", str(2**70)), "error", r"--seed must be an integer in \[0, 2\*\*63\)"),
    Case("seed-2**63-1", lambda e: common(e, "--seed", str(2**63 - 1)), "audit"),
    Case("modes-100000", lambda e: common(e, "--modes", "100000"), "error", r"--modes 100000: .*120 training images"),
    Case("arch-with-pt2", lambda e: common(e, "--arch", "x:Y", "--arch-kwargs", "{}", gen="gen_pt2"), "error",
         r"--arch .*only for state_dict"),
    Case("arch-kwargs-bad-json", lambda e: common(e, "--arch", "x:Y", "--arch-kwargs", "{bad", gen="gen_pt2"), "error",
         r"--arch-kwargs must be a JSON object"),
    Case("arch-kwargs-without-arch", lambda e: common(e, "--arch-kwargs", "{}"), "error", r"--arch-kwargs needs --arch"),
    Case("config-num-samples-string", lambda e: common(e), "error", r"num_samples .*integer", config='num_samples = "many"'),
    Case("config-alpha-string", lambda e: common(e), "error", r"alpha .*number", config='alpha = "0.01"'),
    Case("config-region-max-tiles-10", lambda e: common(e), "error", r"region_max_tiles .*at least 100",
         config="region_max_tiles = 10"),
    Case("config-regions-string", lambda e: common(e), "error", r"regions .*true or false", config='regions = "yes"'),
    Case("html-in-missing-dir", lambda e: common(e, "--html", e["out"] / "no" / "such" / "dir" / "r.html"), "audit",
         outputs=("json", "html")),
    Case("html-parent-is-file", lambda e: common(e, "--html", e["file_as_dir"] / "r.html"), "error",
         r"--html .*not a folder"),
    Case("junit-is-directory", lambda e: common(e, "--junit", e["out"]), "error", r"--junit .*is a folder"),
    Case("cache-dir-cannot-be-created", lambda e: common(e, "--cache-dir", e["unwritable"] / "c"), "audit",
         pattern=r"cache"),
    Case("cache-dir-is-file", lambda e: common(e, "--cache-dir", e["file_as_dir"]), "audit", pattern=r"cache"),
    # ---- more of what users feed a gate ------------------------------------------------------
    Case("constant-generator", lambda e: common(e, gen="const_gen"), "audit", codes=(1,), check=_collapsed),
    Case("generator-1px", lambda e: common(e, gen="onepx_gen"), "audit"),
    Case("constant-training-set", lambda e: common(e, "--alpha", "0.05", train="train_constant", holdout=None), "audit"),
    Case("copies-of-black-images", lambda e: common(e, train="train_black", gen="copy_gen_black"), "audit"),
    Case("gray-rgba-cmyk-16bit-mixed-sizes", lambda e: common(e, "--alpha", "0.05", train="train_mixed", holdout=None),
         "audit"),
    Case("unicode-and-spaces-in-paths", lambda e: common(e, "--alpha", "0.05", train="train_unicode", holdout=None),
         "audit"),
    Case("huge-image", lambda e: common(e, "--alpha", "0.1", train="train_huge", holdout=None, n="20"), "audit",
         check=lambda r: max(r["train"]["size"]) == 1024),
    Case("zero-byte-file", lambda e: common(e, train="train_one_bad", holdout=None), "error",
         r"cannot read image .*0007\.png.*--skip-corrupt"),
    Case("zero-byte-file-skipped", lambda e: common(e, "--skip-corrupt", "--alpha", "0.05", train="train_one_bad",
                                                    holdout=None), "audit",
         check=lambda r: r["train"]["n_corrupt"] == 1),
    Case("float64-array-0-255", lambda e: common(e, "--alpha", "0.05", train="npy_float64_255", holdout=None), "audit"),
    Case("npz-wrong-key", lambda e: common(e, train="npz_wrong_key", holdout=None), "error", r"wrong_key\.npz"),
    Case("npy-with-nan", lambda e: common(e, train="npy_nan", holdout=None), "error", r"NaN"),
    Case("npy-5d", lambda e: common(e, train="npy_5d", holdout=None), "error", r"five_d\.npy"),
    Case("train-empty-folder", lambda e: common(e, train="empty_dir"), "error", r"no images found"),
    Case("train-text-file", lambda e: common(e, train="text_file"), "error", r"expected a folder of images"),
    Case("train-missing", lambda e: ["--train", e["root"] / "nope", "--generator", e["fresh_gen"]], "error",
         r"no such file"),
    Case("no-train", lambda e: ["--generator", e["fresh_gen"]], "error", r"--train is required"),
    Case("no-train-with-reference-stats", lambda e: ["--generator", e["fresh_gen"], "--reference-stats", e["npz_one"]],
         "error", r"--train is required.*--reference-stats replaces only"),
    Case("generator-and-samples", lambda e: [*common(e), "--samples", e["samples_3"]], "error", r"exactly one of"),
    Case("generator-is-directory", lambda e: common(e, "--generator", e["empty_dir"], gen=None), "error",
         r"--generator .*is a folder, not a checkpoint file"),
    Case("generator-text", lambda e: common(e, "--generator", e["text_file"], gen=None), "error",
         r"--generator .*not a checkpoint ganaudit can read"),
    Case("z-dim-disagrees", lambda e: common(e, "--z-dim", "5"), "error", r"--z-dim 5 does not match"),
    Case("num-samples-0", lambda e: common(e, n="0"), "error", r"--num-samples"),
    Case("num-samples-word", lambda e: common(e, n="ten"), "error", r"--num-samples: invalid int"),
    Case("batch-size-0", lambda e: common(e, "--batch-size", "0"), "error", r"--batch-size"),
    Case("alpha-0", lambda e: common(e, "--alpha", "0"), "error", r"--alpha must be a number in"),
    Case("alpha-nan", lambda e: common(e, "--alpha", "nan"), "error", r"--alpha must be a number in"),
    Case("device-tpu", lambda e: common(e, "--device", "tpu"), "error", r"--device must be one of"),
    Case("embedder-unknown", lambda e: common(e, "--embedder", "resnet9000"), "error", r"unknown embedder"),
    Case("tta-unknown", lambda e: common(e, "--tta", "spin"), "error", r"unknown test-time augmentation"),
    Case("index-unknown", lambda e: common(e, "--index", "lsh"), "error", r"index must be"),
    Case("engine-unknown", lambda e: common(e, "--engine", "spark"), "error", r"--engine must be one of local, ray"),
    Case("ray-address-without-ray", lambda e: common(e, "--ray-address", "auto"), "error",
         r"--ray-address needs --engine ray"),
    Case("ray-address-blank", lambda e: common(e, "--engine", "ray", "--ray-address", " "), "error",
         r"--ray-address must be a Ray cluster address"),
    Case("copy-threshold-out-of-range", lambda e: common(e, "--copy-threshold", "7"), "error", r"--copy-threshold 7"),
    Case("copy-threshold-word", lambda e: common(e, "--copy-threshold", "strict"), "error", r"--copy-threshold"),
    Case("output-range-bad", lambda e: common(e, "--output-range", "0,2"), "error", r"--output-range"),
    Case("class-weights-alone", lambda e: common(e, "--class-weights", "1,2"), "error", r"needs --num-classes"),
    Case("num-classes-unconditional", lambda e: common(e, "--num-classes", "3"), "error", r"--num-classes"),
    Case("truncation-negative", lambda e: common(e, "--truncation", "-1"), "error", r"--truncation"),
    Case("weights-for-pixels", lambda e: common(e, "--weights", e["text_file"]), "error", r"has no weights"),
    Case("modes-1", lambda e: common(e, "--modes", "1"), "error", r"--modes must be an integer of at least 2"),
    Case("baseline-not-a-result", lambda e: common(e, "--baseline", e["baseline_bad"]), "error", r"--baseline"),
    Case("baseline-missing", lambda e: common(e, "--baseline", e["root"] / "nope.json"), "error", r"no such file"),
    Case("same-path-for-two-outputs", lambda e: common(e, "--html", e["out"] / "same", "--json", e["out"] / "same"),
         "error", r"--json and --html .*same file", outputs=()),
    Case("json-where-no-file-can-be-made", lambda e: common(e, "--json", e["unwritable"] / "r.json"), "error",
         r"--json .*cannot be written", outputs=()),
    Case("config-unknown-key", lambda e: common(e), "error", r"unknown setting 'alhpa'", config="alhpa = 0.05"),
    Case("config-bad-toml", lambda e: common(e), "error", r"not valid TOML", config="alpha = = 1"),
    Case("config-gates-not-tables", lambda e: common(e), "error", r"'gates' must be an array of tables",
         config='gates = "strict"'),
    Case("config-seed-bool", lambda e: common(e), "error", r"seed .*integer", config="seed = true"),
    Case("config-tta-not-list", lambda e: common(e), "error", r"tta must be a list", config='tta = "flip"'),
    Case("train-empty-string", lambda e: ["--train", "", "--generator", e["fresh_gen"]], "error",
         r"--train: expected a path, got an empty string"),
    Case("json-over-the-checkpoint", lambda e: common(e, "--json", e["fresh_gen"]), "error",
         r"--json .* is the --generator input", outputs=()),
    Case("html-over-the-baseline", lambda e: common(e, "--baseline", e["baseline_ok"], "--html", e["baseline_ok"]),
         "error", r"--html .* is the --baseline input"),
    Case("output-range-wrong-but-legal", lambda e: common(e, "--output-range", "0,255"), "audit"),
    Case("class-weights-nan", lambda e: common(e, "--num-classes", "3", "--class-weights", "1,nan,1"), "error",
         r"--class-weights must be 3 non-negative numbers"),
    Case("truncation-nan", lambda e: common(e, "--truncation", "nan"), "error", r"--truncation must be"),
    Case("embedder-empty", lambda e: common(e, "--embedder", ""), "error", r"--embedder must be an embedder name"),
    Case("samples-npz-of-one-image", lambda e: [*common(e, gen=None), "--samples", e["npz_one"]], "audit",
         check=lambda r: r["coverage"]["precision"] is None and "prdc" in r["coverage"]["not_computed"]),
    Case("npy-grayscale-nhw", lambda e: common(e, "--alpha", "0.05", train="npy_gray", holdout=None), "audit"),
    Case("npy-object-dtype", lambda e: common(e, train="npy_object", holdout=None), "error", r"objects\.npy"),
    Case("holdout-of-two-images", lambda e: common(e, holdout="holdout_two"), "audit",  # issue 16: small sets audit
         check=lambda r: r["memorization"]["calibration"]["method"] == "holdout+train-leave-one-out"),
    Case("weights-is-a-folder", lambda e: common(e, "--embedder", "inception", "--weights", e["empty_dir"]), "error",
         r"--weights"),
    Case("config-file-value-bad-though-overridden", lambda e: common(e, "--alpha", "0.05"), "error",
         r"alpha .*number", config='alpha = "high"'),
    # ---- latent recovery (--recover N, issue 17) -------------------------------------------
    Case("recover-0", lambda e: common(e, "--recover", "0"), "error", r"--recover must be an integer in \[2, "),
    Case("recover-1", lambda e: common(e, "--recover", "1"), "error", r"--recover must be an integer in \[2, "),
    Case("recover-negative", lambda e: common(e, "--recover", "-5"), "error", r"--recover must be an integer"),
    Case("recover-word", lambda e: common(e, "--recover", "all"), "error", r"--recover: invalid int"),
    Case("recover-huge", lambda e: common(e, "--recover", str(10**9)), "error", r"--recover must be an integer in"),
    Case("recover-without-holdout", lambda e: common(e, "--recover", "8", holdout=None), "error",
         r"--recover 8 compares training with held-out images: give --holdout"),
    Case("recover-steps-0", lambda e: common(e, "--recover", "8", "--recover-steps", "0"), "error",
         r"--recover-steps must be an integer in \[1, "),
    Case("recover-restarts-0", lambda e: common(e, "--recover", "8", "--recover-restarts", "0"), "error",
         r"--recover-restarts must be an integer in \[1, "),
    Case("config-recover-lr-0", lambda e: common(e), "error", r"recover_lr must be a number in \(0, 10\]",
         config="recover_lr = 0"),
    Case("config-recover-float", lambda e: common(e), "error", r"recover must be an integer", config="recover = 2.5"),
    Case("recover-samples-folder", lambda e: [*common(e, "--recover", "4", gen=None), "--samples", e["samples_3"]],
         "audit", check=lambda r: r["recovery"]["status"] == "skipped" and "samples folder" in r["recovery"]["note"]),
]


def _run(case: Case, e: dict, tmp_path: Path, capsys):
    outputs = {"json": tmp_path / "result.json"}
    args = ["check", *[str(a) for a in case.args(e)]]
    for name in case.outputs:
        if f"--{name}" not in args and name == "json":
            args += ["--json", str(outputs["json"])]
    if case.config is not None:
        cfg = tmp_path / "ganaudit.toml"
        cfg.write_text(case.config + "\n")
        args += ["--config", str(cfg)]
    outputs = [Path(a) for flag, a in zip(args, args[1:]) if flag in ("--json", "--html", "--junit")]
    before = {path: path.read_bytes() if path.is_file() else None for path in outputs}
    code, out, err = run_cli(*args, capsys=capsys)
    # what the run wrote: a new file, or an existing one changed
    written = [path for path in outputs if path.is_file() and path.read_bytes() != before[path]]
    return code, out, err, written if code == 2 else outputs


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_table(case: Case, env, tmp_path, capsys):
    code, out, err, written = _run(case, env, tmp_path, capsys)
    assert "Traceback" not in err and "internal error" not in err, err
    if case.expect == "error":
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (code, err)
        assert lines and lines[-1].startswith("error: "), err
        assert re.search(case.pattern, lines[-1]), lines[-1]
        assert not written, f"{written} written by a run that exited 2"
        return
    assert code in case.codes, (code, err)
    result_path = next(p for p in written if p.suffix == ".json" or p.name == "result.json")
    result = json.loads(result_path.read_text())
    if case.pattern:
        assert re.search(case.pattern, err), err
    if case.check is not None:
        assert case.check(result) is not False
    for path in written:
        assert path.is_file(), f"{path} missing"


def test_the_table_is_large_enough():
    assert len(CASES) >= 45 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.slow
def test_one_bad_file_among_thousands_is_named_and_skippable(tmp_path, tiny_sets, capsys):
    rng = np.random.default_rng(9)
    root = tmp_path / "many"
    for i in range(3000):
        _png(root / f"{i:05d}.png", rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    (root / "02718.png").write_text("<html>a saved error page, not an image</html>")
    # --modes: the automatic choice of K (k-means for K = 2..20 on 3,000 rows) would be half
    # of this test's time, and it is not what the test is about
    args = ["check", "--generator", tiny_sets["fresh_gen"], "--train", root, "--num-samples", "20", "--modes", "4"]
    code, _, err = run_cli(*args, capsys=capsys)
    assert code == 2 and re.search(r"^error: cannot read image .*02718\.png", err.strip().splitlines()[-1]), err
    out = tmp_path / "r.json"
    code, _, err = run_cli(*args, "--skip-corrupt", "--json", out, capsys=capsys)
    assert code in (0, 1), err
    result = json.loads(out.read_text())
    assert result["train"]["n_corrupt"] == 1 and result["train"]["n_images"] == 2999
