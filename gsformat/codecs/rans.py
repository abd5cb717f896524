"""Byte planes ↔ interleaved rANS: the entropy stage of `gsformat.lattice-rans` (SPEC.md § 5.6).

Why not zstd per plane (`gsformat.lattice`): a lattice plane is ~1,600 bytes with no repeats
worth a match, so zstd is an order-0 Huffman coder there, ~7 % above the plane's entropy (table,
whole-bit code lengths, frame headers). Static rANS with a compact table comes within ~1 % of the
entropy plus ~35 bytes of table per plane, and its decoder is a table lookup, a multiply and a
conditional 16-bit read per byte, 32 lanes at a time (README: decode cost).

Layout (the bytes after the 48-byte lattice header; little-endian)::

    for each plane p = 0 … P−1:
        [mode: uint8]   0x80: raw. Else bits 0–1: Rice parameter k; bits 2–3: st − 2, the
                        table step in quarter octaves (st ∈ 2, 3, 4); bits 4–5: b − 10, the
                        scale bits (M = 2^b, b ∈ 10, 11, 12); bits 6–7: 0
        raw:   [N bytes]  the plane as it is
        rANS:  [max_sym: uint8] [table: ⌈bits / 8⌉ bytes]  for s = 0 … max_sym, the zigzag of
               q_s − q_{s−1} (q_{−1} = 0) as Rice(k): (v >> k) one-bits, a zero-bit, then the k
               low bits of v, least significant first; bits fill each byte from its lowest bit;
               the padding bits are zero
    [state: uint32 × 32]       the decoder's initial lane states, each in [2^16, 2^32)
    [stream_words: uint32 × 3] words in streams 0, 1, 2 (stream 3: the rest)
    [4 streams of uint16 words] stream j feeds lanes 8j … 8j + 7, in the order they read

Table: q_s = 0 means symbol s is absent; else its weight is w_s = (T[t mod 4] << ⌊t / 4⌋) >> 8
with t = (q_s − 1)·st ≤ 48 and T = (256, 304, 362, 431) (2^(r/4) in Q8). Frequencies:
f_s = max(1, ⌊w_s·M / Σw⌋) for present symbols, then the first symbol with the largest f_s gets
M − Σf added (it must stay ≥ 1); cumulative C_s = Σ_{r<s} f_r. max_sym must be present.

Coding: the symbols of the rANS planes, concatenated in plane order, are numbered g = 0, 1, …;
symbol g uses lane g mod 32. Decoding symbol g of a plane with (f, C, b): x = state[lane];
slot = x mod M; s = the symbol with C_s ≤ slot < C_s + f_s; x ← f_s·(x >> b) + slot − C_s;
if x < 2^16: x ← (x << 16) | the next word of the lane's stream. At the end every lane state is
2^16 and every stream has been read to its end. (Encoding runs backwards from states 2^16: if
x ≥ f_s << (32 − b), emit x mod 2^16 and x ← x >> 16; then x ← ⌊x / f_s⌋·M + x mod f_s + C_s.)
Four streams rather than one so that a decoder's four 8-lane vectors do not wait on each other
for their read positions.
"""
from __future__ import annotations

import numpy as np

from ..core.errors import FormatError

