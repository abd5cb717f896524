"""Real photographs that ship inside installed packages (no download): the demo's, the tests'
and the benchmarks' inputs. scikit-image's bundled images are CC0 / public domain;
scikit-learn's sample images (china, flower) are CC BY 2.0 by their authors, shipped with
scikit-learn; matplotlib's sample photograph of Grace Hopper is public domain (US Navy), its MRI
slice and elevation model are its sample data (matplotlib's licence). Loading
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
# first tuning set had none): a microscope's cell, a colour wheel, a portrait on plain ground,
# an MRI slice and a hill-shaded elevation model (low contrast, fine gradations: images the
# fast rates leave noisy)
MATPLOTLIB_PHOTOS = ("grace_hopper", "mri", "terrain")
SMOOTH_PHOTOS = ("cell", "colorwheel") + MATPLOTLIB_PHOTOS

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
    elif name in MATPLOTLIB_PHOTOS:
        image = _matplotlib_sample(name)
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


def _matplotlib_sample(name: str) -> np.ndarray:
    from matplotlib import cbook
    if name == "grace_hopper":
        from PIL import Image
        with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as photo:
            return np.asarray(photo.convert("RGB"))
    if name == "mri":  # 256² 16-bit big-endian samples, 8 significant bits
        with cbook.get_sample_data("s1045.ima.gz") as raw:
            slice_ = np.frombuffer(raw.read(), ">u2").reshape(256, 256).astype(np.float64)
        return np.round(slice_ * (255 / slice_.max())).astype(np.uint8)
    from matplotlib import colormaps
    from matplotlib.colors import LightSource
    dem = cbook.get_sample_data("jacksboro_fault_dem.npz")  # elevation in m on a lat/lon grid
    dy = 111200 * float(dem["dy"])
    dx = 111200 * float(dem["dx"]) * np.cos(np.radians(float(dem["ymin"])))
    shaded = LightSource(azdeg=315, altdeg=45).shade(
        dem["elevation"], cmap=colormaps["gist_earth"], blend_mode="soft", vert_exag=2,
        dx=dx, dy=dy)  # [H, W, 4] floats in [0, 1]
    return np.round(shaded[..., :3] * 255).astype(np.uint8)


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
