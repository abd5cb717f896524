"""`CheckedStream`: a streaming `Stream` that checks a dataset before streaming touches a shard.

streaming trusts ``index.json``: it joins each shard's basename to the remote and to the local
cache and then downloads, decompresses and deletes files at those paths, so an index with a
basename like ``../../victim.txt`` writes or removes files outside the cache. `get_shards` runs
before any shard I/O (streaming calls `set_up_local` and `prepare_shard` only after it), so the
checks live there: every entry of the index the validator's way (`gsformat.io.mds.read_index`:
types, relative names inside the dataset, no file listed twice), a local dataset's names
resolved without leaving it (symlinks included), a shard the index calls empty opened to check
that it is (streaming never opens one), and ``gsformat.json``'s major version.

`SplatDataset` uses it for the dataset it is given (``stream_name="gsformat"``) and for every
stream in ``streams=``.
"""
from __future__ import annotations

import copy
import os

from streaming.base.format import get_index_basename
from streaming.base.stream import Stream, streams_registry

from ..core import constants as C
from ..io import mds, storage
from ..io.dataset_files import read_manifest, read_shard
from ..core.errors import FormatError

STREAM_NAME = "gsformat"


class CheckedStream(Stream):
    """A `streaming.Stream` whose index and manifest are checked before any shard is opened."""

    def url(self) -> str:
        """Where the dataset is: the remote, or the local directory without one."""
        base = self.remote or self.local
        return storage.join(base, self.split) if self.split else base

    def get_shards(self, world, allow_unsafe_types: bool):
        index_path = os.path.join(self.local, self.split, get_index_basename())
        try:
            shards = super().get_shards(world, allow_unsafe_types)
        except FormatError:
            raise
        except Exception as exc:  # streaming's KeyError / TypeError / JSONDecodeError / …
            if os.path.isfile(index_path):
                self._check_index(index_path)  # names the fault when the index is it
            raise FormatError(f"cannot open the dataset: {type(exc).__name__}: {exc}",
                              self.url()) from None
        self._check_index(index_path)
        self._check_manifest()
        return shards

    def _check_index(self, index_path: str) -> None:
        try:
            with open(index_path, "rb") as f:
                index = mds.read_index(f.read(C.MAX_JSON_BYTES + 1))
        except FormatError as exc:
            raise exc.at(f"{self.url()}/{C.INDEX_NAME}") from None
        roots = [os.path.join(self.local, self.split)]
        if self.remote and not storage.is_remote(self.remote):
            roots.append(os.path.join(self.remote, self.split))  # a local folder as remote
        for info in index["shards"]:
            for pair in (info["raw_data"], info.get("zip_data")):
                for root in roots if pair else ():
                    try:
                        storage.member(root, pair["basename"])
                    except FormatError as exc:
                        raise exc.at(f"{self.url()}/{C.INDEX_NAME}") from None
        for info in index["shards"]:
            if info["samples"] == 0:
                self._check_empty_shard(info)

    def _check_empty_shard(self, info: dict) -> None:
        """A shard the index says holds no sample: streaming never opens it, so a count of 0
        where the shard holds samples would drop them without a word. Read it (it is small when
        the index is right) and compare its header."""
        name = info["raw_data"]["basename"]
        try:
            mds.check_sample_count(read_shard(self.url(), info), info)
        except FormatError as exc:
            raise (exc.at(self.url()) if exc.where else exc.at(f"{self.url()}/{name}")) from None
        except Exception as exc:  # a remote store's own errors
            raise FormatError(f"cannot read shard: {type(exc).__name__}: {exc}",
                              f"{self.url()}/{name}") from None

    def _check_manifest(self) -> None:
        """gsformat.json, where the dataset has one: a known major version (SPEC.md § 3)."""
        root = self.url()
        try:
            read_manifest(root)
        except FileNotFoundError:
            return  # a plain MDS dataset of splat records: nothing to check
        except FormatError as exc:
            raise exc.at(root) from None
        except OSError as exc:
            raise FormatError(f"cannot read {C.MANIFEST_NAME}: {exc}", root) from None


streams_registry.register(STREAM_NAME, func=CheckedStream)


def checked(stream: Stream) -> CheckedStream:
    """A `CheckedStream` with the settings of ``stream`` (a user's `streams=` entry)."""
    if isinstance(stream, CheckedStream):
        return stream
    copied = copy.copy(stream)
    copied.__class__ = CheckedStream
    return copied
