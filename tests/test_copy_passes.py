"""Forward passes per generated sample: a network on a CPU runs once per sample by default,
copy search runs on pixels-copy, and the flags are those of the pixels audit's copy search."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from conftest import save_torchscript
from ganaudit.audit import audit
from ganaudit.config import AuditConfig
from ganaudit.embedders import auto_copy_embedder, create_embedder
from ganaudit.embedders.base import Embedder

NUM_SAMPLES = 40


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.input_size = 48
        self.conv = torch.nn.Conv2d(3, 16, 5, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def network_file(tmp_path_factory):
    torch.manual_seed(0)
    return save_torchscript(_Net().eval(), tmp_path_factory.mktemp("net") / "net.torchscript.pt")


@pytest.fixture
def passes(monkeypatch):
    """Images through each embedder's forward, counted where the network is called."""
    counted: Counter = Counter()
    original = Embedder._embed_once

    def counting(self, images):
        counted[self.spec.name] += int(images.shape[0])
        return original(self, images)

    monkeypatch.setattr(Embedder, "_embed_once", counting)
    return counted


def _config(tiny_sets, embedder: str, **kw) -> AuditConfig:
    return AuditConfig(generator=tiny_sets["copy_gen"], train=tiny_sets["train"], holdout=tiny_sets["holdout"],
                       embedder=embedder, device="cpu", num_samples=NUM_SAMPLES, progress=False, no_cache=True, **kw)


@pytest.mark.slow  # two audits under pixels-copy's 117 variants: about a minute on 2 cores
def test_a_network_on_the_cpu_runs_once_per_sample_and_finds_the_same_copies(tiny_sets, network_file, passes):
    name = f"torchscript:{network_file}"
    result = audit(_config(tiny_sets, name))
    n_train, n_holdout = (len(list(tiny_sets[k].rglob("*.png"))) for k in ("train", "holdout"))
    # The network: the training set, the holdout (its features feed C_T and the MIA) and each
    # generated sample once; never an augmented variant, never a leave-one-out image.
    assert passes[name] == n_train + n_holdout + NUM_SAMPLES
    copy = result.memorization["copy_embedder"]
    assert copy["name"] == "pixels-copy" and copy["network_passes_per_sample"] == 1.0
    assert copy["passes_per_sample"][name] == 1.0
    assert copy["passes_per_sample"]["pixels-copy"] == len(copy["variants"]) > 2
    default_tta = create_embedder("pixels-copy", "cpu").spec.copy_tta
    assert copy["variants"][0] == "identity" and copy["tta"] == list(default_tta)

    pixels = audit(_config(tiny_sets, "pixels"))  # the same copy search: the same flags
    flagged = [(f["sample_index"], f["train_index"]) for f in result.memorization["flagged"]]
    assert flagged == [(f["sample_index"], f["train_index"]) for f in pixels.memorization["flagged"]]
    assert len(flagged) >= 0.95 * NUM_SAMPLES  # every sample of this generator is a training image


def test_the_network_as_its_own_descriptor_costs_a_pass_per_variant(tiny_sets, network_file, passes):
    name = f"torchscript:{network_file}"
    result = audit(_config(tiny_sets, name, copy_embedder=name))
    copy = result.memorization["copy_embedder"]
    assert copy["name"] == name and copy["variants"][:2] == ["identity", "hflip"] and len(copy["variants"]) == 10
    assert copy["network_passes_per_sample"] == 10.0  # identity, flip and 8 shifts (flip,shift)


def test_auto_copy_embedder_rules():
    cpu, meta = torch.device("cpu"), torch.device("meta")
    assert auto_copy_embedder(create_embedder("pixels", cpu)) == "pixels-copy"
    inception = _Spec("inception", weights="file", copy_threshold=None)
    assert auto_copy_embedder(_Fake(inception, cpu)) == "pixels-copy"
    assert auto_copy_embedder(_Fake(inception, meta)) == "inception"  # any accelerator: its own features
    sscd = _Spec("sscd", weights="file", copy_threshold=0.75)
    assert auto_copy_embedder(_Fake(sscd, cpu)) == "sscd"
    from ganaudit.embedders import sscd as sscd_module

    assert sscd_module.SPEC.copy_tta == ()  # invariant by training: the identity alone


def _Spec(name, weights, copy_threshold):
    from ganaudit.embedders.base import EmbedderSpec

    return EmbedderSpec(name=name, dim=8, input_size=(8, 8), weights=weights, copy_threshold=copy_threshold)


class _Fake(Embedder):
    def __init__(self, spec, device):
        self.spec, self.device = spec, device
