"""Real photographs that ship inside installed packages (no download): the demo's, the tests'
and the benchmarks' inputs. scikit-image's bundled images are CC0 / public domain;
scikit-learn's sample images (china, flower) are CC BY 2.0 by their authors, shipped with
scikit-learn; matplotlib's sample photograph of Grace Hopper is public domain (US Navy). Loading
one needs scikit-image, scikit-learn or matplotlib, and Pillow to resize (the dev extra);
importing this module needs only the plain install."""
from __future__ import annotations

import numpy as np

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                  "immunohistochemistry", "retina")
SKLEARN_PHOTOS = ("china", "flower")
PHOTOS = SKIMAGE_PHOTOS + SKLEARN_PHOTOS
# more real photographs scikit-image bundles: the stereo pair's left view and greyscale ones
# (returned as RGB) — the fitter's held-out report set draws on these (benchmarks/fit_bench.py)
EXTRA_PHOTOS = ("motorcycle", "camera", "coins", "moon", "clock", "gravel")
# smooth images for the tuning set (the report set's moon, clock and flower are smooth, and the
# first tuning set had none): a microscope's cell, a colour wheel, a portrait on plain ground
SMOOTH_PHOTOS = ("cell", "colorwheel", "grace_hopper")

# The fitter's defaults are tuned on TUNING only; REPORT holds photographs no default was ever
# tuned on (benchmarks/fit_bench.py, fit_tune.py, rd_bench.py --report-set); README reports
# REPORT.
TUNING = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
          "immunohistochemistry", "retina") + SMOOTH_PHOTOS
REPORT = ("china", "flower", "motorcycle", "camera", "coins", "moon", "clock", "gravel")


def load_raw(name: str) -> np.ndarray:
    """uint8 ``[H, W, 3]`` at the photograph's own size."""
    if name in SKLEARN_PHOTOS:
        from sklearn.datasets import load_sample_image
        image = load_sample_image(f"{name}.jpg")
    elif name == "grace_hopper":
        from matplotlib import cbook
        from PIL import Image
        with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as photo:
            image = np.asarray(photo.convert("RGB"))
    elif name in SKIMAGE_PHOTOS or name in EXTRA_PHOTOS or name in SMOOTH_PHOTOS:
        import skimage.data
        image = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else \
            getattr(skimage.data, name)()
    else:
        raise ValueError(f"unknown photograph {name!r}; known: "
                         f"{', '.join(PHOTOS + EXTRA_PHOTOS + SMOOTH_PHOTOS)}")
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def center_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Centre square crop, then a Lanczos resize to ``size``² (uint8 RGB)."""
    from PIL import Image
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(image[top:top + side, left:left + side])
    return np.asarray(crop.resize((size, size), Image.LANCZOS))


def load_photo(name: str, size: int = 224) -> np.ndarray:
    return center_crop_resize(load_raw(name), size)
