"""One frozen configuration object, resolved once: defaults < config file < flags.

The config file is ``[tool.ganaudit]`` in ``pyproject.toml`` or the top level of a
``ganaudit.toml`` (found in the working directory, or given with ``--config``). Unknown keys
are errors, never silently ignored: a misspelt threshold must not quietly fall back to its
default in a CI gate.
"""
from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ganaudit.augment import AUGMENTATIONS
from ganaudit.errors import GanauditError
from ganaudit.gate import baseline_rules_from_config, gates_from_config

DEVICES = ("auto", "cpu", "cuda", "mps")
OUTPUT_RANGES = {"-1,1": (-1.0, 1.0), "0,1": (0.0, 1.0), "0,255": (0.0, 255.0)}
COPY_THRESHOLD_MODES = ("auto", "calibrated")
# A search asks for copy_k + 2 neighbours; faiss on a GPU returns at most 2048.
MAX_COPY_K = 1000


@dataclass(frozen=True)
class AuditConfig:
    """Everything one audit needs. Paths are ``pathlib.Path``; ``None`` means not given."""

    train: Path | None = None
    generator: Path | None = None
    samples: Path | None = None
    holdout: Path | None = None
    embedder: str = "pixels"
    weights: Path | None = None
    cache_dir: Path | None = None  # embedding cache; None: $XDG_CACHE_HOME/ganaudit or ~/.cache/ganaudit
    no_cache: bool = False
    num_samples: int = 5000
    seed: int = 0
    device: str = "auto"
    batch_size: int = 128
    z_dim: int | None = None
    output_range: str | None = None
    trust_checkpoint: bool = False
    arch: str | None = None
    arch_kwargs: str | None = None
    num_classes: int | None = None  # conditional generators: labels 0..K-1 passed after z
    class_weights: tuple[float, ...] | None = None  # per-class sampling weights (normalised); None: uniform
    truncation: float | None = None  # truncation psi, passed to generators that take one
    skip_corrupt: bool = False  # skip (and count) unreadable images instead of stopping
    # memorisation
    alpha: float = 0.01
    fdr_q: float = 0.05
    nearest_k: int = 5
    copy_k: int = 50  # neighbours the nearest distance is compared with (Carlini et al. 2023)
    tta: tuple[str, ...] | None = None  # None: the copy embedder's own default (its spec's copy_tta)
    copy_embedder: str = "auto"  # features copy search uses; auto: the embedder's declared copy descriptor
    copy_weights: Path | None = None  # weights file for a copy embedder other than the embedder
    # auto: the copy embedder's published threshold if it has one, else calibrated from data;
    # calibrated: always from data; a number: absolute, in the copy embedder's metric units.
    copy_threshold: float | str = "auto"
    calibration_max: int = 5000
    index: str = "auto"  # flat (exact), ivf, hnsw, or auto: exact up to approx_above training images
    approx_above: int = 1_000_000
    # coverage
    coverage_max_real: int = 10_000
    modes: int | None = None
    kid_subsets: int = 10  # KID subsets of up to 1000 (the field's protocol uses 100; slower on CPU)
    mode_min_share_ratio: float = 0.25
    # FD beyond coverage.fd (issue 20; ganaudit/fd_audit.py): computed only when one of these is set
    fid_protocol: str | None = None  # pytorch-fid, clean-fid, clean-fid-legacy, torch-fidelity; None: the default
    reference_stats: Path | None = None  # FID against these statistics (.npz) instead of --train
    fd_embedders: tuple[str, ...] = ()  # FD in each of these spaces; empty: inception if any FID option is set
    fid_infinity: bool = False  # also FID extrapolated to infinitely many samples (Chong & Forsyth 2020)
    # gate and outputs
    gates: tuple[dict, ...] = ()
    baseline: Path | None = None
    baseline_rules: tuple[dict, ...] = ()
    warn_only: bool = False
    html: Path | None = None
    json: Path | None = None
    junit: Path | None = None
    progress: bool | None = None  # None: only when stderr is a terminal

    def validate(self) -> "AuditConfig":
        """Check every value; raise GanauditError with a one-line message on the first bad one."""
        if self.train is None:
            raise GanauditError("--train is required: the folder or .npz of training images")
        if (self.generator is None) == (self.samples is None):
            raise GanauditError("give exactly one of --generator (a checkpoint) or --samples (a folder or .npz of generated images)")
        for name in ("train", "generator", "samples", "holdout", "weights", "copy_weights", "baseline"):
            path = getattr(self, name)
            if path is not None and not Path(path).exists():
                raise GanauditError(f"--{name} {path}: no such file or directory")
        _check(self.num_samples >= 10, f"--num-samples must be at least 10, got {self.num_samples}")
        _check(self.batch_size >= 1, f"--batch-size must be positive, got {self.batch_size}")
        _check(self.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        _check(self.z_dim is None or self.z_dim >= 1, f"--z-dim must be positive, got {self.z_dim}")
        _check(self.output_range is None or self.output_range in OUTPUT_RANGES,
               f"--output-range must be one of {', '.join(OUTPUT_RANGES)}, got {self.output_range!r}")
        _check_generator_inputs(self)
        _check(0.0 < self.alpha < 0.5, f"alpha must be in (0, 0.5), got {self.alpha}")
        _check(0.0 < self.fdr_q < 1.0, f"fdr_q must be in (0, 1), got {self.fdr_q}")
        _check(self.nearest_k >= 1, f"nearest_k must be positive, got {self.nearest_k}")
        _check(self.index in ("auto", "flat", "ivf", "hnsw"), f"index must be auto, flat, ivf or hnsw, got {self.index!r}")
        _check(1 <= self.copy_k <= MAX_COPY_K,
               f"copy_k must be in [1, {MAX_COPY_K}] (neighbours the nearest distance is compared with), got {self.copy_k}")
        bad = [a for a in (self.tta or ()) if a not in AUGMENTATIONS]
        _check(not bad, f"unknown test-time augmentation {bad}; choose from {', '.join(AUGMENTATIONS)} or none")
        _check_copy_threshold(self.copy_threshold)
        _check(self.copy_weights is None or self.copy_embedder != "auto",
               "--copy-weights needs --copy-embedder NAME: the weights of that embedder")
        _check(self.kid_subsets >= 1, f"kid_subsets must be positive, got {self.kid_subsets}")
        _check(self.modes is None or self.modes >= 2, f"--modes must be at least 2, got {self.modes}")
        _check(0.0 < self.mode_min_share_ratio <= 1.0,
               f"mode_min_share_ratio must be in (0, 1], got {self.mode_min_share_ratio}")
        gates_from_config(self.gates)
        baseline_rules_from_config(self.baseline_rules)
        _check_fd_options(self)
        return self


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise GanauditError(message)


def _check_copy_threshold(value) -> None:
    if isinstance(value, str):
        _check(value in COPY_THRESHOLD_MODES,
               f"copy_threshold must be auto, calibrated or a number, got {value!r}")
    else:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
               f"copy_threshold must be auto, calibrated or a finite number, got {value!r}")


