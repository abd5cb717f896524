"""`collate_splats`: variable splat counts → one padded batch plus a boolean mask; `Sample`, the
dict of a sample and of a batch."""
from __future__ import annotations

import warnings

import torch
from torch.utils.data import default_collate

# old key → (its new name, when the old one means it): the keys renamed in 0.2, read until 0.3
RENAMED = {"source_image": ("image", "the stored image"),
           "image": ("rendered", "the rendered splats (SplatDataset(render=))")}


class Sample(dict):
    """A plain dict of a sample's or a batch's keys (the table in `gsformat.loaders.dataset`)
    that still answers ``sample[old key]`` for a key renamed in 0.2, with a
    ``DeprecationWarning``: ``source_image`` (now ``image``) and, in a render sample without a
    stored image, ``image`` (now ``rendered``). Only ``[]`` does: ``in``, ``get`` and iteration
    see the new keys alone."""

    def __missing__(self, key):
        new, what = RENAMED.get(key, (None, None)) if isinstance(key, str) else (None, None)
        if new is None or not dict.__contains__(self, new):
            raise KeyError(key)
        warnings.warn(f"the sample key {key!r} is now {new!r} ({what}); the old name goes in "
                      f"0.3", DeprecationWarning, stacklevel=2)
        return self[new]

PAD_SPLAT = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0)  # valid (l11, l22 > 0) and colourless


def collate_splats(batch: list[dict], pad_to: int | None = None,
                   dtype: torch.dtype | None = None) -> dict:
    """Collate samples of `SplatDataset` (or any dicts with ``splats [N_i, 8]``).

    ``splats`` becomes ``[B, N_max, 8]`` (N_max = the largest N_i, or ``pad_to``) padded with
    colourless unit splats — so even an unmasked render is right — and ``mask`` ``[B, N_max]``
    is True for real splats. Other tensors and numbers are stacked, strings become lists
    (torch's ``default_collate``). Works with ``pin_memory=True``.

    ``dtype`` converts the batched splats, in one pass: with ``SplatDataset(dtype=torch.float16)``
    (the stored precision) and ``functools.partial(collate_splats, dtype=torch.float32)``, the
    conversion happens once per batch instead of once per sample, and workers ship half the bytes.
    """
    if not batch:
        raise ValueError("collate_splats got an empty batch")
    counts = [len(sample["splats"]) for sample in batch]
    width = max(counts) if pad_to is None else pad_to
    if max(counts) > width:
        raise ValueError(f"a sample has {max(counts)} splats, more than pad_to={pad_to}; "
                         f"use SplatDataset(max_splats=...) to cap them")
    tensors = [torch.as_tensor(sample["splats"]) for sample in batch]
    splats = torch.empty(len(batch), width, 8, dtype=tensors[0].dtype)
    mask = torch.ones(len(batch), width, dtype=torch.bool)
    if all(n == width for n in counts):  # the common case: one copy, no padding
        torch.stack(tensors, out=splats)
    else:
        pad = torch.tensor(PAD_SPLAT, dtype=splats.dtype)
        for i, (tensor, n) in enumerate(zip(tensors, counts)):
            splats[i, :n] = tensor
            splats[i, n:] = pad
            mask[i, n:] = False
    rest = [{k: v for k, v in sample.items() if k != "splats"} for sample in batch]
    keys = [set(sample) for sample in rest]
    if any(k != keys[0] for k in keys):
        odd = sorted(set.union(*keys) - set.intersection(*keys))
        raise ValueError(f"a batch mixes samples with and without {odd} (streams converted "
                         f"with different options, e.g. one with --keep-image): convert them "
                         f"alike, or turn the column off (SplatDataset(load_image=False))")
    out = Sample(default_collate(rest) if rest[0] else {})
    out["splats"] = splats if dtype is None else splats.to(dtype)
    out["mask"] = mask
    out["n_splats"] = torch.tensor(counts)
    return out
