"""Generators as users have them: every checkpoint format on a real file, and every way it can be wrong.

The architectures live in a module written to a temporary folder and put on ``sys.path``, as a
user's own ``models.py`` would be; ``--arch ganaudit_test_arch:TinyGen`` imports it.
"""
from __future__ import annotations

import json
import logging
import pickle
import sys

import numpy as np
import pytest
import torch

from conftest import run_cli
from ganaudit.device import resolve_device
from ganaudit.device import OomSplitter, is_out_of_memory
from ganaudit.errors import GanauditError
from ganaudit.sources.samples import GeneratorSamples
from ganaudit.sources.generators import Generator, load_generator, sniff_format

CPU = torch.device("cpu")
ARCH = "ganaudit_test_arch"
FAST = ("--num-samples", "40", "--tta", "none", "--batch-size", "16")

ARCH_SOURCE = '''
import torch
from torch import nn


class TinyGen(nn.Module):
    """z (B, z_dim) -> (B, 3, size, size) in [-1, 1]."""

    def __init__(self, z_dim: int = 8, size: int = 8):
        super().__init__()
        self.z_dim = z_dim
        self.size = size
        self.fc = nn.Linear(z_dim, 3 * size * size)

    def forward(self, z):
        return torch.tanh(self.fc(z)).view(-1, 3, self.size, self.size)


class OtherGen(nn.Module):
    def __init__(self, z_dim: int = 8):
        super().__init__()
        self.z_dim = z_dim
        self.body = nn.Linear(z_dim, 3 * 8 * 8)

    def forward(self, z):
        return torch.tanh(self.body(z)).view(-1, 3, 8, 8)


class NoZDimGen(nn.Module):
    """Does not say its latent size."""

    def __init__(self, latent: int = 8):
        super().__init__()
        self.fc = nn.Linear(latent, 3 * 8 * 8)

    def forward(self, z):
        return torch.tanh(self.fc(z)).view(-1, 3, 8, 8)


class CondGen(nn.Module):
    """Conditional: channel 0 of every pixel is label / (num_classes - 1), in [0, 1]."""

    def __init__(self, z_dim: int = 8, num_classes: int = 4):
        super().__init__()
        self.z_dim = z_dim
        self.num_classes = num_classes
        self.fc = nn.Linear(z_dim, 3 * 8 * 8)

    def forward(self, z, labels):
        img = torch.sigmoid(self.fc(z)).view(-1, 3, 8, 8)
        level = (labels.float() / (self.num_classes - 1)).view(-1, 1, 1)
        return torch.cat([level.expand(-1, 8, 8).unsqueeze(1), img[:, 1:]], dim=1)


class VarArgsCond(nn.Module):
    """Conditional, but its forward does not say so (``*inputs``)."""

    def __init__(self, z_dim: int = 8):
        super().__init__()
        self.z_dim = z_dim
        self.fc = nn.Linear(z_dim, 3 * 8 * 8)

    def forward(self, *inputs):
        z, labels = inputs
        return torch.tanh(self.fc(z) + labels.float()[:, None]).view(-1, 3, 8, 8)


class TruncGen(nn.Module):
    def __init__(self, z_dim: int = 8):
        super().__init__()
        self.z_dim = z_dim
        self.fc = nn.Linear(z_dim, 3 * 8 * 8)

    def forward(self, z, truncation_psi: float = 1.0):
        return torch.tanh(self.fc(z) * truncation_psi).view(-1, 3, 8, 8)


class PsiKeywordGen(TruncGen):
    def forward(self, z, psi: float = 1.0):
        return torch.tanh(self.fc(z) * psi).view(-1, 3, 8, 8)


class PsiAttrGen(TruncGen):
    def __init__(self, z_dim: int = 8):
        super().__init__(z_dim)
        self.psi = 1.0

    def forward(self, z):
        return torch.tanh(self.fc(z) * self.psi).view(-1, 3, 8, 8)


class TensorPsiGen(TruncGen):
    def forward(self, z, psi):
        return torch.tanh(self.fc(z) * psi).view(-1, 3, 8, 8)


class RangeGen(nn.Module):
    """Outputs in a chosen range: "tanh" [-1, 1], "sigmoid" [0, 1], "bytes" [0, 255]."""

    def __init__(self, kind: str = "tanh", z_dim: int = 8):
        super().__init__()
        self.z_dim = z_dim
        self.kind = kind
        self.fc = nn.Linear(z_dim, 3 * 8 * 8)

    def forward(self, z):
        x = self.fc(z).view(-1, 3, 8, 8) * 3
        if self.kind == "sigmoid":
            return torch.sigmoid(x)
        if self.kind == "bytes":
            return torch.sigmoid(x) * 255
        return torch.tanh(x)


class OomGen(TinyGen):
    """Runs out of (pretend) device memory on batches larger than ``limit``."""

    def __init__(self, limit: int = 4):
        super().__init__()
        self.limit = limit
        self.calls = []

    def forward(self, z):
        self.calls.append(z.shape[0])
        if z.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(z)


def not_a_module(z_dim=8):
    return None
'''


