"""Generators from weights files: state_dicts, nested training checkpoints, safetensors.

Weights are read with ``torch.load(weights_only=True)``, which refuses anything but tensors
and plain containers, so a malicious checkpoint cannot run code. A whole pickled module (or
a checkpoint holding other Python objects) needs ``--trust-checkpoint``.

Finding the weights: a checkpoint may be the state dict itself, or nest it under keys such as
``g_ema``, ``G_ema``, ``ema``, ``generator``, ``state_dict`` (at any depth, e.g.
``state_dict/generator``), or flatten several networks into one dict with key prefixes
(``generator.``, ``discriminator.``, as PyTorch Lightning does). Candidates are tried in the
order of ``PREFERRED_KEYS`` (EMA weights first, because EMA weights are what people ship), and
the first whose keys match ``--arch`` exactly is loaded; DataParallel's ``module.`` and
``torch.compile``'s ``_orig_mod.`` prefixes are removed. The chosen key path is logged and
recorded as ``weights_key`` in the result's generator section.
"""
from __future__ import annotations

import importlib
import json
import logging
import pickle
import re
import sys
import warnings
from pathlib import Path

import torch

from ganaudit.errors import GanauditError
from ganaudit.plumbing import error_line

log = logging.getLogger(__name__)

# Where training code keeps generator weights, EMA first: EMA weights are what people ship.
PREFERRED_KEYS = (
    "g_ema", "G_ema", "ema", "generator_ema", "ema_generator", "netG_ema", "state_dict_ema", "model_ema",
    "ema_state_dict", "generator", "G", "netG", "gen", "state_dict", "model",
)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_ARCH = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*")
_UNTRUSTED = (
    "{path} is a full pickle{holds}: loading it would run code stored in the file. Refused: rerun with "
    "--trust-checkpoint only if you trust where it came from, or save the weights (model.state_dict()) "
    "or a torch.export program instead"
)


def load_state_dict_generator(path: Path, fmt: str, arch: str | None, arch_kwargs: dict | str | None,
                              trust: bool, info: dict):
    """Build a generator module from a weights file. Returns ``(module, z_dim from --arch-kwargs or None)``."""
    if fmt == "safetensors":
        obj = _read_safetensors(path)
    else:
        obj = _torch_load(path, trust)
        module, key = find_module(obj)
        if module is not None:
            info["format"], info["weights_key"] = "trusted-pickle", key
            return module, None
    candidates = list(state_dict_candidates(obj))
    if not candidates:
        raise GanauditError(f"--generator {path}: no tensors found in the checkpoint (top-level keys: {_keys(obj)})")
    if arch is None:
        raise GanauditError(
            f"--generator {path} holds weights only: pass --arch module:Class (and --arch-kwargs JSON) "
            "naming the generator class to load them into"
        )
    kwargs = parse_arch_kwargs(arch_kwargs)
    module = build_arch(arch, kwargs)
    key = _load_best(module, candidates, path)
    info["weights_key"], info["arch"], info["arch_kwargs"] = key, arch, kwargs
    others = [k or "(top level)" for _, k in candidates if k != key]
    log.info("loaded the weights under %s of %s%s", repr(key) if key else "the top level", path,
             f" (EMA preferred; also present: {', '.join(others[:5])})" if others else "")
    return module, _int_or_none(kwargs.get("z_dim"))


