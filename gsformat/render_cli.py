"""``gsformat render``: samples of a dataset as a PNG — stored source image beside the splats."""
from __future__ import annotations

import itertools

import numpy as np


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw
    image = Image.fromarray(tile)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, image.width, 13), fill=(0, 0, 0))
    draw.text((3, 1), text, fill=(255, 255, 255))
    return np.asarray(image)


def render_samples(path: str, index: int, output: str, size: int | None = None,
                   count: int = 1) -> list[dict]:
    """Write rows of [source image (when stored) | reconstruction] for samples
    ``index … index+count-1``; returns per-sample info (key, n_splats, psnr)."""
    import torch
    from PIL import Image
    from .format.dataset import iter_dataset
    from .format.render_math import psnr
    from .render import render_splats
    samples = list(itertools.islice(iter_dataset(path), index, index + count))
    if not samples:
        raise ValueError(f"{path}: no sample at index {index}")
    rows, info = [], []
    for sample in samples:
        splats = sample["splats"]
        height, width = (size, round(size * splats.width / splats.height)) if size else \
            splats.canvas_hw
        recon = render_splats(splats, height=height, width=width)[0]
        recon_u8 = (recon.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        tiles, entry = [], {"key": sample["key"], "n_splats": splats.n_splats}
        if "image" in sample:
            source = np.asarray(sample["image"].resize((width, height), Image.LANCZOS))
            entry["psnr"] = float(psnr(recon.permute(1, 2, 0).numpy()[None],
                                       source[None] / 255.0)[0])
            tiles.append(_label(source, f"{sample['key']} (stored image)"[:40]))
        text = f"{splats.n_splats} splats"
        if "psnr" in entry:
            text += f", {entry['psnr']:.1f} dB"
        elif "psnr" in splats.meta:
            text += f", fit {splats.meta['psnr']:.1f} dB"
        tiles.append(_label(recon_u8, text))
        rows.append(np.concatenate(tiles, axis=1))
        info.append(entry)
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0))) for r in rows]
    Image.fromarray(np.concatenate(rows, axis=0)).save(output)
    return info
