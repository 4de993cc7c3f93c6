"""Checking an AuditConfig before any work starts: every value, every combination, every output.

Three layers, each raising :class:`GanauditError` with one line that says what to fix:

- :func:`check_value`: one setting on its own (type and range), the same rule whether the
  value came from a flag, a config file (checked even when a flag overrides it) or the
  Python API;
- :func:`check_combinations`: settings that depend on each other and on the files they name;
- :func:`check_outputs`: every output path (``--json``, ``--html``, ``--junit``,
  ``--model-card``) can be written, so an audit is never run for outputs that then fail.

Nothing here imports torch.
"""
from __future__ import annotations

import json
import math
import numbers
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ganaudit.errors import GanauditError

DEVICES = ("auto", "cpu", "cuda", "mps")
OUTPUT_RANGES = {"-1,1": (-1.0, 1.0), "0,1": (0.0, 1.0), "0,255": (0.0, 255.0)}
COPY_THRESHOLD_MODES = ("auto", "calibrated")
INDEX_KINDS = ("auto", "flat", "ivf", "hnsw")
ENGINES = ("local", "ray")
MAX_SEED = 2**63
# A search asks for copy_k + 2 neighbours; faiss on a GPU returns at most 2048.
MAX_COPY_K = 1000
MAX_RECOVER = 100_000  # each image is optimised: 100k is days of CPU work; the bound catches typos
OUTPUTS = ("json", "html", "junit", "model_card")
INPUT_FILES = ("train", "generator", "samples", "holdout", "weights", "copy_weights", "baseline", "reference_stats",
               "review_file")


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _opt(rule: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or rule(v)


def _one_of(options) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v in options


def _path(v) -> bool:
    return isinstance(v, Path) or (isinstance(v, str) and v.strip() != "")


def _json_object(v) -> bool:
    if not isinstance(v, str):
        return False
    try:
        return isinstance(json.loads(v), dict)
    except ValueError:
        return False


def _tta(v) -> bool:
    from ganaudit.search.augment import AUGMENTATIONS  # torch-free: the names only

    return isinstance(v, (list, tuple)) and all(isinstance(a, str) and a in AUGMENTATIONS for a in v)


def _copy_threshold(v) -> bool:
    return _one_of(COPY_THRESHOLD_MODES)(v) or _num(v)


# setting -> (rule, what the value must be)
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_samples": (lambda v: _int(v) and v >= 10, "an integer of at least 10"),
    "seed": (lambda v: _int(v) and 0 <= v < MAX_SEED, "an integer in [0, 2**63)"),
    "batch_size": (lambda v: _int(v) and v >= 1, "a positive integer"),
    "device": (_one_of(DEVICES), f"one of {', '.join(DEVICES)}"),
    "embedder": (lambda v: isinstance(v, str) and v != "", "an embedder name (see `ganaudit embedders`)"),
    "copy_embedder": (lambda v: isinstance(v, str) and v != "", "auto or an embedder name"),
    "z_dim": (_opt(lambda v: _int(v) and v >= 1), "a positive integer"),
    "output_range": (_opt(_one_of(OUTPUT_RANGES)), f"one of {', '.join(OUTPUT_RANGES)}"),
    "arch": (_opt(lambda v: isinstance(v, str) and ":" in v), "like package.module:ClassName"),
    "arch_kwargs": (_opt(_json_object), "a JSON object, like '{\"z_dim\": 64}'"),
    "num_classes": (_opt(lambda v: _int(v) and v >= 1), "a positive integer"),
    "truncation": (_opt(lambda v: _num(v) and v >= 0), "a non-negative number"),
    "alpha": (lambda v: _num(v) and 0 < v < 0.5, "a number in (0, 0.5)"),
    "fdr_q": (lambda v: _num(v) and 0 < v < 1, "a number in (0, 1)"),
    "nearest_k": (lambda v: _int(v) and v >= 1, "a positive integer"),
    "copy_k": (lambda v: _int(v) and 1 <= v <= MAX_COPY_K,
               f"an integer in [1, {MAX_COPY_K}] (neighbours the nearest distance is compared with)"),
    "tta": (_opt(_tta), "a list of test-time augmentations: flip, shift, shift-grid, zoom, rotate, crop, hue (or none)"),
    "copy_threshold": (_copy_threshold, "auto, calibrated or a finite number"),
    "calibration_max": (lambda v: _int(v) and v >= 1, "a positive integer"),
    "region_max_tiles": (lambda v: _int(v) and v >= 100, "an integer of at least 100 (training tiles indexed)"),
    "index": (_one_of(INDEX_KINDS), f"one of {', '.join(INDEX_KINDS)}"),
    "approx_above": (lambda v: _int(v) and v >= 1, "a positive integer"),
    "engine": (_one_of(ENGINES), f"one of {', '.join(ENGINES)}"),
    "ray_address": (_opt(lambda v: isinstance(v, str) and v.strip() != "" and not any(c.isspace() for c in v)),
                    "a Ray cluster address, like auto, 127.0.0.1:6379 or ray://head:10001"),
    "coverage_max_real": (lambda v: _int(v) and v >= 2, "an integer of at least 2"),
    "modes": (_opt(lambda v: _int(v) and v >= 2), "an integer of at least 2"),
    "kid_subsets": (lambda v: _int(v) and v >= 1, "a positive integer"),
    "mode_min_share_ratio": (lambda v: _num(v) and 0 < v <= 1, "a number in (0, 1]"),
    "fid_protocol": (_opt(lambda v: isinstance(v, str)), "a protocol name"),
    "fd_embedders": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(n, str) and n for n in v),
                     "a comma list of embedder names"),
    "progress": (_opt(lambda v: isinstance(v, bool)), "true or false"),
    "recover": (_opt(lambda v: _int(v) and 2 <= v <= MAX_RECOVER),
                f"an integer in [2, {MAX_RECOVER}] (training and holdout images to recover), or unset"),
    "recover_steps": (lambda v: _int(v) and 1 <= v <= 100_000, "an integer in [1, 100000]"),
    "recover_restarts": (lambda v: _int(v) and 1 <= v <= 1000, "an integer in [1, 1000]"),
    "recover_lr": (lambda v: _num(v) and 0 < v <= 10, "a number in (0, 10]"),
}
for _name in ("no_cache", "trust_checkpoint", "skip_corrupt", "warn_only", "fid_infinity", "regions"):
    RULES[_name] = (lambda v: isinstance(v, bool), "true or false")
