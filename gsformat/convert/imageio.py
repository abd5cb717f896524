"""Decoding and resizing source images (Pillow), with a reason for every rejection."""
from __future__ import annotations

import io
import warnings

import numpy as np

MAX_PIXELS = 1 << 28  # refuse decompression bombs


class RejectedImage(ValueError):
    pass


def decode_image(data: bytes) -> np.ndarray:
    """Encoded bytes → uint8 RGB ``[H, W, 3]``; `RejectedImage` with a reason otherwise."""
    from PIL import Image
    if not data:
        raise RejectedImage("zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise RejectedImage(f"{image.width}×{image.height} pixels exceeds {MAX_PIXELS}")
            image.load()  # truncated data fails here, not later
            return np.asarray(image.convert("RGB"))
    except RejectedImage:
        raise
    except Exception as exc:
        raise RejectedImage(f"not a decodable image: {type(exc).__name__}: {exc}") from None


def resize(image: np.ndarray, size: int, mode: str) -> np.ndarray:
    """center-crop: the central square, resized to size²; pad: the whole image letterboxed
    onto a black size² canvas; keep: unchanged."""
    from PIL import Image
    if mode == "keep":
        return image
    h, w = image.shape[:2]
    if mode == "center-crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        crop = Image.fromarray(image[top:top + side, left:left + side])
        return np.asarray(crop.resize((size, size), Image.LANCZOS))
    if mode == "pad":
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        small = np.asarray(Image.fromarray(image).resize((nw, nh), Image.LANCZOS))
        canvas = np.zeros((size, size, 3), np.uint8)
        top, left = (size - nh) // 2, (size - nw) // 2
        canvas[top:top + nh, left:left + nw] = small
        return canvas
    raise ValueError(f"resize must be center-crop, pad or keep, got {mode!r}")


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
