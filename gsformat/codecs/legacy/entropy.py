"""``gsformat.entropy`` — legacy (SPEC.md § 5.4: readers MUST decode it, writers SHOULD NOT
write it; encoding warns): quantise, order along a Morton curve, delta-code, zstd.

The quantisation is exactly `gsformat.quantize`'s (same coding domains, ranges and codes, so the
same error bound, SPEC.md § 5.3); the order of splats carries no meaning, so the codec sorts
them by the Morton (Z-order) code of their quantised position. Positions are then stored as the
differences of consecutive Morton codes (small: neighbours are close), every other attribute as
the zig-zag difference from the previous splat's code modulo 2^b (neighbouring splats look
alike). The streams go through zstd as byte planes.

Encoded layout (little-endian)::

    [n_splats: uint32] [lo: float64 × 8] [hi: float64 × 8]
    [zstd frame of 16·N bytes:
        Morton deltas as uint32 byte planes: byte 3 of all N, byte 2, byte 1, byte 0
        then for attributes 2..7: zig-zag deltas as uint16 byte planes: high bytes, low bytes]

(no frame when N is 0). Decoding yields the splats in Morton order; each decoded row equals the
row `gsformat.quantize` decodes for the same splat (the test suite checks this, bit for bit).
"""
from __future__ import annotations

import numpy as np
from numcodecs.abc import Codec

from ...core import constants as C
from ...core.errors import FormatError
from .._common import (BITS, IgnoresUnknownParameters, as_splat_rows, check_out, copy_out,
                       leading_u32, read_u32, zstd_compress, zstd_decompress, zstd_level)
from .quantize import (CHUNK, HEADER_BYTES, Quantize, dequantize, quantize_codes, read_ranges,
                       steps_of, to_domain, warn_legacy)


def spread_bits(v: np.ndarray) -> np.ndarray:
    """16-bit integers → their bits at even positions (uint64)."""
    v = v.astype(np.uint64) & np.uint64(0xFFFF)
    for shift, mask in ((8, 0x00FF00FF), (4, 0x0F0F0F0F), (2, 0x33333333), (1, 0x55555555)):
        v = (v | (v << np.uint64(shift))) & np.uint64(mask)
    return v


def gather_bits(v: np.ndarray) -> np.ndarray:
    """Inverse of `spread_bits`."""
    v = v.astype(np.uint64) & np.uint64(0x55555555)
    for shift, mask in ((1, 0x33333333), (2, 0x0F0F0F0F), (4, 0x00FF00FF), (8, 0x0000FFFF)):
        v = (v | (v >> np.uint64(shift))) & np.uint64(mask)
    return v


def planes(values: np.ndarray, nbytes: int) -> bytes:
    """Unsigned integers → byte planes, most significant plane first."""
    return b"".join(((values >> (8 * k)) & 0xFF).astype(np.uint8).tobytes()
                    for k in reversed(range(nbytes)))


def from_planes(data: np.ndarray, n: int, nbytes: int) -> np.ndarray:
    out = np.zeros(n, np.uint64)
    for i, k in enumerate(reversed(range(nbytes))):
        out |= data[i * n:(i + 1) * n].astype(np.uint64) << np.uint64(8 * k)
    return out


def check_zigzag(zigzag: np.ndarray, bits: np.ndarray) -> None:
    """SPEC.md § 5.4 (1.5): a zig-zag value of an attribute of b bits is below 2^b (its centred
    difference s lies in [−2^(b−1), 2^(b−1))); FormatError otherwise. ``zigzag`` ``[k, m]``,
    ``bits`` ``[k]``."""
    if (zigzag >> bits[:, None]).any():
        raise FormatError("entropy payload: a zig-zag difference is not below 2^b for its "
                          "attribute's bit depth b")


