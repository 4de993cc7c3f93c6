"""The AuditResult: everything an audit found. Its JSON is the machine-readable verdict.

Renderers (HTML, JUnit, the terminal summary) read an AuditResult and nothing else, so a
report can be rendered again from a saved JSON without recomputing. The provenance
sections (what was audited, with what, by which versions) are built here too.
"""
from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ganaudit.plumbing import write_atomic

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
    review: dict | None = None  # the review file's waivers (ganaudit.review.waivers.apply_waivers)
    recovery: dict | None = None  # latent recovery (--recover N; ganaudit.findings.recovery)
    config: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def write_json(self, path: Path | str) -> None:
        write_atomic(path, self.to_json())

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


def set_info(images) -> dict:
    """The ``train`` / ``holdout`` section: where an image set came from and what it holds."""
    return {"path": str(images.location), "n_images": len(images), "size": list(images.size),
            "n_classes": len(images.class_names), "class_names": images.class_names,
            "fingerprint": images.fingerprint(), "n_corrupt": images.n_corrupt}


def generator_info(source, config) -> dict:
    """The ``generator`` section: the checkpoint (or sample set) that was audited."""
    if config.samples is not None:
        return {"kind": "samples", "path": str(config.samples), "n_samples": len(source),
                "fingerprint": source.images.fingerprint(), "n_corrupt": source.images.n_corrupt}
    return {"kind": "generator", **source.generator.info, "n_samples": len(source), "seed": config.seed}


def embedder_info(embedder, device) -> dict:
    """The ``embedder`` section (and ``memorization.copy_embedder``): the spec, device and weights."""
    return asdict(embedder.spec) | {"device": str(device), "weights_sha256": embedder.weights_sha256(),
                                    "weights_path": str(embedder.weights_path) if embedder.weights_path else None}


def config_info(config) -> dict:
    """The ``config`` section: every setting, paths as strings."""
    return {k: (str(v) if hasattr(v, "__fspath__") else v) for k, v in asdict(config).items()}


def versions() -> dict:
    """The ``versions`` section. Called by an audit, when torch and faiss are loaded anyway."""
    from importlib.metadata import version  # not `import sklearn`: 1.3 s of imports for a version string

    import faiss
    import numpy as np
    import torch

    import ganaudit

    return {"ganaudit": ganaudit.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "faiss": faiss.__version__, "numpy": np.__version__, "sklearn": version("scikit-learn"),
            "platform": platform.platform()}
