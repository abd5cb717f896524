"""`SplatSet`: the splats of one image — parameters `[N, 8]` FP16 plus the canvas they live on."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import constants as C
from .errors import FormatError


@dataclass
class SplatSet:
    """N anisotropic 2D Gaussians on an H×W canvas.

    params: ``[N, 8]`` float16, columns ``[mu_x, mu_y, l11, l21, l22, r, g, b]`` (SPEC.md § 2):
    means in normalised canvas coordinates ([0,1]², x right, y down), the lower Cholesky factor of
    the covariance in the same units, colour amplitudes in [0,1] RGB space (they may leave it).
    ``meta`` holds optional fit metadata (``psnr``, ``iters``, …) stored in the record's ``fit`` map.
    """

    params: np.ndarray  # [N, 8] float16
    height: int
    width: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        params = np.asarray(self.params)
        if params.ndim != 2 or params.shape[1] != C.PARAMS_PER_SPLAT:
            raise FormatError(f"splat params must have shape [N, {C.PARAMS_PER_SPLAT}], "
                              f"got {list(params.shape)}")
        self.params = np.ascontiguousarray(params, dtype=np.float16)
        self.height, self.width = int(self.height), int(self.width)
        for name, side in (("height", self.height), ("width", self.width)):
            if not 1 <= side <= C.MAX_CANVAS_SIDE:
                raise FormatError(f"canvas {name} {side} outside [1, {C.MAX_CANVAS_SIDE}]")
        if len(self.params) > C.MAX_SPLATS:
            raise FormatError(f"splat count {len(self.params)} exceeds limit {C.MAX_SPLATS}")

    @classmethod
    def _checked(cls, params: np.ndarray, height: int, width: int, meta: dict) -> "SplatSet":
        """For readers whose inputs are already checked (`decode_record`: FP16 ``[N, 8]``
        within the limits, int sides in range): the same object without `__post_init__`'s
        checks, which cost more than decoding a small record's header."""
        splats = object.__new__(cls)
        splats.params, splats.height, splats.width, splats.meta = params, height, width, meta
        return splats

    @classmethod
    def from_parts(cls, means, chol, colours, height: int, width: int, **meta) -> "SplatSet":
        """Build from ``means [N, 2]``, ``chol [N, 3]`` (l11, l21, l22) and ``colours [N, 3]``."""
        params = np.concatenate([np.asarray(means, np.float32), np.asarray(chol, np.float32),
                                 np.asarray(colours, np.float32)], axis=1)
        return cls(params, height, width, dict(meta))

    @property
    def n_splats(self) -> int:
        return len(self.params)

    @property
    def canvas_hw(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def means(self) -> np.ndarray:  # [N, 2]
        return self.params[:, C.MEAN_COLS]

    @property
    def chol(self) -> np.ndarray:  # [N, 3]
        return self.params[:, C.CHOL_COLS]

    @property
    def colours(self) -> np.ndarray:  # [N, 3]
        return self.params[:, C.COLOUR_COLS]

    def covariances(self) -> np.ndarray:
        """Σ = L Lᵀ per splat, float32 ``[N, 2, 2]``."""
        l11, l21, l22 = self.chol.astype(np.float32).T
        cov = np.empty((self.n_splats, 2, 2), np.float32)
        cov[:, 0, 0] = l11 * l11
        cov[:, 0, 1] = cov[:, 1, 0] = l11 * l21
        cov[:, 1, 1] = l21 * l21 + l22 * l22
        return cov

    def problems(self) -> list[str]:
        """What makes these parameters invalid under SPEC.md § 2 (empty when valid)."""
        found = []
        finite = np.isfinite(self.params)
        if not finite.all():
            first = int(np.argmin(finite.reshape(-1)))  # argwhere would list every one
            found.append(f"{finite.size - int(np.count_nonzero(finite))} non-finite values "
                         f"(first: splat {first // C.PARAMS_PER_SPLAT}, "
                         f"{C.PARAM_NAMES[first % C.PARAMS_PER_SPLAT]})")
        for col, name in ((2, "l11"), (4, "l22")):
            nonpos = ~(self.params[:, col] > 0)  # NaN counts as non-positive
            if nonpos.any():
                found.append(f"{int(nonpos.sum())} splats with {name} <= 0 "
                             f"(first: splat {int(np.argmax(nonpos))})")
        return found

    def check(self, where: str | None = None) -> "SplatSet":
        """Raise `FormatError` if the parameters are not valid; return self otherwise."""
        found = self.problems()
        if found:
            raise FormatError("; ".join(found), where)
        return self

    def __eq__(self, other) -> bool:
        return (isinstance(other, SplatSet) and self.canvas_hw == other.canvas_hw
                and np.array_equal(self.params.view(np.uint16), other.params.view(np.uint16)))

    def __repr__(self) -> str:
        return f"SplatSet(n_splats={self.n_splats}, canvas_hw={self.canvas_hw}, meta={self.meta})"
