"""Decoding and resizing source images (Pillow), with a reason for every rejection."""
from __future__ import annotations

import io
import re
import warnings

import numpy as np

MAX_PIXELS = 1 << 28  # refuse decompression bombs


class RejectedImage(ValueError):
    pass


def decode_image(data: bytes, name: str = "the file") -> np.ndarray:
    """Encoded bytes → uint8 RGB ``[H, W, 3]``; `RejectedImage` with a reason naming ``name``
    (where the bytes came from) otherwise."""
    from PIL import Image, UnidentifiedImageError
    if not data:
        raise RejectedImage(f"zero-byte file: {name}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise RejectedImage(f"{name}: {image.width}×{image.height} pixels exceeds "
                                    f"{MAX_PIXELS}")
            image.load()  # truncated data fails here, not later
            return np.asarray(image.convert("RGB"))
    except RejectedImage:
        raise
    except UnidentifiedImageError:  # its message names a BytesIO object, not the file
        raise RejectedImage(f"not an image: {name} ({len(data)} bytes in no format Pillow "
                            f"reads)") from None
    except Exception as exc:
        text = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the data", str(exc))
        raise RejectedImage(f"not a decodable image: {name}: {type(exc).__name__}: "
                            f"{text}") from None


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
