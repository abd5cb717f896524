"""Splat-space operations that are exact for the sum renderer, and the `max_splats` rule.

Horizontal flip: x → 1 − x and l21 → −l21 is exactly the mirrored image, because
F Σ Fᵀ = (F L D)(F L D)ᵀ with F = D = diag(−1, 1), and F L D = [[l11, 0], [−l21, l22]]. Jitter
and dropout change the image the way their names say (a splat moved, recoloured or removed),
with no resampling error.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core import constants as C
from ..core.render_math import BT709


def splat_strength(params: np.ndarray) -> np.ndarray:
    """Integrated contribution of each splat: BT.709 luminance of |colour| × l11 · l22
    (a Gaussian's integral is 2π·det L·|c|). `max_splats` keeps the strongest."""
    p = params.astype(np.float32)
    return (np.abs(p[:, C.COLOUR_COLS]) @ np.asarray(BT709, np.float32)) * p[:, 2] * p[:, 4]


def keep_strongest(params: np.ndarray, max_splats: int) -> np.ndarray:
    if len(params) <= max_splats:
        return params
    keep = np.argpartition(-splat_strength(params), max_splats - 1)[:max_splats]
    return params[np.sort(keep)]


def hflip(params: np.ndarray) -> np.ndarray:
    out = params.copy()
    out[:, 0] = 1 - out[:, 0]
    out[:, 3] = -out[:, 3]
    return out


@dataclass
class SplatAugment:
    """Random augmentations in splat space (probabilities and scales in spec units).

    hflip: probability of a horizontal flip. position_jitter: std of a Gaussian shift of each
    centre (canvas units). colour_jitter: std of an additive shift of each colour. dropout:
    probability of removing each splat.
    """
    hflip: float = 0.5
    position_jitter: float = 0.0
    colour_jitter: float = 0.0
    dropout: float = 0.0

    def __call__(self, params: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = params.astype(np.float32)
        if rng.random() < self.hflip:
            out = hflip(out)
        if self.position_jitter:
            out[:, 0:2] += rng.normal(0, self.position_jitter, (len(out), 2))
        if self.colour_jitter:
            out[:, C.COLOUR_COLS] += rng.normal(0, self.colour_jitter, (len(out), 3))
        if self.dropout:
            out = out[rng.random(len(out)) >= self.dropout]
        return out.astype(params.dtype)