@pytest.fixture(scope="module")
def arch(tmp_path_factory):
    """The test architectures, importable as ``ganaudit_test_arch``."""
    folder = tmp_path_factory.mktemp("arch")
    (folder / f"{ARCH}.py").write_text(ARCH_SOURCE)
    (folder / "ganaudit_broken_arch.py").write_text("raise RuntimeError('this module fails to import')\n")
    sys.path.insert(0, str(folder))
    module = __import__(ARCH)
    yield module
    sys.path.remove(str(folder))
    sys.modules.pop(ARCH, None)


def _seeded(cls, *args, seed=0, **kwargs):
    torch.manual_seed(seed)
    return cls(*args, **kwargs).eval()


def _expected(module, z_dim, indices, seed=0, **kwargs):
    """What a generator module should give for samples ``indices``, by the latent contract."""
    z = np.stack([np.random.default_rng([seed, int(i)]).standard_normal(z_dim) for i in indices])
    with torch.no_grad():
        return module(torch.from_numpy(z.astype(np.float32)), **kwargs)


def _unit(x, lo=-1.0, hi=1.0):
    return ((x - lo) / (hi - lo)).clamp(0, 1)


def _export(module, path, example, dynamic=True, kwargs=None):
    from torch.export import Dim

    dynamic_shapes = None
    if dynamic:
        batch = Dim("batch")
        dynamic_shapes = {"z": {0: batch}}
        if len(example) > 1:
            dynamic_shapes["labels"] = {0: batch}
        for name in kwargs or {}:
            dynamic_shapes[name] = None
    program = torch.export.export(module, example, kwargs, dynamic_shapes=dynamic_shapes)
    torch.export.save(program, str(path))
    return path


# --- formats -------------------------------------------------------------------------------


def test_pt2_with_dynamic_batch_reads_z_dim_and_samples_any_batch(arch, tmp_path):
    module = _seeded(arch.TinyGen, z_dim=6)
    path = _export(module, tmp_path / "g.pt2", (torch.randn(4, 6),))
    gen = load_generator(path, CPU)
    assert gen.z_dim == 6 and gen.info["format"] == "pt2"
    for indices in (np.array([3]), np.arange(7)):
        out = gen.sample(indices, seed=0)
        assert out.shape == (len(indices), 3, 8, 8)
        torch.testing.assert_close(out, _unit(_expected(module, 6, indices)), atol=1e-5, rtol=0)
    assert gen.info["output_range"] == [-1.0, 1.0] and gen.info["output_range_source"] == "detected"


def test_pt2_with_a_fixed_batch_is_fed_padded_chunks(arch, tmp_path):
    module = _seeded(arch.TinyGen)
    path = _export(module, tmp_path / "static.pt2", (torch.randn(4, 8),), dynamic=False)
    gen = load_generator(path, CPU)
    assert gen.batch_range == (4, 4)
    indices = np.arange(10)  # two full chunks and one of 2, padded to 4
    torch.testing.assert_close(gen.sample(indices, 0), _unit(_expected(module, 8, indices)), atol=1e-5, rtol=0)
    torch.testing.assert_close(gen.sample(np.array([9]), 0)[0], gen.sample(indices, 0)[9], atol=1e-6, rtol=0)


