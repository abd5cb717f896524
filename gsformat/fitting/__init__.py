"""Batched 2D Gaussian fitting: one array code path for NumPy (CPU) and CuPy (GPU).

The names below are loaded when first used, so that ``fitting.defaults`` (what convert's options
name) imports without the fitter's dependencies (scipy)."""
from .defaults import DEFAULT_ITERS, REFERENCE_PSNR

_LAZY = {"fit_images": ".fit", "FitOptions": ".fit", "FitResult": ".fit",
         "fit_memory_bytes": ".fit", "render_splatsets": ".engine", "get_xp": ".backend",
         "cupy_available": ".backend", "to_normalised": "..core.render_math",
         "to_pixels": "..core.render_math"}

__all__ = [*_LAZY, "DEFAULT_ITERS", "REFERENCE_PSNR"]


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