LANES = 32
STREAMS = 4  # lanes 8j … 8j + 7 read stream j
STATE_LOW = 1 << 16  # lane states live in [2^16, 2^32)
RAW_MODE = 0x80
T_Q8 = np.array([256, 304, 362, 431], np.int64)  # 2^(r/4) · 256, rounded
MAX_T = 48  # (q − 1)·st ≤ 48: weights ≤ 4096
MAX_TABLE_BYTES = 256 * (2 * (1 + MAX_T // 2) + 1 + 3) // 8  # 256 longest Rice codes: 1,728
SCALE_BITS = (10, 11, 12)
TABLE_STEPS = (2, 3, 4)  # quarter octaves


def weights(q: np.ndarray, st: int) -> np.ndarray:
    """Table codes q ``[S]`` → integer weights (0 where q = 0)."""
    t = np.maximum(q - 1, 0) * st
    return np.where(q > 0, (T_Q8[t & 3] << (t >> 2)) >> 8, 0)


def frequencies(q: np.ndarray, st: int, scale_bits: int) -> np.ndarray | None:
    """Table codes → frequencies summing to 2^b (int64 ``[S]``), or None if the fix-up fails."""
    w = weights(q, st)
    total = int(w.sum())
    if total == 0:
        return None
    m = 1 << scale_bits
    f = np.where(w > 0, np.maximum(1, (w * m) // total), 0)
    top = int(np.argmax(f))
    f[top] += m - int(f.sum())
    return f if f[top] >= 1 else None


def _zigzag(d):
    return np.where(d >= 0, 2 * d, -2 * d - 1)


def _rice_bits(z: np.ndarray, k: int) -> int:
    return int((z >> k).sum()) + len(z) * (1 + k)


# ---- encoder -------------------------------------------------------------------------------
def _plan(plane: np.ndarray):
    """The cheapest coding of one plane: ("raw", cost) or ("rans", cost, b, st, k, q, f)."""
    n = plane.size
    counts = np.bincount(plane, minlength=256).astype(np.int64)
    present = counts > 0
    max_sym = int(np.flatnonzero(present)[-1])
    used = present[:max_sym + 1]
    target = np.log2(np.maximum(counts, 1) * 4096.0 / counts.max())
    best = ("raw", 8.0 * (1 + n))
    for st in TABLE_STEPS:
        q = np.where(present, 1 + np.clip(np.rint(target * 4 / st), 0, MAX_T // st), 0)
        q = q.astype(np.int64)[:max_sym + 1]
        z = _zigzag(np.diff(q, prepend=0))
        k = min(range(4), key=lambda k: _rice_bits(z, k))
        table_bits = 8 * (2 + (_rice_bits(z, k) + 7) // 8)
        for b in SCALE_BITS:
            if b > 10 and 1 << b > n:  # a slot table larger than the plane costs more time
                break  # to build than it saves bytes (~0.1 % at N = 1,600)
            f = frequencies(q, st, b)
            if f is None:
                continue
            data_bits = float((counts[:max_sym + 1][used]
                               * np.log2((1 << b) / f[used])).sum())
            if table_bits + data_bits < best[1]:
                best = ("rans", table_bits + data_bits, b, st, k, q, f)
    return best


def _pack_table(q: np.ndarray, k: int) -> bytes:
    z = _zigzag(np.diff(q, prepend=0))
    bits = []
    for v in z.tolist():
        bits += [1] * (v >> k) + [0] + [(v >> j) & 1 for j in range(k)]
    return np.packbits(np.array(bits, np.uint8), bitorder="little").tobytes()


def encode(planes: list[np.ndarray]) -> bytes:
    """uint8 planes (each ``[N]``, N ≥ 1) → the layout above."""
    head, coded = [], []  # per-plane bytes; (plane, f, C, b) of the rANS planes
    for plane in planes:
        plan = _plan(plane)
        if plan[0] == "raw":
            head.append(bytes([RAW_MODE]) + plane.tobytes())
            continue
        _, _, b, st, k, q, f = plan
        head.append(bytes([k | (st - 2) << 2 | (b - 10) << 4, len(q) - 1]) + _pack_table(q, k))
        coded.append((plane, f, np.cumsum(f) - f, b))
    states, streams = _encode_stream(coded)
    sizes = np.array([len(w) for w in streams[:-1]], "<u4")
    return (b"".join(head) + states.astype("<u4").tobytes() + sizes.tobytes()
            + b"".join(w.astype("<u2").tobytes() for w in streams))


def _encode_stream(coded):
    """Lanes' final states ``[32]`` and the four streams' words in read order."""
    x = np.full(LANES, STATE_LOW, np.int64)
    if not coded:
        return x, [np.empty(0, np.int64)] * STREAMS
    sym = np.concatenate([plane for plane, _, _, _ in coded]).astype(np.int64)
    freq = np.concatenate([f[plane] for plane, f, _, _ in coded])
    cum = np.concatenate([c[plane] for plane, _, c, _ in coded])
    bits = np.concatenate([np.full(plane.size, b, np.int64) for plane, _, _, b in coded])
    limit = freq << (32 - bits)
    stream_of = np.arange(LANES) // (LANES // STREAMS)
    chunks = [[] for _ in range(STREAMS)]
    for start in range((sym.size - 1) // LANES * LANES, -1, -LANES):  # groups, last first
        g = slice(start, min(start + LANES, sym.size))
        lanes = x[:g.stop - g.start]
        emit = lanes >= limit[g]
        for j in np.unique(stream_of[:lanes.size][emit]):
            mine = emit & (stream_of[:lanes.size] == j)
            chunks[j].append((lanes[mine] & 0xFFFF)[::-1])  # read back in lane order
        lanes = np.where(emit, lanes >> 16, lanes)
        f = freq[g]
        x[:lanes.size] = ((lanes // f) << bits[g]) + lanes % f + cum[g]
    return x, [np.concatenate(c)[::-1] if c else np.empty(0, np.int64) for c in chunks]


# ---- decoder (the NumPy twin of the C decoder in _lattice_native.c) -------------------------
def _parse_tables(data: np.ndarray, n: int, n_planes: int):
    """Per plane ("raw", bytes) or ("rans", f, b); and the offset where the states start."""
    pos, tables = 0, []
    for p in range(n_planes):
        if pos >= data.size:
            raise FormatError(f"lattice-rans payload: truncated at plane {p}'s mode")
        mode = int(data[pos])
        if mode == RAW_MODE:
            if data.size < pos + 1 + n:
                raise FormatError(f"lattice-rans payload: raw plane {p} is truncated")
            tables.append(("raw", data[pos + 1:pos + 1 + n]))
            pos += 1 + n
            continue
        k, st, b = mode & 3, ((mode >> 2) & 3) + 2, ((mode >> 4) & 3) + 10
        if mode & 0xC0 or st > 4 or b > 12 or pos + 1 >= data.size:
            raise FormatError(f"lattice-rans payload: plane {p} has a bad mode {mode:#04x} "
                              f"or no table")
        max_sym = int(data[pos + 1])
        q, table_bytes = _read_table(data[pos + 2:pos + 2 + MAX_TABLE_BYTES], max_sym, k, st, p)
        pos += 2 + table_bytes
        f = frequencies(q, st, b)
        if f is None:
            raise FormatError(f"lattice-rans payload: plane {p}'s table has no valid "
                              f"frequencies")
        tables.append(("rans", f, b))
    return tables, pos


def _read_table(data: np.ndarray, max_sym: int, k: int, st: int, p: int):
    """q ``[max_sym + 1]`` and the bytes the table used."""
    bits = np.unpackbits(data, bitorder="little")
    q_max = 1 + MAX_T // st
    q, prev, pos = np.zeros(max_sym + 1, np.int64), 0, 0
    zeros = np.flatnonzero(bits == 0)  # each Rice code's unary part ends at a zero bit
    for s in range(max_sym + 1):
        i = np.searchsorted(zeros, pos)
        if i >= zeros.size or zeros[i] - pos > 2 * q_max or zeros[i] + 1 + k > bits.size:
            raise FormatError(f"lattice-rans payload: plane {p}'s table is truncated or "
                              f"out of range")
        low = bits[zeros[i] + 1:zeros[i] + 1 + k]
        v = (int(zeros[i] - pos) << k) | int((low.astype(np.int64) << np.arange(k)).sum())
        prev += (v >> 1) if v % 2 == 0 else -((v + 1) >> 1)
        if not 0 <= prev <= q_max:
            raise FormatError(f"lattice-rans payload: plane {p}'s table has code {prev} "
                              f"outside [0, {q_max}]")
        q[s] = prev
        pos = int(zeros[i]) + 1 + k
    used = (pos + 7) // 8
    if q[max_sym] == 0 or bits[pos:8 * used].any():
        raise FormatError(f"lattice-rans payload: plane {p}'s table does not end on a present "
                          f"symbol, or its padding is not zero")
    return q, used


def parse(data: np.ndarray, n: int, n_planes: int):
    """Everything before the decoding loop, checked (bounded work: tables, lane states, stream
    sizes): (tables, states, words, stream starts, stream ends)."""
    tables, pos = _parse_tables(data, n, n_planes)
    head = 4 * LANES + 4 * (STREAMS - 1)
    if data.size < pos + head:
        raise FormatError("lattice-rans payload: truncated lane states or stream sizes")
    x = data[pos:pos + 4 * LANES].view("<u4").astype(np.int64)
    if (x < STATE_LOW).any():
        raise FormatError("lattice-rans payload: a lane state below 2^16")
    sizes = data[pos + 4 * LANES:pos + head].view("<u4").astype(np.int64).tolist()
    rest = data.size - pos - head - 2 * sum(sizes)
    if rest < 0 or rest % 2:
        raise FormatError(f"lattice-rans payload: stream sizes {sizes} do not fit the "
                          f"{data.size - pos - head} bytes of words")
    words = data[pos + head:].view("<u2").astype(np.int64)
    starts = np.cumsum([0] + sizes)  # each stream's first word in `words`
    ends = np.append(starts[1:], words.size)
    return tables, x, words, starts, ends


def decode(data, n: int, n_planes: int) -> np.ndarray:
    """The layout above → uint8 planes ``[P, N]``; FormatError naming the fault otherwise."""
    data = np.frombuffer(memoryview(data).cast("B"), np.uint8)
    tables, x, words, starts, ends = parse(data, n, n_planes)
    out = np.empty((n_planes, n), np.uint8)
    coded = [p for p, t in enumerate(tables) if t[0] == "rans"]
    for p, t in enumerate(tables):
        if t[0] == "raw":
            out[p] = t[1]
    if coded:
        # per rANS plane: slot → symbol, frequencies and cumulative counts by symbol
        sym_of = np.stack([_slot_table(tables[p][1]) for p in coded])  # [R, 4096]
        freq = np.stack([np.pad(tables[p][1], (0, 256 - len(tables[p][1]))) for p in coded])
        cum = np.cumsum(freq, axis=1) - freq  # [R, 256]
        bits = np.array([tables[p][2] for p in coded])
        x, read = _decode_stream(x, words, starts, ends, sym_of, freq, cum, bits, out,
                                 np.array(coded))
    else:
        read = starts[:STREAMS].copy()
    if (read != ends).any() or (x != STATE_LOW).any():
        raise FormatError(f"lattice-rans payload: the streams do not end where they should "
                          f"({(read - starts[:STREAMS]).tolist()} of "
                          f"{(ends - starts[:STREAMS]).tolist()} words read)")
    return out


def _decode_stream(x, words, starts, ends, sym_of, freq, cum, bits, out, coded):
    """32 symbols (one per lane) per step over the R rANS planes, rows ``coded`` of ``out``
    (uint8 ``[P, n]``, written in place: no second ``[R, n]`` array, SPEC.md § 7's budget);
    → final states, read positions. A plane whose one symbol has frequency M leaves every state
    as it is and reads no word (x ← M·(x >> b) + x mod M), so it is filled without a step; the
    others cost a Python step per 32 symbols (the C decoder is ~1,000× faster)."""
    n = out.shape[1]
    n_planes = len(bits)
    single = freq.max(axis=1) == (1 << bits)
    out[coded[single]] = freq[single].argmax(axis=1)[:, None]
    live = np.flatnonzero(~single)  # the planes that are stepped
    masks = (1 << bits) - 1
    stream_of = np.arange(LANES) // (LANES // STREAMS)
    read = starts[:STREAMS].copy()  # next word of each stream
    groups = [range(p * n // LANES, -(-(p + 1) * n // LANES)) for p in live]  # 32-symbol steps
    for group in (np.unique(np.concatenate(groups)) if groups else ()):
        start = int(group) * LANES
        stop = min(start + LANES, n_planes * n)
        symbol = np.arange(start, stop)
        plane = symbol // n  # [≤ 32] the rANS plane of each symbol
        lanes = x[:stop - start]
        slot = lanes & masks[plane]
        s = sym_of[plane, slot]
        stepped = ~single[plane]
        new = freq[plane, s] * (lanes >> bits[plane]) + slot - cum[plane, s]
        lanes = np.where(stepped, new, lanes)
        need = lanes < STATE_LOW
        if need.any():
            mine = stream_of[:lanes.size][need]
            at = read[mine] + _rank_within(mine)  # k-th needing lane of stream j: word k
            if (at >= ends[mine]).any():
                raise FormatError("lattice-rans payload: a stream ends early")
            lanes[need] = (lanes[need] << 16) | words[at]
            read += np.bincount(mine, minlength=STREAMS)
        x[:lanes.size] = lanes
        rows, cols = coded[plane[stepped]], symbol[stepped] % n
        out[rows, cols] = s[stepped]
    return x, read


def _rank_within(groups: np.ndarray) -> np.ndarray:
    """Sorted group ids → each one's index within its group: [0, 0, 1, 3, 3] → [0, 1, 0, 0, 1]."""
    first = np.r_[0, np.flatnonzero(np.diff(groups)) + 1]
    return np.arange(groups.size) - np.repeat(first, np.diff(np.r_[first, groups.size]))


def _slot_table(f: np.ndarray) -> np.ndarray:
    """Frequencies → the symbol of each slot ``[4096]`` (slots ≥ M unused)."""
    table = np.zeros(4096, np.int64)
    m = int(f.sum())
    table[:m] = np.repeat(np.arange(len(f)), f)
    return table
