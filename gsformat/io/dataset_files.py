"""Splat datasets: MDS shards + ``gsformat.json`` manifest (SPEC.md § 6).

`SplatWriter` is a thin layer over streaming's `MDSWriter` (local directory or remote URL, zstd
and a hash by default) that encodes `SplatSet`s into records and writes the manifest last.
`read_manifest`, `read_index` and `iter_dataset` open a dataset without a `StreamingDataset`
(validation, inspection, rendering); training reads through `gsformat.loaders.SplatDataset`.
"""
from __future__ import annotations

import io
import json
import time
from typing import Any, Iterator

import numpy as np

from ..core import constants as C
from . import mds, storage
from ..core.errors import FormatError
from .._version import __version__
from ..core.record import codec_config, decode_record, encode_record, get_codec, read_header
from ..core.splatset import SplatSet



def _verbatim_jpeg_writer():
    """streaming's MDSWriter, except that an ``image`` given as JPEG bytes is stored as those
    bytes: streaming's JPEG encoding re-encodes a decoded image at libjpeg's default quality 75,
    which would store a second, lossier copy of the image the splats were fitted to."""
    from streaming import MDSWriter
    from streaming.base.format.mds.encodings import mds_encode

    class Writer(MDSWriter):
        def encode_sample(self, sample: dict[str, Any]) -> bytes:
            sizes, data = [], []
            for name, encoding, size in zip(self.column_names, self.column_encodings,
                                            self.column_sizes):
                value = sample[name]
                datum = bytes(value) if encoding == "jpeg" and isinstance(
                    value, (bytes, bytearray, memoryview)) else mds_encode(encoding, value)
                if size is None:  # variable-size columns carry their size in the head
                    sizes.append(len(datum))
                elif size != len(datum):
                    raise ValueError(f"column {name!r}: {len(datum)} bytes, not {size}")
                data.append(datum)
            return np.array(sizes, np.uint32).tobytes() + b"".join(data)

    return Writer


class SplatWriter:
    """Write splat records (plus key/caption/label/source/image columns) as an MDS dataset.
    ``image`` is JPEG bytes (stored verbatim) or a PIL image (encoded by streaming at quality 75).

    >>> with SplatWriter("out/", columns=["caption"]) as writer:   # doctest: +SKIP
    ...     writer.write("img-0001", splats, caption="a cat")
    """

    def __init__(self, out: str, columns=(), codecs=(), compression: str | None =
                 C.DEFAULT_COMPRESSION, hashes=C.DEFAULT_HASHES,
                 size_limit: int = C.DEFAULT_SHARD_SIZE_LIMIT, manifest: dict | None = None,
                 exist_ok: bool = False):
        unknown = set(columns) - set(C.COLUMN_ENCODINGS)
        if unknown:
            raise ValueError(f"unknown columns {sorted(unknown)}; "
                             f"known: {sorted(C.COLUMN_ENCODINGS)}")
        names = list(C.REQUIRED_COLUMNS) + [c for c in columns if c not in C.REQUIRED_COLUMNS]
        self.columns = {name: C.COLUMN_ENCODINGS[name] for name in names}
        self.out = out
        self.codecs = list(codecs)
        self.manifest_extra = dict(manifest or {})
        self._writer = _verbatim_jpeg_writer()(out=out, columns=self.columns, compression=compression,
                                 hashes=sorted(hashes), size_limit=size_limit, exist_ok=exist_ok)
        self._keys: set[str] = set()
        self._n_splats: list[int] = []
        self._psnr: list[float] = []
        self._record_bytes = 0

    def write(self, key: str, splats: SplatSet | bytes, **columns: Any) -> None:
        """Add one sample. ``splats`` is a `SplatSet` (encoded with the writer's codecs) or an
        already encoded record."""
        if key in self._keys:
            raise ValueError(f"duplicate key {key!r}")
        record = splats if isinstance(splats, bytes) else encode_record(splats, self.codecs)
        header = read_header(record)
        sample = {"key": str(key), "splats": record}
        for name in self.columns:
            if name in sample:
                continue
            if columns.get(name) is None:
                raise ValueError(f"sample {key!r} lacks column {name!r}")
            sample[name] = columns[name]
        self._writer.write(sample)
        self._keys.add(key)
        self._n_splats.append(header[C.KEY_N_SPLATS])
        psnr = header.get(C.KEY_FIT, {}).get("psnr")
        if isinstance(psnr, (int, float)):
            self._psnr.append(float(psnr))
        self._record_bytes += len(record)

    def stats(self) -> dict:
        n = len(self._keys)
        counts = np.array(self._n_splats or [0])
        stats = {"n_samples": n, "n_splats_mean": float(counts.mean()),
                 "n_splats_min": int(counts.min()), "n_splats_max": int(counts.max()),
                 "record_bytes_mean": self._record_bytes / max(n, 1)}
        if self._psnr:
            stats["psnr_mean"] = float(np.mean(self._psnr))
            stats["psnr_min"] = float(np.min(self._psnr))
        return stats

    def finish(self) -> dict:
        """Flush shards, write index.json, then gsformat.json. Returns the manifest."""
        self._writer.finish()
        manifest = make_manifest(self.columns, len(self._keys), self.codecs, self.stats(),
                                 **self.manifest_extra)
        write_manifest(self.out, manifest)
        return manifest

    def __enter__(self) -> "SplatWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        else:  # keep finished shards; leave no manifest claiming a complete dataset
            self.cancel()

    def cancel(self) -> None:
        """Stop without finishing: shards not yet written are dropped, no index or manifest is
        written (a converter's unit that failed leaves no part claiming to be complete)."""
        self._writer.cancel_future_jobs()


