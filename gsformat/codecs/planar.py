"""``gsformat.planar`` — lossless: attribute-major byte planes, then zstd.

Splat rows ``[N, 8]`` FP16 are transposed to attribute-major ``[8, N]`` and each value split into
its high and low byte; all high-byte planes come first (sign, exponent and top mantissa bits vary
slowly within an attribute, so zstd finds long matches there), then all low-byte planes.

Encoded layout (little-endian)::

    [n_values: uint32]  [zstd frame of 2 * n_values bytes: hi planes (8 × N), lo planes (8 × N)]

(no frame when n_values is 0).

Decoding is bit-exact, NaN payloads and signed zeros included. As every numcodecs codec, it
codes the input's bytes in their memory order: a Fortran-ordered array (Zarr ``order='F'``)
decodes to the same bytes, which its reader lays out in F order again.
"""
from __future__ import annotations

import numpy as np
from numcodecs.abc import Codec

from ..core import constants as C
from ..core.errors import FormatError
from ._common import (IgnoresUnknownParameters, as_memory_values, check_out, copy_out,
                      leading_u32, read_u32, zstd_compress, zstd_decompress, zstd_level)


class Planar(IgnoresUnknownParameters, Codec):
    """Lossless splat codec: attribute-major byte planes + zstd.

    Parameters
    ----------
    level : int
        zstd compression level (1–22).

    Examples
    --------
    >>> import numpy as np
    >>> codec = Planar(level=9)
    >>> params = np.random.default_rng(0).random((16, 8)).astype(np.float16)
    >>> bool(np.array_equal(codec.decode(codec.encode(params)).reshape(16, 8), params))
    True
    """

    codec_id = "gsformat.planar"
    DECODE_PARAMS: dict = {}  # `level` is the encoder's alone (SPEC.md § 5.2)

    def __init__(self, level: int = 9):
        self.level = zstd_level(level)

    def encode(self, buf) -> bytes:
        rows = as_memory_values(buf)  # [N, 8] of the input's bytes in its memory order
        words = rows.T.view(np.uint16)  # [8, N] attribute-major
        planes = np.empty((2,) + words.shape, np.uint8)  # [2, 8, N]
        np.right_shift(words, 8, out=planes[0], casting="unsafe")
        np.bitwise_and(words, 0xFF, out=planes[1], casting="unsafe")
        header = np.uint32(rows.size).tobytes()
        return header + zstd_compress(planes, self.level) if rows.size else header

    def decoded_nbytes(self, buf) -> int:
        """What the header claims decoding yields (checked by the reader before `decode`)."""
        return 2 * leading_u32(buf)

    def decode(self, buf, out=None):
        check_out(out, rows=False)
        data = np.frombuffer(memoryview(buf).cast("B"), dtype=np.uint8)
        n_values = read_u32(data, 0, "value count", C.MAX_DECODED_BYTES // 2)
        if n_values % C.PARAMS_PER_SPLAT:
            raise FormatError(f"value count {n_values} is not a multiple of {C.PARAMS_PER_SPLAT}")
        if n_values == 0:  # the header alone (SPEC.md § 5.2): no frame
            if data.size != 4:
                raise FormatError("planar payload: an empty record has bytes after its header")
            return copy_out(np.empty(0, np.float16), out, rows=False)
        planes = zstd_decompress(data[4:], 2 * n_values).reshape(2, C.PARAMS_PER_SPLAT, -1)
        words = np.empty((n_values // C.PARAMS_PER_SPLAT, C.PARAMS_PER_SPLAT, 2), np.uint8)
        words[..., 1] = planes[0].T  # little-endian FP16: high byte second
        words[..., 0] = planes[1].T
        params = words.view(C.STORAGE_DTYPE).reshape(-1)
        return copy_out(params.view(np.float16), out, rows=False)
