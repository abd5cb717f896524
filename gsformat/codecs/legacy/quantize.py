"""``gsformat.quantize`` — legacy (SPEC.md § 5.3: readers MUST decode it, writers SHOULD NOT
write it; encoding warns): per-attribute uniform quantisation, bit-packed. `gsformat.lattice`
is smaller and decodes faster at every setting (benchmarks/RESULTS.md).

Each attribute is mapped to a coding domain, quantised uniformly between its per-record minimum and
maximum, and packed at its group's bit depth (positions, covariance, colour). The covariance
diagonal is coded as ``log l11`` and ``log l22`` (relative precision for splats of every size);
``l21`` and everything else are coded as they are.

Encoded layout (little-endian)::

    [n_splats: uint32] [lo: float64 × 8] [hi: float64 × 8]
    [codes: for each attribute in canonical order, n_splats codes of b bits, LSB-first bit stream,
            each attribute's stream padded to a whole byte]

The padding bits of each stream are zero (readers check them, SPEC.md § 5.3, 1.5).

Error bound: with ``step = (hi − lo) / (2^b − 1)`` for an attribute coded with b bits, the
decoded value in its coding domain differs from the input by at most ``step / 2``, plus the FP16
rounding of the result (half a unit in the last place, ≤ 2⁻¹¹ relative). For l11 and l22 this
means ``|ln l̂ − ln l| ≤ step / 2 + 2⁻¹¹``.
"""
from __future__ import annotations

import warnings

import numpy as np
from numcodecs.abc import Codec

from ...core import constants as C
from ...core.errors import FormatError, LegacyCodecWarning
from .._common import (BITS, IgnoresUnknownParameters, as_splat_rows, check_out, copy_out,
                       leading_u32, read_u32)

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


def quantize_codes(values: np.ndarray, bits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coding-domain values ``[N, 8]`` → (lo ``[8]``, hi ``[8]``, codes ``[N, 8]`` uint32): each
    attribute rounded onto 2^b levels between its record minimum and maximum."""
    n = len(values)
    lo = values.min(axis=0) if n else np.zeros(C.PARAMS_PER_SPLAT)
    hi = values.max(axis=0) if n else np.zeros(C.PARAMS_PER_SPLAT)
    step = steps_of(bits, lo, hi)
    codes = np.zeros((n, C.PARAMS_PER_SPLAT), np.uint32)
    for col, b in enumerate(bits):
        scale = 0.0 if step[col] == 0 else 1.0 / step[col]
        codes[:, col] = np.minimum(np.rint((values[:, col] - lo[col]) * scale), (1 << b) - 1)
    return lo, hi, codes


def steps_of(bits, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Quantisation step per attribute for a record's ranges."""
    return (hi - lo) / ((1 << np.array(bits)) - 1)


def read_ranges(data: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The header's (lo, hi) float64 ``[8]`` each, checked (SPEC.md § 5.3: finite, lo ≤ hi,
    hi − lo finite)."""
    if data.size < HEADER_BYTES:
        raise FormatError("truncated header")
    ranges = data[4:HEADER_BYTES].view("<f8").reshape(2, C.PARAMS_PER_SPLAT)
    lo, hi = ranges[0].astype(np.float64), ranges[1].astype(np.float64)
    with np.errstate(over="ignore"):
        spans = hi - lo
    if not (np.isfinite(ranges).all() and (hi >= lo).all() and np.isfinite(spans).all()):
        raise FormatError(f"{what} payload has non-finite, inverted or overflowing ranges")
    return lo, hi


def dequantize(codes: np.ndarray, lo: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Codes ``[8, m]`` → values ``[8, m]`` float64 (lo + code·step, exp of the log columns:
    float64 to the end, one rounding to FP16 after, SPEC.md § 5.3)."""
    with np.errstate(over="ignore"):  # → inf, refused by the reader's value check
        values = lo[:, None] + codes * steps[:, None]
        values[list(LOG_COLS)] = np.exp(values[list(LOG_COLS)])
    return values


def warn_legacy(codec_id: str) -> None:
    warnings.warn(f"{codec_id} is a legacy codec: readers decode it, writers should not write "
                  f"it (SPEC.md § 5); gsformat.lattice-rans is smaller at the same error",
                  LegacyCodecWarning, stacklevel=3)


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


def check_padding(data: np.ndarray, starts, stream_bytes, n: int, bits) -> None:
    """SPEC.md § 5.3 (1.5): the bits after an attribute's last code, up to its stream's byte
    boundary, are zero; FormatError naming the attribute otherwise."""
    for col, (start, size, b) in enumerate(zip(starts, stream_bytes, bits)):
        used = (n * b) % 8
        if used and int(data[start + size - 1]) >> used:
            raise FormatError(f"quantized payload: padding bits after {C.PARAM_NAMES[col]}'s "
                              f"codes are not zero")


def _unpack_codes_reference(data: np.ndarray, n: int, bits: int) -> np.ndarray:
    """Reference twin of `unpack_codes`: the bit matrix, literally."""
    bit_matrix = np.unpackbits(data, count=n * bits, bitorder="little").reshape(n, bits)
    return bit_matrix.astype(np.uint32) @ (np.uint32(1) << np.arange(bits, dtype=np.uint32))


class Quantize(IgnoresUnknownParameters, Codec):
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

    def encode(self, buf) -> bytes:
        warn_legacy(self.codec_id)
        return self._encode(buf)

    def _encode(self, buf) -> bytes:
        lo, hi, codes = quantize_codes(to_domain(as_splat_rows(buf)), self.bits)
        parts = [np.uint32(len(codes)).tobytes(), lo.astype("<f8").tobytes(),
                 hi.astype("<f8").tobytes()]
        parts += [pack_codes(codes[:, col], bits) for col, bits in enumerate(self.bits)]
        return b"".join(parts)

    def decoded_nbytes(self, buf) -> int:
        """What the header claims decoding yields (checked by the reader before `decode`)."""
        return C.BYTES_PER_SPLAT * leading_u32(buf)

    def decode(self, buf, out=None):
        check_out(out, rows=True)
        data = np.frombuffer(memoryview(buf).cast("B"), dtype=np.uint8)
        n = read_u32(data, 0, "splat count", C.MAX_SPLATS)
        stream_bytes = [(n * b + 7) // 8 for b in self.bits]
        expected = HEADER_BYTES + sum(stream_bytes)
        if data.size != expected:
            raise FormatError(f"quantized payload has {data.size} bytes, expected {expected} "
                              f"for {n} splats at bits {self.bits}")
        lo, hi = read_ranges(data, "quantized")
        starts = HEADER_BYTES + np.concatenate([[0], np.cumsum(stream_bytes)[:-1]])
        check_padding(data, starts, stream_bytes, n, self.bits)
        padded = np.concatenate([data, np.zeros(3, np.uint8)])
        steps = steps_of(self.bits, lo, hi)
        rows = np.empty((n, C.PARAMS_PER_SPLAT), np.float16)
        for first in range(0, n, CHUNK):  # CHUNK splats at a time: bounded scratch at any N
            m = min(CHUNK, n - first)
            codes = np.empty((C.PARAMS_PER_SPLAT, m), np.uint32)
            for cols in GROUPS:  # attributes of a group share a bit depth: unpack them together
                codes[list(cols)] = unpack_streams(data, starts[list(cols)], m,
                                                   self.bits[cols[0]], first, padded)
            with np.errstate(over="ignore"):  # → inf, refused by the reader's value check
                rows[first:first + m] = dequantize(codes, lo, steps).T
        return copy_out(rows.reshape(-1), out)