for _name in ("train", "generator", "samples", "holdout", "weights", "copy_weights", "cache_dir", "baseline",
              "reference_stats", "review_file", *OUTPUTS):
    RULES[_name] = (_opt(_path), "a path")


def check_value(name: str, value: Any, label: str) -> None:
    """Raise GanauditError unless ``value`` is a legal ``name`` on its own.

    Args:
        label: how the message names the setting (``--seed``, or ``ganaudit.toml: seed``).
    """
    rule = RULES.get(name)
    if rule is None or rule[0](value):
        return
    if name == "tta" and isinstance(value, (list, tuple)):
        from ganaudit.search.augment import AUGMENTATIONS

        bad = [a for a in value if a not in AUGMENTATIONS]
        raise GanauditError(f"{label}: unknown test-time augmentation {bad}; choose from "
                            f"{', '.join(AUGMENTATIONS)} or none")
    raise GanauditError(f"{label} must be {rule[1]}, got {value!r}")


def flag_label(name: str) -> str:
    """``--num-samples`` for a setting that is a flag, the bare name for a file-only one."""
    from ganaudit.config import flag_fields

    return "--" + name.replace("_", "-") if name in dict(flag_fields()) else name


def check_combinations(config, need_train: bool = True) -> None:
    """The checks that look at several settings, or at the files they name (``need_train``
    False: ``ganaudit fd``, which needs no training set)."""
    if config.train is None and need_train:
        extra = (" (--reference-stats replaces only the training images' statistics in FD; the copy search and "
                 "coverage need the images themselves)" if config.reference_stats is not None else "")
        raise GanauditError("--train is required: the folder or .npz of training images" + extra)
    if (config.generator is None) == (config.samples is None):
        raise GanauditError("give exactly one of --generator (a checkpoint) or --samples "
                            "(a folder or .npz of generated images)")
    for name in ("train", "generator", "samples", "holdout", "weights", "copy_weights", "baseline"):
        path = getattr(config, name)
        if path is not None and not Path(path).exists():
            raise GanauditError(f"--{name.replace('_', '-')} {path}: no such file or directory")
    if config.generator is not None and Path(config.generator).is_dir():
        raise GanauditError(f"--generator {config.generator} is a folder, not a checkpoint file "
                            "(for a folder of generated images use --samples)")
    _need(config.arch_kwargs is None or config.arch is not None, "--arch-kwargs needs --arch (the module:Class it builds)")
    _need(config.samples is None or (config.arch is None and config.z_dim is None and config.num_classes is None
                                     and config.truncation is None),
          "--arch, --z-dim, --num-classes and --truncation describe a generator; --samples has none")
    _need(config.copy_weights is None or config.copy_embedder != "auto",
          "--copy-weights needs --copy-embedder NAME: the weights of that embedder")
    _need(config.recover is None or config.holdout is not None,
          f"--recover {config.recover} compares training with held-out images: give --holdout too")
    _need(config.ray_address is None or config.engine == "ray",
          "--ray-address needs --engine ray (the local engine runs in this process)")
    normalised_class_weights(config.class_weights, config.num_classes)
    check_outputs(config)


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise GanauditError(message)


