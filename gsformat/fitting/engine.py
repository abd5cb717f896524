"""Choosing and running the windowed renderer: the fitter's engines, and rendering fitted splats.

`make_engine` picks what `Execution.engine` (fitting.options) names (the threaded NumPy range kernel, the fused
CUDA kernels, the array-code twin, or the dense autograd baseline); `render_splatsets` renders
stored splats with a window wide enough to be exact (`render_math.exact_radius`).
"""
from __future__ import annotations

import os

import numpy as np

from ..core.render_math import EXACT_SIGMAS, exact_radius, psnr, sigma_max, to_pixels
from ..core.splatset import SplatSet
from .backend import get_xp, to_numpy
from .cuda_kernel import MAX_WINDOW, CudaWindowKernel
from . import kernel as kernel_mod
from . import tiles
from .kernel import RangeKernel, WindowKernel, window_entries

ENGINES = ("auto", "tiles", "window", "window-xp", "dense-torch")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def fused(xp, height: int, width: int, radius: int) -> bool:
    """Whether `window_kernel` gives the fused CUDA kernels (CuPy, windows they handle)."""
    return xp.__name__ == "cupy" and window_entries(1, height, width, radius) < MAX_WINDOW


def window_kernel(xp, batch: int, n: int, height: int, width: int, radius: int):
    """The windowed renderer for ``xp``: fused CUDA kernels on CuPy, the array code on NumPy."""
    if fused(xp, height, width, radius):
        return CudaWindowKernel(xp, batch, n, height, width, radius)
    return WindowKernel(xp, batch, n, height, width, radius)


def fit_threads(threads: int | None) -> int:
    """Threads a CPU fit uses: ``threads``, else ``$GSFORMAT_THREADS``, else the usable cores
    (at most 8)."""
    return threads or int(os.environ.get("GSFORMAT_THREADS", 0)) or min(usable_cores(), 8)


def resolve_engine(engine: str, xp) -> str:
    """``auto`` → the tile engine: the C one on a CPU where it is built (else the NumPy window
    engine, with a warning), its CUDA kernels (`cuda_tiles`) on a GPU; other names as given."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(map(repr, ENGINES))}, got {engine!r}")
    if engine == "auto":
        if xp is not np:
            return "tiles"
        if tiles.native() is None:
            tiles.warn_fallback()
            return "window"
        return "tiles"
    if engine == "tiles" and xp is np and tiles.native() is None:
        raise ValueError("engine 'tiles' on the CPU is the C tile engine: it is not built here")
    return engine


class LossGrad:
    """``loss_grad`` for the engines that have ``forward`` and ``backward``: render, per-image
    MSE ``[B]`` and ∂MSE/∂params, as `tiles.TileEngine.loss_grad` gives them in one call."""

    def __init__(self, kernel):
        self.kernel = kernel

    def loss_grad(self, params, target, grad_scale: float):
        render = self.kernel.forward(params)
        residual = render - target  # [B, H, W, 3]
        mse = (residual * residual).reshape(len(residual), -1).mean(axis=1)
        residual *= grad_scale  # ∂(mean squared error)/∂render
        return render, mse, self.kernel.backward(params, residual)

    def close(self):
        if hasattr(self.kernel, "close"):
            self.kernel.close()


def make_engine(engine: str, threads: int | None, xp, batch: int, height: int, width: int,
                classes: list[tuple[int, int]], k_sigma: float = tiles.K_SIGMA):
    """The engine for one fitting batch (an object with ``loss_grad``; `resolve_engine` names
    it); ``classes``: ``[(count, R), …]`` (the window engines' size classes)."""
    n = sum(count for count, _ in classes)
    if engine == "tiles":
        if xp is not np:  # CuPy: the tile engine's CUDA kernels
            from .cuda_tiles import CudaTileEngine
            return CudaTileEngine(batch, n, height, width, k_sigma)
        return tiles.TileEngine(batch, n, height, width, k_sigma, fit_threads(threads))
    if engine == "window":
        threads = fit_threads(threads)
        if xp is np:
            return LossGrad(RangeKernel(xp, batch, height, width, classes,
                                        threads if n >= 64 * threads else 1))
        if len(classes) == 1:
            return LossGrad(window_kernel(xp, batch, n, height, width, classes[0][1]))
        return LossGrad(RangeKernel(xp, batch, height, width, classes,
                                    make=lambda *a: window_kernel(xp, *a)))
    if engine == "window-xp":
        return LossGrad(RangeKernel(xp, batch, height, width, classes))
    if engine == "dense-torch":
        if len(classes) > 1:
            raise ValueError("engine 'dense-torch' has no size classes (large_fraction=0)")
        from .reference import DenseTorchEngine
        return LossGrad(DenseTorchEngine(height, width))
    raise ValueError(f"engine must be one of {', '.join(map(repr, ENGINES))}, got {engine!r}")


def render_splatsets(splats: list[SplatSet], radius: int | None = None,
                     backend: str = "numpy") -> np.ndarray:
    """Render same-canvas `SplatSet`s → ``[B, H, W, 3]`` float32, exactly (each splat to 6σ,
    below float32 precision: the C tile engine where it is built, else windows of
    `render_math.exact_radius`), or with windows of half-size ``radius`` if given."""
    xp = get_xp(backend)
    height, width = splats[0].canvas_hw
    n = max(max(s.n_splats for s in splats), 1)
    params = np.zeros((len(splats), n, 8), np.float32)
    params[..., 2] = params[..., 4] = 1.0  # padding splats: unit size, colour 0
    for i, s in enumerate(splats):
        params[i, :s.n_splats] = to_pixels(s.params.astype(np.float32), height, width)
    if radius is None and xp is np and tiles.native() is not None:
        return tiles.TileEngine(len(splats), n, height, width, k_sigma=EXACT_SIGMAS,
                                threads=fit_threads(None)).forward(params)
    if radius is None:
        radius = exact_radius(float(sigma_max(np, params).max()))
    # in chunks of images whose window matrix fits cuSPARSE's int32 indices
    chunk = max(1, kernel_mod.MAX_WINDOW_ENTRIES // window_entries(n, height, width, radius))
    parts = []
    for first in range(0, len(splats), chunk):
        part = params[first:first + chunk]
        kernel = window_kernel(xp, len(part), n, height, width, radius)
        parts.append(to_numpy(kernel.forward(xp.asarray(part))))
    return np.concatenate(parts)


def evaluate_psnr(splats: list[SplatSet], target_np: np.ndarray, radius: int | None = None,
                  backend: str = "numpy") -> np.ndarray:
    """PSNR of stored splats against ``[B, H, W, 3]`` images, rendered exactly (``radius``:
    windows of half-size 2R instead, ≥ 6σ for splats fitted with 3σ ≤ R)."""
    backend = "numpy" if backend == "auto" else backend
    render = render_splatsets(splats, radius=None if radius is None else 2 * radius,
                              backend=backend)
    return psnr(render, target_np)
