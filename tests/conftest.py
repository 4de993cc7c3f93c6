"""Shared test helpers: tiny image sets and generators written to real files."""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import jsonschema

import numpy as np
import pytest
import torch
from PIL import Image

from ganaudit.cli import main

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures"


def palette(n_classes: int) -> np.ndarray:
    """Mean colour of each class, 0..255; one dark channel each so images span the range."""
    colours = np.full((n_classes, 3), 40.0)
    for c in range(n_classes):
        colours[c, c % 3] = 215.0
        colours[c, (c + 1) % 3] = 40.0 + 120.0 * (c // 3)
    return colours


NOISE = 40.0  # std of the 4x4 blocks of colour noise, 0..255 units


def write_image_folder(root: Path, n_classes: int = 3, per_class: int = 40, size: int = 16, seed: int = 0) -> Path:
    """Class subfolders of random blocky colour images: class c has mean colour palette(c)."""
    rng = np.random.default_rng(seed)
    colours = palette(n_classes)
    for c in range(n_classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.normal(0, NOISE, size=(size // 4, size // 4, 3))
            noise = np.kron(noise, np.ones((4, 4, 1)))
            img = np.clip(np.round(colours[c] + noise), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{i:04d}.png")
    return root


class BankGenerator(torch.nn.Module):
    """Returns images from a fixed bank, picked by the first latent coordinate, plus noise."""

    def __init__(self, bank: torch.Tensor, z_dim: int = 8, noise: float = 0.0):
        super().__init__()
        self.register_buffer("bank", bank)
        self.z_dim = z_dim
        self.noise = noise

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        u = torch.special.ndtr(z[:, 0])
        j = (u * self.bank.shape[0]).long().clamp(max=self.bank.shape[0] - 1)
        out = self.bank[j] + self.noise * z[:, 1:2, None, None]
        return out * 2 - 1  # [-1, 1], as tanh generators give


class ProceduralGenerator(torch.nn.Module):
    """Draws from the same distribution as write_image_folder: a perfect, non-copying generator."""

    def __init__(self, n_classes: int = 3, size: int = 16):
        super().__init__()
        self.register_buffer("colours", torch.tensor(palette(n_classes), dtype=torch.float32) / 255)
        self.grid = size // 4
        self.noise_scale = NOISE / 255
        self.z_dim = 1 + 3 * self.grid * self.grid

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c = (torch.special.ndtr(z[:, 0]) * self.colours.shape[0]).long().clamp(max=self.colours.shape[0] - 1)
        blocks = z[:, 1:].reshape(-1, 3, self.grid, self.grid) * self.noise_scale
        noise = blocks.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
        img = (self.colours[c][:, :, None, None] + noise).clamp(0, 1)
        img = torch.round(img * 255) / 255  # the same 8-bit quantisation as the PNGs
        return img * 2 - 1


class FunctionGenerator(torch.nn.Module):
    """A generator whose output is a fixed function of z, for bad-output tests."""

    def __init__(self, z_dim: int, kind: str):
        super().__init__()
        self.z_dim = z_dim
        self.kind = kind

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "nan":
            return torch.full((z.shape[0], 3, 8, 8), float("nan"))
        if self.kind == "flat":
            return z.repeat(1, 4)
        return torch.tanh(z[:, :3, None, None].expand(-1, 3, 8, 8))


def load_folder_as_tensor(root: Path) -> torch.Tensor:
    files = sorted(root.rglob("*.png"))
    arrays = [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255 for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def save_torchscript(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.script(module).save(str(path))
    return path


# Keep the tests' embedding caches out of the user's home and apart from other runs; removed
# when the run ends (a CI machine's disk is small).
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="ganaudit-test-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)

SCHEMA = json.loads((REPO / "ganaudit" / "schema" / "result.schema.json").read_text())


def run_cli(*args: str, capsys=None) -> tuple[int, str, str]:
    """Run `ganaudit ...` in-process; returns (exit code, stdout, stderr).

    Every JSON result a run writes is validated against the shipped JSON Schema.
    """
    args = [str(a) for a in args]
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own exits
        code = e.code
    if "--json" in args and code in (0, 1):
        written = json.loads(Path(args[args.index("--json") + 1]).read_text())
        if args[0] == "fd":  # ganaudit fd: check's coverage.fid and coverage.fd_embedders, alone
            coverage = SCHEMA["properties"]["coverage"]["properties"]
            jsonschema.validate(written["fid"], coverage["fid"])
            jsonschema.validate(written["fd_embedders"], coverage["fd_embedders"])
        else:
            jsonschema.validate(written, SCHEMA)
    if capsys is None:
        return code, "", ""
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="session")
def tiny_sets(tmp_path_factory) -> dict[str, Path]:
    """A small labelled train/holdout pair and generators over it (files on disk)."""
    root = tmp_path_factory.mktemp("tiny")
    train = write_image_folder(root / "train", per_class=40, seed=0)
    holdout = write_image_folder(root / "holdout", per_class=40, seed=1)
    copies = load_folder_as_tensor(train)
    return {
        "root": root, "train": train, "holdout": holdout,
        "fresh_gen": save_torchscript(ProceduralGenerator(), root / "fresh.pt"),
        "copy_gen": save_torchscript(BankGenerator(copies), root / "copy.pt"),
    }
