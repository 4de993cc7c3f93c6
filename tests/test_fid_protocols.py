"""FID protocols against the peers they reproduce, each peer run here on the same files, offline.

Fast: the resampling kernels against PIL and torch-fidelity's function, and the exact network
input against what each peer's own preprocessing code feeds its network (caught at the
network's first layer), at 32, 64, 299 px and at sizes that resize each axis differently.
Slow (``-m slow``): the FD of two folders equals the peer's FD to a relative 1e-4, with the
same randomly initialised Inception weights in each tool's file format: each peer at one image
size, 32, 64 and 299 px each taken by at least one peer (what reaches each network at every
size is already checked exactly by the fast tests above; an FD run costs 25-50 s a peer).
"""
from __future__ import annotations

import urllib.request
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from fid_support import ganaudit_features, write_clean_fid_file, write_fid_folder, write_weight_files
from ganaudit.embedders import fid_resize
from ganaudit.embedders.fid_protocols import (
    DEFAULT_PROTOCOL, PROTOCOLS, get_protocol, inception_score_order, network_input,
)
from ganaudit.errors import GanauditError
from ganaudit.metrics.fid import frechet_distance
from ganaudit.metrics.inception_score import inception_score
from ganaudit.sources.datasets import open_image_set

pytest.importorskip("pytorch_fid")
pytest.importorskip("cleanfid")
pytest.importorskip("torch_fidelity")

SIZES = [(32, 32), (64, 64), (299, 299), (17, 23), (512, 384), (299, 150), (40, 600)]


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("fid_torch_home")
    write_weight_files(home)
    return home


@pytest.fixture
def weights(torch_home, monkeypatch, offline) -> dict[str, Path]:
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    folder = torch_home / "hub" / "checkpoints"
    return {"pytorch-fid": folder / "pt_inception-2015-12-05-6726825d.pth",
            "torch-fidelity": folder / "weights-inception-2015-12-05-6726825d.pth"}


# ---------------------------------------------------------------- resampling kernels


@pytest.mark.parametrize("size", SIZES)
def test_pil_bicubic_equals_pil_on_float_images(size):
    channel = np.random.default_rng(size[0] + size[1]).integers(0, 256, size).astype(np.float32)
    expected = np.asarray(Image.fromarray(channel, mode="F").resize((299, 299), Image.BICUBIC))
    got = fid_resize.resize_pil_bicubic(torch.from_numpy(channel)[None, None], (299, 299))[0, 0].numpy()
    # Bit-exact when at most one axis shrinks; Pillow 13 may run the vertical pass first when
    # both change and the vertical one shrinks (its C source runs the horizontal one first),
    # which moves a float32 rounding by one unit.
    np.testing.assert_allclose(got, expected, rtol=0, atol=3.1e-5)
    if size[0] <= 299 or size[1] == 299:
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("size", SIZES)
def test_tf1_bilinear_equals_torch_fidelity(size):
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    x = torch.randint(0, 256, (2, 3, *size)).float()
    expected = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
    assert torch.equal(fid_resize.resize_tf1_bilinear(x, (299, 299)), expected)


