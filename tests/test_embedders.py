"""The embedder registry: one contract over every entry, weights lookup, and every wrong input.

Weight files are made here in exactly the real format (the same state_dict keys and shapes, or
a TorchScript archive with the same interface) from randomly initialised networks, and loaded
through the real code path: from a temporary TORCH_HOME, and from an explicit --weights path.
"""
from __future__ import annotations

import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ganaudit.embedders import weights as weights_mod
from ganaudit.embedders import REGISTRY, create_embedder, embedder_table, missing_dependency
from ganaudit.embedders import dinov2, inception, sscd
from ganaudit.embedders.base import Embedder
from ganaudit.errors import GanauditError

WEIGHTED = sorted(weights_mod.WEIGHT_FILES)
# Seconds per image on a 2-core CPU and files of 0.35-1.2 GB: run with -m slow. dinov2-vits14
# runs the same code with smaller matrices in the default run.
HEAVY = {"dinov2-vitb14", "dinov2-vitl14", "clip-vitl14"}


# ---------------------------------------------------------------- weight files of the real format

class _GeM(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=1e-6).pow(3.0).mean(dim=(2, 3)).pow(1.0 / 3.0)


class _TinySSCD(torch.nn.Module):
    """SSCD's interface ((B, 3, H, W) normalised → (B, 512) unit vectors; GeM, linear, L2)
    on a small trunk: the loader sees a TorchScript archive, as with the real file."""

    def __init__(self):
        super().__init__()
        self.trunk = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 7, stride=4), torch.nn.BatchNorm2d(32),
                                         torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 3, stride=2), torch.nn.ReLU())
        self.pool = _GeM()
        self.embeddings = torch.nn.Linear(64, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embeddings(self.pool(self.trunk(x))))


