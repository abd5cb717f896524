"""``gsformat.quantize`` — lossy: per-attribute uniform quantisation, bit-packed.

Each attribute is mapped to a coding domain, quantised uniformly between its per-record minimum and
maximum, and packed at its group's bit depth (positions, covariance, colour). The covariance
diagonal is coded as ``log l11`` and ``log l22`` (relative precision for splats of every size);
``l21`` and everything else are coded as they are.

Encoded layout (little-endian)::

    [n_splats: uint32] [lo: float64 × 8] [hi: float64 × 8]
    [codes: for each attribute in canonical order, n_splats codes of b bits, LSB-first bit stream,
            each attribute's stream padded to a whole byte]

Error bound: with ``step = (hi − lo) / (2^b − 1)`` for an attribute coded with b bits, the
decoded value in its coding domain differs from the input by at most ``step / 2``, plus the FP16
rounding of the result (half a unit in the last place, ≤ 2⁻¹¹ relative). For l11 and l22 this
means ``|ln l̂ − ln l| ≤ step / 2 + 2⁻¹¹``.
"""
from __future__ import annotations

import numpy as np
from numcodecs.abc import Codec

from ..format import constants as C
from ..format.errors import FormatError
from ._common import BITS, as_splat_rows, leading_u32, ndarray_copy, read_u32

LOG_COLS = (2, 4)  # l11, l22 are coded in the log domain
GROUPS = ((0, 1), (2, 3, 4), (5, 6, 7))  # attributes sharing a bit depth
HEADER_BYTES = 4 + 2 * 8 * C.PARAMS_PER_SPLAT
CHUNK = 1 << 15  # splats per step of the decoder's arithmetic


def to_domain(rows: np.ndarray) -> np.ndarray:
    """float16 ``[N, 8]`` → float64 coding domain (log of the Cholesky diagonal)."""
    values = rows.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("gsformat.quantize cannot code non-finite splat parameters")
    if (values[:, LOG_COLS] <= 0).any():
        raise ValueError("gsformat.quantize needs l11 > 0 and l22 > 0")
    values[:, LOG_COLS] = np.log(values[:, LOG_COLS])
    return values


