"""``torchscript:PATH`` and ``pt2:PATH``: a user's own embedder.

The file is a TorchScript module (``torch.jit.save``) or a ``torch.export`` program
(``torch.export.save``) whose forward takes a float batch ``(B, 3, H, W)`` and returns
features ``(B, D)`` (anything ``(B, ...)`` is flattened). The file is also the weights: its
SHA-256 keys the embedding cache.

What ganaudit feeds it: RGB in [0, 1], resized on the device (antialiased bicubic) to the
input size. The module does its own normalisation unless it says otherwise. D is found by
running one dummy batch at load time.

A TorchScript module may declare, as plain attributes:
  - ``input_size``: an int or ``(H, W)``; default 224×224;
  - ``mean``, ``std``: 3 floats applied after resizing; default none (0 and 1);
  - ``l2_normalized``: True if features are unit vectors; they are then searched by inner
    product. Default False (L2 distance).
A ``torch.export`` program keeps no attributes: its input size is read from its input shape
where H and W are static (else 224×224); a program exported with a static batch size B runs
in chunks of B (the last one padded).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ganaudit.embedders.base import Embedder, EmbedderSpec, prepare_network
from ganaudit.errors import GanauditError
from ganaudit.plumbing import error_line, load_torchscript

DEFAULT_INPUT_SIZE = (224, 224)


class UserEmbedder(Embedder):
    """Wraps a loaded module; ``batch`` is the static batch size of an exported program, if any."""

    def __init__(self, spec: EmbedderSpec, module, device: torch.device, path: Path, batch: int | None):
        super().__init__(spec, device, path)
        self.module = module
        self.batch = batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch is None or x.shape[0] == self.batch:
            return self.module(x).flatten(1)
        parts = []
        for start in range(0, x.shape[0], self.batch):
            chunk = x[start : start + self.batch]
            n = chunk.shape[0]
            if n < self.batch:  # pad with copies of the last image, then drop them
                chunk = torch.cat([chunk, chunk[-1:].expand(self.batch - n, -1, -1, -1)])
            parts.append(self.module(chunk.contiguous()).flatten(1)[:n])
        return torch.cat(parts)


def _size_attr(value) -> tuple[int, int] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    return None


def _triple_attr(module, name: str, default: tuple[float, float, float], what: str):
    value = getattr(module, name, None)
    if value is None:
        return default
    if not (isinstance(value, (tuple, list)) and len(value) == 3):
        raise GanauditError(f"{what}: attribute {name} must be 3 floats, got {value!r}")
    return tuple(float(v) for v in value)


def _probe_dim(embedder: UserEmbedder, what: str) -> int:
    """Run one dummy batch of two images through the module; return the feature size."""
    generator = torch.Generator().manual_seed(0)
    dummy = torch.rand(2, 3, *embedder.spec.input_size, generator=generator)
    try:
        with torch.inference_mode():
            out = embedder.forward(embedder.preprocess(dummy))
    except Exception as e:
        first = error_line(e)
        raise GanauditError(
            f"{what}: running a batch of shape (2, 3, {embedder.spec.input_size[0]}, {embedder.spec.input_size[1]}) "
            f"failed: {first}; the module must map (B, 3, H, W) floats to (B, D) features"
        ) from None
    if out.ndim < 2 or out.shape[0] != 2 or not torch.is_floating_point(out):
        raise GanauditError(f"{what}: a batch of 2 images gave an output of shape {tuple(out.shape)}, expected (2, D) floats")
    return math.prod(out.shape[1:])


def _existing(path: str, kind: str) -> Path:
    if not path:
        raise GanauditError(f"--embedder {kind}:PATH needs a path after the colon")
    p = Path(path).expanduser()
    if not p.is_file():
        raise GanauditError(f"--embedder {kind}:{path}: no such file")
    return p


def create_torchscript(path: str, device: torch.device) -> UserEmbedder:
    """The embedder ``torchscript:PATH`` (see the module docstring)."""
    p = _existing(path, "torchscript")
    what = f"--embedder torchscript:{path}"
    module = load_torchscript(p, what)
    size = getattr(module, "input_size", None)
    input_size = _size_attr(size) if size is not None else DEFAULT_INPUT_SIZE
    if input_size is None:
        raise GanauditError(f"{what}: attribute input_size must be an int or (H, W), got {size!r}")
    normalized = bool(getattr(module, "l2_normalized", False))
    spec = EmbedderSpec(
        name=f"torchscript:{path}", dim=0, input_size=input_size,
        mean=_triple_attr(module, "mean", (0.0, 0.0, 0.0), what), std=_triple_attr(module, "std", (1.0, 1.0, 1.0), what),
        l2_normalized=normalized, metric="ip" if normalized else "l2", weights=str(p),
    )
    return _finish(UserEmbedder(spec, prepare_network(module, torch.device(device), channels_last=False), device, p, None), what)


def create_pt2(path: str, device: torch.device) -> UserEmbedder:
    """The embedder ``pt2:PATH`` (see the module docstring)."""
    p = _existing(path, "pt2")
    what = f"--embedder pt2:{path}"
    try:
        program = torch.export.load(str(p))
    except Exception as e:
        first = error_line(e)
        raise GanauditError(f"{what}: not a readable torch.export program: {first}") from None
    batch, input_size = _program_input_shape(program)
    spec = EmbedderSpec(name=f"pt2:{path}", dim=0, input_size=input_size or DEFAULT_INPUT_SIZE, weights=str(p))
    module = program.module().to(device)  # exported modules cannot switch to eval(); they are frozen as exported
    return _finish(UserEmbedder(spec, module, device, p, batch), what)


def _program_input_shape(program) -> tuple[int | None, tuple[int, int] | None]:
    """Static batch size and (H, W) of the program's first input, where fixed."""
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    inputs = [placeholders[n] for n in program.graph_signature.user_inputs if n in placeholders]
    val = inputs[0].meta.get("val") if inputs else None
    if val is None or len(val.shape) != 4:
        return None, None
    static = [d if isinstance(d, int) else None for d in val.shape]
    size = (static[2], static[3]) if static[2] is not None and static[3] is not None else None
    return static[0], size


def _finish(embedder: UserEmbedder, what: str) -> UserEmbedder:
    from dataclasses import replace

    dim = _probe_dim(embedder, what)
    embedder.spec = replace(embedder.spec, dim=dim)
    return embedder
