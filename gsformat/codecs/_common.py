"""Helpers shared by the gsformat codecs: input checks, header reads, bounded zstd."""
from __future__ import annotations

import numpy as np
from numcodecs.compat import ensure_contiguous_ndarray, ndarray_copy
from numcodecs.zstd import Zstd

from ..format import constants as C
from ..format.errors import FormatError
from ..format.zstd_frame import decompress_exact

__all__ = ["as_splat_rows", "read_u32", "leading_u32", "STEP", "BITS", "zstd_level",
           "zstd_compress", "zstd_decompress", "ndarray_copy"]


def as_splat_rows(buf) -> np.ndarray:
    """Encoder input → float16 ``[N, 8]`` (a view where possible)."""
    arr = np.asarray(buf)
    if arr.dtype != np.float16:
        arr = np.frombuffer(ensure_contiguous_ndarray(buf), dtype=np.uint8).view(C.STORAGE_DTYPE)
    if arr.size % C.PARAMS_PER_SPLAT:
        raise ValueError(f"splat payload has {arr.size} values, not a multiple of "
                         f"{C.PARAMS_PER_SPLAT}")
    return np.ascontiguousarray(arr, dtype=C.STORAGE_DTYPE).reshape(-1, C.PARAMS_PER_SPLAT)


def read_u32(data: np.ndarray, pos: int, what: str, limit: int) -> int:
    """A little-endian uint32 at ``pos``, checked against ``limit``."""
    if data.size < pos + 4:
        raise FormatError(f"truncated header: no room for {what}")
    value = int.from_bytes(data[pos:pos + 4].tobytes(), "little")
    if value > limit:
        raise FormatError(f"{what} {value} exceeds limit {limit}")
    return value


def leading_u32(buf) -> int:
    """The uint32 every gsformat codec header starts with (a count); FormatError if absent."""
    head = bytes(memoryview(buf).cast("B")[:4])
    if len(head) < 4:
        raise FormatError("truncated header: no room for the count")
    return int.from_bytes(head, "little")


STEP = (float, 0, 1)  # a lattice step: a finite number in (0, 1]
BITS = (int, 1, 16)   # a quantize bit depth


def zstd_level(level) -> int:
    """An encoder's zstd level, checked: an integer in [1, 22]."""
    if isinstance(level, bool) or int(level) != level or not 1 <= int(level) <= 22:
        raise ValueError(f"zstd level must be an integer in [1, 22], got {level!r}")
    return int(level)


def zstd_compress(raw: bytes | np.ndarray, level: int) -> bytes:
    return bytes(Zstd(level=level).encode(np.ascontiguousarray(raw)))


def zstd_decompress(frame, expected_nbytes: int) -> np.ndarray:
    """Decompress one zstd frame whose header must claim exactly ``expected_nbytes``."""
    return np.frombuffer(decompress_exact(frame, expected_nbytes), dtype=np.uint8)
