"""Input images → float32 ``[B, H, W, 3]`` in [0, 1], with one documented rule for every kind.

- dtype: uint8 ÷ 255, uint16 ÷ 65535, bool → {0, 1}, floats taken as [0, 1] intensities and
  clipped to it; NaN or ±inf anywhere is an error (naming the image).
- channels: ``[B, H, W]`` or 1 channel is grey (copied to R, G, B); 2 channels are grey + alpha and
  4 are RGBA: alpha is dropped, as Pillow's ``convert("RGB")`` does; 3 are RGB.
- a batch is an array ``[B, H, W(, C)]`` or a list of same-sized ``[H, W(, C)]`` arrays.
"""
from __future__ import annotations

import numpy as np

MIN_SIDE = 4


def as_float_rgb(images) -> np.ndarray:
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("empty batch: no images to fit")
        shapes = {np.shape(im)[:2] for im in images}
        if len(shapes) > 1:
            raise ValueError(f"images in one batch must share a size, got {sorted(shapes)}")
        images = np.stack([np.asarray(im) for im in images])
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"images must be [B, H, W] or [B, H, W, C] with C in 1..4, "
                         f"got shape {list(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("empty batch: no images to fit")
    b, h, w, c = images.shape
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"images of {h}×{w} pixels are too small to fit (need ≥ {MIN_SIDE} per "
                         f"side)")
    if images.dtype == np.uint8:
        rgb = images.astype(np.float32) / 255.0
    elif images.dtype == np.uint16:
        rgb = images.astype(np.float32) / 65535.0
    elif images.dtype == bool:
        rgb = images.astype(np.float32)
    elif np.issubdtype(images.dtype, np.floating) or np.issubdtype(images.dtype, np.integer):
        rgb = images.astype(np.float32)
        finite = np.isfinite(rgb).reshape(b, -1).all(axis=1)
        if not finite.all():
            raise ValueError(f"image {int(np.argmin(finite))} of the batch has NaN or infinite "
                             f"pixels")
        np.clip(rgb, 0.0, 1.0, out=rgb)
    else:
        raise ValueError(f"unsupported image dtype {images.dtype}")
    if c in (1, 2):
        rgb = np.repeat(rgb[..., :1], 3, axis=-1)
    elif c == 4:
        rgb = rgb[..., :3]
    return np.ascontiguousarray(rgb)
