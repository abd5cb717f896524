"""Shard-by-shard iteration for any `streaming.StreamingDataset` subclass, and the checks every
way of reading a sample makes.

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

Both iterators (``fast_iteration = False`` selects streaming's) and ``dataset[i]`` check the same
things, so a damaged dataset fails the same way in each, every run:

- every local shard file, once per process and file, before its rows are read: its size and one
  hash of the index's ``raw_data`` (`mds.check_file`; streaming checks the compressed file only
  when it decompresses it, never a raw file already in the cache or a local dataset's), and the
  header's sample count against the index's (`_check_shard`);
- a shard that cannot be fetched is a `FormatError` naming it, raised when the epoch reaches that
  shard — not when the prefetcher meets it, so the samples before it are yielded every run — and
  streaming's helper threads never print ``exception calling callback`` tracebacks; a failed
  preparation returns the shard to "remote" (streaming leaves it "preparing", which every other
  worker would wait on), so each worker that needs it meets the same error;
- no key twice in an epoch, across the DataLoader workers of a rank (`keys`).

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

from ..io import mds
from ..core.errors import FormatError
from .keys import EpochKeys, SharedKeys

try:  # streaming's epoch state; without it, streaming's own iterator is used
    from streaming.base.dataset import TICK, _Iterator, _IterState, _ShardState
except ImportError:  # pragma: no cover - a streaming release that moved them
    _Iterator = None


class ShardwiseIteration:
    """Mixin: put it before `StreamingDataset` in the bases. ``fast_iteration = False`` on an
    instance selects streaming's iterator."""

    fast_iteration = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from streaming.base.shared import _get_path
        name = _get_path(self._shm_prefix_int, f"gsformat_keys_{self._unique_rank_world.rank}")
        self._shared_keys = SharedKeys.for_epoch(len(self), name,
                                                 os.path.join(self._filelock_root, name))

    def _sample(self, row: dict, idx: int):
        """A decoded MDS row → the sample (default: the row itself)."""
        return row

    def _where(self, idx: int) -> str:
        """``shard.00003.mds, sample 17`` for a global sample index."""
        shard_id, offset = self.spanner[idx]
        return f"{_shard_name(self, shard_id)}, sample {offset}"

    # ---- checks shared by every path ---------------------------------------------------------
    def _check_shard(self, shard_id: int, data=None) -> None:
        """The local copy of a shard against the index: size, one ``raw_data`` hash (the
        stream's ``validate_hash`` where the index has it) and the header's sample count. Once per
        process and file (inode, size, modification time): a shard evicted and fetched again is
        checked again. ``data``: the file's bytes where the caller has them (a mapping)."""
        shard = self.shards[shard_id]
        if getattr(shard, "column_names", None) is None:  # not an MDS shard: streaming's
            return
        path = _local_path(self, shard_id)
        status = os.stat(path)
        identity = (status.st_ino, status.st_size, status.st_mtime_ns)
        checked = self.__dict__.setdefault("_checked_shards", {})
        if checked.get(shard_id) == identity:
            return
        raw_info = shard.file_pairs[0][0]
        stream = self.streams[self.stream_per_shard[shard_id]]
        if data is None:
            with open(path, "rb") as f:
                data = f.read()
        try:
            mds.check_file(data, {"bytes": raw_info.bytes, "hashes": raw_info.hashes},
                           prefer=getattr(stream, "validate_hash", None))
            mds.check_sample_count(data, {"samples": shard.samples})
        except FormatError as exc:
            raise exc.at(path) from None
        checked[shard_id] = identity

    def _check_local_shard(self, shard_id: int) -> None:
        """`_check_shard` where the shard is local now (else it is checked once it is)."""
        if _Iterator is None or self._shard_states[shard_id] == _ShardState.LOCAL:
            try:
                self._check_shard(shard_id)
            except FileNotFoundError:  # a zip not decompressed yet, or evicted: checked later
                pass

    def get_item(self, sample_id: int, retry: int = 7):
        """streaming's: read the row, preparing the shard when its file is not there (again, if
        it is evicted before it is read); with the shard checked (`_check_shard`) before its row
        is read, or after it had to be prepared, and a bounded wait for a shard another thread
        prepares (`_wait_for_shard`). Unlike streaming's, it does not fail because a helper thread
        of streaming's iterator did: `_iter_streaming` reads on without them."""
        shard_id, offset = self.spanner[sample_id]
        shard = self.shards[shard_id]
        self._check_local_shard(shard_id)
        for _ in range(1 + retry):
            try:
                row = shard[offset]
                break
            except FileNotFoundError:
                self._wait_for_shard(shard_id)
        else:
            raise FormatError(f"the shard was evicted {1 + retry} times before it could be read "
                              f"(cache_limit too low?)", _shard_url(self, shard_id))
        self._shard_access_times[shard_id] = time_ns()  # for eviction, as streaming does
        self._check_local_shard(shard_id)
        return row

    def prepare_shard(self, shard_id: int, blocking: bool = True) -> None:
        """streaming's, its failures raised as one `FormatError` naming the shard; a failed
        preparation leaves the shard "remote" again, so the next to need it tries (and fails)
        itself instead of waiting for ever on a shard streaming left "preparing". A shard whose
        files are nowhere on local disk, where there is no remote store to fetch it from, fails
        at once (streaming retries it, with back-off, for seconds)."""
        if _missing_locally(self, shard_id):
            raise self._failed(shard_id, FormatError("shard file is missing",
                                                     _shard_url(self, shard_id)))
        try:
            super().prepare_shard(shard_id, blocking)
        except Exception as exc:
            lock = getattr(self, "_cache_filelock", None)
            if lock is not None:
                if lock.is_locked:  # failed while holding it (eviction)
                    lock.release(force=True)
                with lock:
                    if self._shard_states[shard_id] == _ShardState.PREPARING:
                        self._shard_states[shard_id] = _ShardState.REMOTE
            error = exc if isinstance(exc, FormatError) else _fetch_error(self, shard_id, exc)
            raise self._failed(shard_id, error) from None

    def _failed(self, shard_id: int, error: FormatError) -> FormatError:
        """Keep a shard's preparation error for this epoch: its threads raise it at once."""
        failures = self.__dict__.get("_epoch_failures")
        if failures is not None:
            failures[shard_id] = error
        return error

    # ---- streaming's iterator, its failures raised ---------------------------------------------
    def on_exception(self, future) -> None:
        """streaming's callback for its helper threads, without its re-raise (raised in a
        callback, an exception is only logged: ``exception calling callback for <Future …>``):
        the threads stop, and `_iter_streaming` reads the rest of the epoch without them."""
        if future.exception() is not None:
            self._event.set()

    def _prepare_thread(self, it) -> None:
        _run_helper(super()._prepare_thread, it)

    def _ready_thread(self, it) -> None:
        _run_helper(self._ready_loop, it)

    def _ready_loop(self, it) -> None:
        """streaming's ready thread, waiting for each shard through `_wait_for_shard` (bounded,
        and preparing a shard that another worker failed to prepare) instead of on a state that
        may never come."""
        while not (it.should_exit() or it.ready_index == it.total or self._event.is_set()):
            if self.predownload is not None and \
                    it.ready_index - it.yield_index > self.predownload:
                sleep(TICK)
                continue
            sample_id = int(it.sample_ids[it.ready_index])
            if sample_id != -1:
                self._wait_for_shard(self.spanner[sample_id][0])
            it.ready_index += 1
        it.on_exit()

    def _each_sample_id(self, it):
        for sample_id in super()._each_sample_id(it):
            self._current_sample_id = int(sample_id)
            yield sample_id

    def _iter_streaming(self, keys_of_epoch):
        """streaming's iterator. Its helper threads stop at the first shard they cannot prepare
        and its loop then ends the epoch early, silently; here the rest of the epoch is read
        without them (each shard prepared when reached), so a bad shard raises at its place."""
        if getattr(self, "_event", None) is not None:
            self._event.clear()
        keys = None
        try:
            for sample in super().__iter__():
                keys = keys or keys_of_epoch()
                _check_key(keys, sample, self._current_sample_id)
                yield sample
            it = getattr(self, "_iterator", None)
            if it is not None and self._event.is_set() and it.yield_index < it.total:
                while getattr(it, "helpers_done", 0) < 2:  # they stop at the event within a
                    sleep(TICK)                          # tick; cleared before, one would wait
                self._event.clear()
                keys = keys or keys_of_epoch()
                for pos in range(it.yield_index, it.total):
                    sample_id = int(it.sample_ids[pos])
                    if sample_id != -1:
                        sample = self[sample_id]
                        _check_key(keys, sample, sample_id)
                        yield sample
                    it.yield_index = pos + 1
            if keys is not None:
                keys.flush()
        finally:  # an error or an abandoned epoch: streaming's helper threads stop too
            if getattr(self, "_iterator", None) is not None:
                self._iterator.non_blocking_exit()

    # ---- the shard-by-shard iterator -------------------------------------------------------------
    def _wait_for_shard(self, shard_id: int) -> None:
        """Make ``shard_id`` local: prepare it here, or wait — at most ``download_timeout``
        seconds — for the thread or worker that is preparing it, or raise the error a thread of
        this epoch met preparing it. It only ever calls ``prepare_shard`` non-blocking:
        streaming's blocking wait has no bound, and another may take the shard between a look at
        its state and the call."""
        deadline = time_ns() + int(1e9 * self._shard_timeout(shard_id))
        failures = self.__dict__.get("_epoch_failures", {})
        while True:
            if shard_id in failures:
                raise failures[shard_id]
            if self._shard_states[shard_id] != _ShardState.PREPARING:
                self.prepare_shard(shard_id, False)  # returns at once if another has it
                if self._shard_states[shard_id] == _ShardState.LOCAL:
                    return
            if time_ns() > deadline:
                raise FormatError(f"shard not ready after {self._shard_timeout(shard_id):.0f} s "
                                  f"(download_timeout)", _shard_url(self, shard_id))
            sleep(TICK)

    def _shard_timeout(self, shard_id: int) -> float:
        stream = self.streams[self.stream_per_shard[shard_id]]
        return float(stream.download_timeout) * max(1, int(stream.download_retry) + 1)

    def __iter__(self):
        """This worker's samples for the epoch, in exactly streaming's order (module docstring)."""
        def keys_of_epoch():  # once streaming's __iter__ has counted the epoch
            return EpochKeys(self._shared_keys, int(self.next_epoch) - 1, self._where)
        self._epoch_failures = {}  # shard id → the FormatError a thread met preparing it
        if not self.fast_iteration or _Iterator is None:
            yield from self._iter_streaming(keys_of_epoch)
            return
        if hasattr(self, "_iterator"):  # a previous epoch still running: stop it first
            self._iterator.exit()
        if not hasattr(self, "_executor"):
            self._executor = ThreadPoolExecutor()
        if not hasattr(self, "_event"):
            self._event = Event()
        self._event.clear()
        self._unique_worker_world = self._unique_rank_world.detect_workers()
        self._parallel_worker_world = self._parallel_rank_world.detect_workers()
        epoch, sample_in_epoch = self._resume_incr_epoch()
        sample_ids = self._get_work(epoch, sample_in_epoch)  # [n] int64, -1 = padding
        if not len(sample_ids):
            return
        shard_ids = np.searchsorted(self.sample_offset_per_shard, sample_ids, side="right") - 1
        self._iterator = it = _ShardRunIterator(sample_ids)
        self._executor.submit(self._prefetch_shards, it, sample_ids, shard_ids)
        local, iterating = _ShardState.LOCAL, _IterState.ITERATING
        previous_shard = -1
        rows = _MappedRows(self)
        keys = EpochKeys(self._shared_keys, epoch, self._where)
        try:
            for pos, (sample_id, shard_id) in enumerate(zip(sample_ids.tolist(),
                                                            shard_ids.tolist())):
                if it._state != iterating:  # a new epoch started on this dataset (a lock-free
                    break                     # read of it.should_exit(); once per sample)
                if sample_id != -1:
                    if shard_id != previous_shard:
                        if shard_id in self._epoch_failures:
                            raise self._epoch_failures[shard_id]
                        if self._shard_states[shard_id] != local:
                            # bounded wait; get_item re-prepares a shard that is evicted
                            # again before its rows are read
                            self._wait_for_shard(shard_id)
                        self._shard_access_times[shard_id] = time_ns()  # for eviction
                        previous_shard = shard_id
                    row = rows.read(shard_id, sample_id)
                    sample = self[sample_id] if row is None else self._sample(row, sample_id)
                    _check_key(keys, sample, sample_id)
                    yield sample
                it.yield_index = pos + 1
            if it._state == iterating:
                keys.flush()
        finally:
            rows.close()
            it.non_blocking_exit()  # an error or an abandoned epoch: the prefetcher stops too
            it.on_exit()

    def _prefetch_shards(self, it, sample_ids: np.ndarray, shard_ids: np.ndarray) -> None:
        """Prepare each shard, in order of first use, ``predownload`` samples ahead; a shard it
        cannot prepare is left to the loop, which raises its error when it reaches it."""
        try:
            valid = sample_ids != -1
            first_use = np.unique(shard_ids[valid], return_index=True)
            positions = np.flatnonzero(valid)[first_use[1]]
            for pos, shard_id in sorted(zip(positions.tolist(), first_use[0].tolist())):
                while (self.predownload is not None and pos - it.yield_index > self.predownload
                       and not it.should_exit()):
                    sleep(TICK)
                if it.should_exit():
                    break
                try:
                    self.prepare_shard(shard_id, False)
                except FormatError:  # kept in _epoch_failures: the loop raises it there
                    pass
        finally:
            it.on_exit()


