"""Shard-by-shard iteration for any `streaming.StreamingDataset` subclass.

streaming's iterator runs two helper threads that each take a file lock and touch shared memory
for every *sample*, and that sleep in 7 ms ticks whenever they are ``predownload`` samples ahead
or behind; with 4,096 small samples it delivered ~900 samples/s here whatever the decoding cost.
`ShardwiseIteration` keeps every decision streaming makes — the partition over nodes, ranks and
workers, the shuffle, resumption (``_resume_incr_epoch``, ``_get_work``) and the cache
(``prepare_shard``, ``get_item``, eviction) — and only changes how the epoch is walked: a prefetch
thread prepares each shard ``predownload`` samples before its first use, the loop checks a shard's
state only when the shard changes, and rows are read from memory-mapped shards. The samples and
their order are streaming's (`tests/test_loader.py` compares them, with workers and after a
resumption). It uses streaming's private epoch state, so it is tied to the streaming releases in
``pyproject.toml`` and falls back to streaming's iterator when that state is missing.

Use: ``class MyDataset(ShardwiseIteration, StreamingDataset)``; override ``_sample(row, idx)`` to
turn a decoded MDS row into a sample (``__getitem__`` should do the same through ``get_item``).
"""
from __future__ import annotations

import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from threading import Event
from time import sleep, time_ns

import numpy as np

from ..format import mds
from ..format.errors import FormatError

try:  # streaming's epoch state; without it, streaming's own iterator is used
    from streaming.base.dataset import TICK, _Iterator, _IterState, _ShardState
except ImportError:  # pragma: no cover - a streaming release that moved them
    _Iterator = None


class ShardwiseIteration:
    """Mixin: put it before `StreamingDataset` in the bases. ``fast_iteration = False`` on an
    instance selects streaming's iterator."""

    fast_iteration = True

    def _sample(self, row: dict, idx: int):
        """A decoded MDS row → the sample (default: the row itself)."""
        return row

    def _where(self, idx: int) -> str:
        """``shard.00003.mds, sample 17`` for a global sample index."""
        shard_id, offset = self.spanner[idx]
        return f"{_shard_name(self, shard_id)}, sample {offset}"

    def _wait_for_shard(self, shard_id: int, future) -> None:
        """Make ``shard_id`` local: prepare it here, or wait — at most ``download_timeout``
        seconds — for the prefetch thread that is preparing it. streaming's own (blocking) wait
        has no bound: a prepare that failed leaves the shard "preparing" for ever, so this thread
        only ever calls ``prepare_shard`` non-blocking — the prefetcher may take the shard between
        a look at its state and the call."""
        deadline = time_ns() + int(1e9 * self._shard_timeout(shard_id))
        while True:
            if self._shard_states[shard_id] != _ShardState.PREPARING:
                try:
                    self.prepare_shard(shard_id, False)  # returns at once if another has it
                except FormatError:
                    raise
                except Exception as exc:  # FileNotFoundError, a checksum or network failure, …
                    raise FormatError(f"cannot fetch shard: {type(exc).__name__}: {exc}",
                                      _shard_url(self, shard_id)) from None
                if self._shard_states[shard_id] == _ShardState.LOCAL:
                    return
            if self._event.is_set() or future.done():
                _raise_prefetch_failure(self, future)
            if time_ns() > deadline:
                raise FormatError(f"shard not ready after {self._shard_timeout(shard_id):.0f} s "
                                  f"(download_timeout)", _shard_url(self, shard_id))
            sleep(TICK)

    def _shard_timeout(self, shard_id: int) -> float:
        stream = self.streams[self.stream_per_shard[shard_id]]
        return float(stream.download_timeout) * max(1, int(stream.download_retry) + 1)

    def __iter__(self):
        """This worker's samples for the epoch, in exactly streaming's order (module docstring)."""
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
        keys: set = set()  # this worker's keys in this epoch: a key twice is a broken dataset
        try:
            for pos, (sample_id, shard_id) in enumerate(zip(sample_ids.tolist(),
                                                            shard_ids.tolist())):
                if self._event.is_set():
                    _raise_prefetch_failure(self, future)
                if it._state != iterating:  # a new epoch started on this dataset (a lock-free
                    break                     # read of it.should_exit(); once per sample)
                if sample_id != -1:
                    try:
                        if shard_id != previous_shard:
                            if self._shard_states[shard_id] != local:
                                # bounded wait; get_item re-prepares a shard that is evicted
                                # again before its rows are read
                                self._wait_for_shard(shard_id, future)
                            self._shard_access_times[shard_id] = time_ns()  # for eviction
                            previous_shard = shard_id
                        row = rows.read(shard_id, sample_id)
                        sample = self[sample_id] if row is None else self._sample(row, sample_id)
                    except Exception:
                        if self._event.is_set():  # the prefetcher's error names the shard
                            _raise_prefetch_failure(self, future)
                        raise
                    key = sample.get("key") if isinstance(sample, dict) else None
                    if key is not None:
                        if key in keys:
                            raise FormatError(f"key {key!r} appears twice in this epoch "
                                              f"(duplicate samples or shards)",
                                              self._where(sample_id))
                        keys.add(key)
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
                try:
                    self.prepare_shard(shard_id, False)
                except Exception as exc:  # the iterating thread raises it (shard named)
                    raise FormatError(f"cannot fetch shard: {type(exc).__name__}: {exc}",
                                      _shard_url(self, shard_id)) from None
        finally:
            it.on_exit()


