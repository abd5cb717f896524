"""An independent reader written from spec/SPEC.md alone: msgpack, numcodecs.zstd and numpy,
no gsformat import. If this and gsformat disagree, one of them (or the spec) is wrong."""
import msgpack
import numpy as np
from numcodecs.zstd import Zstd


def _planar(buf):  # SPEC.md § 5.2
    n_values = int.from_bytes(buf[:4], "little")
    if n_values == 0:
        return b""
    planes = np.frombuffer(Zstd().decode(buf[4:]), np.uint8).reshape(2, 8, -1)
    words = (planes[0].astype(np.uint16) << 8) | planes[1]
    return np.ascontiguousarray(words.T).tobytes()


def _quantize(buf, config):  # SPEC.md § 5.3
    bits = [config["position_bits"]] * 2 + [config["covariance_bits"]] * 3 + \
        [config["colour_bits"]] * 3
    n = int.from_bytes(buf[:4], "little")
    lo = np.frombuffer(buf, "<f8", 8, 4)
    hi = np.frombuffer(buf, "<f8", 8, 68)
    pos, cols = 132, []
    for col, b in enumerate(bits):
        nbytes = (n * b + 7) // 8
        stream = np.unpackbits(np.frombuffer(buf, np.uint8, nbytes, pos), count=n * b,
                               bitorder="little").reshape(n, b)
        codes = stream.astype(np.float64) @ (2.0 ** np.arange(b))
        value = lo[col] + codes * ((hi[col] - lo[col]) / (2 ** b - 1))
        cols.append(np.exp(value) if col in (2, 4) else value)
        pos += nbytes
    return np.stack(cols, 1).astype("<f2").tobytes() if n else b""


