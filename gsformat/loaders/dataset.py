"""`SplatDataset`: a `streaming.StreamingDataset` that decodes splat records.

A sample's keys (the one table of them; ``collate_splats`` batches them, below):

==================  =============================================  =============================
key                 type, shape                                    present
==================  =============================================  =============================
``key``             str                                            always
``height``          int: the record's canvas height                always
``width``           int: the record's canvas width                 always
``splats``          tensor ``[N, 8]``, ``dtype`` (float32)         unless ``render=``
``rendered``        float tensor ``[3, h, w]`` in [0, 1]: the      with ``render=(h, w)``
                    splats rasterised
``image``           float tensor ``[3, H, W]`` in [0, 1]: the      the dataset stores an
                    stored image column (the stored JPEG,          ``image`` column (``convert
                    decoded)                                       --keep-image``) and
                                                                   ``load_image=True`` (default)
``caption``,        as stored (str, int, str, str)                 the dataset has the column
``label``,
``source``,
``meta``
any other column    as stored                                      the dataset has the column
==================  =============================================  =============================

``meta`` is a tar's or img2dataset's JSON sidecar, as text. A stored column named like a
computed key (``splats``, ``height``, ``width``, ``rendered``) is shadowed by it. A batch of
`collate_splats` has the same keys, stacked (tensors and numbers) or as lists (strings), with
``splats`` ``[B, N_max, 8]`` padded, and adds ``mask`` ``[B, N_max]`` (bool, True for real
splats) and ``n_splats`` ``[B]``.

Renamed in 0.2 (the old names work, with a ``DeprecationWarning``, until 0.3): the argument
``load_source_image`` is ``load_image``; the key ``source_image`` (the stored image) is
``image``; with ``render=``, the rasterised splats were ``image`` and are ``rendered`` (reading
``sample["image"]`` of a render sample without a stored image still gives them, warning).

Every streaming argument passes through (``remote``, ``local``, ``streams``, ``shuffle``,
``batch_size``, ``cache_limit``, …), so shuffling, resumption (`StreamingDataLoader` state
dicts), multi-worker and multi-node partitioning are streaming's. Streaming's own pitfalls, and
what to do:

- Build a fresh dataset for each DataLoader; a dataset already iterated in the main process and
  then handed to a multi-worker loader can fail (``UnixFileLock … inherited across fork``).
- A killed run can leave shared memory behind: call
  ``streaming.base.util.clean_stale_shared_memory()`` before starting again.
- ``local=`` with ``remote=None`` makes streaming write decompressed shards into the source
  folder; give a remote (or let it cache elsewhere) when the folder must stay untouched.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from streaming import StreamingDataset

from ..core.errors import FormatError
from ..core import constants as C
from ..core.record import decode_params
from .augment import SplatAugment, keep_strongest
from .collate import Sample
from .iteration import ShardwiseIteration
from .stream import STREAM_NAME, checked


def _image_tensor(image) -> torch.Tensor:
    """A PIL image (streaming's jpeg column) → float ``[3, H, W]`` in [0, 1]."""
    from PIL import Image
    if isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    array = np.array(image.convert("RGB"), np.uint8)  # a writable copy for torch
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255)


