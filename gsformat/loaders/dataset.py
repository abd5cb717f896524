"""`SplatDataset`: a `streaming.StreamingDataset` that decodes splat records.

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
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from threading import Event
from time import sleep, time_ns

import numpy as np
import torch
from streaming import StreamingDataset

try:  # streaming's epoch state; the fast iterator falls back to streaming's own without it
    from streaming.base.dataset import TICK, _Iterator, _IterState, _ShardState
except ImportError:  # pragma: no cover - a streaming release that moved them
    _Iterator = None

from ..format.errors import FormatError
from ..format import constants as C
from ..format.record import decode_payload, read_header
from .augment import SplatAugment, keep_strongest


def _image_tensor(image) -> torch.Tensor:
    """A PIL image (streaming's jpeg column) → float ``[3, H, W]`` in [0, 1]."""
    from PIL import Image
    if isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    array = np.array(image.convert("RGB"), np.uint8)  # a writable copy for torch
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255)


class SplatDataset(StreamingDataset):
    """Splat shards as PyTorch samples.

    Each sample is a dict: ``splats`` (``[N, 8]`` tensor, ``dtype``), ``height``, ``width``,
    ``key``, and ``caption`` / ``label`` / ``source`` where the dataset has them; the stored
    source image (``image`` column) comes as ``source_image`` ``[3, H, W]`` float.

    Args:
        dtype: ``torch.float32`` (default) or ``torch.float16`` for ``splats``.
        max_splats: keep at most this many splats: the strongest by luminance of |colour| ×
            l11·l22 (see `gsformat.loaders.augment.splat_strength`).
        augment: a `SplatAugment` (exact splat-space flip, jitter, dropout), or None.
        render: ``(H, W)``: also rasterise the splats into ``image`` ``[3, H, W]`` in [0, 1] and
            drop ``splats``, so an unchanged RGB model can train from splat shards.
        load_source_image: decode the stored source image when the dataset has one.
        fast_iteration: iterate shard by shard (see `__iter__`; same samples in the same order as
            streaming's iterator, which ``False`` selects).
        augment_seed: augmentation randomness is a function of (seed, epoch, sample index),
            so it is reproducible and survives resumption.
        **kwargs: passed to `streaming.StreamingDataset`. ``validate_hash`` defaults to
            ``"xxh64"`` (gsformat writers record it), so a corrupt compressed or downloaded shard
            raises ``Checksum failure: <shard>``; pass ``validate_hash=None`` for datasets
            written without hashes.
    """

    def __init__(self, *, dtype: torch.dtype = torch.float32, max_splats: int | None = None,
                 augment: SplatAugment | None = None, render: tuple[int, int] | None = None,
                 load_source_image: bool = True, augment_seed: int = 0,
                 fast_iteration: bool = True, **kwargs):
        kwargs.setdefault("validate_hash", "xxh64")  # what SplatWriter records: no silent rot
        super().__init__(**kwargs)
        if dtype not in (torch.float16, torch.float32):
            raise ValueError(f"dtype must be torch.float16 or torch.float32, got {dtype}")
        if max_splats is not None and max_splats < 1:
            raise ValueError(f"max_splats must be ≥ 1, got {max_splats}")
        self.splat_dtype = dtype
        self.max_splats = max_splats
        self.augment = augment
        self.render_hw = tuple(render) if render else None
        self.load_source_image = load_source_image
        self.augment_seed = augment_seed
        self.fast_iteration = fast_iteration

    # ---- iteration ------------------------------------------------------------------------
    def __iter__(self):
        """This worker's samples for the epoch, in exactly streaming's order.

        streaming's own iterator runs two helper threads that each take a file lock and touch
        shared memory for every *sample* (~300 µs of GIL time per sample here, more than decoding
        a splat record). This one keeps streaming's partition, shuffle, resumption and cache
        logic (``_resume_incr_epoch``, ``_get_work``, ``prepare_shard``, ``get_item``) and works per
        *shard*: a prefetch thread prepares each shard ``predownload`` samples ahead of its first
        use, and the loop checks a shard's state only when the shard changes. Set
        ``fast_iteration=False`` to use streaming's iterator unchanged.
        """
        if not self.fast_iteration or _Iterator is None:
            yield from super().__iter__()
            return
        if hasattr(self, "_iterator"):  # a previous epoch still running: stop it first
            self._iterator.exit()
        if not hasattr(self, "_executor"):
            self._executor = ThreadPoolExecutor()
        if not hasattr(self, "_event"):
            self._event = Event()
        elif self._event.is_set():
            raise RuntimeError("Background thread failed. Check other traceback.")
        self._unique_worker_world = self._unique_rank_world.detect_workers()
        self._parallel_worker_world = self._parallel_rank_world.detect_workers()
        epoch, sample_in_epoch = self._resume_incr_epoch()
        sample_ids = self._get_work(epoch, sample_in_epoch)  # [n] int64, -1 = padding
        if not len(sample_ids):
            return
        shard_ids = np.searchsorted(self.sample_offset_per_shard, sample_ids, side="right") - 1
        self._iterator = it = _ShardRunIterator(sample_ids)
        future = self._executor.submit(self._prefetch_shards, it, sample_ids, shard_ids)
        future.add_done_callback(self.on_exception)
        local, iterating = _ShardState.LOCAL, _IterState.ITERATING
        previous_shard = -1
        rows = _MappedRows(self)
        try:
            for pos, (sample_id, shard_id) in enumerate(zip(sample_ids.tolist(),
                                                            shard_ids.tolist())):
                if self._event.is_set():
                    _raise_prefetch_failure(future)
                    raise RuntimeError("Background thread failed. Check other traceback.")
                if it._state != iterating:  # a new epoch started on this dataset (a lock-free
                    break                     # read of it.should_exit(); once per sample)
                if sample_id != -1:
                    try:
                        if shard_id != previous_shard and self._shard_states[shard_id] != local:
                            # blocks until downloaded; get_item re-prepares a shard evicted again
                            self.prepare_shard(shard_id)
                        if shard_id != previous_shard:
                            self._shard_access_times[shard_id] = time_ns()  # for eviction
                        previous_shard = shard_id
                        row = rows.read(shard_id, sample_id)
                        sample = self[sample_id] if row is None else self._sample(row, sample_id)
                    except Exception:
                        if self._event.is_set():  # the prefetcher's error names the shard
                            _raise_prefetch_failure(future)
                        raise
                    yield sample
                it.yield_index = pos + 1
        finally:
            rows.close()
            it.on_exit()

    def _prefetch_shards(self, it, sample_ids: np.ndarray, shard_ids: np.ndarray) -> None:
        """Prepare each shard, in order of first use, ``predownload`` samples ahead."""
        try:
            valid = sample_ids != -1
            first_use = np.unique(shard_ids[valid], return_index=True)
            positions = np.flatnonzero(valid)[first_use[1]]
            for pos, shard_id in sorted(zip(positions.tolist(), first_use[0].tolist())):
                while (self.predownload is not None and pos - it.yield_index > self.predownload
                       and not it.should_exit() and not self._event.is_set()):
                    sleep(TICK)
                if it.should_exit() or self._event.is_set():
                    break
                self.prepare_shard(shard_id, False)
        finally:
            it.on_exit()

    def _where(self, idx: int) -> str:
        """``shard.00003.mds, sample 17`` for a global sample index."""
        shard_id, offset = self.spanner[idx]
        raw_info, _ = self.shards[shard_id].file_pairs[0]
        return f"{raw_info.basename}, sample {offset}"

    def __getitem__(self, idx: int) -> dict:
        try:
            row = super().__getitem__(idx)
        except Exception as exc:  # a shard that streaming could not parse
            raise FormatError(f"cannot read sample: {exc}", self._where(idx)) from exc
        return self._sample(row, idx)

    def _sample(self, row: dict, idx: int) -> dict:
        """A decoded MDS row → the sample dict."""
        try:  # decode_record without building a SplatSet (same checks, per sample µs count)
            header = read_header(row["splats"])
            params = decode_payload(header[C.KEY_PAYLOAD], header[C.KEY_CODECS],
                                    header[C.KEY_N_SPLATS])
        except FormatError as exc:
            raise exc.at(self._where(idx)) from None
        if self.max_splats is not None:
            params = keep_strongest(params, self.max_splats)
        if self.augment is not None:
            seed = [self.augment_seed, int(getattr(self, "next_epoch", 0)), int(idx)]
            params = self.augment(params, np.random.default_rng(seed))
        sample = {"key": row["key"], "height": header[C.KEY_HEIGHT],
                  "width": header[C.KEY_WIDTH]}
        for name in ("caption", "label", "source"):
            if name in row:
                sample[name] = row[name]
        if self.load_source_image and "image" in row:
            sample["source_image"] = _image_tensor(row["image"])
        tensor = torch.from_numpy(np.ascontiguousarray(params)).to(self.splat_dtype)
        if self.render_hw is not None:
            from ..render import render_splats
            sample["image"] = render_splats(tensor, height=self.render_hw[0],
                                            width=self.render_hw[1])[0]
        else:
            sample["splats"] = tensor
        return sample


