"""Embedders: a registry of networks that map images to feature vectors.

Each entry is registered once here with its spec (data) and a factory that builds it on a
device; nothing is imported, loaded or downloaded until an entry is created. Besides the
named entries, ``torchscript:PATH`` and ``pt2:PATH`` load a user's own embedder (see
``ganaudit.embedders.user``).
"""
from __future__ import annotations

import re
from typing import Callable

import torch

from ganaudit.embedders.base import Embedder, EmbedderSpec
from ganaudit.errors import GanauditError

_Factory = Callable[[torch.device, object], Embedder]
REGISTRY: dict[str, tuple[EmbedderSpec, _Factory]] = {}
# Entries that need an optional package: name -> (import name, pip extra hint).
OPTIONAL: dict[str, tuple[str, str]] = {}
# Prefixes of user embedders: ``prefix:PATH``.
USER_PREFIXES = ("torchscript", "pt2")
CPU_COPY_EMBEDDER = "pixels-copy"  # what copy search uses on a CPU for a network without its own descriptor


def register_embedder(spec: EmbedderSpec, factory: _Factory, requires: tuple[str, str] | None = None) -> None:
    """Add an embedder; its name must be new and free of whitespace, slashes and colons.

    Args:
        requires: ``(module, install hint)`` when the entry needs an optional package.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", spec.name):
        raise ValueError(f"embedder name {spec.name!r} may hold only letters, digits, '_', '.', '-'")
    if spec.name in REGISTRY:
        raise ValueError(f"embedder {spec.name!r} is already registered")
    REGISTRY[spec.name] = (spec, factory)
    if requires is not None:
        OPTIONAL[spec.name] = requires


def missing_dependency(name: str) -> str | None:
    """The install hint of the optional package entry ``name`` lacks, or None."""
    import importlib.util

    if name not in OPTIONAL:
        return None
    module, hint = OPTIONAL[name]
    return None if importlib.util.find_spec(module) is not None else hint


def create_embedder(name: str, device: torch.device | str, weights=None) -> Embedder:
    """Build the embedder ``name`` on ``device``.

    Args:
        name: a registry name, or ``torchscript:PATH`` / ``pt2:PATH``.
        device: where it runs.
        weights: a weight file (``--weights``); default: found in the standard caches.

    Raises:
        GanauditError: unknown name, weights missing or malformed, optional package missing.
    """
    device = torch.device(device)
    prefix, colon, path = name.partition(":")
    if colon and prefix in USER_PREFIXES:
        from ganaudit.embedders import user

        if weights is not None:
            raise GanauditError(f"--weights does not apply to --embedder {name}: the file {path} holds its weights")
        return (user.create_torchscript if prefix == "torchscript" else user.create_pt2)(path, device)
    if name not in REGISTRY:
        raise GanauditError(
            f"unknown embedder {name!r}; available: {', '.join(sorted(REGISTRY))}, torchscript:PATH, pt2:PATH "
            f"(see `ganaudit embedders`)"
        )
    spec, factory = REGISTRY[name]
    if weights is not None and spec.weights == "none":
        raise GanauditError(f"--weights was given, but embedder {name!r} has no weights")
    return factory(device, weights)


def create_copy_embedder(name: str, embedder: Embedder, device: torch.device | str, weights=None) -> Embedder:
    """The embedder copy search uses: ``name`` (``--copy-embedder``), or with ``"auto"`` the
    embedder's declared copy descriptor (``spec.copy_embedder``); else, for a network on the
    CPU, ``CPU_COPY_EMBEDDER`` (``pixels-copy``); else ``embedder`` itself.

    Why the CPU rule: copy search embeds every test-time augmentation of every sample (and of
    every calibration image), about ten forward passes per image with a network as its own
    descriptor (a few images per second on a CPU), while ``pixels-copy`` costs next to nothing
    and re-aligns shifts and crops with its augmentation grid. With it a CPU audit runs the
    network once per generated sample (coverage features) and copy search off the network.
    On a GPU the network searches its own features, as before. ``--copy-embedder NAME`` always
    wins; the result's ``memorization.copy_embedder`` names what ran.

    Args:
        name: ``"auto"`` or an embedder name.
        embedder: the audit's embedder (reused when the copy embedder is the same one).
        device: where a new embedder runs.
        weights: ``--copy-weights``.
    """
    if name == "auto":
        name = auto_copy_embedder(embedder)
    if name == embedder.spec.name and weights is None:
        return embedder
    return create_embedder(name, device, weights)


def auto_copy_embedder(embedder: Embedder) -> str:
    """The registry name ``--copy-embedder auto`` resolves to for ``embedder`` (on its device)."""
    if embedder.spec.copy_embedder:
        return embedder.spec.copy_embedder
    # A descriptor built for copy detection (it has a published copy threshold: sscd) searches
    # its own features everywhere.
    if embedder.is_network and embedder.device.type == "cpu" and embedder.spec.copy_threshold is None:
        return CPU_COPY_EMBEDDER
    return embedder.spec.name


def embedder_table() -> list[dict]:
    """One row per entry for ``ganaudit embedders``: name, dim, input, metric, weights."""
    rows = [{"name": name, "dim": str(spec.dim), "input": f"{spec.input_size[0]}x{spec.input_size[1]}",
             "metric": spec.metric, "weights": spec.weights} for name, (spec, _) in sorted(REGISTRY.items())]
    rows.append({"name": "torchscript:PATH", "dim": "probed", "input": "224x224*", "metric": "l2/ip",
                 "weights": "the file itself (*input_size attribute, else 224)"})
    rows.append({"name": "pt2:PATH", "dim": "probed", "input": "224x224*", "metric": "l2",
                 "weights": "the file itself (*static input shape, else 224)"})
    return rows


def _register_builtins() -> None:
    from ganaudit.embedders import clip, dinov2, inception, pixels, sscd

    register_embedder(pixels.SPEC, pixels.create)
    register_embedder(pixels.COPY_SPEC, pixels.create_copy)
    register_embedder(pixels.TILE_SPEC, pixels.create_tile)
    register_embedder(inception.SPEC, inception.create)
    for name in dinov2.ARCHS:
        register_embedder(dinov2.spec_for(name), dinov2.factory(name))
    register_embedder(sscd.SPEC, sscd.create)
    for name in clip.MODELS:
        register_embedder(clip.spec_for(name), clip.factory(name), requires=("open_clip", clip.INSTALL_HINT))


_register_builtins()
