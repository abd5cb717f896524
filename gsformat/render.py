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
    ``clamp=False``.

    Each splat is evaluated over a window of ±6σ_max pixels (σ_max the largest standard
    deviation in the batch), where the Gaussian has fallen below e⁻¹⁸ (under float32 precision);
    when that window would cover the canvas, every pixel is evaluated. Work is split over splat
    chunks so no block exceeds ``max_elements`` values. `_render_splats_dense` is the reference
    twin.
    """
    import torch
    params, mask, height, width = _prepare(splats, mask, height, width)
    colours = params[..., 5:8]
    if mask is not None:
        colours = colours * mask.to(params.device, params.dtype)[..., None]
    px = _to_pixel_units(params, height, width)
    radius = _six_sigma_radius(px, mask)
    if 2 * radius + 1 >= max(height, width):
        image = _render_splats_dense(params, colours, height, width, max_elements)
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


def _six_sigma_radius(px, mask) -> int:
    l11, l21, l22 = px[..., 2], px[..., 3], px[..., 4]
    a, b, c = l11 * l11, l11 * l21, l21 * l21 + l22 * l22
    lam = 0.5 * (a + c) + ((0.25 * (a - c) ** 2 + b * b)).sqrt()
    if mask is not None:
        lam = lam * mask.to(lam.device, lam.dtype)
    lam_max = float(lam.max()) if lam.numel() else 1.0
    return max(1, math.ceil(6 * math.sqrt(max(lam_max, 1e-12))))


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
        z1 = (x0[..., None] + 0.5 + off_x - x[..., None]) / l11[..., None]       # [B, c, kx]
        dy = y0[..., None] + 0.5 + off_y - y[..., None]                           # [B, c, ky]
        z2 = (dy[..., :, None] - (l21[..., None] * z1)[..., None, :]) / l22[..., None, None]
        g = torch.exp(-0.5 * (z2 * z2 + (z1 * z1)[..., None, :]))                 # [B, c, ky, kx]
        idx = ((y0 * width + x0).long() + image_base)[..., None] + cell            # [B, c, ky·kx]
        values = g.reshape(*g.shape[:2], -1, 1) * colours[:, first:first + chunk, None, :]
        image.index_add_(0, idx.reshape(-1), values.reshape(-1, 3))
    return image.reshape(batch, height, width, 3)


def _render_splats_dense(params, colours, height: int, width: int, max_elements: int):
    """Reference twin of `_render_windowed`: every splat over every pixel, ``[B, H, W, 3]``."""
    import torch
    batch, n = params.shape[:2]
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
    return image


def psnr(a, b) -> float:
    """PSNR in dB of two images in [0, 1] (tensors or arrays)."""
    mse = float(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).mean())
    return 10 * math.log10(1 / max(mse, 1e-12))