def from_domain(values: np.ndarray) -> np.ndarray:
    values = values.copy()
    values[:, LOG_COLS] = np.exp(values[:, LOG_COLS])
    return values


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """uint32 ``[N]`` codes of ``bits`` bits → LSB-first bit stream."""
    bit_matrix = ((codes[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    return np.packbits(bit_matrix.reshape(-1), bitorder="little").tobytes()


def unpack_codes(data: np.ndarray, n: int, bits: int) -> np.ndarray:
    """LSB-first bit stream → uint32 ``[n]`` codes. A code of ≤ 16 bits spans at most 3 bytes:
    read those 3 bytes as one word and shift (a few vector ops instead of a bit matrix)."""
    if bits == 8:
        return data[:n].astype(np.uint32)
    if bits == 16:
        return data[:2 * n].view("<u2").astype(np.uint32)
    start = np.arange(n, dtype=np.int64) * bits
    first = start >> 3
    padded = np.concatenate([data, np.zeros(3, np.uint8)])
    word = (padded[first].astype(np.uint32) | (padded[first + 1].astype(np.uint32) << 8)
            | (padded[first + 2].astype(np.uint32) << 16))
    return (word >> (start & 7).astype(np.uint32)) & np.uint32((1 << bits) - 1)


def unpack_streams(data: np.ndarray, starts, n: int, bits: int, first: int = 0,
                   padded: np.ndarray | None = None) -> np.ndarray:
    """`unpack_codes` for k streams of equal length starting at byte offsets ``starts``:
    uint32 ``[k, n]``, codes ``first … first + n − 1`` of each stream. ``padded``: ``data``
    with 3 zero bytes appended, when the caller unpacks it in several calls."""
    starts = np.asarray(starts, np.int64)[:, None]
    if bits == 8:
        return data[starts + np.arange(first, first + n)].astype(np.uint32)
    bit_pos = np.arange(first, first + n, dtype=np.int64) * bits
    byte = starts + (bit_pos >> 3)  # [k, n]
    if padded is None:
        padded = np.concatenate([data, np.zeros(3, np.uint8)])
    word = (padded[byte].astype(np.uint32) | (padded[byte + 1].astype(np.uint32) << 8)
            | (padded[byte + 2].astype(np.uint32) << 16))
    return (word >> (bit_pos & 7).astype(np.uint32)) & np.uint32((1 << bits) - 1)


def _unpack_codes_reference(data: np.ndarray, n: int, bits: int) -> np.ndarray:
    """Reference twin of `unpack_codes`: the bit matrix, literally."""
    bit_matrix = np.unpackbits(data, count=n * bits, bitorder="little").reshape(n, bits)
    return bit_matrix.astype(np.uint32) @ (np.uint32(1) << np.arange(bits, dtype=np.uint32))


class Quantize(Codec):
    """Lossy splat codec: per-attribute uniform quantisation (bound in the module docstring).

    Parameters
    ----------
    position_bits, covariance_bits, colour_bits : int
        Bits per value (1–16) for ``mu``, ``(log l11, l21, log l22)`` and ``(r, g, b)``.

    Examples
    --------
    >>> import numpy as np
    >>> codec = Quantize(position_bits=12, covariance_bits=10, colour_bits=8)
    >>> params = np.abs(np.random.default_rng(0).random((64, 8))).astype(np.float16) + 0.01
    >>> len(codec.encode(params)) < params.nbytes
    True
    """

    codec_id = "gsformat.quantize"
    DECODE_PARAMS = {"position_bits": BITS, "covariance_bits": BITS, "colour_bits": BITS}

    def __init__(self, position_bits: int = 12, covariance_bits: int = 10, colour_bits: int = 8):
        for name, bits in (("position_bits", position_bits), ("covariance_bits", covariance_bits),
                           ("colour_bits", colour_bits)):
            if not 1 <= int(bits) <= 16:
                raise ValueError(f"{name} must be in [1, 16], got {bits}")
        self.position_bits = int(position_bits)
        self.covariance_bits = int(covariance_bits)
        self.colour_bits = int(colour_bits)

    @property
    def bits(self) -> tuple[int, ...]:
        """Bits per attribute in canonical order."""
        return (self.position_bits,) * 2 + (self.covariance_bits,) * 3 + (self.colour_bits,) * 3

    def steps(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Quantisation step per attribute for a record's ranges."""
        return (hi - lo) / ((1 << np.array(self.bits)) - 1)

    def encode(self, buf) -> bytes:
        values = to_domain(as_splat_rows(buf))  # [N, 8]
        n = len(values)
        lo = values.min(axis=0) if n else np.zeros(C.PARAMS_PER_SPLAT)
        hi = values.max(axis=0) if n else np.zeros(C.PARAMS_PER_SPLAT)
        step = self.steps(lo, hi)
        parts = [np.uint32(n).tobytes(), lo.astype("<f8").tobytes(), hi.astype("<f8").tobytes()]
        for col, bits in enumerate(self.bits):
            scale = 0.0 if step[col] == 0 else 1.0 / step[col]
            codes = np.rint((values[:, col] - lo[col]) * scale).astype(np.uint32)
            parts.append(pack_codes(np.minimum(codes, (1 << bits) - 1), bits))
        return b"".join(parts)

    def decoded_nbytes(self, buf) -> int:
        """What the header claims decoding yields (checked by the reader before `decode`)."""
        return C.BYTES_PER_SPLAT * leading_u32(buf)

    def decode(self, buf, out=None):
        data = np.frombuffer(memoryview(buf).cast("B"), dtype=np.uint8)
        n = read_u32(data, 0, "splat count", C.MAX_SPLATS)
        stream_bytes = [(n * b + 7) // 8 for b in self.bits]
        expected = HEADER_BYTES + sum(stream_bytes)
        if data.size != expected:
            raise FormatError(f"quantized payload has {data.size} bytes, expected {expected} "
                              f"for {n} splats at bits {self.bits}")
        ranges = data[4:HEADER_BYTES].view("<f8").reshape(2, C.PARAMS_PER_SPLAT)
        lo, hi = ranges[0].astype(np.float64), ranges[1].astype(np.float64)
        with np.errstate(over="ignore"):
            spans = hi - lo  # SPEC.md § 5.3: finite, like the ranges themselves
        if not (np.isfinite(ranges).all() and (hi >= lo).all() and np.isfinite(spans).all()):
            raise FormatError("quantized payload has non-finite, inverted or overflowing ranges")
        starts = HEADER_BYTES + np.concatenate([[0], np.cumsum(stream_bytes)[:-1]])
        padded = np.concatenate([data, np.zeros(3, np.uint8)])
        steps = self.steps(lo, hi)[:, None]
        rows = np.empty((n, C.PARAMS_PER_SPLAT), np.float16)
        for first in range(0, n, CHUNK):  # CHUNK splats at a time: bounded scratch at any N
            m = min(CHUNK, n - first)
            codes = np.empty((C.PARAMS_PER_SPLAT, m), np.uint32)
            for cols in GROUPS:  # attributes of a group share a bit depth: unpack them together
                codes[list(cols)] = unpack_streams(data, starts[list(cols)], m,
                                                   self.bits[cols[0]], first, padded)
            with np.errstate(over="ignore"):  # → inf, refused by the reader's value check
                values = lo[:, None] + codes * steps  # [8, m] coding domain
                # float64 to the end, as SPEC.md § 5.3 says: one rounding, to FP16
                values[list(LOG_COLS)] = np.exp(values[list(LOG_COLS)])
                rows[first:first + m] = values.T
        return ndarray_copy(rows.reshape(-1), out)
