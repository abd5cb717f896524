"""`render_splats`: the spec's sum renderer in PyTorch (CPU or CUDA), batched, memory-bounded."""
from __future__ import annotations

import numpy as np

from .core import constants as C
from .core.render_math import dense_render, exact_radius, gaussian, sigma_max
from .core.splatset import SplatSet

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
    ``clamp=False``.

    Each splat is evaluated over the exact window of the batch (`render_math.exact_radius`:
    ±6σ_max pixels, σ_max the largest standard deviation, where the Gaussian has fallen below
    e⁻¹⁸, under float32 precision); when that window would cover the canvas, every pixel is
    evaluated (`render_math.dense_render`, the reference twin). Work is split over splat chunks
    so no block exceeds ``max_elements`` values.
    """
    import torch
    params, mask, height, width = _prepare(splats, mask, height, width)
    colours = params[..., C.COLOUR_COLS]
    if mask is not None:
        colours = colours * mask.to(params.device, params.dtype)[..., None]
    px = _to_pixel_units(params, height, width)
    sigma = sigma_max(torch, px)
    if mask is not None:
        sigma = sigma * mask.to(sigma.device, sigma.dtype)
    radius = exact_radius(float(sigma.max()) if sigma.numel() else 1.0)
    if 2 * radius + 1 >= max(height, width):
        image = _render_dense_chunks(px, colours, height, width, max_elements)
    else:
        image = _render_windowed(px, colours, height, width, radius, max_elements)
    image = image.permute(0, 3, 1, 2)
    return image.clamp(0, 1) if clamp else image


def _prepare(splats, mask, height, width):
    params, mask, canvas = _as_batch(splats, mask)
    if params.shape[-1] != 8:
        raise ValueError(f"splats must be [..., 8], got {list(params.shape)}")
    if height is None or width is None:
        if canvas is None:
            raise ValueError("height and width are required when rendering tensors")
        height, width = height or canvas[0], width or canvas[1]
    return params.float(), mask, int(height), int(width)


def _to_pixel_units(params, height, width):
    """Spec units → pixels: μ·(W, H), L ← diag(W, H)·L."""
    import torch
    scale = torch.tensor([width, height, width, height, height], device=params.device)
    return params[..., :5] * scale


def _render_windowed(px, colours, height: int, width: int, radius: int, max_elements: int):
    """Each splat over its (2R+1)² window, clipped to the canvas; scatter by ``index_add_``."""
    import torch
    batch, n = px.shape[:2]
    ky, kx = min(2 * radius + 1, height), min(2 * radius + 1, width)
    device = px.device
    off_y = torch.arange(ky, device=device, dtype=torch.float32)
    off_x = torch.arange(kx, device=device, dtype=torch.float32)
    cell = (torch.arange(ky, device=device)[:, None] * width
            + torch.arange(kx, device=device)[None, :]).reshape(-1)
    image = torch.zeros(batch * height * width, 3, device=device)
    image_base = torch.arange(batch, device=device)[:, None] * (height * width)
    chunk = max(1, min(n, max_elements // max(batch * ky * kx, 1)))
    for first in range(0, n, chunk):
        p = px[:, first:first + chunk]
        x, y, l11, l21, l22 = p.unbind(-1)
        x0 = (x.floor() - radius).clamp(0, width - kx)
        y0 = (y.floor() - radius).clamp(0, height - ky)
        dx = x0[..., None] + 0.5 + off_x - x[..., None]                           # [B, c, kx]
        dy = y0[..., None] + 0.5 + off_y - y[..., None]                           # [B, c, ky]
        g = gaussian(torch, dx[..., None, :], dy[..., :, None], l11[..., None, None],
                     l21[..., None, None], l22[..., None, None])                  # [B, c, ky, kx]
        idx = ((y0 * width + x0).long() + image_base)[..., None] + cell            # [B, c, ky·kx]
        values = g.reshape(*g.shape[:2], -1, 1) * colours[:, first:first + chunk, None, :]
        image.index_add_(0, idx.reshape(-1), values.reshape(-1, 3))
    return image.reshape(batch, height, width, 3)


def _render_dense_chunks(px, colours, height: int, width: int, max_elements: int):
    """Every splat over every pixel (`render_math.dense_render`), in splat chunks of at most
    ``max_elements`` values → ``[B, H, W, 3]``."""
    import torch
    batch, n = px.shape[:2]
    image = torch.zeros(batch, height, width, 3, device=px.device)
    chunk = max(1, min(n, max_elements // max(batch * height * width, 1)))
    for first in range(0, n, chunk):
        part = torch.cat([px[:, first:first + chunk], colours[:, first:first + chunk]], -1)
        image += dense_render(torch, part, height, width)
    return image
