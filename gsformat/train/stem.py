"""The splat stem: variable splat counts in, exactly M tokens of the ViT's width out.

Per splat: log-covariance transform (log l11, log l22, l21 normalised by √(l11·l22)), Fourier
features of the position, colour → LayerNorm → Linear → 128-d; a Perceiver resampler (M learnable
latents cross-attending to the splats, padding masked) → Linear → ViT width.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..core import constants as C

EPS = 1e-6


def splat_features(splats: torch.Tensor, n_bands: int) -> torch.Tensor:
    """``[B, N, 8]`` spec-unit splats → ``[B, N, 2 + 4·n_bands + 3 + 3]`` features."""
    mu = splats[..., 0:2]
    l11, l21, l22 = splats[..., 2], splats[..., 3], splats[..., 4]
    log_diag = torch.stack([torch.log(l11.clamp_min(EPS)), torch.log(l22.clamp_min(EPS))], -1)
    shear = (l21 / torch.sqrt((l11 * l22).clamp_min(EPS)))[..., None]
    freqs = (2.0 ** torch.arange(n_bands, device=splats.device, dtype=splats.dtype)) * math.pi
    angles = (mu[..., None] * freqs).flatten(-2)  # [B, N, 2·bands]
    return torch.cat([mu, angles.sin(), angles.cos(), log_diag, shear, splats[..., C.COLOUR_COLS]], -1)


class CrossAttentionBlock(nn.Module):
    """Latents attend to splat tokens (pre-norm), then an MLP; both residual."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_latents = nn.LayerNorm(dim)
        self.norm_inputs = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(),
                                 nn.Linear(4 * dim, dim))

    def forward(self, latents, inputs, padding):  # [B, M, D], [B, N, D], [B, N] True = pad
        inputs = self.norm_inputs(inputs)
        attended, _ = self.attn(self.norm_latents(latents), inputs, inputs,
                                key_padding_mask=padding, need_weights=False)
        latents = latents + attended
        return latents + self.mlp(latents)


class SplatStem(nn.Module):
    def __init__(self, out_width: int, n_latents: int = 196, dim: int = 128,
                 n_layers: int = 4, n_heads: int = 4, n_bands: int = 8):
        super().__init__()
        self.n_bands = n_bands
        in_dim = 2 + 4 * n_bands + 3 + 3
        self.embed = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, dim))
        self.latents = nn.Parameter(torch.randn(n_latents, dim) * dim ** -0.5)
        self.blocks = nn.ModuleList(CrossAttentionBlock(dim, n_heads) for _ in range(n_layers))
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, out_width))

    def forward(self, splats: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """splats ``[B, N, 8]``, mask ``[B, N]`` (True = real) → tokens ``[B, M, out_width]``."""
        if splats.ndim != 3 or splats.shape[-1] != 8:
            raise ValueError(f"splats must be [B, N, 8], got {list(splats.shape)}")
        splats = splats.float()
        tokens = self.embed(splat_features(splats, self.n_bands))  # [B, N, dim]
        padding = None if mask is None else ~mask.bool()
        if padding is not None and padding.all(dim=1).any():
            padding = padding.clone()
            padding[padding.all(dim=1), 0] = False  # an empty image attends to one pad splat
        latents = self.latents.expand(len(splats), -1, -1)
        for block in self.blocks:
            latents = block(latents, tokens, padding)
        return self.out(latents)
