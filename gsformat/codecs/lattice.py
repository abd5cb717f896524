"""``gsformat.lattice`` — lossy: fixed-step quantisation on lattices anchored at zero, raster
order, exact integer colour decorrelation, one zstd frame per byte plane.
(`gsformat.lattice-rans`, lattice_rans.py, shares everything here but the entropy stage.)

Unlike `gsformat.quantize` (a fixed bit depth spread over each record's range), every attribute
here has a fixed *step*: the code of a value v is ``round(v / step)`` in its coding domain. The
grid does not depend on the record, so quantisation is idempotent and a quantisation-aware fit
sees the same grid at every step; the entropy coder, not a bit depth, decides what a code costs
(rare outliers cost a few bits, not a coarser grid for everybody).

Coding domains and codes (per splat, int64)::

    cx = round(x / position_step)            cy = round(y / position_step)
    s1 = round(ln l11 / scale_step)          s2 = round(ln l22 / scale_step)
    k  = round((l21 / l22) / shear_step)     (the shear: l21 relative to l22)
    R, G, B = round(r / colour_step), …      then YCoCg-R on the integers (lossless lifting):
        Co = R − B;  t = B + (Co >> 1);  Cg = G − t;  Y = t + (Cg >> 1)

Splats are sorted by their raster key ``(cy − min cy) · Wc + (cx − min cx)`` (Wc = the cx range
+ 1; stable, so equal keys keep their input order) and the key is stored as gaps between
consecutive keys. Each stream holds codes minus their minimum, as byte planes, most significant
first; each plane is its own zstd frame, so each gets its own entropy table.

Encoded layout (little-endian)::

    [n_splats: uint32] [Wc: uint32] [code_min: int32 × 8] [planes: uint8 × 8]
    [frame_bytes: uint32 × P]  (P = Σ planes)  [P zstd frames, each of content size n_splats]

    attribute slots:   0: key gaps (1–4 planes; code_min[0] = min cx)   1: — (0 planes;
    code_min[1] = min cy)   2: s1   3: k   4: s2   5: Y   6: Co   7: Cg   (1–4 planes each)

With N = 0 the payload is the 48-byte header, all zero after n_splats. Decoding yields splats in
raster order; every row equals `Lattice.quantize_rows` of the input row (tests check this bit for
bit). Values are computed in float64, rounded to float32, then to FP16. Error bound (before the
rounding to FP16, ≤ 2⁻¹¹ relative): |x̂ − x| ≤ position_step/2,
|ln l̂ − ln l| ≤ scale_step/2, |l̂21/l̂22 − l21/l22| ≤ shear_step/2 (l21 is decoded as
k·shear_step·l̂22), |ĉ − c| ≤ colour_step/2 per channel (YCoCg-R is exact on integers).
"""
from __future__ import annotations

import os

import numpy as np
from numcodecs.abc import Codec

from ..core import constants as C
from ..core.errors import FormatError
from ..core.zstd_frame import decompress_exact
from ._common import (STEP, IgnoresUnknownParameters, as_splat_rows, check_out, copy_out,
                      leading_u32, read_u32, zstd_compress, zstd_level)

HEADER_BYTES = 4 + 4 + 4 * 8 + 8  # n, Wc, code_min, planes
CHUNK = 1 << 15  # splats per step of the NumPy arithmetic: its scratch stays ~10 MiB at any N
MAX_CODE = (1 << 31) - 1  # |code| and code_min fit int32
MAX_PLANES = (4, 0, 4, 4, 4, 4, 4, 4)  # per attribute slot
FP16_SAFE = 16384.0  # |input| below this cannot decode beyond FP16's 65,504 at any step ≤ 1

try:  # the C decoder (setup.py builds it where a compiler is found)
    from . import _lattice_native as _NATIVE
except ImportError:
    _NATIVE = None
if os.environ.get("GSFORMAT_NO_NATIVE"):  # force the NumPy decoder (benchmarks, debugging)
    _NATIVE = None


def ycocg_r(rgb):
    """Integer RGB codes ``[3, N]`` → Y, Co, Cg ``[3, N]`` (lossless lifting)."""
    r, g, b = rgb
    co = r - b
    t = b + (co >> 1)
    cg = g - t
    return np.stack([t + (cg >> 1), co, cg])


