"""``inception``: the FID Inception-v3 (pool3, 2048-d), as ported to PyTorch by pytorch-fid.

The network is TensorFlow's 2015-12-05 Inception graph that FID is defined on. pytorch-fid
rebuilds it from torchvision's Inception3 blocks with three differences, reproduced here:
the average pools inside the A, C and first E blocks exclude padding from the mean
(TensorFlow's behaviour), the last E block max-pools instead of average-pooling, and the
classifier has 1008 outputs. The weight file ``pt_inception-2015-12-05-6726825d.pth`` is a
plain state_dict of that module (566 tensors: 94 conv+BN blocks, ``fc``); it loads as is.

Preprocessing: inputs in [0, 1] are resized to 299×299 and scaled to [-1, 1]
(mean = std = 0.5), as pytorch-fid does. pytorch-fid resizes with bilinear interpolation
inside the network; here the resize is the house's antialiased bicubic (see ``SPEC.resize``),
which only matters for sets not already at 299×299. The network runs in float32 on every
device (``gpu_autocast=False``) so that FD values stay comparable with published ones.
"""
from __future__ import annotations

import numpy as np
import torch

from ganaudit.embedders.base import Embedder, EmbedderSpec, check_state_dict, load_state_dict_file, prepare_network

SPEC = EmbedderSpec(
    name="inception",
    dim=2048,
    input_size=(299, 299),
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    metric="l2",
    weights="pt_inception-2015-12-05-6726825d.pth (pytorch-fid release, torch hub cache)",
    gpu_autocast=False,
)


class InceptionEmbedder(Embedder):
    def __init__(self, network: torch.nn.Module, device: torch.device, weights_path):
        super().__init__(SPEC, device, weights_path)
        self.network = prepare_network(network, self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def class_logits(self, features: np.ndarray) -> np.ndarray:
        """The network's 1008-way class logits from its pool3 features, for the Inception Score.

        ``fc`` is linear, so the logits follow exactly from the features already computed; its
        bias is left out, as in torch-fidelity's ``logits_unbiased`` (the published protocol).

        Args:
            features: ``(N, 2048)`` float32 pool3 features from this embedder.

        Returns:
            ``(N, 1008)`` float32 logits.
        """
        weight = self.network.fc.weight.detach().float().cpu().numpy()
        return features.astype(np.float32, copy=False) @ weight.T


def load_network(path) -> torch.nn.Module:
    """The FID Inception with the weights of ``path`` (a pytorch-fid state_dict file)."""
    from ganaudit.embedders.inception_net import FIDInceptionV3

    network = FIDInceptionV3()
    state_dict = load_state_dict_file(path, "inception")
    # Files saved before PyTorch 0.4.1 lack BatchNorm's num_batches_tracked; it is unused here.
    check_state_dict(state_dict, network, f"inception weights {path}", optional=("num_batches_tracked",))
    network.load_state_dict(state_dict, strict=False)
    return network


def create(device: torch.device, weights=None) -> InceptionEmbedder:
    from ganaudit.embedders.weights import find_weights

    path = find_weights("inception", weights)
    return InceptionEmbedder(load_network(path), device, path)
