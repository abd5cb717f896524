"""Initialisation: a structured grid (the paper's 35.25 dB vs 28.24 dB) or random splats."""
from __future__ import annotations

import math

import numpy as np

from ..core import constants as C


def grid_shape(n_splats: int, height: int, width: int) -> tuple[int, int]:
    """(rows, cols) of the largest grid with ≤ n_splats cells and cells close to square."""
    cols = max(1, min(n_splats, round(math.sqrt(n_splats * width / height))))
    rows = max(1, n_splats // cols)
    return rows, cols


def init_params(kind: str, batch: int, n_splats: int, height: int, width: int, sigma: float,
                rng: np.random.Generator) -> np.ndarray:
    """Pixel-unit params ``[B, N, 8]`` with isotropic covariance ``sigma`` and colour 0
    (`grid` colours come from the pixels beneath, see `colour_from_pixels`).

    grid: splat centres on a rows×cols lattice over the canvas; the few left over when N is not a
    product rows·cols go to uniformly random positions. random: every centre uniform on the
    canvas and colours uniform in [0, 1].
    """
    params = np.zeros((batch, n_splats, 8), np.float32)
    if kind == "grid":
        rows, cols = grid_shape(n_splats, height, width)
        ys = (np.arange(rows) + 0.5) * height / rows
        xs = (np.arange(cols) + 0.5) * width / cols
        gy, gx = np.meshgrid(ys, xs, indexing="ij")
        n_grid = rows * cols
        params[:, :n_grid, 0] = gx.ravel()
        params[:, :n_grid, 1] = gy.ravel()
        extra = n_splats - n_grid
        params[:, n_grid:, 0] = rng.uniform(0, width, (batch, extra))
        params[:, n_grid:, 1] = rng.uniform(0, height, (batch, extra))
    elif kind == "random":
        params[..., 0] = rng.uniform(0, width, (batch, n_splats))
        params[..., 1] = rng.uniform(0, height, (batch, n_splats))
        params[..., C.COLOUR_COLS] = rng.uniform(0, 1, (batch, n_splats, 3))
    else:
        raise ValueError(f"init must be 'grid' or 'random', got {kind!r}")
    params[..., 2] = params[..., 4] = sigma
    return params


def colour_from_pixels(kernel, params, target):
    """Set each splat's colour so the initial render matches the image beneath it.

    colour = (G-weighted mean of the pixels under the splat) / (G-weighted mean of the coverage
    Σ_j G_j there): the overlap of neighbouring splats is divided out.
    """
    xp = kernel.xp
    ones = xp.ones_like(params[..., C.COLOUR_COLS])
    params[..., C.COLOUR_COLS] = ones
    coverage = kernel.forward(params)[..., 0]  # [B, H, W]
    g = kernel.g.reshape(kernel.B, kernel.N, -1)
    weight = g.sum(axis=-1) + 1e-12
    mean_cover = xp.einsum("bnk,bnk->bn", g, xp.take(coverage.reshape(-1), kernel.idx)) / weight
    for c in range(3):
        under = xp.take(target[..., c].reshape(-1), kernel.idx)
        params[..., 5 + c] = xp.einsum("bnk,bnk->bn", g, under) / weight / xp.maximum(
            mean_cover, 1e-3)
    return params
