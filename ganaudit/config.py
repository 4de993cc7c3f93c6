"""One frozen configuration object, resolved once: defaults < config file < flags.

The config file is ``[tool.ganaudit]`` in ``pyproject.toml`` or the top level of a
``ganaudit.toml`` (found in the working directory, or given with ``--config``). Unknown keys
are errors, never silently ignored: a misspelt threshold must not quietly fall back to its
default in a CI gate.
"""
from __future__ import annotations

import argparse
import dataclasses
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ganaudit.config_checks import (
    COPY_THRESHOLD_MODES, OUTPUT_RANGES, check_combinations, check_fd_options, check_value, flag_label,
)
from ganaudit.errors import GanauditError
from ganaudit.gate import baseline_rules_from_config, gates_from_config
from ganaudit.review.hooks import check_review_file



@dataclass(frozen=True)
class Flag:
    """How a setting appears on the command line of ``ganaudit check`` (``--name-with-dashes``).

    Attributes:
        help: the ``--help`` text.
        group: ``"source"``, ``"generator"``, ``"run"`` or ``"outputs"`` (the help's sections).
        parse: turns the flag's text into the value (default: the text itself).
        metavar: the placeholder in ``--help``.
        kind: ``"value"`` (takes an argument), ``"switch"`` (``--x`` sets True) or
            ``"toggle"`` (``--x`` / ``--no-x``).
    """

    help: str
    group: str = "run"
    parse: Callable[[str], Any] | None = None
    metavar: str | None = None
    kind: str = "value"


def _setting(default, flag: Flag | None = None):
    """A config field; with ``flag`` also a command-line flag, else a config-file setting only."""
    return field(default=default, metadata={"flag": flag} if flag is not None else {})


def _copy_threshold(text: str) -> float | str:
    if text in COPY_THRESHOLD_MODES:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, calibrated or a number; got {text!r}") from None


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, like 1,1,2; got {text!r}") from None


