"""Batched 2D Gaussian fitting: one array code path for NumPy (CPU) and CuPy (GPU)."""
from .backend import cupy_available, get_xp
from ..format.render_math import to_normalised, to_pixels
from .engine import render_splatsets
from .fit import FitOptions, FitResult, fit_images, fit_memory_bytes

__all__ = ["fit_images", "FitOptions", "FitResult", "fit_memory_bytes", "render_splatsets",
           "to_normalised", "to_pixels", "get_xp", "cupy_available"]