def ycocg_r_inverse(ycc):
    """Y, Co, Cg ``[3, N]`` → integer RGB codes ``[3, N]``."""
    y, co, cg = ycc
    t = y - (cg >> 1)
    g = cg + t
    b = t - (co >> 1)
    return np.stack([b + co, g, b])


class Lattice(IgnoresUnknownParameters, Codec):
    """Lossy splat codec: fixed-step lattices, raster order, YCoCg-R colour, per-plane zstd.

    Parameters
    ----------
    position_step : float
        Lattice step of the mean, in canvas units (the spec's normalised coordinates).
    scale_step : float
        Step of ln l11 and ln l22 (relative size precision).
    shear_step : float
        Step of l21 / l22.
    colour_step : float
        Step of r, g and b (colour units, 1.0 = full scale).
    level : int
        zstd level (1–22), encoder only.

    Examples
    --------
    >>> import numpy as np
    >>> params = np.abs(np.random.default_rng(0).random((64, 8))).astype(np.float16) + 0.01
    >>> codec = Lattice()
    >>> codec.decode(codec.encode(params)).shape
    (512,)
    """

    codec_id = "gsformat.lattice"
    # `level` is the encoder's alone (SPEC.md § 5.5)
    DECODE_PARAMS = {"position_step": STEP, "scale_step": STEP, "shear_step": STEP,
                     "colour_step": STEP}

    def __init__(self, position_step: float = 1 / 2048, scale_step: float = 0.05,
                 shear_step: float = 0.05, colour_step: float = 0.022, level: int = 19):
        for name, step in (("position_step", position_step), ("scale_step", scale_step),
                           ("shear_step", shear_step), ("colour_step", colour_step)):
            if not (np.isfinite(step) and 0 < float(step) <= 1):
                raise ValueError(f"{name} must be in (0, 1], got {step}")
        self.position_step = float(position_step)
        self.scale_step = float(scale_step)
        self.shear_step = float(shear_step)
        self.colour_step = float(colour_step)
        self.level = zstd_level(level)
        # step per attribute slot of the decoded codes (x, y, s1, k, s2, r, g, b)
        self._steps = np.array([self.position_step] * 2 + [self.scale_step, self.shear_step,
                               self.scale_step] + [self.colour_step] * 3)

    def get_config(self):
        return {"id": self.codec_id, "position_step": self.position_step,
                "scale_step": self.scale_step, "shear_step": self.shear_step,
                "colour_step": self.colour_step, "level": self.level}

    def __repr__(self):
        return (f"Lattice(position_step={self.position_step!r}, scale_step={self.scale_step!r},"
                f" shear_step={self.shear_step!r}, colour_step={self.colour_step!r}, "
                f"level={self.level})")

    # ---- quantisation (shared by the encoder and the quantisation-aware fit) -------------
    def codes(self, rows: np.ndarray) -> np.ndarray:
        """float16 ``[N, 8]`` → int64 codes ``[8, N]`` (x, y, s1, k, s2, R, G, B)."""
        domain = rows.astype(np.float64).T  # [8, N], a fresh array: coded in place
        if not np.isfinite(domain).all():
            raise ValueError("gsformat.lattice cannot code non-finite splat parameters")
        if (domain[2] <= 0).any() or (domain[4] <= 0).any():
            raise ValueError("gsformat.lattice needs l11 > 0 and l22 > 0")
        domain[3] /= domain[4]  # shear l21 / l22, before l22 goes to the log domain
        np.log(domain[2:5:2], out=domain[2:5:2])
        scaled = np.rint(domain / self._steps[:, None])
        if scaled.size and np.abs(scaled).max() > MAX_CODE // 2:
            worst = int(np.abs(scaled).max(axis=1).argmax())
            raise ValueError(f"gsformat.lattice: {C.PARAM_NAMES[worst]} needs codes beyond "
                             f"±2^30 at its step; use a larger step")
        codes = scaled.astype(np.int64)
        if codes.size and np.abs(rows).max() >= FP16_SAFE:
            self._check_finite(codes, rows)
        return codes

    def _check_finite(self, codes: np.ndarray, rows: np.ndarray) -> None:
        """SPEC.md § 5.5: an encoder MUST NOT write codes whose decoded value overflows FP16
        (l = 65,504 at scale_step 0.05 is code 222, exp(11.1) ≈ 66,171 → inf). Only values
        near FP16's limit can: a decoded value is within a factor e^(step/2) ≤ 1.65 of the
        input (shear: of |l21| + l22/2), so inputs below `FP16_SAFE` are not checked."""
        with np.errstate(over="ignore"):
            decoded = self.dequantize(codes)
        bad = ~np.isfinite(decoded)
        if bad.any():
            splat, col = (int(i[0]) for i in np.nonzero(bad))
            step = ("position_step", "position_step", "scale_step", "shear_step", "scale_step",
                    "colour_step", "colour_step", "colour_step")[col]
            raise ValueError(f"gsformat.lattice: splat {splat}'s {C.PARAM_NAMES[col]} = "
                             f"{float(rows[splat, col])} would decode beyond FP16's largest "
                             f"finite value (65504) at {step} {getattr(self, step)}; readers "
                             f"reject such records (SPEC.md § 2)")

    def dequantize(self, codes: np.ndarray, scales=None) -> np.ndarray:
        """int64 codes ``[8, N]`` → float16 rows ``[N, 8]``: float64 arithmetic, rounded to
        float32, then to FP16. ``scales``: (l11, l22) float64 rows when the caller has them."""
        values = codes * self._steps[:, None]  # [8, N] float64
        if scales is None:
            np.exp(values[2:5:2], out=values[2:5:2])  # l11, l22
        else:
            values[2], values[4] = scales
        values[3] *= values[4]  # l21 = shear · l22
        with np.errstate(over="ignore"):  # → inf, refused by the reader's value check
            return values.astype(np.float32).astype(np.float16).T  # nearest even, twice

    def quantize_rows(self, rows) -> np.ndarray:
        """What decode(encode(rows)) holds, in the input order: float16 ``[N, 8]``."""
        rows = np.ascontiguousarray(rows, dtype=np.float16).reshape(-1, C.PARAMS_PER_SPLAT)
        return self.dequantize(self.codes(rows))

    # ---- encode --------------------------------------------------------------------------
    def encode(self, buf) -> bytes:
        header, planes = self.byte_planes(as_splat_rows(buf))
        return header + self._encode_planes(planes) if planes else header

    def _encode_planes(self, planes: list) -> bytes:
        """The entropy stage: frame table, then one zstd frame per plane."""
        frames = [zstd_compress(plane, self.level) for plane in planes]
        return np.array([len(f) for f in frames], "<u4").tobytes() + b"".join(frames)

    def byte_planes(self, rows: np.ndarray) -> tuple[bytes, list]:
        """float16 ``[N, 8]`` → (the 48-byte header, the uint8 byte planes ``[N]`` in layout
        order): everything but the entropy stage."""
        return self.planes_of_codes(self.codes(rows))

    def planes_of_codes(self, codes: np.ndarray) -> tuple[bytes, list]:
        """int64 codes ``[8, N]`` (x, y, s1, k, s2, R, G, B) → (header, byte planes): the
        layout, whatever the codes decode to (tests and spec/vectors craft payloads with it)."""
        n = codes.shape[1]
        if n == 0:
            return np.uint32(0).tobytes() + bytes(HEADER_BYTES - 4), []
        cx, cy = codes[0], codes[1]
        width = int(cx.max() - cx.min()) + 1
        key = (cy - cy.min()) * width + (cx - cx.min())
        if int(key.max()) >= 1 << 32:
            raise ValueError("gsformat.lattice: positions span more than 2^32 lattice cells; "
                             "use a larger position_step")
        order = np.argsort(key, kind="stable")
        key = key[order]
        streams = [np.diff(key, prepend=np.int64(0))]  # slot 0: gaps (slot 1 has no stream)
        streams += [codes[2, order], codes[3, order], codes[4, order]]
        streams += list(ycocg_r(codes[5:8, order]))
        code_min = [int(cx.min()), int(cy.min())] + [int(s.min()) for s in streams[1:]]
        counts, planes = [], []
        for slot, stream in zip((0, 2, 3, 4, 5, 6, 7), streams):
            base = 0 if slot == 0 else code_min[slot]
            offset = stream - base  # ≥ 0
            span = int(offset.max())
            count = max(1, (span.bit_length() + 7) // 8)
            if count > MAX_PLANES[slot]:
                raise ValueError(f"gsformat.lattice: attribute slot {slot} spans {span + 1} codes "
                                 f"(more than {1 << (8 * MAX_PLANES[slot])}); use a larger step")
            counts.append(count)
            planes += [((offset >> (8 * k)) & 0xFF).astype(np.uint8)
                       for k in reversed(range(count))]
        header = (np.array([n, width], "<u4").tobytes() + np.array(code_min, "<i4").tobytes()
                  + np.array([counts[0], 0] + counts[1:], np.uint8).tobytes())
        return header, planes

    # ---- decode --------------------------------------------------------------------------
    def decoded_nbytes(self, buf) -> int:
        """What the header claims decoding yields (checked by the reader before `decode`)."""
        return C.BYTES_PER_SPLAT * leading_u32(buf)

    _CODER = 0  # the C decoder's entropy stage: 0 zstd frames, 1 rANS (gsformat.lattice-rans)

    def _parse(self, buf):
        """(n, Wc, code_min, plane counts, decoded planes uint8 [P, N]) after every check."""
        data = np.frombuffer(memoryview(buf).cast("B"), dtype=np.uint8)
        n = read_u32(data, 0, "splat count", C.MAX_SPLATS)
        if data.size < HEADER_BYTES:
            raise FormatError("lattice payload: truncated header")
        width = int(data[4:8].view("<u4")[0])
        code_min = data[8:40].view("<i4").astype(np.int64)
        counts = data[40:48].tolist()
        if n == 0:
            if data.size != HEADER_BYTES or data[4:].any():
                raise FormatError("lattice payload: an empty record has a non-zero header")
            return 0, width, code_min, counts, np.empty((0, 0), np.uint8)
        if width == 0 or not all(1 <= c <= m for c, m in zip(counts, MAX_PLANES) if m) \
                or counts[1]:
            raise FormatError(f"lattice payload: bad key width {width} or plane counts {counts}")
        return n, width, code_min, counts, self._decode_planes(data, n, sum(counts))

    def _decode_planes(self, data: np.ndarray, n: int, n_planes: int) -> np.ndarray:
        """The entropy stage's bytes (after the header) → uint8 planes ``[P, N]``: the C
        decoder's stage where it is built (the same zstd library, so the same bytes), else
        python-zstd frame by frame. The C stage only says malformed: then `_fault` names the
        fault without redoing the work."""
        if _NATIVE is not None:
            planes = np.empty((n_planes, n), np.uint8)
            if _NATIVE.decode_planes(data, planes, n, n_planes, self._CODER):
                return planes
            self._fault(data, n, n_planes)
        return self._decode_planes_python(data, n, n_planes)

    def _fault(self, data: np.ndarray, n: int, n_planes: int) -> None:
        """After the C entropy stage failed: raise the FormatError that names the fault. zstd
        frames are checked one by one in Python (as fast as C: the same library)."""
        self._decode_planes_python(data, n, n_planes)

    def _decode_planes_python(self, data: np.ndarray, n: int, n_planes: int) -> np.ndarray:
        start = HEADER_BYTES + 4 * n_planes
        if data.size < start:
            raise FormatError("lattice payload: truncated frame table")
        sizes = data[HEADER_BYTES:start].view("<u4").tolist()
        if sum(sizes) != data.size - start:
            raise FormatError(f"lattice payload: frames claim {sum(sizes)} bytes, "
                              f"{data.size - start} present")
        planes, pos = np.empty((n_planes, n), np.uint8), start
        for p, size in enumerate(sizes):  # each frame's claim is checked before it is allocated
            planes[p] = np.frombuffer(decompress_exact(data[pos:pos + size], n,
                                                       "the lattice header"), np.uint8)
            pos += size
        return planes

    def decode(self, buf, out=None):
        """The layout above: the C decoder where it is built, else `_decode_numpy` (the tests
        compare both with `_decode_reference`, bit for bit)."""
        check_out(out, rows=True)
        if _NATIVE is not None:
            decoded = self._decode_native(buf)
            if decoded is not None:
                return copy_out(decoded, out)
        return self._decode_numpy(buf, out)

    def _decode_native(self, buf):
        """float16 ``[8N]`` from `_lattice_native`, or None where it declines: a malformed
        payload (then `_decode_numpy` raises the error that names the fault), an empty record,
        codes beyond its int32 fast path, a value beyond FP16's finite range, a buffer it cannot
        read. `_decode_numpy` then takes the planes from the C entropy stage (no slow path)."""
        try:
            data = memoryview(buf).cast("B")
        except TypeError:  # not a contiguous buffer
            return None
        if len(data) < HEADER_BYTES:
            return None
        n = int.from_bytes(data[:4], "little")
        if not 0 < n <= C.MAX_SPLATS:
            return None
        decoded = np.empty(8 * n, np.float16)
        if _NATIVE.decode(data, decoded, self.position_step, self.scale_step, self.shear_step,
                          self.colour_step, C.MAX_SPLATS, self._CODER):
            return decoded
        return None

    def _decode_numpy(self, buf, out=None):
        """The layout above, with few whole-array operations, `CHUNK` splats at a time (the
        scratch arrays are int64 and float64 per value: a whole 2²⁰-splat record at once
        would need ~200 MiB)."""
        n, width, code_min, counts, raw = self._parse(buf)  # raw: [P, N] planes, most
        # significant first per attribute
        rows = np.empty((n, C.PARAMS_PER_SPLAT), np.float16)
        key_base = 0
        for start in range(0, n, CHUNK):
            part = raw[:, start:start + CHUNK]
            rows[start:start + part.shape[1]], key_base = self._rows_from_planes(
                part, width, code_min, counts, key_base)
        return copy_out(rows.reshape(-1), out)

    def _rows_from_planes(self, raw, width, code_min, counts, key_base):
        """Planes of m splats ``[P, m]`` → (float16 rows ``[m, 8]``, the key after them)."""
        m = raw.shape[1]
        gap_words = np.zeros((m, 4), np.uint8)  # little-endian uint32 gaps
        gap_words[:, :counts[0]] = raw[counts[0] - 1::-1].T
        key = np.cumsum(gap_words.view("<u4")[:, 0], dtype=np.int64)
        key += key_base
        codes = np.empty((8, m), np.int64)
        codes[1], codes[0] = np.divmod(key, width)
        row = counts[0]
        for slot in range(2, 8):  # usually one or two planes each
            count = counts[slot]
            if count == 1:
                codes[slot] = raw[row]
            elif count == 2:
                codes[slot] = (raw[row].astype(np.int64) << 8) | raw[row + 1]
            else:
                codes[slot] = 0
                for plane in raw[row:row + count]:
                    codes[slot] = (codes[slot] << 8) | plane
            row += count
        # ln l11, ln l22 from one plane: 256 possible codes, so exp by table (same values)
        scales = None
        if counts[2] == 1 and counts[4] == 1:
            offsets = np.arange(256)
            row2, row4 = counts[0], counts[0] + counts[2] + counts[3]
            with np.errstate(over="ignore"):  # → inf, refused by the reader's value check
                scales = (np.exp((code_min[2] + offsets) * self.scale_step)[raw[row2]],
                          np.exp((code_min[4] + offsets) * self.scale_step)[raw[row4]])
        codes += code_min[:, None]
        y, co, cg = codes[5], codes[6], codes[7]  # YCoCg-R inverse, in place (rows → R, G, B)
        t = y - (cg >> 1)
        cg += t            # G
        t -= co >> 1       # B
        co += t            # R
        codes[5:8] = codes[[6, 7, 5]]
        codes[7] = t
        return self.dequantize(codes, scales), int(key[-1]) if m else key_base

    def _decode_reference(self, buf, out=None):
        """Reference twin of `decode`: one stream at a time, as the layout reads."""
        n, width, code_min, counts, raw = self._parse(buf)
        if n == 0:
            return copy_out(np.empty(0, np.float16), out)
        planes = iter(raw)
        streams = {}
        for slot in (0, 2, 3, 4, 5, 6, 7):
            value = np.zeros(n, np.int64)
            for _ in range(counts[slot]):
                value = value * 256 + next(planes)
            streams[slot] = value
        key = np.cumsum(streams[0])
        cx = key % width + code_min[0]
        cy = key // width + code_min[1]
        ycc = np.stack([streams[s] + code_min[s] for s in (5, 6, 7)])
        codes = np.stack([cx, cy] + [streams[s] + code_min[s] for s in (2, 3, 4)]
                         + list(ycocg_r_inverse(ycc)))
        return copy_out(self.dequantize(codes).reshape(-1), out)