def _run_helper(thread, it) -> None:
    """One of streaming's helper threads, counted out however it ends (streaming counts a thread
    out only when it returns, and its yield loop counts as one of the two it waits for)."""
    try:
        thread(it)
    except BaseException:
        it.on_exit()
        raise
    finally:
        with it._lock:
            it.helpers_done = getattr(it, "helpers_done", 0) + 1


def _check_key(keys: EpochKeys, sample, sample_id: int) -> None:
    key = sample.get("key") if isinstance(sample, dict) else None
    if isinstance(key, str):
        keys.add(key, sample_id)


class _MappedRows:
    """MDS rows read from memory maps of the shards (a few kept open), instead of streaming's
    open–seek–read–close per sample, parsed by the format's own MDS reader (`io.mds`: every
    count, offset and size checked). ``read`` returns None whenever streaming's own path is needed
    (a shard not on disk yet, not an MDS shard, or with a column encoding `io.mds` does not
    decode as streaming does), so `get_item`'s download and retry logic stays in charge of the
    cache. A mapping outlives an eviction of its file (the data stays valid). Each shard is
    checked (`ShardwiseIteration._check_shard`) when it is mapped. The ``splats`` column comes as
    a memoryview of the mapping (the record decoder copies what it keeps); the ``image`` column
    as JPEG bytes.
    """

    def __init__(self, dataset, keep: int = 4):
        self.dataset, self.keep = dataset, keep
        self.open: dict[int, tuple] = {}  # shard id → (mmap, spans, config, first, name)

    def _map(self, shard_id: int):
        shard = self.dataset.shards[shard_id]
        names = getattr(shard, "column_names", None)
        if names is None or not hasattr(shard, "raw_data") or not all(
                encoding in DECODED_ALIKE for encoding in shard.column_encodings):
            return None
        name = shard.raw_data.basename
        path = _local_path(self.dataset, shard_id)
        try:
            with open(path, "rb") as f:
                # MAP_POPULATE (Linux): map every page now, in one call, instead of one page
                # fault per 4 KiB on first touch (~7 per 25 KB record)
                mapped = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ,
                                   flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        except (FileNotFoundError, ValueError):  # not there (yet), or empty
            return None
        try:
            self.dataset._check_shard(shard_id, mapped)
            spans = mds.sample_spans(mapped)
        except (FormatError, FileNotFoundError):
            mapped.close()
            raise
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
# the encodings io.mds decodes to what streaming's reader returns (others: streaming's path)
DECODED_ALIKE = frozenset({"str", "bytes", "jpeg", *mds.FIXED_SIZES})


