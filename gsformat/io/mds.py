"""A bounded reader for MDS shards (MosaicML streaming's format): the validator's, the loader's
and `iter_dataset`'s.

streaming's own reader trusts its input; this one checks every count and offset first, so a
corrupt shard yields a `FormatError` naming the shard and sample, never a crash or a huge
allocation. Joint MDS shard layout (little-endian)::

    [num_samples: uint32] [offsets: uint32 × (num_samples + 1)] [config: JSON] [samples ...]

    sample = [sizes: uint32 × (number of variable-size columns)] [column data, columns sorted]

Fixed-size encodings here: ``int`` (int64, 8 bytes). Variable: ``str`` (UTF-8), ``bytes``,
``jpeg``.
"""
from __future__ import annotations

import functools
import hashlib
import json

import numpy as np

from ..core.errors import FormatError
from ..core.zstd_frame import decompress_exact

MAX_SHARD_BYTES = (1 << 32) - 1  # MDS offsets are uint32
FIXED_SIZES = {"int": 8, "int8": 1, "int16": 2, "int32": 4, "int64": 8, "uint8": 1,
               "uint16": 2, "uint32": 4, "uint64": 8, "float16": 2, "float32": 4,
               "float64": 8}


@functools.lru_cache(maxsize=None)
def hash_names() -> frozenset[str]:
    """The shard hash algorithms MDS names (streaming's set: hashlib's and xxhash's)."""
    names = {a for a in hashlib.algorithms_available
             if hasattr(hashlib, a) and not a.startswith("shake_")}
    try:
        import xxhash
        names |= set(xxhash.algorithms_available)
    except ImportError:  # an xxh* hash is then reported as one this reader cannot check
        pass
    return frozenset(names)


def hex_digest(algo: str, data: bytes) -> str:
    """``algo``'s hex digest of ``data``, as streaming's ``get_hash`` computes it."""
    if algo.startswith("xxh"):
        import xxhash
        return getattr(xxhash, algo)(data).hexdigest()
    return getattr(hashlib, algo)(data).hexdigest()


# the algorithm a reader checks when a file carries several: the fastest first
HASH_PREFERENCE = ("xxh3_64", "xxh3_128", "xxh64", "xxh128", "xxh32", "blake2b", "md5", "sha1",
                   "blake2s", "sha256", "sha512")


def pick_hash(hashes: dict, prefer: str | None = None) -> str | None:
    """The one digest of ``hashes`` (algorithm → hex) a reader checks: ``prefer`` where the file
    carries it, else the fastest this reader can compute; None when it knows none of them
    (SPEC.md § 6.5: readers MAY skip hashes; a validator reports unknown ones)."""
    known = [algo for algo in hashes if algo in hash_names()]
    if prefer in known:
        return prefer
    ranked = sorted(known, key=lambda a: (HASH_PREFERENCE.index(a) if a in HASH_PREFERENCE
                                          else len(HASH_PREFERENCE), a))
    return ranked[0] if ranked else None


def check_file(data, file_info: dict, prefer: str | None = None) -> None:
    """A shard file's bytes (bytes, mmap) against their index entry (``raw_data`` or
    ``zip_data``): the size, and one digest (`pick_hash`), compared case-insensitively."""
    if len(data) != file_info["bytes"]:
        raise FormatError(f"{len(data)} bytes, the index says {file_info['bytes']} (truncated "
                          f"or overwritten)")
    hashes = file_info.get("hashes") or {}
    algo = pick_hash(hashes, prefer)
    if algo is not None and hex_digest(algo, data) != hashes[algo].lower():
        raise FormatError(f"{algo} hash mismatch: the file changed or is corrupt")


def check_sample_count(shard, shard_info: dict) -> list[tuple[int, int]]:
    """`sample_spans`, and the header's sample count against the index's (SPEC.md § 6.5)."""
    spans = sample_spans(shard)
    if len(spans) != shard_info["samples"]:
        raise FormatError(f"header claims {len(spans)} samples, the index "
                          f"{shard_info['samples']}")
    return spans


