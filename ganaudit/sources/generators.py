"""Generator checkpoints, loaded without running code from them unless trusted.

Formats:
    ``.pt2``: a ``torch.export`` program; ``z_dim`` read from its input shape. A program
        exported with a fixed batch size is fed padded chunks of that size.
    TorchScript archive: ``z_dim`` from a ``z_dim`` attribute.
    state_dict (``.pt``, ``.pth``, ``.ckpt``, ``.bin``) or ``.safetensors``: with
        ``--arch module:Class``; loaded with ``torch.load(weights_only=True)``; nested
        checkpoints understood, EMA weights preferred (see ``state_dicts.py``).
    a full pickle (a whole ``nn.Module`` saved with ``torch.save``): refused unless the
        user passes ``--trust-checkpoint``, because unpickling runs arbitrary code.
    ``z_dim`` comes from the file where it says (program input shape, ``z_dim`` attribute,
    ``z_dim`` in ``--arch-kwargs``), else from ``--z-dim``; both given must agree.

Latents: sample ``i`` of a run with seed ``s`` uses
``z_i = numpy.random.default_rng([s, i]).standard_normal(z_dim)`` (float32), so any single
sample can be re-generated alone, on any device, in any batch size.

Conditional generators (a forward that takes a second input) need ``--num-classes K``. The
label of sample ``i`` comes from ``default_rng([s, i, 1])``: uniform over ``K`` classes, or by
``--class-weights`` (normalised to sum to 1); it is passed as the second positional argument,
an int64 tensor ``(B,)``.

Truncation (``--truncation PSI``) is the generator's own: ganaudit never truncates ``z``
itself, so latents stay those of the contract above. PSI goes to the forward as the keyword
``truncation_psi`` (StyleGAN's name) or ``psi``, whichever the forward declares; else it is
set as the module's ``truncation_psi`` or ``psi`` attribute when the module has one. A
``.pt2`` program must have been exported with that keyword as an input (a value baked in at
export is accepted only when it equals PSI). Any other generator is an error: it cannot
take a truncation.
"""
from __future__ import annotations

import dataclasses
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ganaudit.device import is_out_of_memory
from ganaudit.config_checks import normalised_class_weights
from ganaudit.errors import GanauditError
from ganaudit.plumbing import error_line, file_sha256, load_torchscript
from ganaudit.sources.arrays import detect_range
from ganaudit.sources.signatures import (
    check_conditional, signature_of_module, signature_of_program, truncation_kwargs,
)

log = logging.getLogger(__name__)