def test_torchscript_z_dim_from_its_attribute(arch, tmp_path):
    module = _seeded(arch.TinyGen, z_dim=5)
    path = tmp_path / "g.ts"
    torch.jit.script(module).save(str(path))
    gen = load_generator(path, CPU)
    assert gen.z_dim == 5 and gen.info["format"] == "torchscript"
    torch.testing.assert_close(gen.sample(np.arange(4), 1), _unit(_expected(module, 5, range(4), seed=1)),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt", ".bin"])
def test_state_dict_files_with_arch(arch, tmp_path, suffix):
    module = _seeded(arch.TinyGen, z_dim=4, size=6)
    path = tmp_path / f"weights{suffix}"
    torch.save(module.state_dict(), path)
    gen = load_generator(path, CPU, arch=f"{ARCH}:TinyGen", arch_kwargs='{"z_dim": 4, "size": 6}')
    assert gen.z_dim == 4 and gen.info["weights_key"] is None and gen.info["arch"] == f"{ARCH}:TinyGen"
    assert gen.info["arch_kwargs"] == {"z_dim": 4, "size": 6}
    torch.testing.assert_close(gen.sample(np.arange(3), 0), _unit(_expected(module, 4, range(3))), atol=1e-5, rtol=0)


def test_legacy_torch_save_format(arch, tmp_path):
    module = _seeded(arch.TinyGen)
    path = tmp_path / "old.pth"
    torch.save(module.state_dict(), path, _use_new_zipfile_serialization=False)
    gen = load_generator(path, CPU, arch=f"{ARCH}:TinyGen")
    torch.testing.assert_close(gen.sample(np.arange(2), 0), _unit(_expected(module, 8, range(2))), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["g.safetensors", "g_weights.bin"])  # the second is sniffed from its content
def test_safetensors(arch, tmp_path, name):
    from safetensors.torch import save_file

    module = _seeded(arch.TinyGen)
    path = tmp_path / name
    save_file({f"g_ema.{k}": v for k, v in module.state_dict().items()}
              | {f"D.{k}": torch.zeros(2) for k in ("w", "b")}, str(path))
    assert sniff_format(path) == "safetensors"
    gen = load_generator(path, CPU, arch=f"{ARCH}:TinyGen")
    assert gen.info["format"] == "safetensors" and gen.info["weights_key"] == "g_ema"
    torch.testing.assert_close(gen.sample(np.arange(3), 0), _unit(_expected(module, 8, range(3))), atol=1e-5, rtol=0)


def _nested(kind: str, ema: dict, raw: dict) -> dict:
    other = {"w": torch.zeros(3)}
    prefixed = lambda sd, p: {f"{p}{k}": v for k, v in sd.items()}  # noqa: E731
    return {
        "state_dict": {"state_dict": raw, "epoch": 12},
        "generator": {"generator": raw, "discriminator": other, "optimizer": {"lr": 1e-3}},
        "G_ema": {"G": raw, "D": other, "G_ema": ema},
        "g_ema": {"generator": raw, "g_ema": ema, "step": 1000},
        "ema": {"model": raw, "ema": ema},
        "state_dict/generator": {"state_dict": {"generator": raw, "discriminator": other}},
        "module.": prefixed(raw, "module."),
        "state_dict/g_ema (lightning)": {"state_dict": prefixed(raw, "generator.") | prefixed(ema, "g_ema.")
                                         | prefixed(other, "discriminator."), "hyper_parameters": {"lr": 0.1}},
        "G_ema/module.": {"G": raw, "G_ema": prefixed(ema, "module.")},
    }[kind]


@pytest.mark.parametrize("kind, key, uses_ema", [
    ("state_dict", "state_dict", False),
    ("generator", "generator", False),
    ("G_ema", "G_ema", True),
    ("g_ema", "g_ema", True),
    ("ema", "ema", True),
    ("state_dict/generator", "state_dict/generator", False),
    ("module.", None, False),
    ("state_dict/g_ema (lightning)", "state_dict/g_ema", True),
    ("G_ema/module.", "G_ema", True),
])
def test_nested_checkpoints_prefer_ema_and_record_the_key(arch, tmp_path, caplog, kind, key, uses_ema):
    ema, raw = _seeded(arch.TinyGen, seed=1), _seeded(arch.TinyGen, seed=2)
    path = tmp_path / "ckpt.pt"
    torch.save(_nested(kind, ema.state_dict(), raw.state_dict()), path)
    with caplog.at_level(logging.INFO, logger="ganaudit"):
        gen = load_generator(path, CPU, arch=f"{ARCH}:TinyGen")
    assert gen.info["weights_key"] == key
    if key is not None:
        assert repr(key) in caplog.text
    expected = ema if uses_ema else raw
    torch.testing.assert_close(gen.sample(np.arange(3), 0), _unit(_expected(expected, 8, range(3))), atol=1e-5, rtol=0)


def test_weights_key_and_output_range_are_in_the_result(arch, tiny_sets, tmp_path, capsys):
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"generator": _seeded(arch.TinyGen, seed=2).state_dict(),
                "g_ema": _seeded(arch.TinyGen, seed=1).state_dict()}, ckpt)
    out = tmp_path / "r.json"
    code, _, err = run_cli("check", "--generator", ckpt, "--arch", f"{ARCH}:TinyGen", "--train", tiny_sets["train"],
                           *FAST, "--warn-only", "--json", out, capsys=capsys)
    assert code == 0, err
    info = json.loads(out.read_text())["generator"]
    assert info["weights_key"] == "g_ema" and info["format"] == "pickle" and info["z_dim"] == 8
    assert info["output_range"] == [-1.0, 1.0] and info["output_range_source"] == "detected"