def _shard_name(dataset, shard_id: int) -> str:
    raw_info, _ = dataset.shards[shard_id].file_pairs[0]
    return raw_info.basename


def _local_path(dataset, shard_id: int) -> str:
    """The shard's uncompressed file in the local cache (or the local dataset)."""
    stream = dataset.streams[dataset.stream_per_shard[shard_id]]
    return os.path.join(stream.local, stream.split or "", _shard_name(dataset, shard_id))


def _missing_locally(dataset, shard_id: int) -> bool:
    """No file of the shard where streaming would read or copy it from — the cache, and a remote
    that is a local folder — and no remote store that could hold it."""
    stream = dataset.streams[dataset.stream_per_shard[shard_id]]
    if stream.remote and "://" in stream.remote:
        return False
    roots = [os.path.join(stream.local, stream.split or "")]
    if stream.remote:
        roots.append(os.path.join(stream.remote, stream.split or ""))
    names = [info.basename for pair in dataset.shards[shard_id].file_pairs for info in pair
             if info is not None]
    return not any(os.path.exists(os.path.join(root, name)) for root in roots for name in names)


def _shard_url(dataset, shard_id: int) -> str:
    """Where a shard comes from: ``remote/split/basename`` (or the local path)."""
    stream = dataset.streams[dataset.stream_per_shard[shard_id]]
    raw_info, zip_info = dataset.shards[shard_id].file_pairs[0]
    base = stream.remote or stream.local
    name = (zip_info or raw_info).basename
    return "/".join(part.rstrip("/") for part in (base, stream.split, name) if part)


def _fetch_error(dataset, shard_id: int, exc: Exception) -> FormatError:
    """streaming's failure to prepare a shard as one line naming it."""
    stream = dataset.streams[dataset.stream_per_shard[shard_id]]
    text = str(exc)
    if isinstance(exc, FileNotFoundError) or (stream.remote is None and "remote" in text):
        reason = "shard file is missing"  # streaming: "path to remote dataset must be provided"
    elif text.startswith("Checksum failure"):
        reason = f"{stream.validate_hash} hash mismatch: the file changed or is corrupt"
    else:
        reason = f"cannot fetch shard: {type(exc).__name__}: {text}"
    return FormatError(reason, _shard_url(dataset, shard_id))


if _Iterator is not None:
    class _ShardRunIterator(_Iterator):
        """streaming's per-epoch iterator state, with one helper thread (the prefetcher) to wait
        for on exit instead of streaming's two."""
        _num_threads_to_exit = 1
