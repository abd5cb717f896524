"""Streaming splat shards into training batches; the checks that must pass before training."""
from __future__ import annotations

import hashlib
import os
import warnings

import torch
import torch.nn.functional as F

from ..core import constants as C
from ..io import storage
from ..io.dataset_files import read_manifest
from ..loaders import SplatDataset, collate_splats

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def check_dataset(url: str, need: tuple[str, ...], what: str) -> dict:
    """Read the manifest and fail before training if a needed column is missing."""
    try:
        manifest = read_manifest(url)
    except FileNotFoundError:  # as convert, validate and inspect say it
        there = storage.is_remote(url) or os.path.isdir(url)
        raise FileNotFoundError(f"{url}: not a gsformat dataset (no gsformat.json)" if there
                                else f"{url}: not found") from None
    columns = manifest.get("columns", {})
    missing = [c for c in need if c not in columns]
    if missing:
        raise ValueError(f"{url}: {what} needs column(s) {missing}, the dataset has "
                         f"{sorted(columns)}")
    return manifest


def cache_for(url: str, root: str) -> str:
    """streaming's local copy of dataset ``url`` under ``root``: one folder per dataset content
    (the digest of its index.json). streaming reuses any shard file it finds in ``local``, so a
    cache shared by two datasets (one checkpoint evaluated on several), or by a dataset rewritten
    in place, would silently feed the shards of the first."""
    index = storage.read_bytes(storage.join(url, C.INDEX_NAME), max_bytes=C.MAX_JSON_BYTES)
    return os.path.join(root, hashlib.sha256(index).hexdigest()[:16])


def make_loader(url: str, cache: str, batch_size: int, shuffle: bool, workers: int = 0,
                max_splats: int | None = None, seed: int = 0, load_image: bool | None = None,
                augment=None, **old):
    """A StreamingDataLoader over dataset ``url``, cached under ``cache`` (`cache_for`);
    ``load_image``: decode the stored image (`SplatDataset`; ``load_images`` is its old name,
    with a DeprecationWarning until 0.3)."""
    from streaming import StreamingDataLoader
    if set(old) - {"load_images"}:
        raise TypeError(f"make_loader() got unexpected keyword arguments {sorted(old)}")
    if "load_images" in old:
        if load_image is not None:
            raise TypeError("give load_image, not both it and load_images (its old name)")
        warnings.warn("make_loader(load_images=) is now load_image= (the old name goes in 0.3)",
                      DeprecationWarning, stacklevel=2)
        load_image = old["load_images"]
    local = cache_for(url, cache)
    os.makedirs(local, exist_ok=True)
    dataset = SplatDataset(remote=url, local=local, shuffle=shuffle, shuffle_seed=seed,
                           batch_size=batch_size, max_splats=max_splats,
                           load_image=load_image is not False, augment=augment,
                           augment_seed=seed)
    return StreamingDataLoader(dataset, batch_size=batch_size, num_workers=workers,
                               collate_fn=collate_splats, drop_last=False)


def pixels_for(batch: dict, image_size: int, device) -> torch.Tensor:
    """CLIP-normalised pixels: the stored image, or the rendered splats (with a warning)."""
    if "image" in batch:
        images = batch["image"]
    else:
        from ..render import render_splats
        warnings.warn("the dataset stores no images (convert --keep-image): the teacher "
                      "sees rendered splats instead", stacklevel=2)
        images = render_splats(batch["splats"], batch["mask"], int(batch["height"][0]),
                               int(batch["width"][0]))
    images = images.to(device, torch.float32)
    if images.shape[-1] != image_size or images.shape[-2] != image_size:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear",
                               antialias=True, align_corners=False)
    mean = torch.tensor(CLIP_MEAN, device=device)[:, None, None]
    std = torch.tensor(CLIP_STD, device=device)[:, None, None]
    return (images - mean) / std


def image_size_of(clip) -> int:
    size = clip.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else int(size)