def test_full_pickle_loads_only_with_trust(arch, tmp_path):
    module = _seeded(arch.TinyGen)
    path = tmp_path / "whole.pt"
    torch.save(module, path)
    with pytest.raises(GanauditError, match=r"full pickle \(it holds a ganaudit_test_arch.TinyGen object\).*--trust-checkpoint"):
        load_generator(path, CPU)
    gen = load_generator(path, CPU, trust_checkpoint=True)
    assert gen.info["format"] == "trusted-pickle" and gen.z_dim == 8
    torch.testing.assert_close(gen.sample(np.arange(2), 0), _unit(_expected(module, 8, range(2))), atol=1e-5, rtol=0)


def test_plain_pickle_of_a_module_dict_loads_only_with_trust(arch, tmp_path):
    """StyleGAN-style network pickles: ``pickle.dump({"G_ema": module, ...})``."""
    module = _seeded(arch.TinyGen)
    path = tmp_path / "network.pkl"
    with open(path, "wb") as f:
        pickle.dump({"G": _seeded(arch.TinyGen, seed=5), "G_ema": module}, f)
    with pytest.raises(GanauditError, match="full pickle"):
        load_generator(path, CPU)
    gen = load_generator(path, CPU, trust_checkpoint=True)
    assert gen.info["weights_key"] == "G_ema"
    torch.testing.assert_close(gen.sample(np.arange(2), 0), _unit(_expected(module, 8, range(2))), atol=1e-5, rtol=0)


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_plain_pickle_payload_never_runs_without_trust(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"G_ema": _Payload(str(marker))}, f)
    with pytest.raises(GanauditError, match="full pickle"):
        load_generator(path, CPU)
    assert not marker.exists()


# --- z_dim ---------------------------------------------------------------------------------


def test_z_dim_from_flag_when_the_file_does_not_say(arch, tmp_path):
    path = tmp_path / "w.pt"
    torch.save(_seeded(arch.NoZDimGen, latent=7).state_dict(), path)
    kwargs = dict(arch=f"{ARCH}:NoZDimGen", arch_kwargs='{"latent": 7}')
    with pytest.raises(GanauditError, match="pass --z-dim"):
        load_generator(path, CPU, **kwargs)
    assert load_generator(path, CPU, z_dim=7, **kwargs).z_dim == 7


def test_z_dim_from_arch_kwargs(arch, tmp_path):
    path = tmp_path / "w.pt"
    torch.save(_seeded(arch.TinyGen, z_dim=3).state_dict(), path)
    gen = load_generator(path, CPU, arch=f"{ARCH}:TinyGen", arch_kwargs={"z_dim": 3})
    assert gen.z_dim == 3
    with pytest.raises(GanauditError, match="--z-dim 4 does not match"):
        load_generator(path, CPU, z_dim=4, arch=f"{ARCH}:TinyGen", arch_kwargs={"z_dim": 3})


