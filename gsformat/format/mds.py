"""A bounded reader for MDS shards (MosaicML streaming's format), used by the validator.

streaming's own reader trusts its input; this one checks every count and offset first, so a
corrupt shard yields a `FormatError` naming the shard and sample, never a crash or a huge
allocation. Joint MDS shard layout (little-endian)::

    [num_samples: uint32] [offsets: uint32 × (num_samples + 1)] [config: JSON] [samples ...]

    sample = [sizes: uint32 × (number of variable-size columns)] [column data, columns sorted]

Fixed-size encodings here: ``int`` (int64, 8 bytes). Variable: ``str`` (UTF-8), ``bytes``,
``jpeg``.
"""
from __future__ import annotations

import json

import numpy as np

from .errors import FormatError
from .zstd_frame import decompress_exact

MAX_SHARD_BYTES = (1 << 32) - 1  # MDS offsets are uint32
FIXED_SIZES = {"int": 8, "int8": 1, "int16": 2, "int32": 4, "int64": 8, "uint8": 1,
               "uint16": 2, "uint32": 4, "uint64": 8, "float16": 2, "float32": 4,
               "float64": 8}


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


def decode_sample(data: bytes, names: list[str], encodings: list[str],
                  sizes: list[int | None]) -> dict:
    """One MDS sample → {column: str | int | bytes}, every size checked."""
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
        if encoding == "str":
            try:
                sample[name] = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise FormatError(f"column {name!r} is not valid UTF-8") from None
        elif encoding in FIXED_SIZES and encoding.startswith(("int", "uint")):
            sample[name] = int.from_bytes(raw, "little", signed=encoding.startswith("int"))
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


def iter_samples(shard: bytes, shard_info: dict):
    """Yield (index, sample dict or FormatError) for every sample of a raw shard."""
    names, encodings, sizes = shard_config(shard_info)
    for i, (start, end) in enumerate(sample_spans(shard)):
        try:
            yield i, decode_sample(shard[start:end], names, encodings, sizes)
        except FormatError as exc:
            yield i, exc


def read_index(data: bytes) -> dict:
    try:
        index = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"index.json is not JSON: {exc}") from None
    if not isinstance(index, dict) or index.get("version") != 2 or not isinstance(
            index.get("shards"), list):
        raise FormatError("index.json must be an MDS index (version 2, a list of shards)")
    return index
