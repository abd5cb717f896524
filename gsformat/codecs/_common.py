"""Helpers shared by the gsformat codecs: input checks, header reads, bounded zstd."""
from __future__ import annotations

import inspect

import numpy as np
from numcodecs.compat import ensure_contiguous_ndarray, ndarray_copy
from numcodecs.zstd import Zstd

from ..core import constants as C
from ..core.errors import FormatError
from ..core.zstd_frame import decompress_exact

__all__ = ["as_splat_rows", "as_memory_values", "check_out", "copy_out",
           "IgnoresUnknownParameters", "read_u32", "leading_u32", "STEP", "BITS", "zstd_level",
           "zstd_compress", "zstd_decompress"]


def _refuse_objects(buf) -> None:
    if isinstance(buf, np.ndarray) and buf.dtype.hasobject:
        raise TypeError("gsformat codecs take numeric buffers, not object arrays")


def as_memory_values(buf) -> np.ndarray:
    """Lossless encoder input → float16 ``[N, 8]`` of its bytes **in memory order** (numcodecs'
    contract: a codec sees a buffer's bytes as they lie, so a Fortran-ordered array decodes to
    the same bytes and reads back in its own order). Any buffer of whole splats (16·N bytes)."""
    _refuse_objects(buf)
    if isinstance(buf, np.ndarray) and not (buf.flags.c_contiguous or buf.flags.f_contiguous):
        buf = np.ascontiguousarray(buf)  # a strided view: its logical (C) order
    raw = ensure_contiguous_ndarray(buf).view(np.uint8)  # F arrays: memory order ('A')
    if raw.size % C.BYTES_PER_SPLAT:
        raise ValueError(f"splat payload has {raw.size} bytes, not a multiple of "
                         f"{C.BYTES_PER_SPLAT} (8 FP16 values a splat)")
    return raw.view(C.STORAGE_DTYPE).reshape(-1, C.PARAMS_PER_SPLAT)


def _check_rows_layout(arr: np.ndarray, what: str) -> None:
    """A multi-dimensional array handed to a codec that reads rows of 8 must hold them as rows:
    last axis 8, C order (numcodecs passes its bytes in memory order, SPEC.md § 2's rows)."""
    if arr.ndim < 2:
        return
    if arr.flags.f_contiguous and not arr.flags.c_contiguous:
        raise ValueError(f"{what}: a Fortran-ordered array of shape {list(arr.shape)} does not "
                         f"hold its splats as rows in memory; a lossy codec would misread it "
                         f"(pass np.ascontiguousarray, or store with order='C')")
    if arr.dtype.itemsize != 1 and arr.shape[-1] != C.PARAMS_PER_SPLAT:
        raise ValueError(f"{what}: expected splat rows [N, {C.PARAMS_PER_SPLAT}], got shape "
                         f"{list(arr.shape)} (a lossy codec reads rows of 8 parameters)")


def as_splat_rows(buf, what: str = "splat payload") -> np.ndarray:
    """Lossy encoder input → float16 ``[N, 8]`` rows (a view where possible): a float16 array
    (any byte order) of rows of 8 in C order, or raw bytes of such rows (bytes, bytearray,
    uint8/int8 arrays). Refuses, with a ValueError, what it would misread: another numeric
    dtype, a last axis other than 8, Fortran order (TypeError for object arrays)."""
    _refuse_objects(buf)
    arr = buf if isinstance(buf, np.ndarray) else None
    if arr is None:
        arr = np.frombuffer(ensure_contiguous_ndarray(buf), dtype=np.uint8)
    _check_rows_layout(arr, what)
    if arr.dtype.kind == "f" and arr.dtype.itemsize == 2:
        values = arr
    elif arr.dtype.itemsize == 1 and arr.dtype.kind in "ui":
        raw = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
        if raw.size % 2:
            raise ValueError(f"{what} has {raw.size} bytes, not whole FP16 values")
        values = raw.view(C.STORAGE_DTYPE)
    else:
        raise ValueError(f"{what}: expected float16 splat parameters (or their bytes), got "
                         f"dtype {arr.dtype}")
    if values.size % C.PARAMS_PER_SPLAT:
        raise ValueError(f"{what} has {values.size} values, not a multiple of "
                         f"{C.PARAMS_PER_SPLAT}")
    return np.ascontiguousarray(values, dtype=C.STORAGE_DTYPE).reshape(-1, C.PARAMS_PER_SPLAT)


def check_out(out, rows: bool) -> None:
    """Before decoding into ``out`` (numcodecs' contract): TypeError for an object array (it
    would take Python floats); for a codec whose output is rows (``rows``), a multi-dimensional
    ``out`` must hold them as rows in C order, as its encoder's input did."""
    _refuse_objects(out)
    if rows and isinstance(out, np.ndarray):
        _check_rows_layout(out, "decode out")


def copy_out(values: np.ndarray, out, rows: bool = True):
    """numcodecs' ``ndarray_copy`` after `check_out`."""
    if out is not None:
        check_out(out, rows)
    return ndarray_copy(values, out)


class IgnoresUnknownParameters:
    """``from_config`` (what ``numcodecs.get_codec`` calls) passes a codec the parameters its
    constructor takes and ignores the others: SPEC.md § 5, readers MUST ignore parameters they
    do not know. The constructor itself stays strict, for writers' typos."""

    @classmethod
    def from_config(cls, config):
        known = inspect.signature(cls.__init__).parameters
        return cls(**{name: value for name, value in config.items()
                      if name in known and name != "self"})


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
