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


def _lattice(buf, config):  # SPEC.md § 5.5
    n = int.from_bytes(buf[:4], "little")
    if n == 0:
        return b""
    width = int.from_bytes(buf[4:8], "little")
    code_min = np.frombuffer(buf, "<i4", 8, 8).astype(np.int64)
    planes = list(buf[40:48])
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


def spec_decode(record: bytes):
    rec = msgpack.unpackb(record, raw=False)
    assert rec["version"][0] == 1 and rec["layout"] == "gs2d.mu2.chol3.rgb3"
    buf = rec["payload"]
    for config in reversed(rec["codecs"]):
        if config["id"] == "zstd":
            buf = bytes(Zstd().decode(buf))
        elif config["id"] == "gsformat.planar":
            buf = _planar(buf)
        elif config["id"] == "gsformat.quantize":
            buf = _quantize(buf, config)
        elif config["id"] == "gsformat.entropy":
            buf = _entropy(buf, config)
        elif config["id"] == "gsformat.lattice":
            buf = _lattice(buf, config)
        else:
            raise ValueError(config["id"])
    params = np.frombuffer(buf, "<f2").reshape(rec["n_splats"], 8)
    return params, rec["height"], rec["width"]
