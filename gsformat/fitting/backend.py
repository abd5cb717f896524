"""Array backends: NumPy on a CPU, CuPy on a GPU — imported lazily, one code path (`xp`)."""
from __future__ import annotations

import numpy as np


def cupy_available() -> bool:
    """True when CuPy imports and sees a CUDA device."""
    try:
        import cupy
        return bool(cupy.cuda.is_available())
    except Exception:  # not installed, no driver, no device
        return False


def get_xp(backend: str = "auto"):
    """The array module for ``backend`` ∈ {auto, numpy, cupy}."""
    if backend == "auto":
        backend = "cupy" if cupy_available() else "numpy"
    if backend == "numpy":
        return np
    if backend == "cupy":
        if not cupy_available():
            raise RuntimeError("backend='cupy' needs CuPy and a CUDA GPU "
                               "(pip install 'gsformat[gpu]'); none is available here")
        import cupy
        return cupy
    raise ValueError(f"backend must be 'auto', 'numpy' or 'cupy', got {backend!r}")


def to_numpy(array) -> np.ndarray:
    return array.get() if hasattr(array, "get") else np.asarray(array)
