"""``dinov2-vits14``, ``dinov2-vitb14``, ``dinov2-vitl14``: DINOv2 CLS features (Oquab et al. 2023).

A compact re-implementation of ``DinoVisionTransformer`` from facebookresearch/dinov2, as its
torch hub backbones build it (``img_size=518``, ``patch_size=14``, LayerScale ``init_values=1``,
MLP feed-forward, no register tokens, unchunked blocks), so that the official
``dinov2_vit{s,b,l}14_pretrain.pth`` files load with every key and shape checked: ``cls_token``, ``pos_embed``
(1 + 37×37 positions), ``mask_token`` (kept for the keys; unused at inference),
``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1,
mlp.fc2, ls2.gamma}``, ``norm``. The feature is the final-norm CLS token, what the hub model
returns and what FD_DINOv2 (Stein et al. 2023) is computed on; it is not L2-normalised.

Preprocessing: antialiased bicubic resize to 224×224 and ImageNet mean/std. The 37×37
position grid is interpolated to 16×16 the way DINOv2 does it (bicubic, no antialias, scale
factor with DINOv2's 0.1 offset), once per input size.
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ganaudit.embedders.base import Embedder, EmbedderSpec, check_state_dict, load_state_dict_file, prepare_network

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PATCH = 14
PRETRAIN_IMG_SIZE = 518  # the pos_embed grid of the checkpoints: 518 / 14 = 37
INTERPOLATE_OFFSET = 0.1

# name: (embed_dim, depth, heads)
ARCHS = {"dinov2-vits14": (384, 12, 6), "dinov2-vitb14": (768, 12, 12), "dinov2-vitl14": (1024, 24, 16)}


def spec_for(name: str) -> EmbedderSpec:
    dim = ARCHS[name][0]
    filename = name.replace("-", "_") + "_pretrain.pth"
    return EmbedderSpec(name=name, dim=dim, input_size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                        metric="l2", weights=f"{filename} (facebookresearch/dinov2, torch hub cache)")


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v, as DINOv2's Attention
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.norm1, self.attn, self.ls1 = norm(dim), Attention(dim, heads), LayerScale(dim)
        self.norm2, self.mlp, self.ls2 = norm(dim), Mlp(dim, 4 * dim), LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=PATCH, stride=PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class DinoViT(nn.Module):
    """DINOv2's ViT backbone; ``forward`` returns the normalised CLS token ``(B, D)``."""

    def __init__(self, dim: int, depth: int, heads: int):
        super().__init__()
        grid = PRETRAIN_IMG_SIZE // PATCH
        self.patch_embed = PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # masked-image training only
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}

    def position_embedding(self, rows: int, cols: int) -> torch.Tensor:
        """``pos_embed`` for a ``rows`` × ``cols`` patch grid, interpolated as DINOv2 does."""
        key = (rows, cols)
        if key not in self._pos_cache:
            n = self.pos_embed.shape[1] - 1
            m = int(math.sqrt(n))
            if (rows, cols) == (m, m):
                self._pos_cache[key] = self.pos_embed
            else:
                patch_pos = self.pos_embed[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
                # DINOv2 passes a scale factor with a 0.1 offset, not a size; the offset changes
                # the sampling positions slightly, so it is kept for identical features.
                scale = ((rows + INTERPOLATE_OFFSET) / m, (cols + INTERPOLATE_OFFSET) / m)
                patch_pos = F.interpolate(patch_pos, scale_factor=scale, mode="bicubic", antialias=False)
                patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
                self._pos_cache[key] = torch.cat([self.pos_embed[:, :1], patch_pos.to(self.pos_embed.dtype)], 1)
        return self._pos_cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = x.shape[-2] // PATCH, x.shape[-1] // PATCH
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self.position_embedding(rows, cols)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]


def build_network(name: str) -> DinoViT:
    """An untrained DINOv2 backbone of the architecture ``name`` (with PyTorch's default init)."""
    return DinoViT(*ARCHS[name])


def load_network(name: str, path) -> DinoViT:
    """The DINOv2 backbone ``name`` with the weights of ``path`` (an official pretrain file)."""
    network = build_network(name)
    state_dict = load_state_dict_file(path, name)
    # DINOv2's hub loader uses strict=False; extra keys are tolerated (and logged) the same way.
    check_state_dict(state_dict, network, f"{name} weights {path}", allow_unexpected=True)
    network.load_state_dict(state_dict, strict=False)
    return network


class DinoV2Embedder(Embedder):
    def __init__(self, name: str, network: DinoViT, device: torch.device, weights_path):
        super().__init__(spec_for(name), device, weights_path)
        self.network = prepare_network(network, self.device, channels_last=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


def factory(name: str):
    """The registry factory of the DINOv2 entry ``name``."""

    def create(device: torch.device, weights=None) -> DinoV2Embedder:
        from ganaudit.embedders.weights import find_weights

        path = find_weights(name, weights)
        return DinoV2Embedder(name, load_network(name, path), device, path)

    return create