def _path_arg(text: str) -> Path:
    """A path flag's text: never empty (``Path("")`` would silently be the working directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return Path(text)


def _name_list(text: str) -> tuple[str, ...]:
    """``"flip, shift"`` → ``("flip", "shift")``; ``"none"`` → ``()``."""
    return () if text.strip() == "none" else tuple(a.strip() for a in text.split(",") if a.strip())


@dataclass(frozen=True)
class AuditConfig:
    """Everything one audit needs. Paths are ``pathlib.Path``; ``None`` means not given.

    Fields with a :class:`Flag` are also flags of ``ganaudit check`` (the CLI is generated
    from them); the rest are set in a config file only.
    """

    train: Path | None = _setting(None, Flag(
        "training images: a folder (class subfolders give modes) or .npz/.npy", "source", _path_arg))
    generator: Path | None = _setting(None, Flag(
        "checkpoint: .pt2 (torch.export), TorchScript, state_dict or .safetensors", "source", _path_arg))
    samples: Path | None = _setting(None, Flag(
        "a folder or .npz of already generated images, instead of --generator", "source", _path_arg))
    holdout: Path | None = _setting(None, Flag(
        "held-out images from the training distribution (calibrates leak detection)", "source", _path_arg))
    embedder: str = _setting("pixels", Flag("feature network (see `ganaudit embedders`; default pixels)"))
    weights: Path | None = _setting(None, Flag("weights file for the embedder", parse=_path_arg))
    cache_dir: Path | None = _setting(None, Flag(
        "embedding cache (default $XDG_CACHE_HOME/ganaudit, else ~/.cache/ganaudit)", parse=_path_arg))
    no_cache: bool = _setting(False, Flag("embed the training set again, without the cache", kind="switch"))
    num_samples: int = _setting(5000, Flag("samples to draw from the generator (default 5000)", parse=int))
    seed: int = _setting(0, Flag("seed of the latents and of every random choice (default 0)", parse=int))
    device: str = _setting("auto", Flag("auto (cuda, then mps, then cpu), cpu, cuda or mps"))
    batch_size: int = _setting(128, Flag("images per batch (default 128)", parse=int))
    z_dim: int | None = _setting(None, Flag("latent size, when the checkpoint does not say", "generator", int))
    output_range: str | None = _setting(None, Flag(
        "generator output range: -1,1 or 0,1 or 0,255 (default: detected)", "generator"))
    trust_checkpoint: bool = _setting(False, Flag(
        "allow loading a full pickle (runs code from the file: only for checkpoints you trust)", "generator",
        kind="switch"))
    arch: str | None = _setting(None, Flag("module:Class of the generator, for state_dict checkpoints", "generator"))
    arch_kwargs: str | None = _setting(None, Flag("JSON keyword arguments for --arch", "generator"))
    num_classes: int | None = _setting(None, Flag(  # conditional generators: labels 0..K-1 passed after z
        "conditional generators: sample class labels 0..K-1 (uniform)", "generator", int))
    class_weights: tuple[float, ...] | None = _setting(None, Flag(  # normalised; None: uniform
        "comma list of K class weights for --num-classes (normalised)", "generator", _float_list))
    truncation: float | None = _setting(None, Flag(
        "truncation psi, for generators that take one", "generator", float, metavar="PSI"))
    skip_corrupt: bool = _setting(False, Flag(
        "skip unreadable image files (counted in the result) instead of stopping", "source", kind="switch"))
    # memorisation
    alpha: float = _setting(0.01, Flag("calibrated false-positive rate of leak flags (default 0.01)", parse=float))
    fdr_q: float = 0.05
    nearest_k: int = 5
    copy_k: int = 50  # neighbours the nearest distance is compared with (Carlini et al. 2023)
    tta: tuple[str, ...] | None = _setting(None, Flag(  # None: the copy embedder's own default (spec.copy_tta)
        "test-time augmentations for copy search: comma list of flip, shift, shift-grid, zoom, rotate, crop, hue, or none "
        "(default: the copy embedder's, e.g. flip,shift)", parse=_name_list))
    copy_embedder: str = _setting("auto", Flag(
        "features copy search uses (default auto: the embedder's copy descriptor, e.g. pixels-copy for pixels; "
        "on a CPU pixels-copy for networks too, so they run once per sample; sscd for copy detection proper)"))
    copy_weights: Path | None = _setting(None, Flag("weights file for --copy-embedder", parse=_path_arg))
    # auto: the copy embedder's published threshold if it has one, else calibrated from data;
    # calibrated: always from data; a number: absolute, in the copy embedder's metric units.
    copy_threshold: float | str = _setting("auto", Flag(
        "auto (published threshold if the copy embedder has one, else calibrated), calibrated, "
        "or an absolute value: cosine similarity (ip embedders) or distance (l2)", parse=_copy_threshold))
    calibration_max: int = 5000
    # region search (search/regions.py, docs/regions.md): partial copies on a new background
    regions: bool = _setting(False, Flag(
        "also search tiles of each sample against tiles of the training images, for partial copies "
        "(a region of a training image on a new background; costs about 36 index rows per training image "
        "and 900 tile searches per sample, see docs/regions.md)", kind="toggle"))
    region_max_tiles: int = 2_000_000  # training tiles indexed at most; past it a seeded subset of images
    index: str = _setting("auto", Flag(  # auto: exact up to approx_above training images
        "training-set search: flat (exact), ivf, hnsw, or auto (exact up to 1M images)"))
    approx_above: int = 1_000_000
    # latent recovery (white-box membership test; findings/recovery.py): off unless recover is set
    recover: int | None = _setting(None, Flag(
        "latent recovery: optimise latents so the generator reconstructs N training and N holdout images, "
        "and compare (white-box membership test; needs --holdout; default off)", parse=int, metavar="N"))
    recover_steps: int = _setting(300, Flag("Adam steps of each latent recovery (default 300)", parse=int))
    recover_restarts: int = _setting(4, Flag(
        "random starting latents per recovered image, the best kept (default 4)", parse=int))
    recover_lr: float = 0.05  # Adam's step size on z, cosine-decayed to 0 over recover_steps
    # where the work runs (ganaudit/engines/; docs/scale.md)
    engine: str = _setting("local", Flag(
        "local (this process) or ray (Ray Data embeds the training set with actors, samples and searches "
        "in parallel; needs pip install 'ganaudit[ray]')"))
    ray_address: str | None = _setting(None, Flag(
        "with --engine ray: the cluster to join, e.g. auto or ray://head:10001 (default: $RAY_ADDRESS, "
        "else a cluster on this machine)", metavar="ADDR"))
    # coverage
    coverage_max_real: int = 10_000
    modes: int | None = _setting(None, Flag(
        "cluster the training set into this many modes instead of using its labels", parse=int))
    kid_subsets: int = 10  # KID subsets of up to 1000 (the field's protocol uses 100; slower on CPU)
    mode_min_share_ratio: float = 0.25
    # FD beyond coverage.fd (findings/fd.py): computed only when one of these is set
    fid_protocol: str | None = _setting(None, Flag(  # None: the default protocol
        "compute FID as pytorch-fid, clean-fid, clean-fid-legacy or torch-fidelity (the default) does "
        "(see README: which to compare with which table)", "fid"))
    reference_stats: Path | None = _setting(None, Flag(
        "FID against these statistics: a pytorch-fid or clean-fid .npz (mu, sigma), a clean-fid KID file (feats) "
        "or an ADM reference batch", "fid", _path_arg))
    fd_embedders: tuple[str, ...] = _setting((), Flag(  # empty: inception if any FID option is set
        "comma list of feature spaces to report FD in, e.g. inception,dinov2-vitl14 "
        "(default: inception when any FID option is given)", "fid", _name_list))
    fid_infinity: bool = _setting(False, Flag(
        "also FID extrapolated to infinitely many samples (Chong & Forsyth 2020)", "fid", kind="switch"))
    # gate and outputs
    gates: tuple[dict, ...] = ()
    baseline: Path | None = _setting(None, Flag(
        "a previous result.json: fail on regressions against it", "outputs", _path_arg))
    baseline_rules: tuple[dict, ...] = ()
    warn_only: bool = _setting(False, Flag("report failed gates but exit 0", "outputs", kind="switch"))
    html: Path | None = _setting(None, Flag("write the HTML report here", "outputs", _path_arg))
    json: Path | None = _setting(None, Flag("write the JSON result here", "outputs", _path_arg))
    junit: Path | None = _setting(None, Flag("write one JUnit test case per gate here", "outputs", _path_arg))
    progress: bool | None = _setting(None, Flag(  # None: only when stderr is a terminal
        "progress bars (default: on when stderr is a terminal)", "outputs", kind="toggle"))
    review_file: Path | None = _setting(None, Flag(  # None: ganaudit-review.toml in the working directory, if any
        "waivers (default: ganaudit-review.toml in the working directory, if any)", "outputs", _path_arg))
    model_card: Path | None = _setting(None, Flag(
        "write a model-card section (Markdown, Hugging Face model-index) here", "outputs", _path_arg))

    def validate(self, need_train: bool = True) -> "AuditConfig":
        """Check every value and combination (``ganaudit.config_checks``); raise GanauditError
        with a one-line message on the first bad one. Nothing has run yet when it fails.
        ``need_train`` False: no training set is needed (``ganaudit fd``)."""
        for f in dataclasses.fields(self):
            check_value(f.name, getattr(self, f.name), flag_label(f.name))
        check_combinations(self, need_train)
        gates_from_config(self.gates)
        baseline_rules_from_config(self.baseline_rules)
        check_fd_options(self)
        check_review_file(self)  # a mistake in the review file costs no audit
        return self


_FIELDS = {f.name: f for f in dataclasses.fields(AuditConfig)}
_PATH_FIELDS = {f.name for f in _FIELDS.values() if getattr(f.metadata.get("flag"), "parse", None) is _path_arg}


def flag_fields() -> list[tuple[str, Flag]]:
    """``(field name, Flag)`` of every setting that is a flag of ``ganaudit check``, in field order."""
    return [(f.name, f.metadata["flag"]) for f in dataclasses.fields(AuditConfig) if "flag" in f.metadata]


def find_config_file(start: Path) -> tuple[Path, dict] | None:
    """Return ``(path, table)`` of the first ganaudit.toml or pyproject.toml [tool.ganaudit] in ``start``."""
    candidate = start / "ganaudit.toml"
    if candidate.is_file():
        return candidate, _read_toml(candidate)
    candidate = start / "pyproject.toml"
    if candidate.is_file():
        table = _read_toml(candidate).get("tool", {}).get("ganaudit")
        if table is not None:
            return candidate, table
    return None


def read_config_file(path: Path) -> dict:
    """Read the ganaudit settings table from ``path`` (pyproject.toml or ganaudit.toml)."""
    data = _read_toml(path)
    if path.name == "pyproject.toml":
        return data.get("tool", {}).get("ganaudit", {})
    return data


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise GanauditError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise GanauditError(f"config file {path} is not valid TOML: {e}") from None


def resolve_config(file_values: dict[str, Any], flag_values: dict[str, Any], source: str = "config",
                   need_train: bool = True) -> AuditConfig:
    """Merge defaults < file values < flags (flags given as ``None`` are not set) into a config
    (``need_train`` as for :meth:`AuditConfig.validate`)."""
    merged: dict[str, Any] = {}
    for key, value in file_values.items():
        name = key.replace("-", "_")
        if name in ("gates", "baseline_rules"):
            merged[name] = _tables_from_file(value, name, source)
            continue
        if name not in _FIELDS:
            raise GanauditError(f"{source}: unknown setting {key!r}; known settings: {', '.join(sorted(_FIELDS))}")
        check_value(name, tuple(value) if name in ("tta", "fd_embedders") and isinstance(value, list) else value,
                    f"{source}: {key}")  # checked even when a flag overrides it
        merged[name] = value
    merged.update({k: v for k, v in flag_values.items() if v is not None})
    for name in _PATH_FIELDS & merged.keys():
        if merged[name] is not None:
            merged[name] = Path(merged[name])
    if merged.get("tta") is not None:
        if not isinstance(merged["tta"], (list, tuple)):
            raise GanauditError(f"{source}: 'tta' must be a list of augmentation names, like [\"flip\", \"shift\"]")
        merged["tta"] = tuple(merged["tta"])
    if isinstance(merged.get("fd_embedders"), (list, str)):  # a TOML list, or "a,b" in a file
        value = merged["fd_embedders"]
        items = value.split(",") if isinstance(value, str) else value
        merged["fd_embedders"] = tuple(v.strip() if isinstance(v, str) else v for v in items
                                       if not isinstance(v, str) or v.strip())
    return AuditConfig(**merged).validate(need_train)


def _tables_from_file(value: Any, name: str, source: str) -> tuple[dict, ...]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise GanauditError(f"{source}: '{name}' must be an array of tables ([[tool.ganaudit.{name}]])")
    return tuple(value)
