"""Shared fixtures: real photographs, real fitted splats, small datasets."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TQDM_DISABLE", "1")


def photo(name: str = "astronaut", size: int = 64) -> np.ndarray:
    """A bundled scikit-image photograph, centre-cropped and resized: uint8 [size, size, 3]."""
    from gsformat.samples import load_photo
    return load_photo(name, size)


@pytest.fixture(scope="session")
def fitted_splats():
    """Real fitted splats (not random: compression is measured on these)."""
    from gsformat.fitting import fit_images
    images = np.stack([photo(n, 64) for n in ("astronaut", "coffee")])
    return fit_images(images, 256, 150, backend="numpy").splats


@pytest.fixture()
def small_dataset(tmp_path, fitted_splats):
    from gsformat.format.dataset import SplatWriter
    out = str(tmp_path / "ds")
    with SplatWriter(out, columns=["caption", "label"], codecs=[{"id": "gsformat.planar"}],
                     size_limit=1 << 14) as writer:
        for i in range(12):
            writer.write(f"img-{i:03d}", fitted_splats[i % 2], caption=f"photo {i}", label=i % 2)
    return out


def pytest_collection_modifyitems(config, items):
    from gsformat.fitting import cupy_available
    if cupy_available():
        return
    skip = pytest.mark.skip(reason="needs CuPy and a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