class SplatDataset(ShardwiseIteration, StreamingDataset):
    """Splat shards as PyTorch samples: each a dict whose keys are the table of this module's
    docstring (``splats``, ``height``, ``width``, ``rendered``, ``image``, the stored columns).

    Args:
        dtype: ``torch.float32`` (default) or ``torch.float16`` for ``splats``.
        max_splats: keep at most this many splats: the strongest by luminance of |colour| ×
            l11·l22 (see `gsformat.loaders.augment.splat_strength`).
        augment: a `SplatAugment` (exact splat-space flip, jitter, dropout), or None.
        render: ``(h, w)``: rasterise the splats into ``rendered`` ``[3, h, w]`` in [0, 1] and
            drop ``splats``, so an unchanged RGB model can train from splat shards.
        load_image: decode the stored image (the ``image`` column) when the dataset has one;
            ``False`` leaves it out of the sample. (``load_source_image``: its old name.)
        fast_iteration: iterate shard by shard (`gsformat.loaders.iteration`; same samples in the
            same order as streaming's iterator, which ``False`` selects).
        augment_seed: augmentation randomness is a function of (seed, epoch, sample index),
            so it is reproducible and survives resumption.
        **kwargs: passed to `streaming.StreamingDataset`. ``validate_hash`` defaults to
            ``"xxh64"`` (gsformat writers record it), so a corrupt compressed or downloaded shard
            raises ``<shard>: xxh64 hash mismatch``; pass ``validate_hash=None`` for datasets
            written without hashes. Each local shard file is checked too, against the index's
            raw size and hash. ``download_timeout`` (60 s) bounds the wait for a shard.

    Every problem with the data — a malformed index or record, a shard missing, unreadable, of
    another size or hash than the index says or with another sample count, non-finite values, a
    missing or empty key, a key seen twice in an epoch (across DataLoader workers too) — raises
    one `gsformat.FormatError` naming the shard and sample (and the dataset's URL where it is
    the index or a download), in either iterator, with or without workers, every run: the
    samples before the fault are yielded, then the error (`gsformat.loaders.iteration`). Before
    streaming opens any shard, the index is checked as the validator checks it: names that
    leave the dataset or the cache (``../``, absolute, symlinks) are refused, and a shard the
    index says is empty is opened to check it is (`gsformat.loaders.stream`).
    """

    def __init__(self, *, dtype: torch.dtype = torch.float32, max_splats: int | None = None,
                 augment: SplatAugment | None = None, render: tuple[int, int] | None = None,
                 load_image: bool | None = None, augment_seed: int = 0,
                 fast_iteration: bool = True, **kwargs):
        if "load_source_image" in kwargs:
            if load_image is not None:
                raise TypeError("give load_image, not both it and load_source_image (its old "
                                "name)")
            warnings.warn("SplatDataset(load_source_image=) is now load_image= (the old name "
                          "goes in 0.3)", DeprecationWarning, stacklevel=2)
            load_image = kwargs.pop("load_source_image")
        kwargs.setdefault("validate_hash", "xxh64")  # what SplatWriter records: no silent rot
        if kwargs.get("streams"):
            kwargs["streams"] = [checked(stream) for stream in kwargs["streams"]]
        else:
            kwargs.setdefault("stream_name", STREAM_NAME)
        super().__init__(**kwargs)
        if dtype not in (torch.float16, torch.float32):
            raise ValueError(f"dtype must be torch.float16 or torch.float32, got {dtype}")
        if max_splats is not None and max_splats < 1:
            raise ValueError(f"max_splats must be ≥ 1, got {max_splats}")
        self.splat_dtype = dtype
        self.max_splats = max_splats
        self.augment = augment
        self.render_hw = tuple(render) if render else None
        self.load_image = True if load_image is None else bool(load_image)
        self.augment_seed = augment_seed
        if self.render_hw and load_image is None and self.load_image and any(
                "image" in getattr(shard, "column_names", ()) for shard in self.shards):
            warnings.warn("SplatDataset(render=): the rendered splats are the key 'rendered' "
                          "(they were 'image' before 0.2); 'image' is the stored image now (it "
                          "was 'source_image'); pass load_image= to say which you want and "
                          "silence this", DeprecationWarning, stacklevel=2)
        self.fast_iteration = fast_iteration

    def __getitem__(self, idx: int) -> dict:
        try:
            row = super().__getitem__(idx)
        except FormatError as exc:  # a shard's fault names its file; a sample's is located here
            raise (exc if exc.where else exc.at(self._where(idx))) from None
        except Exception as exc:  # a shard that streaming could not fetch or parse
            raise FormatError(f"cannot read sample: {type(exc).__name__}: {exc}",
                              self._where(idx)) from None
        return self._sample(row, idx)

    def _sample(self, row: dict, idx: int) -> dict:
        """A decoded MDS row → the sample dict."""
        # the format's decoding path, every check of SPEC.md § 4.1 and § 2 included
        header, params = decode_params(row["splats"], self._where(idx))
        if self.max_splats is not None:
            params = keep_strongest(params, self.max_splats)
        if self.augment is not None:
            seed = [self.augment_seed, int(getattr(self, "next_epoch", 0)), int(idx)]
            params = self.augment(params, np.random.default_rng(seed))
        key = row.get("key")
        if not isinstance(key, str) or not key:
            raise FormatError(f"missing or empty key ({key!r:.40})", self._where(idx))
        sample = Sample((name, value) for name, value in row.items()
                        if name not in ("splats", "image"))
        sample["height"], sample["width"] = header[C.KEY_HEIGHT], header[C.KEY_WIDTH]
        if self.load_image and "image" in row:
            sample["image"] = _image_tensor(row["image"])
        tensor = torch.from_numpy(np.ascontiguousarray(params))  # float16, as stored
        if self.splat_dtype != torch.float16:
            tensor = tensor.to(self.splat_dtype)
        if self.render_hw is not None:
            from ..render import render_splats
            sample["rendered"] = render_splats(tensor, height=self.render_hw[0],
                                               width=self.render_hw[1])[0]
        else:
            sample["splats"] = tensor
        return sample
