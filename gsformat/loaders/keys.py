"""No key twice in an epoch, across every DataLoader worker of a rank (SPEC.md § 9: a reader that
streams a dataset SHOULD check it at no cost beyond reading).

Each worker sees only its share of the epoch, so a key duplicated in two shards that two workers
read is invisible to each of them alone. `SharedKeys` is a table in shared memory, one per rank,
that its workers fill with the keys they yield; `EpochKeys` is one worker's view of it for one
epoch. A worker checks its own keys at once (a key twice in its share fails at the second
occurrence, before it is yielded) and publishes them to the table every `FLUSH_EVERY` keys and at
the end of its share, under a file lock; a key another worker published for another sample fails
there. Either way the error names both samples, in index order, so it reads the same whichever
worker meets it first.

Table layout: ``[capacity, 2]`` uint64, open addressing (linear probing) on the key's xxh64:
``(xxh64, tag)`` with ``tag = (epoch + 1) << 40 | sample id``. A slot whose tag is of another
epoch is free, so nothing is cleared between epochs; a sample id seen twice (an upsampled stream
repeats samples on purpose) is not a duplicate. Capacity 1.4 × the rank's epoch
(``len(dataset)``): 22.4 bytes of shared memory per sample (streaming's own epoch takes 8).
Where ``/dev/shm`` has not twice that free, no table is made and each worker checks its own keys
only (with a warning): a process that touches shared memory past /dev/shm's size is killed.
"""
from __future__ import annotations

import math
import os
import shutil
import warnings

import numpy as np
import xxhash

from ..core.errors import FormatError

FLUSH_EVERY = 64
ID_BITS = 40  # sample ids below 2⁴⁰; the epoch + 1 in the 24 bits above
ID_MASK = (1 << ID_BITS) - 1


def key_hash(key: str) -> int:
    return xxhash.xxh64_intdigest(key.encode("utf-8", "surrogatepass"))


class SharedKeys:
    """The rank's table (created by the rank's process, zeroed, before any worker starts)."""

    def __init__(self, capacity: int, name: str, lock_path: str):
        from streaming.base.shared import SharedMemory
        self.capacity = capacity
        self.lock_path = lock_path
        self.shm = SharedMemory(name=f"{name}_{capacity}", size=16 * capacity)
        self.table()[:] = 0  # a stale table of a killed run under the same name: forget it

    @classmethod
    def for_epoch(cls, n_samples: int, name: str, lock_path: str) -> "SharedKeys | None":
        """The table for a rank's epoch of ``n_samples``, or None (with a warning) where
        /dev/shm lacks room for it."""
        capacity = max(1024, math.ceil(1.4 * n_samples))
        free = shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else None
        if free is not None and 16 * capacity > free // 2:
            warnings.warn(f"keys are checked within each DataLoader worker only: a check across "
                          f"workers needs {16 * capacity >> 20} MiB of /dev/shm, "
                          f"{free >> 20} MiB are free", stacklevel=3)
            return None
        return cls(capacity, name, lock_path)

    def table(self) -> np.ndarray:
        return np.ndarray((self.capacity, 2), np.uint64, buffer=self.shm.buf)

    def publish(self, entries: dict[int, int], epoch: int) -> tuple[int, int, int] | None:
        """Insert {xxh64: sample id}; the first (xxh64, sample id, other sample id) already there
        for another sample of this epoch, or None. A full table stops checking (never a hang)."""
        from filelock import FileLock
        if not hasattr(self, "_lock"):
            self._lock = FileLock(self.lock_path)
        table = self.table()
        capacity, epoch_tag = self.capacity, epoch + 1
        with self._lock:
            for digest, sample_id in entries.items():
                slot = digest % capacity
                for _ in range(capacity):
                    tag = int(table[slot, 1])
                    if tag >> ID_BITS != epoch_tag:  # free: empty, or of another epoch
                        table[slot, 0] = digest
                        table[slot, 1] = epoch_tag << ID_BITS | sample_id
                        break
                    if int(table[slot, 0]) == digest:
                        other = tag & ID_MASK
                        if other != sample_id:
                            return digest, sample_id, other
                        break
                    slot = (slot + 1) % capacity
        return None

    def __getstate__(self):  # the lock holds a threading lock: made again where it is used
        state = dict(self.__dict__)
        state.pop("_lock", None)
        return state


class EpochKeys:
    """One worker's keys in one epoch, checked against its own at once and against the other
    workers' through `SharedKeys` (``shared=None``: this worker's alone)."""

    def __init__(self, shared: SharedKeys | None, epoch: int, where):
        self.shared, self.epoch, self.where = shared, epoch, where
        self.mine: dict[int, int] = {}  # xxh64 → sample id
        self.pending: dict[int, tuple[int, str]] = {}  # xxh64 → (sample id, key)

    def add(self, key: str, sample_id: int) -> None:
        digest = key_hash(key)
        other = self.mine.get(digest)
        if other is not None and other != sample_id:
            raise self._duplicate(key, sample_id, other)
        self.mine[digest] = sample_id
        if self.shared is not None:
            self.pending[digest] = (sample_id, key)
            if len(self.pending) >= FLUSH_EVERY:
                self.flush()

    def flush(self) -> None:
        """Publish the pending keys (at the end of the share too: the other workers may not have
        seen them yet, but they check theirs against these when they publish)."""
        if self.shared is None or not self.pending:
            return
        pending, self.pending = self.pending, {}
        found = self.shared.publish({d: sid for d, (sid, _) in pending.items()}, self.epoch)
        if found is not None:
            digest, sample_id, other = found
            raise self._duplicate(pending[digest][1], sample_id, other)

    def _duplicate(self, key: str, sample_id: int, other: int) -> FormatError:
        first, second = sorted((sample_id, other))
        return FormatError(f"key {key!r} appears twice in this epoch: also at "
                           f"{self.where(first)} (duplicate samples or shards)",
                           self.where(second))
