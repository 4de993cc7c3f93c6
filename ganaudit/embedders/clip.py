"""``clip-vitb32``, ``clip-vitl14``: OpenAI CLIP image embeddings through open_clip (optional).

Needs the ``clip`` extra: ``pip install 'ganaudit[clip]'`` (open_clip_torch). open_clip is
imported only when one of these entries is created, never at import time.

Weights are OpenAI's released files (``ViT-B-32.pt``, ``ViT-L-14.pt``; their URLs carry
their SHA-256), looked up in the torch hub checkpoint folder and in ``~/.cache/clip`` (where
OpenAI's ``clip`` package keeps them), or given with ``--weights``. They are loaded with
``open_clip.load_openai_model(path)`` (``jit=False`` where open_clip still has it), which
rebuilds the model (QuickGELU included) from the file's state_dict and downloads nothing when
given a path.

Features are the projected image embeddings, L2-normalised and searched by inner product
(cosine), as CLIP is used. Preprocessing: antialiased bicubic resize to 224×224 (CLIP's own
transform resizes the short side and centre-crops; for square images the two agree) and
OpenAI's mean/std.
"""
from __future__ import annotations

import inspect

import torch

from ganaudit.embedders.base import Embedder, EmbedderSpec, prepare_network
from ganaudit.errors import GanauditError
from ganaudit.plumbing import error_line

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
INSTALL_HINT = "pip install 'ganaudit[clip]'"

# name: (feature dim, OpenAI file)
MODELS = {"clip-vitb32": (512, "ViT-B-32.pt"), "clip-vitl14": (768, "ViT-L-14.pt")}


def spec_for(name: str) -> EmbedderSpec:
    dim, filename = MODELS[name]
    return EmbedderSpec(name=name, dim=dim, input_size=(224, 224), mean=OPENAI_MEAN, std=OPENAI_STD,
                        l2_normalized=True, metric="ip",
                        weights=f"{filename} (OpenAI CLIP release, torch hub cache or ~/.cache/clip; needs ganaudit[clip])")


def import_open_clip():
    """open_clip, or a GanauditError that says how to install it."""
    try:
        import open_clip
    except ImportError:
        raise GanauditError(f"the CLIP embedders need the open_clip package, which is not installed: {INSTALL_HINT}") from None
    return open_clip


def factory(name: str):
    """The registry factory of the CLIP entry ``name``."""

    def create(device: torch.device, weights=None) -> ClipEmbedder:
        from ganaudit.embedders.weights import find_weights

        open_clip = import_open_clip()
        path = find_weights(name, weights)
        kwargs = {"precision": "fp32", "device": "cpu"}
        if "jit" in inspect.signature(open_clip.load_openai_model).parameters:
            kwargs["jit"] = False  # open_clip < 3 defaults to a TorchScript model; 3.x builds modules only
        try:
            model = open_clip.load_openai_model(str(path), **kwargs)
        except Exception as e:  # a file of another format or architecture
            first = error_line(e)
            raise GanauditError(f"{name}: cannot load {path} as an OpenAI CLIP checkpoint: {first}") from None
        embedder = ClipEmbedder(name, model.visual, device, path)
        out_dim = getattr(model.visual, "output_dim", embedder.spec.dim)
        if out_dim != embedder.spec.dim:
            raise GanauditError(f"{name}: {path} is a CLIP model with {out_dim}-d features, expected {embedder.spec.dim}")
        return embedder

    return create