def decompress(data: bytes, compression: str | None, raw_size: int) -> bytes:
    """Undo a shard's compression, refusing a frame that claims more than ``raw_size``."""
    if not compression:
        return data
    algo = compression.split(":")[0]
    if algo != "zstd":
        raise FormatError(f"unsupported shard compression {compression!r} (validator reads zstd)")
    return decompress_exact(data, raw_size, source="index")


def sample_spans(shard: bytes) -> list[tuple[int, int]]:
    """(start, end) of every sample, after checking the header against the shard's size."""
    if len(shard) < 8:
        raise FormatError(f"shard of {len(shard)} bytes is too short for an MDS header")
    num = int.from_bytes(shard[:4], "little")
    if 4 + 4 * (num + 1) > len(shard):
        raise FormatError(f"header claims {num} samples, more than a {len(shard)}-byte shard holds")
    offsets = np.frombuffer(shard, "<u4", num + 1, 4).astype(np.int64)
    if (np.diff(offsets) < 0).any() or offsets[0] < 4 + 4 * (num + 1) or offsets[-1] != len(shard):
        raise FormatError(f"sample offsets are inconsistent (first {offsets[0]}, last "
                          f"{offsets[-1]}, shard size {len(shard)})")
    return list(zip(offsets[:-1].tolist(), offsets[1:].tolist()))


def decode_sample(data, names: list[str], encodings: list[str], sizes: list[int | None],
                  views: frozenset = frozenset()) -> dict:
    """One MDS sample (bytes, or a memoryview of a mapped shard) → {column: str | int | bytes},
    every size checked; the columns named in ``views`` stay views of ``data`` (no copy)."""
    n_var = sum(size is None for size in sizes)
    if len(data) < 4 * n_var:
        raise FormatError("sample too short for its column sizes")
    var_sizes = iter(np.frombuffer(data, "<u4", n_var).tolist())
    pos, sample = 4 * n_var, {}
    for name, encoding, size in zip(names, encodings, sizes):
        size = next(var_sizes) if size is None else size
        if pos + size > len(data):
            raise FormatError(f"column {name!r} runs past the end of the sample")
        raw = data[pos:pos + size]
        pos += size
        if name in views:
            sample[name] = raw
        elif encoding == "str":
            try:
                sample[name] = str(raw, "utf-8")
            except UnicodeDecodeError:
                raise FormatError(f"column {name!r} is not valid UTF-8") from None
        elif encoding in FIXED_SIZES and encoding.startswith(("int", "uint")):
            sample[name] = int.from_bytes(raw, "little", signed=encoding.startswith("int"))
        elif encoding in FIXED_SIZES:  # float16/32/64
            sample[name] = float(np.frombuffer(raw, "<f%d" % size)[0])
        else:
            sample[name] = bytes(raw)
    if pos != len(data):
        raise FormatError(f"sample has {len(data) - pos} trailing bytes")
    return sample


def shard_config(shard_info: dict) -> tuple[list[str], list[str], list[int | None]]:
    names = shard_info.get("column_names")
    encodings = shard_info.get("column_encodings")
    sizes = shard_info.get("column_sizes")
    if not (isinstance(names, list) and isinstance(encodings, list) and isinstance(sizes, list)
            and len(names) == len(encodings) == len(sizes)):
        raise FormatError("index entry lacks consistent column_names/encodings/sizes")
    return names, encodings, sizes


def iter_samples(shard: bytes, shard_info: dict, spans=None):
    """Yield (index, sample dict or FormatError) for every sample of a raw shard (``spans``:
    `sample_spans`' answer, where the caller has it)."""
    names, encodings, sizes = shard_config(shard_info)
    for i, (start, end) in enumerate(sample_spans(shard) if spans is None else spans):
        try:
            yield i, decode_sample(shard[start:end], names, encodings, sizes)
        except FormatError as exc:
            yield i, exc