class _UserNet(torch.nn.Module):
    def __init__(self, input_size: int = 48, l2_normalized: bool = False, out_dim: int = 24):
        super().__init__()
        self.input_size = input_size
        self.l2_normalized = l2_normalized
        self.conv = torch.nn.Conv2d(3, out_dim, 5, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


def _inception_state_dict() -> dict:
    from ganaudit.embedders.inception_net import FIDInceptionV3

    torch.manual_seed(0)
    net = FIDInceptionV3()
    for m in net.modules():  # He init keeps activations O(1) (PyTorch's default shrinks them to denormals)
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return net.state_dict()


def _dinov2_state_dict(name: str) -> dict:
    torch.manual_seed(0)
    return dinov2.build_network(name).state_dict()


def write_weight_file(name: str, folder: Path) -> Path:
    """Write embedder ``name``'s weight file, under its real file name, into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / weights_mod.WEIGHT_FILES[name].filename
    if name == "inception":
        torch.save(_inception_state_dict(), path)
    elif name.startswith("dinov2-"):
        torch.save(_dinov2_state_dict(name), path)
    elif name == "sscd":
        torch.manual_seed(0)
        torch.jit.script(_TinySSCD().eval()).save(str(path))
    elif name.startswith("clip-"):
        import open_clip

        torch.manual_seed(0)
        arch = {"clip-vitb32": "ViT-B-32-quickgelu", "clip-vitl14": "ViT-L-14-quickgelu"}[name]
        torch.save(open_clip.create_model(arch).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory) -> Path:
    """A TORCH_HOME whose hub/checkpoints holds the light weight files (heavy ones on demand)."""
    home = tmp_path_factory.mktemp("torch_home")
    for name in ("inception", "dinov2-vits14", "sscd"):
        write_weight_file(name, home / "hub" / "checkpoints")
    return home


@pytest.fixture
def hub(torch_home, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return torch_home / "hub" / "checkpoints"


@pytest.fixture
def offline(monkeypatch):
    """Any download attempt fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


@pytest.fixture(scope="session")
def user_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("user_embedders")
    torch.manual_seed(0)
    ts = root / "mine.torchscript.pt"
    torch.jit.script(_UserNet().eval()).save(str(ts))
    net = _UserNet().eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    pt2 = root / "mine.pt2"
    torch.export.save(torch.export.export(net, (torch.rand(2, 3, 40, 40),), dynamic_shapes=({0: batch},)), str(pt2))
    static = root / "static.pt2"
    torch.export.save(torch.export.export(net, (torch.rand(3, 3, 40, 40),)), str(static))
    return {"torchscript": ts, "pt2": pt2, "pt2_static": static}


# ---------------------------------------------------------------- the contract, over every entry

def _contract_params():
    params = []
    for name in sorted(REGISTRY):
        marks = [pytest.mark.slow] if name in HEAVY else []
        hint = missing_dependency(name)
        if hint:
            marks.append(pytest.mark.skip(reason=f"optional package missing: {hint}"))
        params.append(pytest.param(name, marks=marks, id=name))
    return params + [pytest.param("torchscript", id="torchscript:PATH"), pytest.param("pt2", id="pt2:PATH")]


@pytest.mark.parametrize("name", _contract_params())
def test_every_embedder_honours_the_contract(name, hub, offline, user_files, request):
    if name in HEAVY or name.startswith("clip-"):  # up to 1.7 GB: gone when the test ends
        request.addfinalizer(write_weight_file(name, hub).unlink)
    full_name = f"{name}:{user_files[name]}" if name in user_files else name
    embedder = create_embedder(full_name, "cpu")
    spec = embedder.spec
    assert isinstance(embedder, Embedder) and embedder.calls == 0
    gen = torch.Generator().manual_seed(0)
    one = torch.rand(1, 3, 32, 32, generator=gen)
    two = torch.rand(2, 3, 64, 64, generator=gen)

    first = embedder.embed(one)
    assert first.shape == (1, spec.dim) and first.dtype == np.float32 and np.isfinite(first).all()
    np.testing.assert_array_equal(embedder.embed(one), first)  # deterministic
    batch = embedder.embed(two)  # another input size is resized too
    assert batch.shape == (2, spec.dim) and batch.dtype == np.float32 and np.isfinite(batch).all()
    assert embedder.calls == 3
    assert tuple(embedder.preprocess(two).shape[-2:]) == tuple(spec.input_size)
    norms = np.linalg.norm(np.concatenate([first, batch]), axis=1)
    if spec.l2_normalized:
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
        assert spec.metric == "ip"
    assert spec.metric in ("l2", "ip") and embedder.autocast_dtype is None  # never autocast on CPU


@pytest.mark.parametrize("name", ["inception", "dinov2-vits14", "sscd"])
def test_weights_given_explicitly_load_through_the_same_path(name, torch_home, tmp_path, monkeypatch, offline):
    import shutil

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    filename = weights_mod.WEIGHT_FILES[name].filename
    path = Path(shutil.copy(torch_home / "hub" / "checkpoints" / filename, tmp_path / f"my-{filename}"))
    embedder = create_embedder(name, "cpu", weights=path)
    assert embedder.weights_path == path
    assert embedder.weights_sha256() == weights_mod.file_sha256(path)


def test_fid_inception_matches_pytorch_fid(monkeypatch):
    """Same weights, same pool3 features as pytorch-fid's own InceptionV3 (a test dependency)."""
    pf = pytest.importorskip("pytorch_fid.inception")
    from ganaudit.embedders.inception_net import FIDInceptionV3

    state = _inception_state_dict()
    # pytorch-fid loads its weights from a URL; hand it ours instead (strict load: same keys).
    monkeypatch.setattr(pf, "load_state_dict_from_url", lambda *args, **kwargs: state)
    reference = pf.InceptionV3([3], resize_input=False, normalize_input=True).eval()
    ours = FIDInceptionV3()
    ours.load_state_dict(state)
    x = torch.rand(2, 3, 75, 75, generator=torch.Generator().manual_seed(1))  # the smallest size it takes
    with torch.inference_mode():
        expected = reference(x)[0].flatten(1)
        got = ours.eval()(x * 2 - 1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_dinov2_files_have_the_official_keys():
    keys = set(_dinov2_state_dict("dinov2-vits14"))
    assert {"cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight", "norm.weight",
            "blocks.11.ls2.gamma", "blocks.0.attn.qkv.bias", "blocks.0.mlp.fc2.weight"} <= keys
    assert len(keys) == 12 * 14 + 7
    state = _dinov2_state_dict("dinov2-vits14")
    assert state["pos_embed"].shape == (1, 1 + 37 * 37, 384) and state["patch_embed.proj.weight"].shape == (384, 3, 14, 14)


def test_dinov2_interpolates_positions_as_dinov2_does():
    net = dinov2.build_network("dinov2-vits14")
    pos = net.position_embedding(16, 16)
    assert pos.shape == (1, 257, 384)
    torch.testing.assert_close(pos[:, 0], net.pos_embed[:, 0])
    assert net.position_embedding(37, 37) is net.pos_embed  # the pretraining grid needs no interpolation


# ---------------------------------------------------------------- missing and wrong weights

@pytest.mark.parametrize("name", [n for n in WEIGHTED if not n.startswith("clip-")])
def test_missing_weights_name_the_file_checksum_place_and_command(name, tmp_path, monkeypatch, offline):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    record = weights_mod.WEIGHT_FILES[name]
    with pytest.raises(GanauditError) as err:
        create_embedder(name, "cpu")
    message = str(err.value)
    assert "\n" not in message
    assert record.filename in message and record.sha256 in message
    assert str(tmp_path / "th" / "hub" / "checkpoints") in message
    assert f"ganaudit fetch-weights {name}" in message and "--weights" in message


def test_missing_weights_with_unknown_checksum_say_so(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    record = weights_mod.WeightFile("x.pth", "https://example.invalid/x.pth", None, "unknown")
    monkeypatch.setitem(weights_mod.WEIGHT_FILES, "inception", record)
    with pytest.raises(GanauditError, match="published checksum unknown"):
        create_embedder("inception", "cpu")


def test_clip_without_open_clip_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # makes `import open_clip` fail
    for name in ("clip-vitb32", "clip-vitl14"):
        with pytest.raises(GanauditError, match=r"pip install 'ganaudit\[clip\]'"):
            create_embedder(name, "cpu")


@pytest.mark.parametrize("name, other", [("dinov2-vitb14", "dinov2-vits14"), ("inception", "dinov2-vits14")])
def test_weights_of_another_network_are_refused(name, other, hub):
    with pytest.raises(GanauditError, match="not the expected checkpoint"):
        create_embedder(name, "cpu", weights=hub / weights_mod.WEIGHT_FILES[other].filename)


def test_unreadable_or_absent_weight_files_are_refused(tmp_path, hub):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(GanauditError, match="cannot read"):
        create_embedder("inception", "cpu", weights=junk)
    with pytest.raises(GanauditError, match="not a TorchScript file"):
        create_embedder("sscd", "cpu", weights=hub / weights_mod.WEIGHT_FILES["inception"].filename)
    with pytest.raises(GanauditError, match="no such file"):
        create_embedder("inception", "cpu", weights=tmp_path / "absent.pth")


def test_a_torchscript_of_the_wrong_dimension_is_not_sscd(tmp_path):
    path = tmp_path / "other.pt"
    torch.jit.script(_UserNet(out_dim=1024).eval()).save(str(path))
    with pytest.raises(GanauditError, match="not \\(512,\\)"):
        create_embedder("sscd", "cpu", weights=path)


def test_wrong_names_and_flags_are_refused(tmp_path, user_files):
    with pytest.raises(GanauditError, match="unknown embedder 'incepshun'.*torchscript:PATH"):
        create_embedder("incepshun", "cpu")
    with pytest.raises(GanauditError, match="has no weights"):
        create_embedder("pixels", "cpu", weights=tmp_path)
    with pytest.raises(GanauditError, match="holds its weights"):
        create_embedder(f"torchscript:{user_files['torchscript']}", "cpu", weights=tmp_path)
    with pytest.raises(GanauditError, match="no such file"):
        create_embedder(f"pt2:{tmp_path / 'absent.pt2'}", "cpu")
    with pytest.raises(GanauditError, match="needs a path"):
        create_embedder("torchscript:", "cpu")
    with pytest.raises(GanauditError, match="not a readable torch.export"):
        create_embedder(f"pt2:{user_files['torchscript']}", "cpu")


def test_a_user_module_that_does_not_map_images_to_features_is_refused(tmp_path):
    class Scalar(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum()

    class FirstOnly(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:1].flatten(1)

    for module, message in ((Scalar(), "must map \\(B, 3, H, W\\)"), (FirstOnly(), r"expected \(2, D\)")):
        path = tmp_path / f"{type(module).__name__}.pt"
        torch.jit.script(module).save(str(path))
        with pytest.raises(GanauditError, match=message):
            create_embedder(f"torchscript:{path}", "cpu")


# ---------------------------------------------------------------- user embedders' declarations

def test_user_torchscript_attributes_set_the_spec(tmp_path, user_files):
    embedder = create_embedder(f"torchscript:{user_files['torchscript']}", "cpu")
    assert embedder.spec.input_size == (48, 48) and embedder.spec.dim == 24 and embedder.spec.metric == "l2"
    path = tmp_path / "normed.pt"
    torch.jit.script(_UserNet(input_size=40, l2_normalized=True).eval()).save(str(path))
    normed = create_embedder(f"torchscript:{path}", "cpu")
    assert normed.spec.l2_normalized and normed.spec.metric == "ip"


def test_a_pt2_with_a_static_batch_runs_in_padded_chunks(user_files):
    static = create_embedder(f"pt2:{user_files['pt2_static']}", "cpu")
    dynamic = create_embedder(f"pt2:{user_files['pt2']}", "cpu")
    assert static.spec.input_size == (40, 40) and static.batch == 3
    x = torch.rand(5, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(static.embed(x), dynamic.embed(x), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- devices, listing, fetching

def test_autocast_only_on_cuda_and_never_for_the_fid_network(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert Embedder(dinov2.spec_for("dinov2-vits14"), torch.device("cuda")).autocast_dtype == torch.bfloat16
    assert Embedder(inception.SPEC, torch.device("cuda")).autocast_dtype is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert Embedder(sscd.SPEC, torch.device("cuda")).autocast_dtype == torch.float16
    assert Embedder(sscd.SPEC, torch.device("cpu")).autocast_dtype is None


def test_the_table_lists_every_entry_with_its_facts():
    rows = {row["name"]: row for row in embedder_table()}
    assert set(REGISTRY) | {"torchscript:PATH", "pt2:PATH"} == set(rows)
    assert rows["inception"]["dim"] == "2048" and rows["inception"]["input"] == "299x299"
    assert REGISTRY["sscd"][0].copy_threshold == 0.75 and rows["sscd"]["metric"] == "ip"


def test_fetch_weights_offline_says_how_to_get_the_file(tmp_path, monkeypatch):
    def no_network(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(GanauditError) as err:
        weights_mod.fetch_weights("sscd", tmp_path)
    message = str(err.value)
    assert weights_mod.WEIGHT_FILES["sscd"].url in message and "copy sscd_disc_mixup.torchscript.pt" in message
    with pytest.raises(GanauditError, match="no downloadable weights"):
        weights_mod.fetch_weights("pixels", tmp_path)


def test_fetch_weights_verifies_and_does_not_fetch_twice(tmp_path, monkeypatch):
    import hashlib

    content = b"weights"
    record = weights_mod.WeightFile("w.pth", "https://example.invalid/w.pth", hashlib.sha256(content).hexdigest(), "published")
    monkeypatch.setitem(weights_mod.WEIGHT_FILES, "inception", record)
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        Path(dst).write_bytes(content)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = weights_mod.fetch_weights("inception")
    assert path == tmp_path / "hub" / "checkpoints" / "w.pth" and path.read_bytes() == content
    assert weights_mod.fetch_weights("inception") == path
    assert calls == [(record.url, record.sha256)]

    def bad_hash(url, dst, hash_prefix=None, progress=True):
        raise RuntimeError('invalid hash value (expected "abc", got "def")')

    monkeypatch.setattr(torch.hub, "download_url_to_file", bad_hash)
    with pytest.raises(GanauditError, match="did not match its checksum"):
        weights_mod.fetch_weights("inception", tmp_path / "other")


def test_importing_the_registry_loads_no_network_code():
    import subprocess

    code = ("import sys, ganaudit.embedders, ganaudit.embedders.cache, ganaudit.embedders.weights; "
            "print(sorted(m for m in ('torchvision', 'open_clip', 'ganaudit.embedders.inception_net') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_an_empty_batch_gives_no_rows():
    embedder = create_embedder("pixels", "cpu")
    out = embedder.embed(torch.empty(0, 3, 16, 16))
    assert out.shape == (0, 3072) and out.dtype == np.float32


def test_inception_class_logits_are_the_networks_fc_without_bias(hub, offline):
    embedder = create_embedder("inception", torch.device("cpu"))
    images = torch.rand(3, 3, 64, 64)
    feats = embedder.embed(images)
    with torch.inference_mode():
        expected = embedder.network.fc(torch.from_numpy(feats)) - embedder.network.fc.bias
    np.testing.assert_allclose(embedder.class_logits(feats), expected.numpy(), rtol=1e-4, atol=1e-4)


def test_audit_reports_the_inception_score_only_with_inception():
    from ganaudit.metrics.inception_score import inception_score
    from ganaudit.findings.coverage import _inception_score

    logits = np.random.default_rng(0).normal(size=(40, 1008)).astype(np.float32)
    row = _inception_score(logits, "inception")
    assert (row["inception_score"], row["inception_score_std"]) == inception_score(logits, splits=10)
    row = _inception_score(None, "pixels")
    assert row["inception_score"] is None and "--embedder inception" in row["inception_score_note"]


@pytest.mark.slow
def test_whole_audit_with_inception_reports_fd_and_inception_score(hub, offline, tiny_sets, tmp_path):
    from conftest import run_cli

    out = tmp_path / "r.json"
    code, _, _ = run_cli("check", "--generator", tiny_sets["fresh_gen"], "--train", tiny_sets["train"],
                         "--holdout", tiny_sets["holdout"], "--embedder", "inception", "--num-samples", "100",
                         "--tta", "none", "--json", out)
    import json

    cov = json.loads(out.read_text())["coverage"]
    assert code in (0, 1) and cov["inception_score"] >= 1.0 and cov["fd"] >= 0
