"""What every embedder declares, and the batched embedding loop they share."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ganaudit.device import OomSplitter
from ganaudit.plumbing import error_line

RESIZE_METHODS = ("bicubic-antialias", "bilinear")


@dataclass(frozen=True)
class EmbedderSpec:
    """Preprocessing and search facts of an embedder, kept as data beside its weights.

    Attributes:
        name: registry name.
        dim: output feature dimension D.
        input_size: ``(H, W)`` the network takes; images are resized to it on the device.
        mean, std: per-channel normalisation applied after resizing (inputs in [0, 1]).
        l2_normalized: features are unit vectors.
        metric: the FAISS metric to search with, ``"l2"`` or ``"ip"``.
        copy_threshold: a published absolute copy threshold in the metric's units, or None.
        weights: where the weights come from, in words (``"none"`` for weightless ones).
        resize: ``"bicubic-antialias"`` (PIL-like antialiased bicubic, the default) or
            ``"bilinear"`` (no antialiasing, as pytorch-fid resizes inside its network).
        gpu_autocast: run under bf16 (fp16 where bf16 is missing) autocast on CUDA. Never used
            on CPU, where reduced precision is slower.
        copy_threshold_source: where ``copy_threshold`` is published.
        copy_embedder: registry name of the embedder whose features copy search uses when
            this one is chosen (``--copy-embedder auto``); None: these features themselves.
        copy_tta: the test-time augmentations copy search uses with these features unless
            ``--tta`` says otherwise.
        region_embedder: registry name of the embedder region search (``--regions``) cuts
            tiles into when this one is the copy embedder; None: this one.
        centre_crop: the centre fraction of each side kept before resizing (1: the whole image).
    """

    name: str
    dim: int
    input_size: tuple[int, int]
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    l2_normalized: bool = False
    metric: str = "l2"
    copy_threshold: float | None = None
    weights: str = "none"
    resize: str = "bicubic-antialias"
    gpu_autocast: bool = True
    copy_threshold_source: str | None = None
    copy_embedder: str | None = None
    copy_tta: tuple[str, ...] = ("flip", "shift")
    region_embedder: str | None = None
    centre_crop: float = 1.0


class Embedder:
    """Turns ``(B, 3, H, W)`` float images in [0, 1] into ``(B, D)`` float32 features.

    Attributes:
        spec: the embedder's preprocessing and search facts.
        device: where the network runs.
        weights_path: the weight file it was loaded from, or None (weightless).
        calls: batches embedded so far; tests count these to prove cache hits.
        images_embedded: images embedded so far (forward passes, one per image and variant).
    """

    spec: EmbedderSpec

    def __init__(self, spec: EmbedderSpec, device: torch.device, weights_path: Path | None = None):
        self.spec = spec
        self.device = torch.device(device)
        self.weights_path = Path(weights_path) if weights_path is not None else None
        self.calls = 0
        self.images_embedded = 0
        self._weights_sha256: str | None = None
        self._mean_std: tuple[torch.Tensor, torch.Tensor] | None = None
        self._oom = OomSplitter(self.device, f"embedding with {spec.name}")

    @property
    def is_network(self) -> bool:
        """True for embedders with weights (a network's forward pass), False for weightless ones."""
        return self.spec.weights != "none"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """bf16 (fp16 without bf16 support) on CUDA where the spec allows it; None elsewhere."""
        if self.device.type != "cuda" or not self.spec.gpu_autocast:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def weights_sha256(self) -> str:
        """SHA-256 of the weight file (computed once), or ``"none"`` for weightless embedders."""
        if self.weights_path is None:
            return "none"
        if self._weights_sha256 is None:
            from ganaudit.plumbing import file_sha256

            self._weights_sha256 = file_sha256(self.weights_path)
        return self._weights_sha256

    def identity(self) -> dict:
        """Everything that determines the features of an image: the embedding cache's key."""
        precision = str(self.autocast_dtype).removeprefix("torch.") if self.autocast_dtype else "float32"
        return {"name": self.spec.name, "spec": asdict(self.spec),
                "weights_sha256": self.weights_sha256(), "precision": precision}

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize to the input size and normalise, on the device; channels_last out."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if self.device.type == "cuda" and not images.is_cuda and not images.is_pinned():
            images = images.pin_memory()  # lets the copy below overlap with compute
        images = images.to(self.device, dtype=torch.float32, non_blocking=True)
        if self.spec.centre_crop < 1.0:
            images = centre_crop(images, self.spec.centre_crop)
        if tuple(images.shape[-2:]) != tuple(self.spec.input_size):
            images = _resize(images, tuple(self.spec.input_size), self.spec.resize)
        if self._mean_std is None:
            with torch.inference_mode(False):  # usable where gradients flow too (search.align)
                self._mean_std = tuple(torch.tensor(v, device=self.device).view(1, 3, 1, 1)
                                       for v in (self.spec.mean, self.spec.std))
        mean, std = self._mean_std
        return ((images - mean) / std).contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map preprocessed images to features; subclasses implement it."""
        raise NotImplementedError

    def embed(self, images: torch.Tensor) -> np.ndarray:
        """Embed one batch: ``(B, 3, H, W)`` in [0, 1] → ``(B, D)`` float32 numpy.

        On out-of-memory the batch is split and retried in smaller chunks (``OomSplitter``).
        """
        self.calls += 1
        self.images_embedded += int(images.shape[0])
        return self._oom(self._embed_once, images)

    @torch.inference_mode()
    def _embed_once(self, images: torch.Tensor) -> np.ndarray:
        if images.shape[0] == 0:
            return np.empty((0, self.spec.dim), dtype=np.float32)
        x = self.preprocess(images)
        dtype = self.autocast_dtype
        with torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            feats = self.forward(x)
        feats = feats.float().flatten(1)
        if self.spec.l2_normalized:
            feats = F.normalize(feats, dim=1)
        return feats.cpu().numpy().astype(np.float32, copy=False)


def centre_crop(images: torch.Tensor, fraction: float) -> torch.Tensor:
    """The centre ``fraction`` of each side of ``(B, C, H, W)`` images (whole pixels, symmetric)."""
    h, w = images.shape[-2:]
    top, left = round(h * (1 - fraction) / 2), round(w * (1 - fraction) / 2)
    return images[..., top : h - top, left : w - left]


def _resize(images: torch.Tensor, size: tuple[int, int], method: str) -> torch.Tensor:
    if method == "bicubic-antialias":
        # Bicubic overshoots; clamp back to the [0, 1] range the images came in.
        return F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False).clamp_(0.0, 1.0)
    if method == "bilinear":
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    raise ValueError(f"unknown resize method {method!r}; choose from {', '.join(RESIZE_METHODS)}")


def prepare_network(module: torch.nn.Module, device: torch.device, channels_last: bool = True) -> torch.nn.Module:
    """Frozen, in eval mode, on ``device``; convolutional nets in channels_last memory."""
    module = module.eval().to(device)
    for parameter in module.parameters():  # (ScriptModules have no requires_grad_)
        parameter.requires_grad_(False)
    return module.to(memory_format=torch.channels_last) if channels_last else module


def check_state_dict(state_dict: dict, module: torch.nn.Module, what: str, optional: tuple[str, ...] = (),
                     allow_unexpected: bool = False) -> None:
    """Raise GanauditError unless ``state_dict`` has exactly ``module``'s keys and shapes.

    Args:
        optional: key suffixes that may be missing (e.g. BatchNorm's ``num_batches_tracked``).
        allow_unexpected: extra keys are logged, not refused (for upstreams that load with
            ``strict=False`` themselves); missing keys and wrong shapes are always refused.
    """
    from ganaudit.errors import GanauditError

    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise GanauditError(f"{what}: not a state_dict (a mapping of names to tensors)")
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith(optional)]
    unexpected = [k for k in state_dict if k not in expected]
    if allow_unexpected and unexpected:
        logging.getLogger(__name__).warning("%s: ignoring %d unexpected keys %s", what, len(unexpected), unexpected[:3])
        unexpected = []
    wrong = [f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state_dict and state_dict[k].shape != v.shape]
    problems = [f"{label} {items[:3]}{' ...' if len(items) > 3 else ''}" for label, items in
                (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)) if items]
    if problems:
        raise GanauditError(f"{what}: not the expected checkpoint: {'; '.join(problems)}")


def load_state_dict_file(path: Path, what: str) -> dict:
    """``torch.load(weights_only=True)`` with a one-line GanauditError on failure."""
    from ganaudit.errors import GanauditError

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, a pickle with code, not a torch file at all
        first = error_line(e)
        raise GanauditError(f"{what}: cannot read {path} as a weights file: {first}") from None
