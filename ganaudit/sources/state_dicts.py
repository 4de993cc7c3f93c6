"""Generators from weights files: state_dicts, nested training checkpoints, safetensors.

Weights are read with ``torch.load(weights_only=True)``, which refuses anything but tensors
and plain containers, so a malicious checkpoint cannot run code. A whole pickled module needs
``--trust-checkpoint``.
"""
from __future__ import annotations

import importlib
import json
import logging
import pickle
import sys
from pathlib import Path

import torch

from ganaudit.errors import GanauditError

log = logging.getLogger(__name__)

# Where training code keeps generator weights, EMA first: EMA weights are what people ship.
PREFERRED_KEYS = (
    "g_ema", "G_ema", "ema", "generator_ema", "ema_generator", "netG_ema",
    "generator", "G", "netG", "gen", "state_dict", "model",
)
_UNTRUSTED = (
    "{path} is a full pickle (a whole Python object saved with torch.save); loading it would run "
    "code stored in the file. Refused: rerun with --trust-checkpoint only if you trust where it came "
    "from, or save the weights (model.state_dict()) or a torch.export program instead"
)


def load_state_dict_generator(path: Path, fmt: str, arch: str | None, arch_kwargs: dict | str | None,
                              trust: bool, info: dict):
    """Build a generator module from a weights file. Returns ``(module, z_dim or None)``."""
    if fmt == "safetensors":
        state, key = _read_safetensors(path), None
    else:
        obj = _torch_load(path, trust)
        if isinstance(obj, torch.nn.Module):
            info["format"] = "trusted-pickle"
            return obj, _z_dim_of(obj, {})
        state, key = find_state_dict(obj)
        if state is None:
            raise GanauditError(f"--generator {path}: no tensors found in the checkpoint (top-level keys: {_keys(obj)})")
    info["weights_key"] = key
    if key is not None:
        log.info("using weights under %r of %s", key, path)
    if arch is None:
        raise GanauditError(
            f"--generator {path} holds weights only: pass --arch module:Class (and --arch-kwargs JSON) "
            "naming the generator class to load them into"
        )
    kwargs = _parse_kwargs(arch_kwargs)
    module = build_arch(arch, kwargs)
    _load_into(module, state, path)
    info["arch"] = arch
    return module, _z_dim_of(module, kwargs)


def _torch_load(path: Path, trust: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as e:
        if "weights_only" not in str(e).lower() and "unpickl" not in str(e).lower():
            raise GanauditError(f"--generator {path}: not a readable checkpoint: {str(e).splitlines()[0]}") from None
    except Exception as e:  # truncated or foreign files
        raise GanauditError(f"--generator {path}: not a readable checkpoint: {type(e).__name__}: {e}") from None
    if not trust:
        raise GanauditError(_UNTRUSTED.format(path=path))
    log.warning("loading %s as a full pickle because --trust-checkpoint was given", path)
    return torch.load(path, map_location="cpu", weights_only=False)


def _read_safetensors(path: Path) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise GanauditError("reading .safetensors needs the safetensors package: pip install safetensors") from None
    try:
        return load_file(str(path))
    except Exception as e:
        raise GanauditError(f"--generator {path}: not a readable safetensors file: {e}") from None


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def find_state_dict(obj, prefix: str = "") -> tuple[dict | None, str | None]:
    """Find the generator's weights in a checkpoint, EMA weights first.

    Returns ``(state_dict, key path)``: the key path is ``None`` when ``obj`` itself is the
    state dict, else like ``"g_ema"`` or ``"state_dict/generator"``.
    """
    if _is_state_dict(obj):
        return _strip_module_prefix(obj), (prefix or None)
    if not isinstance(obj, dict):
        return None, None
    for key in PREFERRED_KEYS:
        if key in obj:
            found, where = find_state_dict(obj[key], f"{prefix}{key}/")
            if found is not None:
                return found, where.rstrip("/")
    return None, None


def _strip_module_prefix(state: dict) -> dict:
    if all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _keys(obj) -> str:
    return ", ".join(map(str, list(obj)[:10])) if isinstance(obj, dict) else type(obj).__name__


def _parse_kwargs(arch_kwargs) -> dict:
    if arch_kwargs is None:
        return {}
    if isinstance(arch_kwargs, dict):
        return arch_kwargs
    try:
        kwargs = json.loads(arch_kwargs)
    except json.JSONDecodeError as e:
        raise GanauditError(f"--arch-kwargs is not valid JSON: {e}") from None
    if not isinstance(kwargs, dict):
        raise GanauditError("--arch-kwargs must be a JSON object, like '{\"z_dim\": 128}'")
    return kwargs


def build_arch(arch: str, kwargs: dict) -> torch.nn.Module:
    """Instantiate ``module:Class`` with ``kwargs``; the working directory is importable."""
    module_name, _, class_name = arch.partition(":")
    if not module_name or not class_name:
        raise GanauditError(f"--arch must look like module.path:ClassName, got {arch!r}")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as e:
        raise GanauditError(f"--arch {arch}: cannot import it: {e}") from None
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise GanauditError(f"--arch {arch}: cannot build it with --arch-kwargs {kwargs}: {e}") from None


def _load_into(module: torch.nn.Module, state: dict, path: Path) -> None:
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches are raised even when strict=False
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
        raise GanauditError(f"--generator {path} does not match --arch: {'; '.join(lines[:3]) or e}") from None
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        raise GanauditError(
            f"--generator {path} does not match --arch: missing keys {_few(missing)}; unexpected keys {_few(unexpected)}"
        )


def _few(keys: list[str]) -> str:
    return "[" + ", ".join(keys[:5]) + (f", … {len(keys) - 5} more" if len(keys) > 5 else "") + "]" if keys else "none"


def _z_dim_of(module, kwargs: dict) -> int | None:
    for value in (kwargs.get("z_dim"), getattr(module, "z_dim", None)):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