def check_outputs(config) -> None:
    """Every output path can be written: not a folder, not shared by two outputs, its folder
    (or the nearest existing folder above it) takes a new file. Checked by creating and
    removing a probe file there, which also catches read-only mounts and full quotas."""
    given = {name: Path(getattr(config, name)) for name in OUTPUTS if getattr(config, name, None) is not None}
    inputs = {Path(getattr(config, name)).resolve(): name for name in INPUT_FILES
              if getattr(config, name, None) is not None}
    seen: dict[Path, str] = {}
    for name, path in given.items():
        flag = "--" + name.replace("_", "-")
        key = path.resolve()
        if key in seen:
            raise GanauditError(f"{seen[key]} and {flag} are the same file {path}: give each output its own path")
        seen[key] = flag
        if key in inputs:
            raise GanauditError(f"{flag} {path} is the --{inputs[key].replace('_', '-')} input: writing it would "
                                "destroy it; give the output another path")
        if path.is_dir():
            raise GanauditError(f"{flag} {path} is a folder: give the path of a file to write")
        _probe_folder(path, flag)


def _probe_folder(path: Path, flag: str) -> None:
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise GanauditError(f"{flag} {path}: {folder} is not a folder, so nothing can be written under it")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ganaudit-probe-"):
            pass
    except OSError as e:
        raise GanauditError(f"{flag} {path} cannot be written: {e.strerror or e} in {folder}; "
                            "choose a writable location") from None


def check_fd_options(config) -> None:
    """``fid_protocol``, ``reference_stats`` and ``fd_embedders`` (registry names or PREFIX:PATH)."""
    from ganaudit.embedders import REGISTRY, USER_PREFIXES
    from ganaudit.embedders.fid_protocols import get_protocol

    if config.fid_protocol is not None:
        get_protocol(config.fid_protocol)
    path = config.reference_stats
    _need(path is None or Path(path).is_file(), f"--reference-stats {path}: no such file")
    names = config.fd_embedders
    _need(isinstance(names, tuple) and all(isinstance(n, str) and n for n in names),
           f"--fd-embedders must be a comma list of embedder names, got {names!r}")
    _need(len(set(names)) == len(names), f"--fd-embedders names an embedder twice: {', '.join(names)}")
    unknown = [n for n in names if n not in REGISTRY and n.partition(":")[0] not in USER_PREFIXES]
    if unknown:
        raise GanauditError(f"--fd-embedders: unknown embedder {unknown[0]!r}; available: "
                            f"{', '.join(sorted(REGISTRY))}, torchscript:PATH, pt2:PATH")
    fid_flags = [flag for flag, on in (("--fid-protocol", config.fid_protocol is not None),
                                       ("--reference-stats", path is not None), ("--fid-infinity", config.fid_infinity)) if on]
    _need(not (names and fid_flags and "inception" not in names),
           f"{', '.join(fid_flags)}: FID options, so --fd-embedders must include inception (given: {','.join(names)})")


def normalised_class_weights(weights, num_classes: int | None) -> tuple[float, ...] | None:
    """``--class-weights`` checked against ``--num-classes`` and scaled to sum to 1 (None: uniform).

    Raises:
        GanauditError: weights without ``num_classes``, the wrong count, negative, infinite or
            all zero.
    """
    if weights is None:
        return None
    _need(num_classes is not None, "--class-weights needs --num-classes")
    if hasattr(weights, "__iter__") and not isinstance(weights, (str, bytes, dict)):
        weights = list(weights)  # a tuple from the flag, a TOML list, a numpy array from the API
    all_numbers = isinstance(weights, list) and all(isinstance(w, numbers.Real) and not isinstance(w, bool)
                                                for w in weights)
    _need(all_numbers and len(weights) == num_classes and all(0 <= w < float("inf") for w in weights)
           and sum(weights) > 0,
           f"--class-weights must be {num_classes} non-negative numbers (one per class) with a positive sum, "
           f"got {weights!r}")
    total = float(sum(weights))
    return tuple(float(w) / total for w in weights)