def _torch_load(path: Path, trust: bool):
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": the refusal below says it better
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refusal = _UNTRUSTED.format(path=path, holds=_holds(str(e)))
    except Exception as e:  # truncated or foreign files
        raise GanauditError(f"--generator {path}: not a readable checkpoint: {error_line(e, with_type=True)}") from None
    if not trust:
        raise GanauditError(refusal)
    log.warning("loading %s as a full pickle because --trust-checkpoint was given", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except RuntimeError as e:
        if "magic number" not in str(e):
            raise GanauditError(f"--generator {path}: not a readable checkpoint: {error_line(e)}") from None
    with open(path, "rb") as f:  # a plain pickle.dump, as StyleGAN's network pickles are
        return pickle.load(f)


def _holds(message: str) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", message)
    return f" (it holds a {found.group(1)} object)" if found else ""


def _read_safetensors(path: Path) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise GanauditError("reading .safetensors needs the safetensors package: pip install 'ganaudit[safetensors]' (or safetensors)") from None
    try:
        return load_file(str(path))
    except Exception as e:
        raise GanauditError(f"--generator {path}: not a readable safetensors file: {error_line(e)}") from None


def find_module(obj, prefix: str = "") -> tuple[torch.nn.Module | None, str | None]:
    """A whole ``nn.Module`` in a (trusted) checkpoint: at the top, or under a preferred key."""
    if isinstance(obj, torch.nn.Module):
        return obj, prefix.rstrip("/") or None
    if isinstance(obj, dict):
        for key in PREFERRED_KEYS:
            if key in obj:
                found, where = find_module(obj[key], f"{prefix}{key}/")
                if found is not None:
                    return found, where
    return None, None


def state_dict_candidates(obj, prefix: str = ""):
    """Yield ``(state_dict, key path)`` for every place weights may be, most preferred first.

    The key path is ``None`` for the top level, else like ``"g_ema"``, ``"state_dict/generator"``
    (a nested dict, or the ``generator.`` prefix group of a flat one).
    """
    if _is_state_dict(obj):
        state = _strip_wrappers(obj)
        yield state, prefix.rstrip("/") or None
        groups = {}
        for name, value in state.items():
            head, dot, rest = name.partition(".")
            if dot:
                groups.setdefault(head, {})[rest] = value
        if len(groups) > 1:
            for key in PREFERRED_KEYS:
                if key in groups:
                    yield _strip_wrappers(groups[key]), f"{prefix}{key}"
        return
    if isinstance(obj, dict):
        for key in PREFERRED_KEYS:
            if key in obj:
                yield from state_dict_candidates(obj[key], f"{prefix}{key}/")


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_wrappers(state: dict) -> dict:
    for wrapper in _WRAPPER_PREFIXES:
        if all(k.startswith(wrapper) for k in state):
            state = {k[len(wrapper):]: v for k, v in state.items()}
    return state


def _keys(obj) -> str:
    return ", ".join(map(str, list(obj)[:10])) if isinstance(obj, dict) else type(obj).__name__


def parse_arch_kwargs(arch_kwargs) -> dict:
    """``--arch-kwargs``: a JSON object (or an already parsed dict)."""
    if arch_kwargs is None:
        return {}
    if isinstance(arch_kwargs, dict):
        return arch_kwargs
    try:
        kwargs = json.loads(arch_kwargs)
    except json.JSONDecodeError as e:
        raise GanauditError(f"--arch-kwargs is not valid JSON ({e}): {arch_kwargs!r}") from None
    if not isinstance(kwargs, dict):
        raise GanauditError(f"--arch-kwargs must be a JSON object, like '{{\"z_dim\": 128}}', got {arch_kwargs!r}")
    return kwargs


def build_arch(arch: str, kwargs: dict) -> torch.nn.Module:
    """Instantiate ``module:Class`` with ``kwargs``; the working directory is importable."""
    if not _ARCH.fullmatch(arch.strip()):
        raise GanauditError(f"--arch must look like package.module:ClassName, got {arch!r}")
    module_name, _, class_name = arch.strip().partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except Exception as e:  # the user's module may fail in any way while importing
        raise GanauditError(f"--arch {arch}: cannot import it: {error_line(e, with_type=True)}") from None
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise GanauditError(f"--arch {arch}: {class_name} is not a torch.nn.Module class")
    try:
        return cls(**kwargs)
    except Exception as e:
        raise GanauditError(
            f"--arch {arch}: cannot build it with --arch-kwargs {json.dumps(kwargs)}: {error_line(e, with_type=True)}"
        ) from None


def _load_best(module: torch.nn.Module, candidates: list, path: Path) -> str | None:
    """Load the first candidate whose keys and shapes match ``module``; return its key path."""
    expected = module.state_dict()
    for state, key in candidates:
        # Checkpoints from before PyTorch 0.4.1 lack BatchNorm's step counter; it is not a weight.
        missing = {k for k in expected.keys() - state.keys() if not k.endswith("num_batches_tracked")}
        if not missing and state.keys() <= expected.keys() and all(state[k].shape == expected[k].shape for k in state):
            module.load_state_dict(state, strict=False)
            return key
    state, key = candidates[0]
    where = f" (weights under {key!r})" if key else ""
    tried = f"; also tried {', '.join(repr(k) for _, k in candidates[1:4])}" if len(candidates) > 1 else ""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                  for k in state if k in expected and state[k].shape != expected[k].shape]
    shapes = f"; shape mismatches {_few(mismatched)}" if mismatched else ""
    raise GanauditError(
        f"--generator {path}{where} does not match --arch: missing keys {_few(missing)}; "
        f"unexpected keys {_few(unexpected)}{shapes}{tried}"
    )


def _few(keys: list[str]) -> str:
    return "[" + ", ".join(keys[:5]) + (f", … {len(keys) - 5} more" if len(keys) > 5 else "") + "]" if keys else "none"


def _int_or_none(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
