"""`render_splats`: the spec's sum renderer in PyTorch (CPU or CUDA), batched, memory-bounded."""
from __future__ import annotations

import math

import numpy as np

from .format.splatset import SplatSet

DEFAULT_MAX_ELEMENTS = 1 << 24  # floats in one [B, chunk, H, W] block (64 MiB as float32)


def _as_batch(splats, mask):
    import torch
    if isinstance(splats, SplatSet):
        splats = [splats]
    if isinstance(splats, (list, tuple)):
        n = max([s.n_splats for s in splats] + [1])
        params = torch.zeros(len(splats), n, 8)
        params[..., 2] = params[..., 4] = 1.0
        mask = torch.zeros(len(splats), n, dtype=torch.bool)
        for i, s in enumerate(splats):
            params[i, :s.n_splats] = torch.from_numpy(s.params.astype(np.float32))
            mask[i, :s.n_splats] = True
        return params, mask, splats[0].canvas_hw
    params = splats if splats.ndim == 3 else splats[None]
    if mask is not None and mask.ndim == 1:
        mask = mask[None]
    return params, mask, None


def render_splats(splats, mask=None, height: int | None = None, width: int | None = None,
                  clamp: bool = True, max_elements: int = DEFAULT_MAX_ELEMENTS):
    """Render splats with I(p) = Σ c·exp(−½ (p−μ)ᵀ Σ⁻¹ (p−μ)) (SPEC.md § 2.1).

    splats: a `SplatSet`, a list of them, or a tensor ``[N, 8]`` / ``[B, N, 8]`` in spec units
        (float16 or float32, any device).
    mask: ``[B, N]`` bool, True for real splats (as `collate_splats` returns); padding ignored.
    height, width: output size (default: the SplatSets' canvas; required for tensors). Any
        resolution works: parameters are resolution-independent.
    Returns ``[B, 3, H, W]`` float32 on the splats' device, clamped to [0, 1] unless
    ``clamp=False``. Work is split over splat chunks so no block exceeds ``max_elements`` floats.
    """
    import torch
    params, mask, canvas = _as_batch(splats, mask)
    if params.shape[-1] != 8:
        raise ValueError(f"splats must be [..., 8], got {list(params.shape)}")
    if height is None or width is None:
        if canvas is None:
            raise ValueError("height and width are required when rendering tensors")
        height, width = height or canvas[0], width or canvas[1]
    params = params.float()
    batch, n = params.shape[:2]
    colours = params[..., 5:8]
    if mask is not None:
        colours = colours * mask.to(params.device, params.dtype)[..., None]
    ys = (torch.arange(height, device=params.device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=params.device, dtype=torch.float32) + 0.5) / width
    image = torch.zeros(batch, height, width, 3, device=params.device)
    chunk = max(1, min(n, max_elements // max(batch * height * width, 1)))
    for first in range(0, n, chunk):
        p = params[:, first:first + chunk]
        x, y, l11, l21, l22 = (p[..., i, None, None] for i in range(5))
        z1 = (xs - x) / l11                       # [B, c, 1, W]
        z2 = ((ys[:, None] - y) - l21 * z1) / l22  # [B, c, H, W]
        g = torch.exp(-0.5 * (z1 * z1 + z2 * z2))
        image += torch.einsum("bchw,bck->bhwk", g, colours[:, first:first + chunk])
    image = image.permute(0, 3, 1, 2)
    return image.clamp(0, 1) if clamp else image


def psnr(a, b) -> float:
    """PSNR in dB of two images in [0, 1] (tensors or arrays)."""
    mse = float(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).mean())
    return 10 * math.log10(1 / max(mse, 1e-12))