def make_manifest(columns: dict, n_samples: int, codecs=(), stats: dict | None = None,
                  **extra) -> dict:
    manifest = {
        "format": C.MANIFEST_FORMAT,
        "format_version": list(C.FORMAT_VERSION),
        "layout": C.LAYOUT_ID,
        "columns": dict(columns),
        "n_samples": int(n_samples),
        "codecs": [codec_config(get_codec(c)) for c in codecs],
        "stats": dict(stats or {}),
        "created_by": f"gsformat {__version__}",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    manifest.update(extra)
    return manifest


def write_manifest(root: str, manifest: dict) -> None:
    data = json.dumps(manifest, indent=2, sort_keys=True).encode()
    storage.write_bytes(storage.join(root, C.MANIFEST_NAME), data)


def read_json(path: str) -> dict:
    try:
        data = storage.read_bytes(path, C.MAX_JSON_BYTES)
    except ValueError as exc:
        raise FormatError(str(exc)) from None
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"not valid JSON: {exc}", path) from None
    if not isinstance(value, dict):
        raise FormatError("expected a JSON object", path)
    return value


def read_manifest(root: str) -> dict:
    manifest = read_json(storage.join(root, C.MANIFEST_NAME))
    version = manifest.get("format_version")
    if manifest.get("format") != C.MANIFEST_FORMAT or not (
            isinstance(version, list) and len(version) == 2):
        raise FormatError("not a gsformat manifest (format/format_version)", C.MANIFEST_NAME)
    if version[0] != C.FORMAT_MAJOR:
        raise FormatError(f"unknown major version {version[0]} (this reader understands "
                          f"{C.FORMAT_MAJOR}.x)", C.MANIFEST_NAME)
    if "n_samples" in manifest and type(manifest["n_samples"]) is not int:
        raise FormatError("n_samples must be an integer", C.MANIFEST_NAME)
    return manifest


def read_index(root: str) -> dict:
    path = storage.join(root, C.INDEX_NAME)
    try:
        return mds.read_index(storage.read_bytes(path, C.MAX_JSON_BYTES))
    except FormatError as exc:
        raise exc.at(C.INDEX_NAME)


def read_shard(root: str, info: dict) -> bytes:
    """Raw (decompressed) bytes of one shard of an index entry (checked by `read_index`): the
    stored file's size and hash, then the decompressed bytes' (`mds.check_file`: one digest of
    each, where the index carries one), so a damaged shard is a `FormatError` naming it."""
    raw, zipped = info["raw_data"], info.get("zip_data")
    name = (zipped or raw)["basename"]
    try:
        data = storage.read_bytes(storage.member(root, name), mds.MAX_SHARD_BYTES)
    except FileNotFoundError:
        raise FormatError("shard file is missing", name) from None
    except FormatError as exc:
        raise exc.at(name) from None
    except (ValueError, OSError) as exc:
        raise FormatError(f"cannot read shard: {exc}", name) from None
    try:
        mds.check_file(data, zipped or raw)
        if not zipped:
            return data
        name = raw["basename"]
        data = mds.decompress(data, info.get("compression"), raw["bytes"])
        mds.check_file(data, raw)
        return data
    except FormatError as exc:
        raise exc.at(name) from None


def iter_dataset(root: str, decode: bool = True) -> Iterator[dict]:
    """Every sample of a dataset in index order: every stored column (``meta`` included), with
    ``splats`` as a `SplatSet` (``decode=False`` leaves the record bytes) and ``image`` as a PIL
    image. Each shard is checked before its first sample is yielded: size, hash, sample count
    (`read_shard`)."""
    index = read_index(root)
    for info in index["shards"]:
        name = info["raw_data"]["basename"]
        shard = read_shard(root, info)
        try:
            spans = mds.check_sample_count(shard, info)
        except FormatError as exc:
            raise exc.at(name) from None
        for i, sample in mds.iter_samples(shard, info, spans):
            if isinstance(sample, FormatError):
                raise sample.at(f"{name}, sample {i}")
            if decode:
                sample["splats"] = decode_record(sample["splats"], where=f"{name}, sample {i}")
                if "image" in sample:
                    from PIL import Image
                    sample["image"] = Image.open(io.BytesIO(sample["image"])).convert("RGB")
            yield sample
