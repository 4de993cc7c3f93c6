"""Embedders: a registry of networks that map images to feature vectors.

Each entry is registered once here with its spec (data) and a factory that builds it on a
device; nothing is imported or loaded until an entry is created.
"""
from __future__ import annotations

import re
from typing import Callable

import torch

from ganaudit.embedders.base import Embedder, EmbedderSpec
from ganaudit.errors import GanauditError

_Factory = Callable[[torch.device, object], Embedder]
REGISTRY: dict[str, tuple[EmbedderSpec, _Factory]] = {}


def register_embedder(spec: EmbedderSpec, factory: _Factory) -> None:
    """Add an embedder; its name must be new and free of whitespace, slashes and colons."""
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", spec.name):
        raise ValueError(f"embedder name {spec.name!r} may hold only letters, digits, '_', '.', '-'")
    if spec.name in REGISTRY:
        raise ValueError(f"embedder {spec.name!r} is already registered")
    REGISTRY[spec.name] = (spec, factory)


def create_embedder(name: str, device: torch.device, weights=None) -> Embedder:
    """Build the embedder ``name`` on ``device`` (weights from ``weights`` or the caches)."""
    if name not in REGISTRY:
        raise GanauditError(f"unknown embedder {name!r}; available: {', '.join(sorted(REGISTRY))} (see `ganaudit embedders`)")
    spec, factory = REGISTRY[name]
    return factory(device, weights)


def _register_builtins() -> None:
    from ganaudit.embedders import pixels

    register_embedder(pixels.SPEC, pixels.create)


_register_builtins()
