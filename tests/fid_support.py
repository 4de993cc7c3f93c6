"""Shared by the FID tests: Inception weight files in each tool's format, and image folders.

The weights are randomly initialised (He init, seed 0) in pytorch-fid's exact format (the
state_dict of the FID Inception, ``pt_inception-2015-12-05-6726825d.pth``), which is also
torch-fidelity's (``weights-inception-2015-12-05-6726825d.pth``: the same keys). clean-fid's
``clean`` mode runs NVIDIA's TorchScript file ``inception-2015-12-05.pt`` through the attribute
``layers`` (normalised 299x299 input to 2048 pool features); :func:`write_clean_fid_file`
writes a TorchScript archive with that interface around the same weights.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
TORCH_FIDELITY_FILE = "weights-inception-2015-12-05-6726825d.pth"
CLEAN_FID_FILE = "inception-2015-12-05.pt"


def inception_state_dict() -> dict:
    from ganaudit.embedders.inception_net import FIDInceptionV3

    torch.manual_seed(0)
    net = FIDInceptionV3()
    for m in net.modules():  # He init keeps activations O(1) (PyTorch's default shrinks them to denormals)
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return net.state_dict()


def write_weight_files(torch_home: Path) -> dict[str, Path]:
    """pytorch-fid's file in ``torch_home/hub/checkpoints`` (where pytorch-fid, clean-fid and
    ganaudit look) and torch-fidelity's copy beside it."""
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    state = inception_state_dict()
    torch.save(state, folder / PYTORCH_FID_FILE)
    torch.save(state, folder / TORCH_FIDELITY_FILE)
    return {"pytorch-fid": folder / PYTORCH_FID_FILE, "torch-fidelity": folder / TORCH_FIDELITY_FILE}


class _LayersInterface(torch.nn.Module):
    """The part of NVIDIA's TorchScript Inception that clean-fid's clean mode calls: ``layers``."""

    def __init__(self, layers: torch.nn.Module):
        super().__init__()
        self.layers = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def write_clean_fid_file(folder: Path) -> Path:
    """``folder/inception-2015-12-05.pt``: a TorchScript archive whose ``layers`` is the FID
    Inception with :func:`inception_state_dict`'s weights."""
    from ganaudit.embedders.inception_net import FIDInceptionV3

    net = FIDInceptionV3()
    net.load_state_dict(inception_state_dict())
    traced = torch.jit.trace(net.eval(), torch.zeros(1, 3, 299, 299), check_trace=False)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CLEAN_FID_FILE
    torch.jit.script(_LayersInterface(traced)).save(str(path))
    return path


def write_fid_folder(root: Path, n: int, size: tuple[int, int], seed: int, tint: float = 0.0) -> Path:
    """``n`` PNGs of smooth random colour fields plus pixel noise, ``size`` = (H, W)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    height, width = size
    for i in range(n):
        coarse = rng.uniform(0, 255, size=(6, 6, 3)) * (1 - abs(tint)) + 255 * max(tint, 0)
        field = np.stack([np.asarray(Image.fromarray(coarse[:, :, c].astype(np.float32), mode="F")
                                     .resize((width, height), Image.BICUBIC)) for c in range(3)], axis=2)
        img = np.clip(np.round(field + rng.normal(0, 12, size=field.shape)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"{i:04d}.png")
    return root


def ganaudit_features(folder: Path, protocol: str, weights: Path, device: str = "cpu") -> np.ndarray:
    """ganaudit's FID features of ``folder`` under ``protocol``."""
    from ganaudit.embedders.cache import embed_image_set
    from ganaudit.embedders.fid_protocols import create_fid_embedder
    from ganaudit.sources.datasets import open_image_set

    embedder = create_fid_embedder(protocol, device, weights)
    return embed_image_set(open_image_set(folder), embedder, 64, None, "test", False)


class TinyFidNetwork(torch.nn.Module):
    """A fast stand-in for the FID Inception (2048-d out, a 1008-way ``fc``), for plumbing tests.

    Tests that use it patch ``ganaudit.embedders.inception.load_network``; the FID numbers
    themselves are tested with the real network against the peers (test_fid_protocols).
    """

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(3, 16, 9, stride=8)
        self.lift = torch.nn.Linear(16, 2048)
        self.fc = torch.nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lift(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def use_tiny_fid_network(monkeypatch, torch_home: Path) -> Path:
    """Patch the FID network with :class:`TinyFidNetwork` and point ``TORCH_HOME`` at
    ``torch_home``, whose weight file holds the stand-in's own bytes (so the embedding cache
    never mixes its features with the real network's). Returns that file."""
    from ganaudit.embedders import inception

    network = TinyFidNetwork().eval()
    monkeypatch.setattr(inception, "load_network", lambda path: network)
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), folder / PYTORCH_FID_FILE)
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return folder / PYTORCH_FID_FILE