class _MappedRows:
    """MDS rows read from memory maps of the shards (a few kept open), instead of streaming's
    open–seek–read–close per sample. ``read`` returns None whenever streaming's own path is needed
    (a shard not on disk yet, or not an MDS shard), so `get_item`'s download and retry logic stays
    in charge of the cache. A mapping outlives an eviction of its file (the data stays valid)."""

    def __init__(self, dataset, keep: int = 4):
        from streaming.base.format.mds.encodings import mds_decode
        self.dataset, self.keep, self.decode = dataset, keep, mds_decode
        self.open: dict[int, tuple] = {}  # shard id → (mmap, offsets, columns, name)

    def _map(self, shard_id: int):
        shard = self.dataset.shards[shard_id]
        names = getattr(shard, "column_names", None)
        if names is None or not hasattr(shard, "raw_data"):
            return None
        path = os.path.join(shard.dirname, shard.split, shard.raw_data.basename)
        try:
            with open(path, "rb") as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (FileNotFoundError, ValueError):  # not there (yet), or empty
            return None
        num = int.from_bytes(mapped[:4], "little")
        if 4 + 4 * (num + 1) > len(mapped) or num != shard.samples:
            mapped.close()
            raise FormatError(f"header claims {num} samples ({shard.samples} in the index) in a "
                              f"{len(mapped)}-byte shard", shard.raw_data.basename)
        offsets = np.frombuffer(mapped[4:8 + 4 * num], "<u4").tolist()
        if offsets != sorted(offsets) or offsets[0] < 8 + 4 * num or offsets[-1] > len(mapped):
            mapped.close()
            raise FormatError("sample offsets are inconsistent", shard.raw_data.basename)
        columns = list(zip(names, shard.column_encodings, shard.column_sizes))
        n_var = sum(1 for _, _, size in columns if not size)
        first = int(self.dataset.sample_offset_per_shard[shard_id])
        if len(self.open) >= self.keep:
            oldest = next(iter(self.open))
            self.open.pop(oldest)[0].close()
        self.open[shard_id] = (mapped, offsets, columns, n_var, first, shard.raw_data.basename)
        return self.open[shard_id]

    def read(self, shard_id: int, sample_id: int) -> dict | None:
        entry = self.open.get(shard_id) or self._map(shard_id)
        if entry is None:
            return None
        mapped, offsets, columns, n_var, first, name = entry
        local = sample_id - first
        begin, end = offsets[local], offsets[local + 1]  # checked when the shard was mapped
        data = mapped[begin:end]
        sizes = iter(np.frombuffer(data, "<u4", n_var).tolist())
        pos, row = 4 * n_var, {}
        for column, encoding, size in columns:
            size = size or next(sizes)
            if pos + size > len(data):
                raise FormatError(f"column {column!r} runs past the end of the sample",
                                  f"{name}, sample {local}")
            row[column] = self.decode(encoding, data[pos:pos + size])
            pos += size
        return row

    def close(self) -> None:
        for mapped, *_ in self.open.values():
            mapped.close()
        self.open.clear()


def _raise_prefetch_failure(future) -> None:
    """Raise the prefetch thread's error (it names the shard), if that is what failed."""
    failure = future.exception() if future.done() else None
    if failure is not None:
        raise RuntimeError(f"shard prefetch failed: {failure}") from failure


if _Iterator is not None:
    class _ShardRunIterator(_Iterator):
        """streaming's per-epoch iterator state, with one helper thread (the prefetcher) to wait
        for on exit instead of streaming's two."""
        _num_threads_to_exit = 1