class _MappedRows:
    """MDS rows read from memory maps of the shards (a few kept open), instead of streaming's
    open–seek–read–close per sample, parsed by the format's own MDS reader (`format.mds`: every
    count, offset and size checked). ``read`` returns None whenever streaming's own path is needed
    (a shard not on disk yet, or not an MDS shard), so `get_item`'s download and retry logic stays
    in charge of the cache. A mapping outlives an eviction of its file (the data stays valid).
    The ``splats`` column comes as a memoryview of the mapping (the record decoder copies what it
    keeps); the ``image`` column as JPEG bytes.
    """

    def __init__(self, dataset, keep: int = 4):
        self.dataset, self.keep = dataset, keep
        self.open: dict[int, tuple] = {}  # shard id → (mmap, spans, config, first, name)

    def _map(self, shard_id: int):
        shard = self.dataset.shards[shard_id]
        names = getattr(shard, "column_names", None)
        if names is None or not hasattr(shard, "raw_data"):
            return None
        name = shard.raw_data.basename
        path = os.path.join(shard.dirname, shard.split, name)
        try:
            with open(path, "rb") as f:
                # MAP_POPULATE (Linux): map every page now, in one call, instead of one page
                # fault per 4 KiB on first touch (~7 per 25 KB record)
                mapped = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ,
                                   flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        except (FileNotFoundError, ValueError):  # not there (yet), or empty
            return None
        try:
            spans = mds.sample_spans(mapped)
            if len(spans) != shard.samples:
                raise FormatError(f"header claims {len(spans)} samples, the index "
                                  f"{shard.samples}")
        except FormatError as exc:
            mapped.close()
            raise exc.at(name) from None
        config = (list(names), list(shard.column_encodings), list(shard.column_sizes))
        first = int(self.dataset.sample_offset_per_shard[shard_id])
        if len(self.open) >= self.keep:
            self.open.pop(next(iter(self.open)))  # unmapped when no row views it any more
        self.open[shard_id] = (mapped, spans, config, first, name)
        return self.open[shard_id]

    def read(self, shard_id: int, sample_id: int) -> dict | None:
        entry = self.open.get(shard_id) or self._map(shard_id)
        if entry is None:
            return None
        mapped, spans, config, first, name = entry
        local = sample_id - first
        begin, end = spans[local]  # checked when the shard was mapped
        try:  # a view, no copy: msgpack reads the record in place
            return mds.decode_sample(memoryview(mapped)[begin:end], *config, views=_VIEWS)
        except FormatError as exc:
            raise exc.at(f"{name}, sample {local}") from None

    def close(self) -> None:
        self.open.clear()  # a mapping is unmapped once the last row viewing it is gone


_VIEWS = frozenset({"splats"})


def _shard_name(dataset, shard_id: int) -> str:
    raw_info, _ = dataset.shards[shard_id].file_pairs[0]
    return raw_info.basename


def _shard_url(dataset, shard_id: int) -> str:
    """Where a shard comes from: ``remote/split/basename`` (or the local path)."""
    stream = dataset.streams[dataset.stream_per_shard[shard_id]]
    raw_info, zip_info = dataset.shards[shard_id].file_pairs[0]
    base = stream.remote or stream.local
    name = (zip_info or raw_info).basename
    return "/".join(part.rstrip("/") for part in (base, stream.split, name) if part)


def _raise_prefetch_failure(dataset, future) -> None:
    """Raise the prefetch thread's error (a FormatError naming the shard) once it has failed;
    any other failure of the background threads as one FormatError too."""
    failure = future.exception() if future.done() else None
    if isinstance(failure, FormatError):
        raise failure
    if failure is not None:
        raise FormatError(f"shard prefetch failed: {type(failure).__name__}: {failure}")
    if dataset._event.is_set():
        raise FormatError("a background thread of the loader failed (see its log)")


if _Iterator is not None:
    class _ShardRunIterator(_Iterator):
        """streaming's per-epoch iterator state, with one helper thread (the prefetcher) to wait
        for on exit instead of streaming's two."""
        _num_threads_to_exit = 1