def test_pil_bicubic_weights_are_normalised_and_antialias_when_shrinking():
    up, down = fid_resize.pil_bicubic_weights(32, 299), fid_resize.pil_bicubic_weights(600, 299)
    np.testing.assert_allclose(up.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(down.sum(axis=1), 1.0, atol=1e-12)
    assert (np.count_nonzero(down, axis=1) > 4).all()  # the kernel is stretched: more than 4 taps
    with pytest.raises(ValueError, match="positive"):
        fid_resize.pil_bicubic_weights(0, 299)


def test_quantisation_equals_a_png_written_by_torchvision(tmp_path):
    from torchvision.utils import save_image

    images = torch.rand(3, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    images[0, 0, 0, :4] = torch.tensor([0.5 / 255, 1.5 / 255, 254.5 / 255, 1.0])  # ties round up
    for i, image in enumerate(images):
        save_image(image, tmp_path / f"{i}.png")
    read = np.stack([np.asarray(Image.open(tmp_path / f"{i}.png").convert("RGB")) for i in range(3)])
    ours = fid_resize.quantize_to_uint8_values(images).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(ours, read.astype(np.float32))


# ---------------------------------------------------------------- network input against each peer's own code


class _Caught(Exception):
    def __init__(self, x):
        super().__init__("network input caught")
        self.x = x


def _catch(x):
    raise _Caught(x.detach().clone())


def _peer_network_input(protocol: str, files: list[Path]) -> torch.Tensor:
    """The tensor the peer's own code hands its network's first layer for ``files``."""
    if protocol == "pytorch-fid":
        import torchvision.transforms as TF
        from pytorch_fid.fid_score import ImagePathDataset
        from pytorch_fid.inception import InceptionV3

        batch = torch.stack(list(ImagePathDataset(files, transforms=TF.ToTensor())))
        this = SimpleNamespace(resize_input=True, normalize_input=True, blocks=[_catch], output_blocks=[0],
                               last_needed_block=0)
    elif protocol == "clean-fid":
        from cleanfid.inception_torchscript import InceptionV3W
        from cleanfid.utils import ResizeDataset

        batch = torch.stack(list(ResizeDataset(files, mode="clean")))
        this = SimpleNamespace(resize_inside=False, layers=SimpleNamespace(forward=_catch))
        return _caught(InceptionV3W.forward, this, batch)
    elif protocol == "clean-fid-legacy":
        from cleanfid.inception_pytorch import InceptionV3
        from cleanfid.utils import ResizeDataset

        # cleanfid.features.feature_extractor("pytorch_inception") calls model(x / 255).
        batch = torch.stack(list(ResizeDataset(files, mode="legacy_pytorch"))) / 255
        this = SimpleNamespace(resize_input=False, normalize_input=True, blocks=[_catch], output_blocks=[0],
                               last_needed_block=0)
    else:
        from torch_fidelity.datasets import ImagesPathDataset
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        batch = torch.stack(list(ImagesPathDataset([str(f) for f in files])))
        this = SimpleNamespace(features_list=["2048"], feature_extractor_internal_dtype=torch.float32,
                               INPUT_IMAGE_SIZE=299, Conv2d_1a_3x3=_catch)
        return _caught(FeatureExtractorInceptionV3.forward, this, batch)
    return _caught(InceptionV3.forward, this, batch)


def _caught(forward, this, batch) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            forward(this, batch)
        except _Caught as caught:
            return caught.x
    raise AssertionError("the network was never reached")


@pytest.fixture(scope="module")
def small_folders(tmp_path_factory) -> dict[tuple[int, int], Path]:
    root = tmp_path_factory.mktemp("fid_inputs")
    return {size: write_fid_folder(root / f"{size[0]}x{size[1]}", 3, size, seed=size[0] * 7 + size[1])
            for size in SIZES}


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
@pytest.mark.parametrize("size", SIZES)
def test_network_input_equals_the_peers(protocol, size, small_folders):
    folder = small_folders[size]
    expected = _peer_network_input(protocol, sorted(folder.glob("*.png")))
    _, images = next(open_image_set(folder).batches(8))
    got = network_input(get_protocol(protocol), images)
    assert got.shape == expected.shape == (3, 3, 299, 299) and got.dtype == torch.float32
    # One float32 unit of clean-fid's resize where Pillow orders its passes otherwise (see above).
    torch.testing.assert_close(got, expected, rtol=0, atol=3e-7)
    if protocol != "clean-fid" or size[0] <= 299 or size[1] == 299:
        assert torch.equal(got, expected)


def test_protocols_differ_where_they_should(small_folders):
    _, images = next(open_image_set(small_folders[(32, 32)]).batches(8))
    inputs = {name: network_input(p, images) for name, p in PROTOCOLS.items()}
    for a in inputs:
        for b in inputs:
            if a < b and {a, b} != {"pytorch-fid", "clean-fid-legacy"}:
                assert (inputs[a] - inputs[b]).abs().max() > 1e-3, (a, b)
    # pytorch-fid and clean-fid's legacy_pytorch differ only in where the /255 happens.
    torch.testing.assert_close(inputs["pytorch-fid"], inputs["clean-fid-legacy"], rtol=0, atol=1e-5)


def test_generated_images_are_quantised_before_the_protocol():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    snapped = fid_resize.quantize_to_uint8_values(x) / 255
    for protocol in PROTOCOLS.values():
        assert torch.equal(network_input(protocol, x), network_input(protocol, snapped))


def test_registry_default_and_errors():
    assert get_protocol(None).name == DEFAULT_PROTOCOL == "torch-fidelity"
    assert set(PROTOCOLS) == {"pytorch-fid", "clean-fid", "clean-fid-legacy", "torch-fidelity"}
    with pytest.raises(GanauditError, match="unknown --fid-protocol 'tf'.*pytorch-fid, clean-fid"):
        get_protocol("tf")


def test_inception_score_order_is_torch_fidelitys_shuffle():
    np.testing.assert_array_equal(inception_score_order(PROTOCOLS["torch-fidelity"], 50),
                                  np.random.RandomState(2020).permutation(50))
    np.testing.assert_array_equal(inception_score_order(PROTOCOLS["pytorch-fid"], 5), np.arange(5))


def test_fid_embedder_has_its_own_cache_identity(weights, monkeypatch):
    from ganaudit.embedders import create_embedder, inception
    from ganaudit.embedders.fid_protocols import create_fid_embedder

    monkeypatch.setattr(inception, "load_network", lambda path: torch.nn.Linear(1, 1))  # identity needs no network
    identities = {name: create_fid_embedder(name, "cpu").identity() for name in PROTOCOLS}
    identities["house"] = create_embedder("inception", "cpu").identity()
    keys = {repr(sorted(v.items())) for v in identities.values()}
    assert len(keys) == len(identities)
    assert identities["clean-fid"]["fid_protocol"]["resize"] == "pil-bicubic"


# ---------------------------------------------------------------- FD against the peers (slow)


# One size per peer: upsampled from 32 (pytorch-fid, and torch-fidelity, which also checks the
# Inception Score), from 64 (clean-fid's PIL bicubic), and 299, where no peer resizes.
FD_SIZES = {"pytorch-fid": 32, "clean-fid": 64, "clean-fid-legacy": 299, "torch-fidelity": 32}


def _fd_folders(side: int, root: Path) -> tuple[Path, Path]:
    real = write_fid_folder(root / "real", 36, (side, side), seed=side)
    fake = write_fid_folder(root / "fake", 28, (side, side), seed=side + 1, tint=0.25)
    return real, fake


def _peer_fd(protocol: str, real: Path, fake: Path, weights: dict, tmp_path: Path) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if protocol == "pytorch-fid":
            from pytorch_fid.fid_score import calculate_fid_given_paths

            return {"fid": calculate_fid_given_paths([str(real), str(fake)], 50, "cpu", 2048, num_workers=0)}
        if protocol.startswith("clean-fid"):
            from cleanfid import fid as cleanfid

            extractor = None
            if protocol == "clean-fid":  # the supported way to run clean mode offline: build its model, pass it
                from cleanfid.inception_torchscript import InceptionV3W

                write_clean_fid_file(tmp_path)
                extractor = InceptionV3W(str(tmp_path), download=False).eval()
            mode = "clean" if protocol == "clean-fid" else "legacy_pytorch"
            return {"fid": cleanfid.compute_fid(str(real), str(fake), mode=mode, num_workers=0, batch_size=32,
                                                device=torch.device("cpu"), verbose=False, use_dataparallel=False,
                                                custom_feat_extractor=extractor)}
        import torch_fidelity

        out = torch_fidelity.calculate_metrics(
            input1=str(fake), input2=str(real), cuda=False, fid=True, isc=True, verbose=False, cache=False,
            save_cpu_ram=True, batch_size=32, feature_extractor_weights_path=str(weights["torch-fidelity"]))
        return {"fid": out["frechet_inception_distance"], "isc": out["inception_score_mean"],
                "isc_std": out["inception_score_std"]}


def test_every_protocol_and_size_has_an_fd_comparison():
    assert set(FD_SIZES) == set(PROTOCOLS) and set(FD_SIZES.values()) == {32, 64, 299}


@pytest.mark.slow
@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_fd_equals_the_peers(protocol, weights, tmp_path):
    real, fake = _fd_folders(FD_SIZES[protocol], tmp_path / "folders")
    real_feats = ganaudit_features(real, protocol, weights["pytorch-fid"])
    fake_feats = ganaudit_features(fake, protocol, weights["pytorch-fid"])
    ours = frechet_distance(real_feats, fake_feats)
    peer = _peer_fd(protocol, real, fake, weights, tmp_path)
    assert ours == pytest.approx(peer["fid"], rel=1e-4)
    if protocol == "torch-fidelity":
        from ganaudit.embedders.fid_protocols import create_fid_embedder

        logits = create_fid_embedder(protocol, "cpu", weights["pytorch-fid"]).class_logits(fake_feats)
        order = inception_score_order(PROTOCOLS[protocol], len(logits))
        mean, std = inception_score(logits[order], splits=10)
        assert (mean, std) == pytest.approx((peer["isc"], peer["isc_std"]), rel=1e-4)