@dataclass
class Generator:
    """A loaded generator that turns sample indices into images in [0, 1].

    Attributes:
        module: the network; called as ``module(z[, labels], **call_kwargs)``.
        z_dim: latent size.
        device: where it runs.
        info: facts recorded in the result's ``generator`` section.
        num_classes: K for a conditional generator, else None.
        value_range: output range; None until detected from the first batch.
        class_weights: per-class sampling probabilities (sum to 1), or None for uniform.
        call_kwargs: extra keyword arguments of every call (``truncation_psi``).
        batch_range: ``(smallest, largest)`` batch the module accepts (largest None: any).
    """

    module: torch.nn.Module
    z_dim: int
    device: torch.device
    info: dict = field(default_factory=dict)
    num_classes: int | None = None
    value_range: tuple[float, float] | None = None  # None: detected from the first batch
    class_weights: tuple[float, ...] | None = None
    call_kwargs: dict = field(default_factory=dict)
    batch_range: tuple[int, int | None] = (1, None)

    def latents(self, indices: np.ndarray, seed: int) -> torch.Tensor:
        """``(B, z_dim)`` float32 latents of samples ``indices`` (see the module docstring)."""
        z = np.stack([np.random.default_rng([seed, int(i)]).standard_normal(self.z_dim) for i in indices])
        return torch.from_numpy(z.astype(np.float32))

    def class_labels(self, indices: np.ndarray, seed: int) -> torch.Tensor:
        """``(B,)`` int64 class labels of samples ``indices``: uniform, or by ``class_weights``."""
        if self.num_classes is None:
            raise ValueError("class_labels() of an unconditional generator")
        rngs = [np.random.default_rng([seed, int(i), 1]) for i in indices]
        if self.class_weights is None:
            labels = [rng.integers(self.num_classes) for rng in rngs]
        else:  # inverse CDF: a class of weight 0 is never drawn
            cdf = np.cumsum(self.class_weights)
            labels = [min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), self.num_classes - 1)
                      for rng in rngs]
        return torch.tensor(labels, dtype=torch.int64)

    @torch.inference_mode()
    def sample(self, indices: np.ndarray, seed: int) -> torch.Tensor:
        """Generate samples ``indices``: ``(B, 3, H, W)`` float32 in [0, 1] on ``self.device``."""
        z = self.latents(indices, seed).to(self.device)
        labels = None if self.num_classes is None else self.class_labels(indices, seed).to(self.device)
        try:
            out = self._forward(z, labels)
        except Exception as e:  # the user's network failed on our inputs: say what we passed
            if is_out_of_memory(e):
                raise
            hint = ("if it is a conditional generator (it takes a class label), pass --num-classes K"
                    if self.num_classes is None else f"check --num-classes {self.num_classes}")
            raise GanauditError(
                f"generator failed on a batch of latents of shape {tuple(z.shape)}: "
                f"{error_line(e, with_type=True)}; check --z-dim, and {hint}"
            ) from None
        return self._to_unit_range(out, len(indices))

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images of given latents ``z`` (``(B, z_dim)`` on ``self.device``): ``(B, 3, H, W)`` in
        [0, 1], differentiable in ``z`` when the module is (latent recovery optimises through it).
        Unlike :meth:`sample`, errors of the module are not rewritten and no inference mode is set."""
        return self._to_unit_range(self._forward(z, labels), z.shape[0])

    def _forward(self, z: torch.Tensor, labels: torch.Tensor | None):
        """Call the module, in chunks padded to the batch sizes it accepts."""
        lo, hi = self.batch_range
        n = z.shape[0]
        if lo <= n and (hi is None or n <= hi):
            return self._call(z, labels)
        step = hi or n
        outs = []
        for start in range(0, n, step):
            zc = z[start:start + step]
            lc = None if labels is None else labels[start:start + step]
            pad = max(0, lo - zc.shape[0])  # repeat the last latent; its extra outputs are dropped
            if pad:
                zc = torch.cat([zc, zc[-1:].expand(pad, -1)])
                lc = None if lc is None else torch.cat([lc, lc[-1:].expand(pad)])
            out = self._call(zc, lc)
            out = out[0] if isinstance(out, (tuple, list)) else out
            if not isinstance(out, torch.Tensor):
                return out  # _to_unit_range says what is wrong with it
            outs.append(out[: zc.shape[0] - pad])
        return torch.cat(outs)

    def _call(self, z: torch.Tensor, labels: torch.Tensor | None):
        args = (z,) if labels is None else (z, labels)
        return self.module(*args, **self.call_kwargs)

    def _to_unit_range(self, out, n: int) -> torch.Tensor:
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[1] not in (1, 3, 4):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise GanauditError(f"generator output is not an image batch (B, C, H, W) with C in 1, 3, 4: got {shape}")
        if out.shape[0] != n:
            raise GanauditError(f"generator returned {out.shape[0]} images for a batch of {n} latents")
        out = out.float()
        if not torch.isfinite(out).all():
            raise GanauditError("generator output holds NaN or Inf values; the checkpoint is broken or was saved mid-divergence")
        if self.value_range is None:
            self.value_range = detect_range(float(out.min()), float(out.max()))
            self.info["output_range"] = list(self.value_range)
            self.info["output_range_source"] = "detected"
            log.info("generator output range detected as %s (give --output-range to override)", self.value_range)
        lo, hi = self.value_range
        out = ((out - lo) / (hi - lo)).clamp_(0.0, 1.0)
        if out.shape[1] == 1:
            out = out.expand(-1, 3, -1, -1)
        return out[:, :3].contiguous()


def sniff_format(path: Path) -> str:
    """Tell ``pt2``, ``torchscript``, ``safetensors``, ``pickle`` (torch.save) or ``unknown``
    (none of them: no zip archive, no safetensors header, no pickle opcode) from the file itself."""
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
    with open(path, "rb") as f:  # safetensors: an 8-byte little-endian header length, then JSON
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= path.stat().st_size:
        return "safetensors"
    return "pickle" if head[:1] == b"\x80" else "unknown"  # protocol 2+ pickles start with PROTO


def load_generator(
    path: Path,
    device: torch.device,
    z_dim: int | None = None,
    arch: str | None = None,
    arch_kwargs: dict | str | None = None,
    trust_checkpoint: bool = False,
    num_classes: int | None = None,
    value_range: tuple[float, float] | None = None,
    class_weights: tuple[float, ...] | list[float] | None = None,
    truncation: float | None = None,
) -> Generator:
    """Load a generator checkpoint of any supported format (see the module docstring).

    Raises:
        GanauditError: unreadable file, unknown z_dim, untrusted pickle, wrong architecture,
            a conditional generator without ``num_classes``, a truncation it cannot take.
    """
    path = Path(path)
    if not path.is_file():
        raise GanauditError(f"--generator {path}: no such file")
    fmt = sniff_format(path)
    info = {"path": str(path), "sha256": file_sha256(path), "format": fmt}
    if fmt == "unknown":
        raise GanauditError(f"--generator {path}: not a checkpoint ganaudit can read (neither a torch.export "
                            "program, TorchScript, a torch.save file nor safetensors)")
    if fmt in ("pt2", "torchscript") and (arch is not None or arch_kwargs is not None):
        raise GanauditError(f"--arch and --arch-kwargs are only for state_dict checkpoints; {path} is a "
                            f"{'torch.export program' if fmt == 'pt2' else 'TorchScript file'} that carries its own "
                            "architecture: drop them")
    if fmt == "pt2":
        module, signature = _load_pt2(path)
    elif fmt == "torchscript":
        module = load_torchscript(path, "--generator")
        signature = signature_of_module(module)
    else:
        from ganaudit.sources.state_dicts import load_state_dict_generator

        module, kwargs_z = load_state_dict_generator(path, fmt, arch, arch_kwargs, trust_checkpoint, info)
        signature = signature_of_module(module)
        if signature.z_dim is None and kwargs_z is not None:
            signature = dataclasses.replace(signature, z_dim=kwargs_z)
    z_dim = _resolve_z_dim(signature.z_dim, z_dim)
    info["z_dim"] = z_dim
    check_conditional(signature, num_classes, path)
    weights = normalised_class_weights(class_weights, num_classes)
    if num_classes is not None:
        info["num_classes"] = num_classes
        info["class_weights"] = list(weights) if weights is not None else "uniform"
    call_kwargs = truncation_kwargs(module, signature, truncation, info, device)
    if value_range is not None:
        info["output_range"], info["output_range_source"] = list(value_range), "given"
    module = module.to(device) if hasattr(module, "to") else module
    if hasattr(module, "eval"):
        try:
            module.eval()
        except (NotImplementedError, RuntimeError):
            pass  # exported programs' modules do not support eval(); they are already frozen
    if signature.batch_range != (1, None):
        log.info("the generator takes batches of %s to %s; sampling in padded chunks", *signature.batch_range)
    log.info("loaded %s generator %s (z_dim=%d)", fmt, path, z_dim)
    return Generator(module, z_dim, device, info, num_classes, value_range, weights, call_kwargs,
                     signature.batch_range)


def _load_pt2(path: Path):
    try:
        program = torch.export.load(str(path))
    except Exception as e:
        raise GanauditError(f"--generator {path}: not a readable torch.export program: {error_line(e)}") from None
    return program.module(), signature_of_program(program)


def _resolve_z_dim(found: int | None, given: int | None) -> int:
    if found is not None and given is not None and found != given:
        raise GanauditError(f"--z-dim {given} does not match the generator, which takes z of size {found}")
    z_dim = given if given is not None else found
    if z_dim is None:
        raise GanauditError("cannot tell the generator's latent size: pass --z-dim (the length of its input vector z)")
    return z_dim