# --- conditional generators ---------------------------------------------------------------


@pytest.fixture(scope="module")
def cond_files(arch, tmp_path_factory):
    root = tmp_path_factory.mktemp("cond")
    module = _seeded(arch.CondGen)
    torch.jit.script(module).save(str(root / "cond.ts"))
    _export(module, root / "cond.pt2", (torch.randn(4, 8), torch.zeros(4, dtype=torch.long)))
    return {"ts": root / "cond.ts", "pt2": root / "cond.pt2", "module": module}


@pytest.mark.parametrize("fmt", ["ts", "pt2"])
def test_conditional_generator_gets_labels_as_second_input(cond_files, fmt):
    gen = load_generator(cond_files[fmt], CPU, num_classes=4)
    assert gen.info["num_classes"] == 4 and gen.info["class_weights"] == "uniform"
    indices = np.arange(200)
    labels = gen.class_labels(indices, seed=3)
    out = gen.sample(indices, seed=3)
    # Channel 0 encodes the label the generator was given: it is the label class_labels reports.
    torch.testing.assert_close(out[:, 0, 0, 0] * 3, labels.float(), atol=1e-5, rtol=0)
    assert set(labels.tolist()) == {0, 1, 2, 3}
    # Reproducible per sample, whatever the batch it is drawn in.
    assert torch.equal(gen.class_labels(indices[50:60], 3), labels[50:60])
    assert torch.equal(gen.class_labels(np.array([77]), 3), labels[77:78])
    assert not torch.equal(gen.class_labels(indices, 4), labels)


def test_class_weights_are_normalised_and_zero_weights_never_drawn(cond_files):
    gen = load_generator(cond_files["ts"], CPU, num_classes=4, class_weights=(0, 2, 6, 0))
    assert gen.info["class_weights"] == [0.0, 0.25, 0.75, 0.0]
    counts = np.bincount(gen.class_labels(np.arange(4000), 0).numpy(), minlength=4)
    assert counts[0] == counts[3] == 0
    assert abs(counts[2] / 4000 - 0.75) < 0.03


def test_source_reports_the_label_of_each_sample(cond_files):
    source = GeneratorSamples(load_generator(cond_files["ts"], CPU, num_classes=4), 30, seed=2)
    labels = np.concatenate([source.class_labels(i) for i, _ in source.batches(8)])
    assert labels.dtype == np.int64 and labels.shape == (30,)
    assert np.array_equal(labels, source.generator.class_labels(np.arange(30), 2).numpy())


@pytest.mark.parametrize("fmt", ["ts", "pt2"])
def test_conditional_generator_without_num_classes(cond_files, fmt):
    with pytest.raises(GanauditError, match="conditional generator .* pass --num-classes"):
        load_generator(cond_files[fmt], CPU)


def test_num_classes_for_an_unconditional_generator(tiny_sets):
    with pytest.raises(GanauditError, match="takes no class label .* drop --num-classes"):
        load_generator(tiny_sets["fresh_gen"], CPU, num_classes=3)


def test_conditional_forward_that_hides_it_names_the_flag_when_it_fails(arch, tmp_path):
    path = tmp_path / "w.pt"
    torch.save(_seeded(arch.VarArgsCond).state_dict(), path)
    gen = load_generator(path, CPU, arch=f"{ARCH}:VarArgsCond")
    with pytest.raises(GanauditError, match="conditional generator .* pass --num-classes K"):
        gen.sample(np.arange(2), 0)
    gen = load_generator(path, CPU, arch=f"{ARCH}:VarArgsCond", num_classes=3)
    assert gen.sample(np.arange(2), 0).shape == (2, 3, 8, 8)


# --- truncation ----------------------------------------------------------------------------


