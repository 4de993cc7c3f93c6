"""``sscd``: the SSCD copy-detection descriptor (Pizzi et al., CVPR 2022), ``sscd_disc_mixup``.

A ResNet-50 trained for image copy detection on DISC 2021; 512-d, L2-normalised. The
authors ship it as a standalone TorchScript file, loaded here with ``torch.jit.load`` (no SSCD
code needed). It is the recommended embedder for leak detection.

Preprocessing: the README's square variant, a direct (aspect-skewing) resize to 320×320,
and ImageNet mean/std; the README recommends it for batched inference. Search is by inner
product (cosine). The README's threshold: "DISC image pairs with embedding cosine similarity
greater than 0.75 are copies with 90% precision" for this model; it is ``copy_threshold``.
"""
from __future__ import annotations


import torch

from ganaudit.embedders.base import Embedder, EmbedderSpec, prepare_network
from ganaudit.errors import GanauditError
from ganaudit.plumbing import load_torchscript

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SPEC = EmbedderSpec(
    name="sscd",
    dim=512,
    input_size=(320, 320),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    l2_normalized=True,
    metric="ip",
    copy_threshold=0.75,
    copy_threshold_source="facebookresearch/sscd-copy-detection README: cosine > 0.75 is a copy with 90% precision on DISC",
    weights="sscd_disc_mixup.torchscript.pt (facebookresearch/sscd-copy-detection, torch hub cache)",
    # Trained to be invariant to flips, crops, shifts, colour and blur (its augmentations): the
    # identity alone is searched, one forward pass per image.
    copy_tta=(),
)


class SSCDEmbedder(Embedder):
    def __init__(self, module: torch.jit.ScriptModule, device: torch.device, weights_path):
        super().__init__(SPEC, device, weights_path)
        self.module = prepare_network(module, self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def create(device: torch.device, weights=None) -> SSCDEmbedder:
    from ganaudit.embedders.weights import find_weights

    path = find_weights("sscd", weights)
    embedder = SSCDEmbedder(load_torchscript(path, "sscd"), device, path)
    with torch.inference_mode():
        probe = embedder.module(torch.zeros(1, 3, 64, 64, device=embedder.device))
    if probe.ndim != 2 or probe.shape[1] != SPEC.dim:
        raise GanauditError(
            f"sscd: {path} gives features of shape {tuple(probe.shape[1:])}, not ({SPEC.dim},); "
            f"sscd means sscd_disc_mixup (512-d); for another SSCD model use --embedder torchscript:PATH"
        )
    return embedder
