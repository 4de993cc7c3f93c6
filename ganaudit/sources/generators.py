"""Generator checkpoints, loaded without running code from them unless trusted.

Formats:
    ``.pt2``: a ``torch.export`` program; ``z_dim`` read from its input shape.
    TorchScript archive: ``z_dim`` from a ``z_dim`` attribute.
    state_dict (``.pt``, ``.pth``, ``.ckpt``, ``.bin``) or ``.safetensors``: with
        ``--arch module:Class``; loaded with ``torch.load(weights_only=True)``; nested
        checkpoints understood, EMA weights preferred.
    a full pickle (a whole ``nn.Module`` saved with ``torch.save``): refused unless the
        user passes ``--trust-checkpoint``, because unpickling runs arbitrary code.

Latents: sample ``i`` of a run with seed ``s`` uses
``z_i = numpy.random.default_rng([s, i]).standard_normal(z_dim)`` (float32), so any single
sample can be re-generated alone, on any device, in any batch size.
"""
from __future__ import annotations

import hashlib
import logging
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ganaudit.errors import GanauditError
from ganaudit.sources.datasets import detect_range

log = logging.getLogger(__name__)


@dataclass
class Generator:
    """A loaded generator that turns sample indices into images in [0, 1]."""

    module: torch.nn.Module
    z_dim: int
    device: torch.device
    info: dict = field(default_factory=dict)
    num_classes: int | None = None
    value_range: tuple[float, float] | None = None  # None: detected from the first batch

    def latents(self, indices: np.ndarray, seed: int) -> torch.Tensor:
        """``(B, z_dim)`` float32 latents of samples ``indices`` (see the module docstring)."""
        z = np.stack([np.random.default_rng([seed, int(i)]).standard_normal(self.z_dim) for i in indices])
        return torch.from_numpy(z.astype(np.float32))

    def class_labels(self, indices: np.ndarray, seed: int) -> torch.Tensor:
        """``(B,)`` int64 class labels of samples ``indices`` (uniform over ``num_classes``)."""
        labels = [np.random.default_rng([seed, int(i), 1]).integers(self.num_classes) for i in indices]
        return torch.tensor(labels, dtype=torch.int64)

    @torch.inference_mode()
    def sample(self, indices: np.ndarray, seed: int) -> torch.Tensor:
        """Generate samples ``indices``: ``(B, 3, H, W)`` float32 in [0, 1] on ``self.device``."""
        z = self.latents(indices, seed).to(self.device)
        args = (z,) if self.num_classes is None else (z, self.class_labels(indices, seed).to(self.device))
        try:
            out = self.module(*args)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as e:  # the user's network failed on our inputs: say what we passed
            raise GanauditError(
                f"generator failed on a batch of latents of shape {tuple(z.shape)}: {type(e).__name__}: {_first_line(e)}; "
                "check --z-dim and, for conditional models, --num-classes"
            ) from None
        return self._to_unit_range(out)

    def _to_unit_range(self, out) -> torch.Tensor:
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[1] not in (1, 3, 4):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise GanauditError(f"generator output is not an image batch (B, C, H, W) with C in 1, 3, 4: got {shape}")
        out = out.float()
        if not torch.isfinite(out).all():
            raise GanauditError("generator output holds NaN or Inf values; the checkpoint is broken or was saved mid-divergence")
        if self.value_range is None:
            self.value_range = detect_range(float(out.min()), float(out.max()))
            self.info["output_range"] = list(self.value_range)
            self.info["output_range_source"] = "detected"
            log.info("generator output range detected as %s", self.value_range)
        lo, hi = self.value_range
        out = ((out - lo) / (hi - lo)).clamp_(0.0, 1.0)
        if out.shape[1] == 1:
            out = out.expand(-1, 3, -1, -1)
        return out[:, :3].contiguous()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else ""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sniff_format(path: Path) -> str:
    """Tell ``pt2``, ``torchscript``, ``safetensors`` or ``pickle`` (torch.save) from the file itself."""
    if path.suffix == ".safetensors":
        return "safetensors"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if any(n.endswith("archive_format") or "/models/" in n for n in names) or path.suffix == ".pt2":
            return "pt2"
        if any("/code/" in n or n.endswith("constants.pkl") for n in names):
            return "torchscript"
    return "pickle"


def load_generator(
    path: Path,
    device: torch.device,
    z_dim: int | None = None,
    arch: str | None = None,
    arch_kwargs: dict | None = None,
    trust_checkpoint: bool = False,
    num_classes: int | None = None,
    value_range: tuple[float, float] | None = None,
) -> Generator:
    """Load a generator checkpoint of any supported format (see the module docstring).

    Raises:
        GanauditError: unreadable file, unknown z_dim, untrusted pickle, wrong architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise GanauditError(f"--generator {path}: no such file")
    fmt = sniff_format(path)
    info = {"path": str(path), "sha256": file_sha256(path), "format": fmt}
    if fmt == "pt2":
        module, found_z = _load_pt2(path)
    elif fmt == "torchscript":
        with warnings.catch_warnings():  # TorchScript is deprecated upstream but still what people ship
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
        found_z = _int_attr(module, "z_dim")
    else:
        from ganaudit.sources.state_dicts import load_state_dict_generator

        module, found_z = load_state_dict_generator(path, fmt, arch, arch_kwargs, trust_checkpoint, info)
    z_dim = _resolve_z_dim(found_z, z_dim)
    info["z_dim"] = z_dim
    if value_range is not None:
        info["output_range"], info["output_range_source"] = list(value_range), "given"
    module = module.to(device) if hasattr(module, "to") else module
    if hasattr(module, "eval"):
        try:
            module.eval()
        except (NotImplementedError, RuntimeError):
            pass  # exported programs' modules do not support eval(); they are already frozen
    log.info("loaded %s generator %s (z_dim=%d)", fmt, path, z_dim)
    return Generator(module, z_dim, device, info, num_classes, value_range)


def _load_pt2(path: Path):
    try:
        program = torch.export.load(str(path))
    except Exception as e:
        raise GanauditError(f"--generator {path}: not a readable torch.export program: {_first_line(e)}") from None
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    user_inputs = [placeholders[name] for name in program.graph_signature.user_inputs if name in placeholders]
    found = None
    if user_inputs:
        val = user_inputs[0].meta.get("val")
        if val is not None and len(val.shape) == 2:
            try:
                found = int(val.shape[1])
            except TypeError:  # a symbolic size: the program does not fix z_dim
                found = None
    return program.module(), found


def _int_attr(module, name: str) -> int | None:
    try:
        value = getattr(module, name)
    except AttributeError:
        return None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _resolve_z_dim(found: int | None, given: int | None) -> int:
    if found is not None and given is not None and found != given:
        raise GanauditError(f"--z-dim {given} does not match the generator, which takes z of size {found}")
    z_dim = given if given is not None else found
    if z_dim is None:
        raise GanauditError("cannot tell the generator's latent size: pass --z-dim (the length of its input vector z)")
    return z_dim