@pytest.mark.parametrize("cls, via", [
    ("TruncGen", "forward keyword truncation_psi"),
    ("PsiKeywordGen", "forward keyword psi"),
    ("PsiAttrGen", "attribute psi"),
])
def test_truncation_goes_where_the_generator_takes_it(arch, tmp_path, cls, via):
    module = _seeded(getattr(arch, cls))
    path = tmp_path / "g.ts"
    torch.jit.script(module).save(str(path))
    gen = load_generator(path, CPU, truncation=0.5)
    assert gen.info["truncation_psi"] == 0.5 and gen.info["truncation_via"] == via
    reference = _seeded(arch.TruncGen)  # same weights (same seed), truncation as a keyword
    torch.testing.assert_close(gen.sample(np.arange(3), 0),
                               _unit(_expected(reference, 8, range(3), truncation_psi=0.5)), atol=1e-5, rtol=0)


def test_truncation_as_a_tensor_input_of_a_pt2_program(arch, tmp_path):
    module = _seeded(arch.TensorPsiGen)
    path = _export(module, tmp_path / "t.pt2", (torch.randn(4, 8),), kwargs={"psi": torch.tensor(1.0)})
    gen = load_generator(path, CPU, truncation=0.7)
    reference = _seeded(arch.TruncGen)
    torch.testing.assert_close(gen.sample(np.arange(3), 0),
                               _unit(_expected(reference, 8, range(3), truncation_psi=0.7)), atol=1e-5, rtol=0)
    with pytest.raises(GanauditError, match="takes psi as an input: pass --truncation"):
        load_generator(path, CPU)


def test_truncation_for_a_generator_without_one(tiny_sets):
    with pytest.raises(GanauditError, match="takes no truncation .* drop --truncation"):
        load_generator(tiny_sets["fresh_gen"], CPU, truncation=0.7)


# --- output range --------------------------------------------------------------------------


@pytest.mark.parametrize("kind, detected", [("tanh", [-1.0, 1.0]), ("sigmoid", [0.0, 1.0]), ("bytes", [0.0, 255.0])])
def test_output_range_detected(arch, tmp_path, kind, detected):
    module = _seeded(arch.RangeGen, kind)
    path = tmp_path / "g.ts"
    torch.jit.script(module).save(str(path))
    gen = load_generator(path, CPU)
    out = gen.sample(np.arange(16), 0)
    assert gen.info["output_range"] == detected and gen.info["output_range_source"] == "detected"
    torch.testing.assert_close(out, _unit(_expected(module, 8, range(16)), *detected), atol=1e-5, rtol=0)
    assert out.min() >= 0 and out.max() <= 1 and out.max() - out.min() > 0.9


def test_output_range_given_wins(arch, tmp_path):
    module = _seeded(arch.RangeGen, "sigmoid")
    path = tmp_path / "g.ts"
    torch.jit.script(module).save(str(path))
    gen = load_generator(path, CPU, value_range=(-1.0, 1.0))  # wrong on purpose: the user's word is kept
    out = gen.sample(np.arange(4), 0)
    assert gen.info["output_range"] == [-1.0, 1.0] and gen.info["output_range_source"] == "given"
    assert out.min() >= 0.5


