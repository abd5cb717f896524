"""The renderer's maths (SPEC.md § 2.1), written once for the fitter, `render_splats` and the
reference twins.

Every function takes the array module ``xp`` it computes with where that matters (NumPy, CuPy or
PyTorch: the operations used exist under the same names in all three), so the CPU fitter, the
GPU fitter and the PyTorch renderer evaluate the same expressions.

A splat with mean μ and Cholesky factor L = [[l11, 0], [l21, l22]] (Σ = L·Lᵀ) contributes
c · g(p) at pixel centre p, where, with d = p − μ::

    z1 = d_x / l11,   z2 = (d_y − l21 · z1) / l22,   g = exp(−½ (z1² + z2²))

(z = L⁻¹ d, so z1² + z2² = dᵀ Σ⁻¹ d). Pixel centres are at (i + ½, j + ½) in pixel units.
"""
from __future__ import annotations

import math

import numpy as np

from . import constants as C

# Beyond 6σ along its longest axis a Gaussian is below e⁻¹⁸ ≈ 1.5·10⁻⁸, under float32's relative
# precision: a window of ±EXACT_SIGMAS·σ_max renders the spec's infinite sum exactly.
EXACT_SIGMAS = 6
BT709 = (0.2126, 0.7152, 0.0722)  # luminance weights of linear R, G, B (pruning, strength)

# spec units → pixels: μ_x, l11 scale with the width; μ_y, l21, l22 with the height
_PIXEL_AXES = ("w", "h", "w", "h", "h")


def to_pixels(params, height: int, width: int) -> np.ndarray:
    """Spec units ``[..., 8]`` → pixel units (float32 copy): μ·(W, H), L ← diag(W, H)·L."""
    out = np.array(params, np.float32)
    for col, axis in enumerate(_PIXEL_AXES):
        out[..., col] *= width if axis == "w" else height
    return out


def to_normalised(params, height: int, width: int) -> np.ndarray:
    """Pixel units ``[..., 8]`` → spec units (float32 copy); inverse of `to_pixels`."""
    out = np.array(params, np.float32)
    for col, axis in enumerate(_PIXEL_AXES):
        out[..., col] /= width if axis == "w" else height
    return out


def sigma_max(xp, params):
    """√λ_max(Σ) per splat of ``params`` ``[..., ≥5]`` (its units): the longest axis."""
    l11, l21, l22 = params[..., 2], params[..., 3], params[..., 4]
    a, b, c = l11 * l11, l11 * l21, l21 * l21 + l22 * l22  # Σ = [[a, b], [b, c]]
    return xp.sqrt(0.5 * (a + c) + xp.sqrt(0.25 * (a - c) ** 2 + b * b))


def exact_radius(largest_sigma: float) -> int:
    """Window half-size (pixels) that renders splats of σ_max ≤ ``largest_sigma`` exactly."""
    return max(2, math.ceil(EXACT_SIGMAS * max(float(largest_sigma), 1e-6)))


def gaussian(xp, dx, dy, l11, l21, l22):
    """g = exp(−½ dᵀ Σ⁻¹ d) for offsets ``dx``, ``dy`` (pixel units, broadcast together)."""
    z1 = dx / l11
    z2 = (dy - l21 * z1) / l22
    return xp.exp(-0.5 * (z1 * z1 + z2 * z2))


def dense_render(xp, params, height: int, width: int):
    """The spec's sum over every pixel: pixel-unit ``[B, N, 8]`` → ``[B, H, W, 3]`` (the slow,
    obvious twin every fast renderer is tested against; autograd-friendly under PyTorch)."""
    ys = xp.arange(height, dtype=params.dtype) + 0.5
    xs = xp.arange(width, dtype=params.dtype) + 0.5
    if hasattr(ys, "to"):  # torch: on the splats' device
        ys, xs = ys.to(params.device), xs.to(params.device)
    x, y, l11, l21, l22 = (params[..., i, None, None] for i in range(5))
    g = gaussian(xp, xs[None, None, None, :] - x, ys[None, None, :, None] - y,
                 l11, l21, l22)  # [B, N, H, W]
    return xp.einsum("bnhw,bnc->bhwc", g, params[..., C.COLOUR_COLS])


def psnr(render, target):
    """PSNR (dB) of ``render`` clamped to [0, 1] against ``target``, per image of ``[B, H, W, C]``
    arrays (NumPy or CuPy) → ``[B]`` float NumPy."""
    mse = ((render.clip(0, 1) - target) ** 2).reshape(len(target), -1).mean(axis=1)
    mse = np.asarray(mse.get() if hasattr(mse, "get") else mse, np.float64)  # CuPy → host
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-12))
