"""The tile engine: the fitter's forward + loss + backward, fused per 16×16 screen tile, in C.

Each splat covers its own footprint — the pixels whose centres lie inside its ellipse at
``k_sigma`` σ, dᵀΣ⁻¹d ≤ k², where its value is ≥ e^(−k²/2) (SPEC.md § 2.1 note) — instead of a
window of a fixed size, so the work per iteration follows what the splats cover.
`TileEngine.loss_grad` runs the C kernel in `_tiles.c` (its comment gives the algorithm); results
are the same for any number of threads (per-splat gradients are reduced per tile in a fixed
order).

Where the C extension was not built (no compiler at install time) `native()` is None and the
fitter falls back to the NumPy window engine (`kernel.py`) with a warning.

Reference twins, slow and obvious, that the tests compare the C engine with:
- `_render_boxes`: the spec's dense sum over every pixel with each splat masked to its footprint
  (float64 NumPy) — values;
- `_loss_grad_boxes`: the same under PyTorch autograd, the fitter's MSE — gradients.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

K_SIGMA = 3.5   # footprint: a splat is cut at dᵀΣ⁻¹d = k², where its value is e^−6.1 ≈ 0.2 %
TILE = 16       # tile side in pixels (the C engine's TILE)
_NATIVE = False  # not looked up yet


def native():
    """The C module, or None where it is not built (or ``$GSFORMAT_NO_NATIVE`` is set)."""
    global _NATIVE
    if _NATIVE is False:
        _NATIVE = None
        if not os.environ.get("GSFORMAT_NO_NATIVE"):
            try:
                from . import _tiles as module
                _NATIVE = module
            except ImportError:
                pass
    return _NATIVE


def warn_fallback() -> None:
    warnings.warn("gsformat's C tile engine is not built (no C compiler when it was installed?): "
                  "fitting with the NumPy window engine, several times slower", RuntimeWarning,
                  stacklevel=3)


def footprint(params, height: int, width: int, k_sigma: float = K_SIGMA) -> np.ndarray:
    """Pixel-unit params ``[..., 8]`` → int boxes ``[..., 4]`` (x0, x1, y0, y1): the bounding box
    of the footprint ellipse, the pixel columns [x0, x1) and rows [y0, y1) whose centres lie
    within ``k_sigma``·√Σxx and ``k_sigma``·√Σyy of the splat's centre, clipped to the canvas
    (empty: x1 ≤ x0). Non-finite splats and l11 = 0 or l22 = 0 cover nothing. Twin of the C
    ``footprint``."""
    p = np.asarray(params, np.float32).astype(np.float64)
    ex = np.float32(k_sigma) * np.abs(p[..., 2])
    ey = np.float32(k_sigma) * np.sqrt(p[..., 3] ** 2 + p[..., 4] ** 2)
    with np.errstate(invalid="ignore"):
        x0 = np.clip(np.ceil(p[..., 0] - ex - 0.5), 0, width)
        x1 = np.clip(np.floor(p[..., 0] + ex - 0.5) + 1, 0, width)
        y0 = np.clip(np.ceil(p[..., 1] - ey - 0.5), 0, height)
        y1 = np.clip(np.floor(p[..., 1] + ey - 0.5) + 1, 0, height)
    ok = np.isfinite(p).all(axis=-1) & (p[..., 2] != 0) & (p[..., 4] != 0) & (x1 > x0) & (y1 > y0)
    boxes = np.stack([x0, x1, y0, y1], axis=-1)
    return np.where(ok[..., None], np.nan_to_num(boxes), 0).astype(np.int32)


def exponent(params, height: int, width: int) -> np.ndarray:
    """q = dᵀΣ⁻¹d of every splat at every pixel centre, ``[B, N, H, W]`` float64."""
    p = np.asarray(params, np.float64)
    x, y, l11, l21, l22 = (p[..., i, None, None] for i in range(5))
    z1 = (np.arange(width) + 0.5 - x) / l11
    z2 = ((np.arange(height)[:, None] + 0.5 - y) - l21 * z1) / l22
    return z1 * z1 + z2 * z2


def _box_masks(params, height: int, width: int, k_sigma: float):
    """``[B, N, H, W]`` bool: the pixels each splat covers (its ellipse, within its box)."""
    boxes = footprint(params, height, width, k_sigma)
    cols, rows = np.arange(width), np.arange(height)
    in_x = (cols >= boxes[..., 0, None]) & (cols < boxes[..., 1, None])  # [B, N, W]
    in_y = (rows >= boxes[..., 2, None]) & (rows < boxes[..., 3, None])  # [B, N, H]
    with np.errstate(invalid="ignore", divide="ignore"):
        inside = exponent(params, height, width) <= np.float32(k_sigma) ** 2
    return in_y[..., :, None] & in_x[..., None, :] & inside


def _render_boxes(params, height: int, width: int, k_sigma: float = K_SIGMA) -> np.ndarray:
    """Twin of `TileEngine.forward`: ``[B, N, 8]`` pixel units → ``[B, H, W, 3]`` float64."""
    p = np.asarray(params, np.float64)
    g = np.where(_box_masks(params, height, width, k_sigma),
                 np.exp(-0.5 * exponent(params, height, width)), 0.0)
    return np.einsum("bnhw,bnc->bhwc", g, p[..., 5:8])


def _loss_grad_boxes(params, target, k_sigma: float = K_SIGMA):
    """Twin of `TileEngine.loss_grad`'s loss and gradient: Σ_images mean((render − target)²)
    and its gradient ``[B, N, 8]``, by PyTorch autograd in float64 (footprints held fixed)."""
    import torch
    height, width = np.asarray(target).shape[1:3]
    mask = torch.from_numpy(_box_masks(params, height, width, k_sigma))
    p = torch.tensor(np.asarray(params), dtype=torch.float64, requires_grad=True)
    t = torch.tensor(np.asarray(target), dtype=torch.float64)
    ys = torch.arange(height, dtype=torch.float64) + 0.5
    xs = torch.arange(width, dtype=torch.float64) + 0.5
    x, y, l11, l21, l22 = (p[..., i, None, None] for i in range(5))
    z1 = (xs - x) / l11
    z2 = ((ys[:, None] - y) - l21 * z1) / l22
    g = torch.where(mask, torch.exp(-0.5 * (z1 * z1 + z2 * z2)), torch.zeros((), dtype=p.dtype))
    image = torch.einsum("bnhw,bnc->bhwc", g, p[..., 5:8])
    loss = ((image - t) ** 2).mean(dim=(1, 2, 3)).sum()
    loss.backward()
    return float(loss.detach()), p.grad.numpy()


class TileEngine:
    """The C tile engine for one batch geometry: ``forward`` (render) and ``loss_grad`` (render,
    per-image Σ r², gradient in one call); ``backward`` exists for the generic loop but costs a
    second pass."""

    def __init__(self, batch: int, n_splats: int, height: int, width: int,
                 k_sigma: float = K_SIGMA, threads: int = 1):
        self.module = native()
        if self.module is None:
            raise RuntimeError("the C tile engine is not built (gsformat.fitting._tiles)")
        self.xp = np
        self.B, self.N, self.H, self.W = batch, n_splats, height, width
        self.k_sigma, self.threads = float(k_sigma), max(1, int(threads))
        self.render = np.empty((batch, height, width, 3), np.float32)
        self.grad = np.empty((batch, n_splats, 8), np.float32)
        self.sse = np.empty(batch, np.float64)

    def _params(self, params) -> np.ndarray:
        params = np.ascontiguousarray(params, np.float32)
        if params.shape != (self.B, self.N, 8):
            raise ValueError(f"params: expected {(self.B, self.N, 8)}, got {params.shape}")
        return params

    def forward(self, params) -> np.ndarray:
        """params ``[B, N, 8]`` float32 pixel units → image ``[B, H, W, 3]`` (a new array)."""
        render = np.empty_like(self.render)
        self.module.run(self._params(params), None, render, None, None, self.B, self.N, self.H,
                        self.W, self.k_sigma, 0.0, self.threads)
        return render

    def loss_grad(self, params, target, grad_scale: float):
        """(render ``[B, H, W, 3]``, MSE ``[B]`` float64, gradient ``[B, N, 8]`` of
        ``grad_scale``/2 · Σ (render − target)² — with grad_scale = 2/(H·W·3), of each image's
        MSE). The arrays are the engine's buffers, overwritten by the next call."""
        target = np.ascontiguousarray(target, np.float32)
        self.module.run(self._params(params), target, self.render, self.grad, self.sse, self.B,
                        self.N, self.H, self.W, self.k_sigma, float(grad_scale), self.threads)
        return self.render, self.sse / (self.H * self.W * 3), self.grad