class Entropy(IgnoresUnknownParameters, Codec):
    """Lossy, entropy-coded splat codec (Morton order, delta coding, zstd).

    Parameters
    ----------
    position_bits, covariance_bits, colour_bits : int
        As `gsformat.quantize` (1–16 bits per value).
    level : int
        zstd level (1–22).

    Examples
    --------
    >>> import numpy as np
    >>> params = np.abs(np.random.default_rng(0).random((64, 8))).astype(np.float16) + 0.01
    >>> codec = Entropy()
    >>> codec.decode(codec.encode(params)).shape
    (512,)
    """

    codec_id = "gsformat.entropy"
    DECODE_PARAMS = {"position_bits": BITS, "covariance_bits": BITS, "colour_bits": BITS}

    def __init__(self, position_bits: int = 12, covariance_bits: int = 10, colour_bits: int = 8,
                 level: int = 19):
        self._quantize = Quantize(position_bits, covariance_bits, colour_bits)
        self.position_bits = int(position_bits)
        self.covariance_bits = int(covariance_bits)
        self.colour_bits = int(colour_bits)
        self.level = zstd_level(level)

    def get_config(self):
        return {"id": self.codec_id, "position_bits": self.position_bits,
                "covariance_bits": self.covariance_bits, "colour_bits": self.colour_bits,
                "level": self.level}

    def encode(self, buf) -> bytes:
        warn_legacy(self.codec_id)
        lo, hi, codes = quantize_codes(to_domain(as_splat_rows(buf)), self._quantize.bits)
        codes = codes.astype(np.uint64)
        n = len(codes)
        header = np.uint32(n).tobytes() + lo.astype("<f8").tobytes() + hi.astype("<f8").tobytes()
        if n == 0:
            return header
        morton = spread_bits(codes[:, 0]) | (spread_bits(codes[:, 1]) << np.uint64(1))
        order = np.argsort(morton, kind="stable")
        codes, morton = codes[order], morton[order]
        streams = [planes(np.diff(morton, prepend=np.uint64(0)), 4)]
        for col in range(2, C.PARAMS_PER_SPLAT):
            modulus = np.int64(1) << self._quantize.bits[col]
            delta = np.diff(codes[:, col].astype(np.int64), prepend=np.int64(0)) % modulus
            signed = np.where(delta >= modulus // 2, delta - modulus, delta)  # centred
            zigzag = (signed << 1) ^ (signed >> 63)  # 0, -1, 1, -2, … → 0, 1, 2, 3, …
            streams.append(planes(zigzag.astype(np.uint64), 2))
        return header + zstd_compress(np.frombuffer(b"".join(streams), np.uint8), self.level)

    def decoded_nbytes(self, buf) -> int:
        """What the header claims decoding yields (checked by the reader before `decode`)."""
        return C.BYTES_PER_SPLAT * leading_u32(buf)

    def decode(self, buf, out=None):
        """The layout above, every step vectorised over attributes (the tests compare it with
        `_decode_reference`, bit for bit)."""
        check_out(out, rows=True)
        data, n, lo, hi = self._header(buf)
        if n == 0:
            return copy_out(np.empty(0, np.float16), out)
        raw = zstd_decompress(data[HEADER_BYTES:], 16 * n)
        bits = np.array(self._quantize.bits, np.int64)
        masks = (np.int64(1) << bits[2:, None]) - 1  # mod 2^b as a mask (two's complement:
        # the same non-negative residue, 5× cheaper)
        steps = steps_of(self._quantize.bits, lo, hi)
        morton_planes = raw[:4 * n].reshape(4, n)[::-1]  # least significant plane first
        word_planes = raw[4 * n:].reshape(6, 2, n)[:, ::-1]  # [attr, lo/hi, splat]
        rows = np.empty((n, C.PARAMS_PER_SPLAT), np.float16)
        morton_carry, code_carry = np.uint64(0), np.zeros((6, 1), np.int64)
        for first in range(0, n, CHUNK):  # CHUNK splats at a time, sums carried over
            part = slice(first, min(first + CHUNK, n))
            # byte planes → little-endian words: one transpose each
            morton_delta = np.ascontiguousarray(morton_planes[:, part].T).view("<u4")[:, 0]
            words = word_planes[:, :, part].transpose(0, 2, 1)  # [attr, splat, lo/hi]
            zigzag = np.ascontiguousarray(words).view("<u2")[..., 0].astype(np.int64)  # [6, m]
            check_zigzag(zigzag, bits[2:])
            morton = np.cumsum(morton_delta, dtype=np.uint64)
            morton += morton_carry
            morton_carry = morton[-1]
            codes = np.empty((C.PARAMS_PER_SPLAT, morton.size), np.float64)
            codes[:2] = gather_bits(np.stack([morton, morton >> np.uint64(1)]))
            signed = (zigzag >> 1) ^ -(zigzag & 1)
            sums = np.cumsum(signed, axis=1)
            sums += code_carry
            code_carry = sums[:, -1:] & masks
            codes[2:] = sums & masks
            if (codes[:2] > ((1 << bits[:2]) - 1)[:, None]).any():
                raise FormatError("entropy payload decodes to codes beyond their bit depth")
            rows[part] = dequantize(codes, lo, steps).T
        return copy_out(rows.reshape(-1), out)

    def _header(self, buf):
        """(bytes, n_splats, lo, hi) after the checks both decoders share."""
        data = np.frombuffer(memoryview(buf).cast("B"), dtype=np.uint8)
        n = read_u32(data, 0, "splat count", C.MAX_SPLATS)
        lo, hi = read_ranges(data, "entropy")
        if n == 0 and data.size != HEADER_BYTES:
            raise FormatError("empty entropy payload has trailing bytes")
        return data, n, lo, hi

    def _decode_reference(self, buf, out=None):
        """Reference twin of `decode`: one attribute and one byte plane at a time, as the
        layout reads."""
        data, n, lo, hi = self._header(buf)
        if n == 0:
            return copy_out(np.empty(0, np.float16), out)
        raw = zstd_decompress(data[HEADER_BYTES:], 16 * n)
        bits = np.array(self._quantize.bits, np.int64)
        morton = np.cumsum(from_planes(raw, n, 4), dtype=np.uint64)
        codes = np.empty((C.PARAMS_PER_SPLAT, n), np.float64)
        codes[0] = gather_bits(morton)
        codes[1] = gather_bits(morton >> np.uint64(1))
        for i, col in enumerate(range(2, C.PARAMS_PER_SPLAT)):
            zigzag = from_planes(raw[4 * n + 2 * i * n:], n, 2).astype(np.int64)
            check_zigzag(zigzag[None], bits[col:col + 1])
            signed = (zigzag >> 1) ^ -(zigzag & 1)
            modulus = np.int64(1) << self._quantize.bits[col]
            codes[col] = np.cumsum(signed) % modulus
        limits = (1 << bits) - 1
        if (codes > limits[:, None]).any():
            raise FormatError("entropy payload decodes to codes beyond their bit depth")
        values = dequantize(codes, lo, steps_of(self._quantize.bits, lo, hi))
        return copy_out(values.T.astype(np.float16).reshape(-1), out)
