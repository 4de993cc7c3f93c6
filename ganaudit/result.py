"""The AuditResult: everything an audit found. Its JSON is the machine-readable verdict.

Renderers (HTML, JUnit, the terminal summary) read an AuditResult and nothing else, so a
report can be rendered again from a saved JSON without recomputing.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
PASS, FAIL = "pass", "fail"


@dataclass
class AuditResult:
    """The result of one audit; field meanings are documented in DESIGN.md ("The verdict")."""

    verdict: str
    gates: list[dict]
    memorization: dict
    coverage: dict
    embedder: dict
    generator: dict
    train: dict
    holdout: dict | None = None
    baseline: dict | None = None
    review: dict | None = None  # issue 21: the review file's waivers (ganaudit.review.waivers.apply_waivers)
    config: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def write_json(self, path: Path | str) -> None:
        write_atomic(Path(path), self.to_json())

    @classmethod
    def from_dict(cls, data: dict) -> "AuditResult":
        """Rebuild a result from its JSON form; ValueError when ``data`` is not one."""
        required = ("verdict", "gates", "memorization", "coverage", "embedder", "generator", "train")
        if not isinstance(data, dict) or any(k not in data for k in required):
            raise ValueError("expected a JSON object with " + ", ".join(required))
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"schema_version {data.get('schema_version')!r}; this ganaudit reads {SCHEMA_VERSION}")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def read_json(cls, path: Path | str) -> "AuditResult":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def get(self, dotted: str) -> Any:
        """The value at a dotted path like ``"coverage.modes.covered_fraction"``, or None."""
        return dig(self.to_dict(), dotted)


def dig(data: dict, dotted: str) -> Any:
    """``data["a"]["b"]`` for ``"a.b"``; None where a part is missing."""
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _jsonable(value: Any) -> Any:
    """Make numpy scalars and arrays, paths and non-finite floats JSON-safe (NaN → null)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