MAX_BASENAME = 1024


def check_basename(name, what: str = "basename") -> str:
    """A file name taken from a dataset (an index basename, a part name): a relative path
    inside the dataset, checked before any I/O (SPEC.md § 6.4). '/'-separated parts, none
    empty, '.' or '..'; no leading '/', drive letter, backslash, NUL or URL scheme."""
    if type(name) is not str or not 0 < len(name) <= MAX_BASENAME:
        raise FormatError(f"{what} must be a non-empty string of at most {MAX_BASENAME} "
                          f"characters, got {name!r:.80}")
    bad = ("\x00" in name or "\\" in name or "://" in name or name.startswith("/")
           or (len(name) > 1 and name[1] == ":")
           or any(part in ("", ".", "..") for part in name.split("/")))
    if bad:
        raise FormatError(f"{what} {name!r:.80} is not a relative path inside the dataset")
    return name


def _check_file_info(info, what: str, required: bool) -> None:
    if info is None and not required:
        return
    if not isinstance(info, dict):
        raise FormatError(f"{what} must be a map")
    check_basename(info.get("basename"), f"{what}.basename")
    if type(info.get("bytes")) is not int or not 0 <= info["bytes"] <= MAX_SHARD_BYTES:
        raise FormatError(f"{what}.bytes must be an integer in [0, {MAX_SHARD_BYTES}], got "
                          f"{info.get('bytes')!r:.40}")
    hashes = info.get("hashes", {})
    if not isinstance(hashes, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                               for k, v in hashes.items()):
        raise FormatError(f"{what}.hashes must map algorithm names to strings")


def check_shard_entry(info) -> None:
    """One entry of index.json's ``shards``: every field a reader uses, of its type."""
    if not isinstance(info, dict):
        raise FormatError(f"a shard entry must be a map, got {type(info).__name__}")
    if info.get("format") != "mds":
        raise FormatError(f"shard format {info.get('format')!r:.40} is not mds")
    _check_file_info(info.get("raw_data"), "raw_data", True)
    _check_file_info(info.get("zip_data"), "zip_data", False)
    if info.get("zip_data") is not None and not isinstance(info.get("compression"), str):
        raise FormatError("a compressed shard must name its compression")
    if type(info.get("samples")) is not int or not 0 <= info["samples"] < (1 << 32):
        raise FormatError(f"samples must be an integer in [0, 2^32), got "
                          f"{info.get('samples')!r:.40}")
    shard_config(info)
    names, encodings, sizes = (info["column_names"], info["column_encodings"],
                               info["column_sizes"])
    if not (all(type(n) is str for n in names) and all(type(e) is str for e in encodings)
            and all(s is None or (type(s) is int and 0 <= s <= 1 << 20) for s in sizes)):
        raise FormatError("column_names/encodings must be strings, column_sizes integers or "
                          "null")
    if len(set(names)) != len(names):
        raise FormatError("column_names has duplicates")


def read_index(data: bytes) -> dict:
    """index.json → the index, every shard entry checked (`check_shard_entry`) and shard file
    names unique, so no reader meets a malformed entry or a path outside the dataset."""
    try:
        index = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise FormatError(f"index.json is not JSON: {exc}") from None
    if not isinstance(index, dict) or index.get("version") != 2 or not isinstance(
            index.get("shards"), list):
        raise FormatError("index.json must be an MDS index (version 2, a list of shards)")
    seen: set[str] = set()
    for i, info in enumerate(index["shards"]):
        try:
            check_shard_entry(info)
        except FormatError as exc:
            raise exc.at(f"shard entry {i}") from None
        for pair in (info["raw_data"], info.get("zip_data")):
            if pair is not None:
                if pair["basename"] in seen:
                    raise FormatError(f"shard file {pair['basename']!r} is listed twice",
                                      f"shard entry {i}")
                seen.add(pair["basename"])
    return index
