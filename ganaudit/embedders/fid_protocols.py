"""FID protocols: the preprocessing of pytorch-fid, clean-fid and torch-fidelity, reproduced.

An FID is comparable with a published one, or with a colleague's tool, only under the same
protocol. All four run the same network (the FID Inception-v3, TensorFlow's 2015-12-05 graph,
pool3 features, 2048-d; here with the weights of ``inception``: pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth``) and differ in what they feed it:

============================  ==========================  ==================  =========================
protocol                      resize to 299×299           network input       reproduces
============================  ==========================  ==================  =========================
``pytorch-fid``               bilinear, half-pixel, no    ``2 (u / 255) - 1``  ``pytorch_fid.fid_score.
                              antialias, on ``u / 255``   (resize before)      calculate_fid_given_paths``
``clean-fid``                 PIL bicubic (antialiased)   ``(r - 128) / 128``  ``cleanfid.fid.compute_fid
                              of each channel as float                         (mode="clean")``
``clean-fid-legacy``          bilinear, half-pixel, on    ``2 (r / 255) - 1``  ``compute_fid(mode=
                              0..255, clipped to 0..255                        "legacy_pytorch")``
``torch-fidelity``            TensorFlow 1 bilinear (no   ``(r - 128) / 128``  ``torch_fidelity.
                              half-pixel), on 0..255                           calculate_metrics(fid=True)``
============================  ==========================  ==================  =========================

``u`` is the image quantised to 8 bits as a saved PNG holds it (``floor(255 x + 0.5)``; images
read from 8-bit files are unchanged), ``r`` the resized ``u``. Every tool reads image files as
8-bit RGB, so generator outputs are quantised the same way before anything else. Images
already at 299×299 are not resized (each resize is then exact), but the two scalings differ:
``(u - 127.5) / 127.5`` against ``(u - 128) / 128``.

The default, :data:`DEFAULT_PROTOCOL`, is ``torch-fidelity``: its TensorFlow-1 bilinear resize
is the one of TensorFlow's own Inception graph, on which the original FID code (TTUR) and
most published GAN tables were computed (torch-fidelity's documentation says its values match
the reference implementations to machine precision; clean-fid calls the same resize
``legacy_tensorflow``). The Inception Score under ``torch-fidelity`` shuffles the samples
with ``numpy.random.RandomState(2020)`` before splitting them, as ``calculate_metrics(isc=True)``
does; under the other protocols (whose tools compute no IS) the splits follow sample order.

Each protocol is data (:class:`FidProtocol`); :func:`create_fid_embedder` builds an
``inception`` embedder whose preprocessing is the protocol's, so features are cached and
streamed like every other embedder's (the protocol is part of its cache key).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from ganaudit.embedders import fid_resize
from ganaudit.embedders.inception import SPEC as INCEPTION_SPEC, InceptionEmbedder
from ganaudit.errors import GanauditError

FID_INPUT_SIZE = (299, 299)
RESIZES = ("torch-bilinear-unit", "pil-bicubic", "torch-bilinear-255", "tf1-bilinear")
SCALINGS = ("unit", "128")
IS_ORDERS = ("as-given", "shuffled-2020")
TORCH_FIDELITY_RNG_SEED = 2020  # torch-fidelity's default rng_seed, which its IS shuffle uses


@dataclass(frozen=True)
class FidProtocol:
    """One tool's FID preprocessing, as data.

    Attributes:
        name: registry name (``--fid-protocol``).
        resize: how 8-bit images reach 299×299: ``torch-bilinear-unit`` (``F.interpolate``
            bilinear, ``align_corners=False``, on ``u / 255``), ``pil-bicubic`` (PIL's float
            bicubic, clipped to 0..255), ``torch-bilinear-255`` (``F.interpolate`` on 0..255,
            clipped) or ``tf1-bilinear`` (TensorFlow 1 bilinear on 0..255).
        scaling: ``unit`` (``2 (r / 255) - 1``; ``r`` already in [0, 1] for
            ``torch-bilinear-unit``) or ``128`` (``(r - 128) / 128``).
        inception_score_order: ``as-given`` or ``shuffled-2020`` (torch-fidelity's).
        reproduces: the peer call whose numbers it reproduces.
        tables: which published numbers it is the protocol of, in words.
    """

    name: str
    resize: str
    scaling: str
    inception_score_order: str
    reproduces: str
    tables: str
    network: str = "FID Inception-v3 (TensorFlow 2015-12-05 graph), pool3, 2048-d"
    quantize: str = "8-bit, floor(255 x + 0.5), as a saved PNG"


PROTOCOLS: dict[str, FidProtocol] = {p.name: p for p in (
    FidProtocol("pytorch-fid", "torch-bilinear-unit", "unit", "as-given",
                "pytorch_fid.fid_score.calculate_fid_given_paths (pytorch-fid 0.3)",
                "papers and repositories that report pytorch-fid"),
    FidProtocol("clean-fid", "pil-bicubic", "128", "as-given",
                "cleanfid.fid.compute_fid(mode='clean') (clean-fid 0.1.35)",
                "clean-fid's leaderboard and papers that report Clean-FID"),
    FidProtocol("clean-fid-legacy", "torch-bilinear-255", "unit", "as-given",
                "cleanfid.fid.compute_fid(mode='legacy_pytorch') (clean-fid 0.1.35)",
                "clean-fid's legacy_pytorch statistics (pytorch-fid's protocol, run by clean-fid)"),
    FidProtocol("torch-fidelity", "tf1-bilinear", "128", "shuffled-2020",
                "torch_fidelity.calculate_metrics(fid=True, isc=True) (torch-fidelity 0.4)",
                "the original TensorFlow FID (TTUR) and tables computed with it, torch-fidelity, "
                "clean-fid's legacy_tensorflow statistics"),
)}
DEFAULT_PROTOCOL = "torch-fidelity"


def get_protocol(name: str | None) -> FidProtocol:
    """The protocol ``name`` (None: the default); GanauditError naming the choices otherwise."""
    name = DEFAULT_PROTOCOL if name is None else name
    if name not in PROTOCOLS:
        raise GanauditError(f"unknown --fid-protocol {name!r}; choose from {', '.join(PROTOCOLS)} "
                            f"(default {DEFAULT_PROTOCOL})")
    return PROTOCOLS[name]


def protocol_info(protocol: FidProtocol) -> dict:
    """The protocol's facts for the result, with whether it is the default."""
    return asdict(protocol) | {"default": protocol.name == DEFAULT_PROTOCOL}


def network_input(protocol: FidProtocol, images: torch.Tensor, size: tuple[int, int] = FID_INPUT_SIZE) -> torch.Tensor:
    """What the protocol's tool feeds the network for ``images``.

    Args:
        protocol: the protocol.
        images: ``(B, 3, H, W)`` float in [0, 1] (8-bit files read as ``k / 255``).
        size: the network's input size.

    Returns:
        ``(B, 3, 299, 299)`` float32 on ``images``' device, in the order of operations of
        the tool (each step in float32 unless the module ``fid_resize`` says otherwise).
    """
    u = fid_resize.quantize_to_uint8_values(images)
    same = fid_resize.is_identity(u.shape, size)
    if protocol.resize == "torch-bilinear-unit":  # pytorch-fid: ToTensor (/255), then resize
        x = u / 255.0
        r = x if same else fid_resize.resize_torch_bilinear(x, size)
        return 2 * r - 1
    if protocol.resize == "pil-bicubic":
        r = u if same else fid_resize.resize_pil_bicubic(u, size).clamp_(0.0, 255.0)
    elif protocol.resize == "torch-bilinear-255":
        r = u if same else fid_resize.resize_torch_bilinear(u, size).clamp_(0.0, 255.0)
    elif protocol.resize == "tf1-bilinear":
        r = u if same else fid_resize.resize_tf1_bilinear(u, size)
    else:
        raise ValueError(f"unknown resize {protocol.resize!r}; known: {', '.join(RESIZES)}")
    if protocol.scaling == "unit":
        return 2 * (r / 255.0) - 1
    return (r - 128) / 128


def inception_score_order(protocol: FidProtocol, n: int) -> np.ndarray:
    """``(n,)`` int64 order in which the protocol splits ``n`` samples for the Inception Score."""
    if protocol.inception_score_order == "shuffled-2020":
        return np.random.RandomState(TORCH_FIDELITY_RNG_SEED).permutation(n)
    return np.arange(n)


class FidInceptionEmbedder(InceptionEmbedder):
    """The ``inception`` embedder with a protocol's preprocessing in front of the network.

    The network runs in float32, as ``inception`` does; on CUDA, cuDNN's TF32 convolutions
    follow PyTorch's global setting (``torch.backends.cudnn.allow_tf32``, on by default, as
    for the peers run on the same GPU).
    """

    def __init__(self, network: torch.nn.Module, device: torch.device, weights_path, protocol: FidProtocol):
        super().__init__(network, device, weights_path)
        self.protocol = protocol
        self.spec = replace(INCEPTION_SPEC, resize=f"fid-protocol:{protocol.name}")

    def identity(self) -> dict:
        return super().identity() | {"fid_protocol": asdict(self.protocol)}

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        images = images.to(self.device, dtype=torch.float32)
        x = network_input(self.protocol, images, tuple(self.spec.input_size))
        return x.contiguous(memory_format=torch.channels_last)


def create_fid_embedder(protocol: FidProtocol | str | None, device: torch.device | str, weights=None) -> FidInceptionEmbedder:
    """The FID Inception under ``protocol``, its weights found as ``inception``'s are.

    Args:
        protocol: a protocol or its name (None: the default).
        device: where it runs.
        weights: a pytorch-fid-format weight file; default: the standard caches.

    Raises:
        GanauditError: unknown protocol, weights missing or malformed.
    """
    from ganaudit.embedders.inception import load_network
    from ganaudit.embedders.weights import find_weights

    protocol = protocol if isinstance(protocol, FidProtocol) else get_protocol(protocol)
    path = find_weights("inception", weights)
    return FidInceptionEmbedder(load_network(path), torch.device(device), path, protocol)
