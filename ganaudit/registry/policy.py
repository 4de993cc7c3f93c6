"""The audit policy a registry gate applies, and the digest that identifies it.

The policy is what ``ganaudit check`` would use in the same repository: the ganaudit.toml or
``[tool.ganaudit]`` of pyproject.toml in the working directory (or ``--config``), overridden by
the command's flags. Its digest covers those settings and the training/holdout files' bytes, so
a changed threshold or training set means a new audit, and the same policy means none.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ganaudit.errors import GanauditError

# Settings that say where one run's files go, not what the audit decides: left out of the digest.
PER_RUN = frozenset({"generator", "samples", "html", "json", "junit", "progress", "baseline", "cache_dir", "no_cache"})


def load_policy(config: Path | None, cwd: Path) -> tuple[dict, str]:
    """``(settings table, source name)`` from ``config``, else found in ``cwd``, else empty."""
    from ganaudit.config import find_config_file, read_config_file

    if config is not None:
        if not config.is_file():
            raise GanauditError(f"--config {config}: no such file")
        return read_config_file(config), str(config)
    found = find_config_file(cwd)
    return (found[1], str(found[0])) if found else ({}, "config")


def build_config(file_values: dict, source: str, flags: dict[str, Any]):
    """The AuditConfig of one audit: defaults < policy file < flags, validated."""
    from ganaudit.config import resolve_config

    return resolve_config(file_values, flags, source)


def policy_digest(file_values: dict, flags: dict[str, Any]) -> str:
    """SHA-256 of the settings that decide a verdict and of the data they point at."""
    merged = {k.replace("-", "_"): v for k, v in file_values.items()}
    merged.update({k: v for k, v in flags.items() if v is not None})
    decisive = {k: v for k, v in merged.items() if k not in PER_RUN}
    data = {name: tree_digest(Path(decisive[name])) for name in ("train", "holdout") if decisive.get(name)}
    text = json.dumps({"settings": decisive, "data": data}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def tree_digest(path: Path) -> str:
    """SHA-256 over every file under ``path`` (relative names and bytes), or of one file.

    Reads every byte once, as the audit's own fingerprint does; a missing path digests to
    ``"missing"`` (the audit's validation reports it).
    """
    h = hashlib.sha256()
    if path.is_file():
        _hash_file(h, path)
    elif path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(file.relative_to(path).as_posix().encode() + b"\0")
            _hash_file(h, file)
    else:
        return "missing"
    return h.hexdigest()


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(b"\0")


def gate_key(model: str, version: str, policy: str, tool_version: str, baseline_run: str | None) -> str:
    """The identity of one audit of one version: same key, same verdict, no second run."""
    text = json.dumps([model, str(version), policy, tool_version, baseline_run])
    return hashlib.sha256(text.encode()).hexdigest()[:32]