def _check_fd_options(config: AuditConfig) -> None:
    """``fid_protocol``, ``reference_stats`` and ``fd_embedders`` (registry names or PREFIX:PATH)."""
    from ganaudit.embedders import REGISTRY, USER_PREFIXES
    from ganaudit.embedders.fid_protocols import get_protocol

    if config.fid_protocol is not None:
        get_protocol(config.fid_protocol)
    path = config.reference_stats
    _check(path is None or Path(path).is_file(), f"--reference-stats {path}: no such file")
    names = config.fd_embedders
    _check(isinstance(names, tuple) and all(isinstance(n, str) and n for n in names),
           f"--fd-embedders must be a comma list of embedder names, got {names!r}")
    _check(len(set(names)) == len(names), f"--fd-embedders names an embedder twice: {', '.join(names)}")
    unknown = [n for n in names if n not in REGISTRY and n.partition(":")[0] not in USER_PREFIXES]
    if unknown:
        raise GanauditError(f"--fd-embedders: unknown embedder {unknown[0]!r}; available: "
                            f"{', '.join(sorted(REGISTRY))}, torchscript:PATH, pt2:PATH")
    fid_flags = [flag for flag, on in (("--fid-protocol", config.fid_protocol is not None),
                                       ("--reference-stats", path is not None), ("--fid-infinity", config.fid_infinity)) if on]
    _check(not (names and fid_flags and "inception" not in names),
           f"{', '.join(fid_flags)}: FID options, so --fd-embedders must include inception (given: {','.join(names)})")


def _check_generator_inputs(config: AuditConfig) -> None:
    """``num_classes``, ``class_weights`` and ``truncation``."""
    k, weights, psi = config.num_classes, config.class_weights, config.truncation
    _check(k is None or (isinstance(k, int) and k >= 1), f"--num-classes must be a positive integer, got {k!r}")
    if weights is not None:
        _check(k is not None, "--class-weights needs --num-classes")
        numbers = isinstance(weights, (list, tuple)) and all(isinstance(w, (int, float)) for w in weights)
        _check(numbers and len(weights) == k and all(0 <= w < float("inf") for w in weights) and sum(weights) > 0,
               f"--class-weights must be {k} non-negative numbers (one per class) with a positive sum, got {weights!r}")
    _check(psi is None or (isinstance(psi, (int, float)) and 0 <= psi < float("inf")),
           f"--truncation must be a non-negative number, got {psi!r}")


_FIELDS = {f.name: f for f in dataclasses.fields(AuditConfig)}
_PATH_FIELDS = {"train", "generator", "samples", "holdout", "weights", "copy_weights", "html", "json", "junit", "baseline", "cache_dir",
                "reference_stats"}


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


def resolve_config(file_values: dict[str, Any], flag_values: dict[str, Any], source: str = "config") -> AuditConfig:
    """Merge defaults < file values < flags (flags given as ``None`` are not set) into a config."""
    merged: dict[str, Any] = {}
    for key, value in file_values.items():
        name = key.replace("-", "_")
        if name in ("gates", "baseline_rules"):
            merged[name] = _tables_from_file(value, name, source)
            continue
        if name not in _FIELDS:
            raise GanauditError(f"{source}: unknown setting {key!r}; known settings: {', '.join(sorted(_FIELDS))}")
        merged[name] = value
    merged.update({k: v for k, v in flag_values.items() if v is not None})
    for name in _PATH_FIELDS & merged.keys():
        if merged[name] is not None:
            merged[name] = Path(merged[name])
    if merged.get("tta") is not None:
        if not isinstance(merged["tta"], (list, tuple)):
            raise GanauditError(f"{source}: 'tta' must be a list of augmentation names, like [\"flip\", \"shift\"]")
        merged["tta"] = tuple(merged["tta"])
    if isinstance(merged.get("fd_embedders"), (list, str)):  # a TOML list, or "a,b" from a flag or file
        value = merged["fd_embedders"]
        items = value.split(",") if isinstance(value, str) else value
        merged["fd_embedders"] = tuple(v.strip() if isinstance(v, str) else v for v in items
                                       if not isinstance(v, str) or v.strip())
    return AuditConfig(**merged).validate()


def _tables_from_file(value: Any, name: str, source: str) -> tuple[dict, ...]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise GanauditError(f"{source}: '{name}' must be an array of tables ([[tool.ganaudit.{name}]])")
    return tuple(value)