# --- device and memory ---------------------------------------------------------------------


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_device_auto_prefers_cuda_then_mps(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"


def test_sampling_retries_smaller_batches_on_out_of_memory(arch, caplog):
    oom = arch.OomGen(limit=4)
    torch.manual_seed(0)
    oom.load_state_dict(_seeded(arch.TinyGen).state_dict())
    source = GeneratorSamples(Generator(oom, 8, CPU, value_range=(-1.0, 1.0)), 21, seed=0)
    with caplog.at_level(logging.WARNING, logger="ganaudit"):
        batches = list(source.batches(16))
    assert [len(i) for i, _ in batches] == [16, 5]  # the caller still gets the batches it asked for
    images = torch.cat([b for _, b in batches])
    torch.testing.assert_close(images, _unit(_expected(_seeded(arch.TinyGen), 8, range(21))), atol=1e-5, rtol=0)
    assert "out of memory on cpu while sampling; retrying with batches of 8" in caplog.text
    assert max(oom.calls[oom.calls.index(4):]) == 4  # once found, the smaller size is kept


def test_sampling_out_of_memory_even_one_at_a_time(arch):
    source = GeneratorSamples(Generator(arch.OomGen(limit=0), 8, CPU), 10, seed=0)
    with pytest.raises(GanauditError, match="out of memory on cpu while sampling, even one image at a time"):
        next(source.batches(4))


def test_embedding_split_on_out_of_memory_gives_the_same_features():
    from ganaudit.embedders import create_embedder

    embedder = create_embedder("pixels", CPU)
    images = torch.rand(10, 3, 16, 16)
    calls = []

    def embed_with_limit(batch):
        calls.append(len(batch))
        if len(batch) > 3:
            raise RuntimeError("MPS backend out of memory (MPS allocated: 1.2 GB)")
        return embedder.embed(batch)

    splitter = OomSplitter(CPU, "embedding")
    np.testing.assert_allclose(splitter(embed_with_limit, images), embedder.embed(images), atol=1e-6)
    assert splitter.limit == 2 and calls[:3] == [10, 5, 2]
    calls.clear()
    splitter(embed_with_limit, images)
    assert calls == [2] * 5  # later batches start at the size that fits


def test_splitter_reraises_other_errors():
    def broken(batch):
        raise ValueError("not memory")

    with pytest.raises(ValueError, match="not memory"):
        OomSplitter(CPU, "embedding")(broken, torch.zeros(4, 3))
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


# --- bad input through the CLI: one line, exit code 2, nothing written ----------------------


def _bad(capsys, tmp_path, *args) -> str:
    out = tmp_path / "out" / "r.json"
    code, _, err = run_cli("check", *args, *FAST, "--json", out, capsys=capsys)
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1, err
    assert not out.exists() and not out.parent.exists()
    return lines[0]


@pytest.fixture(scope="module")
def tiny_weights(arch, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(_seeded(arch.TinyGen).state_dict(), path)
    return path


def test_cli_arch_that_does_not_match_lists_missing_and_unexpected_keys(tiny_weights, tiny_sets, tmp_path, capsys):
    msg = _bad(capsys, tmp_path, "--generator", tiny_weights, "--arch", f"{ARCH}:OtherGen", "--train", tiny_sets["train"])
    assert "does not match --arch" in msg
    assert "missing keys [body.weight, body.bias]" in msg and "unexpected keys [fc.weight, fc.bias]" in msg


def test_cli_arch_with_other_shapes(tiny_weights, tiny_sets, tmp_path, capsys):
    msg = _bad(capsys, tmp_path, "--generator", tiny_weights, "--arch", f"{ARCH}:TinyGen",
               "--arch-kwargs", '{"size": 4}', "--train", tiny_sets["train"])
    assert "does not match --arch" in msg and "shape mismatches [fc.weight (192, 8) vs (48, 8)" in msg


def test_cli_conditional_generator_without_num_classes(cond_files, tiny_sets, tmp_path, capsys):
    msg = _bad(capsys, tmp_path, "--generator", cond_files["ts"], "--train", tiny_sets["train"])
    assert "conditional generator" in msg and "--num-classes" in msg


def test_cli_conditional_generator_audits_with_num_classes(cond_files, tiny_sets, tmp_path, capsys):
    out = tmp_path / "r.json"
    code, _, err = run_cli("check", "--generator", cond_files["pt2"], "--train", tiny_sets["train"], *FAST,
                           "--num-classes", "4", "--class-weights", "1,1,1,2", "--warn-only", "--json", out,
                           capsys=capsys)
    assert code == 0, err
    info = json.loads(out.read_text())["generator"]
    assert info["num_classes"] == 4 and info["class_weights"] == [0.2, 0.2, 0.2, 0.4]


@pytest.mark.parametrize("arch_flag, expected", [
    ("TinyGen", "--arch must be like package.module:ClassName, got 'TinyGen'"),
    (f"{ARCH}:", "--arch must look like"),
    (":TinyGen", "--arch must look like"),
    (f"{ARCH}:Tiny Gen", "--arch must look like"),
    (f"{ARCH}/x:TinyGen", "--arch must look like"),
    ("no_such_module_xyz:Gen", "cannot import it: ModuleNotFoundError: No module named 'no_such_module_xyz'"),
    (f"{ARCH}:Missing", "cannot import it: AttributeError"),
    (f"{ARCH}:not_a_module", "not_a_module is not a torch.nn.Module class"),
    ("ganaudit_broken_arch:Gen", "cannot import it: RuntimeError: this module fails to import"),
])
def test_cli_bad_arch(tiny_weights, tiny_sets, tmp_path, capsys, arch_flag, expected):
    msg = _bad(capsys, tmp_path, "--generator", tiny_weights, "--arch", arch_flag, "--train", tiny_sets["train"])
    assert expected in msg


@pytest.mark.parametrize("kwargs, expected", [
    ("{z_dim: 8}", "--arch-kwargs must be a JSON object"),
    ('{"z_dim": 8', "--arch-kwargs must be a JSON object"),
    ("[8]", "--arch-kwargs must be a JSON object"),
    ('{"bogus": 1}', "cannot build it with --arch-kwargs {\"bogus\": 1}: TypeError"),
])
def test_cli_bad_arch_kwargs(tiny_weights, tiny_sets, tmp_path, capsys, kwargs, expected):
    msg = _bad(capsys, tmp_path, "--generator", tiny_weights, "--arch", f"{ARCH}:TinyGen", "--arch-kwargs", kwargs,
               "--train", tiny_sets["train"])
    assert expected in msg


def test_cli_weights_without_arch(tiny_weights, tiny_sets, tmp_path, capsys):
    msg = _bad(capsys, tmp_path, "--generator", tiny_weights, "--train", tiny_sets["train"])
    assert "holds weights only: pass --arch module:Class" in msg


@pytest.mark.parametrize("args, expected", [
    (("--num-classes", "4", "--class-weights", "1,2"), "--class-weights must be 4 non-negative numbers"),
    (("--num-classes", "2", "--class-weights", "1,-1"), "--class-weights must be 2 non-negative numbers"),
    (("--num-classes", "2", "--class-weights", "0,0"), "with a positive sum"),
    (("--class-weights", "1,2"), "--class-weights needs --num-classes"),
    (("--num-classes", "4", "--class-weights", "1,a"), "expected comma-separated numbers"),
    (("--num-classes", "0"), "--num-classes must be a positive integer"),
    (("--truncation", "nan"), "--truncation must be a non-negative number"),
    (("--truncation", "0.7"), "takes no truncation"),
])
def test_cli_bad_class_and_truncation_flags(tiny_sets, tmp_path, capsys, args, expected):
    msg = _bad(capsys, tmp_path, "--generator", tiny_sets["fresh_gen"], "--train", tiny_sets["train"], *args)
    assert expected in msg


def test_cli_not_a_checkpoint(tiny_sets, tmp_path, capsys):
    path = tmp_path / "model.pt"
    path.write_bytes(b"this is not a checkpoint at all")
    msg = _bad(capsys, tmp_path, "--generator", path, "--train", tiny_sets["train"])
    assert "not a checkpoint ganaudit can read" in msg


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_cuda_out_of_memory_is_split():
    """A generator whose scratch memory grows with the batch: 40% of the GPU per sample."""
    total = torch.cuda.get_device_properties(0).total_memory

    class Hungry(torch.nn.Module):
        z_dim = 8

        def forward(self, z):
            scratch = torch.empty(int(z.shape[0] * 0.4 * total), dtype=torch.uint8, device=z.device)
            del scratch
            return torch.tanh(z[:, :3, None, None].expand(-1, 3, 4, 4))

    gen = Generator(Hungry(), 8, torch.device("cuda"), value_range=(-1.0, 1.0))
    source = GeneratorSamples(gen, 8, seed=0)
    [(indices, images)] = list(source.batches(8))
    assert source._splitter.limit in (1, 2) and len(indices) == 8
    expected = torch.cat([gen.sample(np.array([i]), 0) for i in range(8)])
    torch.testing.assert_close(images, expected)


def test_safetensors_without_the_package_says_what_to_install(tmp_path, monkeypatch):
    import sys

    from ganaudit.errors import GanauditError
    from ganaudit.sources.state_dicts import _read_safetensors

    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(GanauditError, match=r"ganaudit\[safetensors\]"):
        _read_safetensors(tmp_path / "g.safetensors")