def _entropy(buf, config):  # SPEC.md § 5.4
    bits = [config["position_bits"]] * 2 + [config["covariance_bits"]] * 3 + \
        [config["colour_bits"]] * 3
    n = int.from_bytes(buf[:4], "little")
    if n == 0:
        return b""
    lo = np.frombuffer(buf, "<f8", 8, 4)
    hi = np.frombuffer(buf, "<f8", 8, 68)
    raw = np.frombuffer(Zstd().decode(buf[132:]), np.uint8)

    def plane_values(offset, nbytes):
        value = np.zeros(n, np.uint64)
        for i in range(nbytes):
            value = (value << np.uint64(8)) | raw[offset + i * n: offset + (i + 1) * n]
        return value

    morton = np.cumsum(plane_values(0, 4), dtype=np.uint64)
    codes = [np.zeros(n, np.int64), np.zeros(n, np.int64)]
    for k in range(16):  # de-interleave bit by bit
        codes[0] |= ((morton >> np.uint64(2 * k)) & np.uint64(1)).astype(np.int64) << k
        codes[1] |= ((morton >> np.uint64(2 * k + 1)) & np.uint64(1)).astype(np.int64) << k
    for i, b in enumerate(bits[2:]):
        z = plane_values(4 * n + 2 * n * i, 2).astype(np.int64)
        s = np.where(z % 2 == 0, z // 2, -(z + 1) // 2)
        codes.append(np.cumsum(s) % (1 << b))
    cols = []
    for col, b in enumerate(bits):
        value = lo[col] + codes[col] * ((hi[col] - lo[col]) / (2 ** b - 1))
        cols.append(np.exp(value) if col in (2, 4) else value)
    return np.stack(cols, 1).astype("<f2").tobytes()


def _rans_planes(buf, n, count):  # SPEC.md § 5.6, one symbol at a time
    T = (256, 304, 362, 431)
    pos, tables = 48, []
    for _ in range(count):
        mode = buf[pos]
        pos += 1
        if mode == 0x80:
            tables.append(np.frombuffer(buf, np.uint8, n, pos))
            pos += n
            continue
        k, st, b = mode & 3, ((mode >> 2) & 3) + 2, ((mode >> 4) & 3) + 10
        max_sym, table_bits = buf[pos], buf[pos + 1:]
        pos += 1
        bit = lambda i: (table_bits[i // 8] >> (i % 8)) & 1  # noqa: E731
        at, q, weights = 0, 0, []
        for _ in range(max_sym + 1):
            unary = 0
            while bit(at):
                unary, at = unary + 1, at + 1
            at += 1
            v = unary << k
            for j in range(k):
                v, at = v | bit(at) << j, at + 1
            q += v // 2 if v % 2 == 0 else -((v + 1) // 2)
            t = (q - 1) * st
            weights.append((T[t % 4] << (t // 4)) >> 8 if q > 0 else 0)
        pos += (at + 7) // 8
        m, total = 1 << b, sum(weights)
        f = [max(1, w * m // total) if w else 0 for w in weights]
        f[f.index(max(f))] += m - sum(f)
        symbol_of_slot = [s for s, fs in enumerate(f) for _ in range(fs)]
        cum = [sum(f[:s]) for s in range(len(f))]
        tables.append((f, cum, b, symbol_of_slot))
    x = [int(v) for v in np.frombuffer(buf, "<u4", 32, pos)]
    sizes = [int(v) for v in np.frombuffer(buf, "<u4", 3, pos + 128)]
    pos += 140
    sizes.append((len(buf) - pos - 2 * sum(sizes)) // 2)
    streams = []
    for size in sizes:
        streams.append([int(v) for v in np.frombuffer(buf, "<u2", size, pos)])
        pos += 2 * size
    read, g, planes = [0, 0, 0, 0], 0, []
    for table in tables:
        if isinstance(table, np.ndarray):  # a raw plane
            planes.append(table)
            continue
        f, cum, b, symbol_of_slot = table
        out = np.empty(n, np.uint8)
        for i in range(n):
            lane = g % 32
            slot = x[lane] % (1 << b)
            s = symbol_of_slot[slot]
            x[lane] = f[s] * (x[lane] >> b) + slot - cum[s]
            if x[lane] < 1 << 16:
                j = lane // 8
                x[lane] = (x[lane] << 16) | streams[j][read[j]]
                read[j] += 1
            out[i], g = s, g + 1
        planes.append(out)
    assert x == [1 << 16] * 32 and read == sizes, "rANS stream does not end in its final state"
    return planes


def _lattice(buf, config):  # SPEC.md § 5.5 (zstd planes) and § 5.6 (rANS planes)
    n = int.from_bytes(buf[:4], "little")
    if n == 0:
        return b""
    width = int.from_bytes(buf[4:8], "little")
    code_min = np.frombuffer(buf, "<i4", 8, 8).astype(np.int64)
    planes = list(buf[40:48])
    if config["id"] == "gsformat.lattice-rans":
        frames = _rans_planes(buf, n, sum(planes))
    else:
        sizes = np.frombuffer(buf, "<u4", sum(planes), 48)
        pos = 48 + 4 * sum(planes)
        frames = []
        for size in sizes:
            frames.append(np.frombuffer(Zstd().decode(buf[pos:pos + int(size)]), np.uint8))
            pos += int(size)
    streams = {}
    for slot in (0, 2, 3, 4, 5, 6, 7):
        value = np.zeros(n, np.int64)
        for _ in range(planes[slot]):
            value = value * 256 + frames.pop(0)
        streams[slot] = value if slot == 0 else value + code_min[slot]
    key = np.cumsum(streams[0])
    cx, cy = key % width + code_min[0], key // width + code_min[1]
    y, co, cg = streams[5], streams[6], streams[7]  # YCoCg-R, inverted on integers
    t = y - np.floor_divide(cg, 2)
    g = cg + t
    b = t - np.floor_divide(co, 2)
    r = b + co
    p, s, h, c = (config.get(k, d) for k, d in (("position_step", 1 / 2048),
                                                 ("scale_step", 0.05), ("shear_step", 0.05),
                                                 ("colour_step", 0.022)))
    l22 = np.exp(streams[4] * s)
    cols = [cx * p, cy * p, np.exp(streams[2] * s), (streams[3] * h) * l22, l22,
            r * c, g * c, b * c]
    return np.stack(cols, 1).astype("<f4").astype("<f2").tobytes()  # float64 → float32 → FP16


def _content_size(frame) -> int:  # SPEC.md § 5.1, RFC 8878 § 3.1.1.1
    descriptor = frame[4]
    flag, single = descriptor >> 6, (descriptor >> 5) & 1
    size_len = (single, 2, 4, 8)[flag]
    pos = 5 + (not single)
    size = int.from_bytes(frame[pos:pos + size_len], "little")
    return size + 256 if size_len == 2 else size


def spec_decode(record: bytes):
    rec = msgpack.unpackb(record, raw=False)
    assert rec["version"][0] == 1 and rec["layout"] == "gs2d.mu2.chol3.rgb3"
    buf = rec["payload"]
    for config in reversed(rec["codecs"]):
        if config["id"] == "zstd":  # one frame (an empty one: numcodecs refuses those)
            buf = bytes(Zstd().decode(buf)) if _content_size(buf) else b""
        elif config["id"] == "gsformat.planar":
            buf = _planar(buf)
        elif config["id"] == "gsformat.quantize":
            buf = _quantize(buf, config)
        elif config["id"] == "gsformat.entropy":
            buf = _entropy(buf, config)
        elif config["id"] in ("gsformat.lattice", "gsformat.lattice-rans"):
            buf = _lattice(buf, config)
        else:
            raise ValueError(config["id"])
    params = np.frombuffer(buf, "<f2").reshape(rec["n_splats"], 8)
    return params, rec["height"], rec["width"]
