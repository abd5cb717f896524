"""An independent reader written from spec/SPEC.md (1.5) alone: msgpack, zstd and numpy, no
gsformat import. `spec_decode` decodes what the spec says to decode and raises `SpecError` for
what it says a reader rejects; `spec_read_dataset` reads a dataset from § 6.4–6.5 alone. If
this and gsformat disagree, one of them (or the spec) is wrong."""
import json
import math
import os

import msgpack
import numpy as np
import zstd

MAX_SPLATS, MAX_SIDE, MAX_RECORD, MAX_STAGES = 1 << 20, 1 << 16, 64 << 20, 8  # § 7
MAX_DEPTH, MAX_FIT = 64, 64  # § 4
LAYOUT = "gs2d.mu2.chol3.rgb3"
REQUIRED = {"version": list, "n_splats": int, "height": int, "width": int, "layout": str,
            "codecs": list, "payload": bytes}
STEP, BITS = ("number", 0, 1), ("int", 1, 16)  # § 5: (kind, low, high)
PARAMS = {"zstd": {}, "gsformat.planar": {},
          "gsformat.quantize": dict.fromkeys(("position_bits", "covariance_bits",
                                              "colour_bits"), BITS),
          "gsformat.lattice": dict.fromkeys(("position_step", "scale_step", "shear_step",
                                             "colour_step"), STEP)}
PARAMS["gsformat.entropy"] = PARAMS["gsformat.quantize"]
PARAMS["gsformat.lattice-rans"] = PARAMS["gsformat.lattice"]


class SpecError(Exception):
    """What SPEC.md says a reader rejects."""


def need(condition, why: str) -> None:
    if not condition:
        raise SpecError(why)


# ---- § 4: the record ------------------------------------------------------------------------
def _pairs(pairs):
    mapping = dict(pairs)
    need(len(mapping) == len(pairs), "a map key given twice")
    return mapping


def _ext(code, data):
    raise SpecError(f"extension type {code}")


def _walk(value, depth=1):
    """Only str keys, no extension type, at most MAX_DEPTH containers deep (the map is 1)."""
    if type(value) in (dict, list):
        need(depth <= MAX_DEPTH, "nested too deep")
    if type(value) is dict:
        for key, item in value.items():
            need(type(key) is str, "a map key that is not a str")
            _walk(item, depth + 1)
    elif type(value) is list:
        for item in value:
            _walk(item, depth + 1)
    else:
        need(type(value) in (str, bytes, int, float, bool, type(None)), "an extension type")


def _param(config, name, kind, low, high):
    need(name in config, f"missing parameter {name}")
    value = config[name]
    if kind == "int":
        need(type(value) is int and low <= value <= high, f"parameter {name}")
    else:
        need(type(value) in (int, float) and math.isfinite(value) and low < value <= high,
             f"parameter {name}")
    return value


def spec_record(record: bytes) -> dict:
    """The checked record map (§ 4, § 5's parameters) with `fit` as a reader keeps it."""
    need(len(record) <= MAX_RECORD, "record over 64 MiB")
    try:
        rec = msgpack.unpackb(record, raw=False, strict_map_key=False, ext_hook=_ext,
                              object_pairs_hook=_pairs, timestamp=0)
    except SpecError:
        raise
    except Exception as exc:  # not msgpack, invalid UTF-8 in any str, a key msgpack refuses
        raise SpecError(f"not msgpack: {exc}") from None
    need(type(rec) is dict, "not a map")
    _walk(rec)
    for key, kind in REQUIRED.items():
        need(key in rec and type(rec[key]) is kind, f"{key} missing or of another type")
    version = rec["version"]
    need(len(version) == 2 and all(type(v) is int and v >= 0 for v in version), "version")
    need(version[0] == 1, "major version")
    need(0 <= rec["n_splats"] <= MAX_SPLATS and 1 <= rec["height"] <= MAX_SIDE
         and 1 <= rec["width"] <= MAX_SIDE, "n_splats, height or width out of range")
    need(rec["layout"] == LAYOUT, "layout")
    need(len(rec["codecs"]) <= MAX_STAGES, "pipeline too long")
    for config in rec["codecs"]:
        need(type(config) is dict and config.get("id") in PARAMS, "unknown codec")
        config["_decode"] = {name: _param(config, name, *rule)
                             for name, rule in PARAMS[config["id"]].items()}
    fit = rec.get("fit", {})
    fit = fit if type(fit) is dict and len(fit) <= MAX_FIT else {}
    rec["fit"] = {k: v for k, v in fit.items() if type(v) in (str, int, float, bool, type(None))}
    return rec


def spec_decode(record: bytes):
    """(params float16 [N, 8], height, width) of a record; SpecError where the spec rejects."""
    rec = spec_record(record)
    n = rec["n_splats"]
    buf = rec["payload"]
    if n == 0 and not buf:  # § 4: after the pipeline's check
        return np.empty((0, 8), "<f2"), rec["height"], rec["width"]
    for stage in range(len(rec["codecs"]) - 1, -1, -1):
        config = rec["codecs"][stage]
        claimed = _claim(config["id"], buf)
        need(claimed == 16 * n if stage == 0 else claimed <= 32 * n + 65536,
             "a stage claims another size")  # § 4.1 step 4
        buf = DECODERS[config["id"]](buf, config["_decode"], n)
        need(len(buf) == claimed, "a stage decodes to another size than it claims")
    need(len(buf) == 16 * n, "the parameters are not 16·N bytes")
    params = np.frombuffer(buf, "<f2").reshape(n, 8)
    need(np.isfinite(params).all() and (params[:, 2] > 0).all() and (params[:, 4] > 0).all(),
         "values (§ 2)")
    return params, rec["height"], rec["width"]


def _claim(codec_id, buf) -> int:
    if codec_id == "zstd":
        return _frame(buf)[0]
    need(len(buf) >= 4, "no header")
    count = int.from_bytes(buf[:4], "little")
    return 2 * count if codec_id == "gsformat.planar" else 16 * count


# ---- § 5.1 zstd -------------------------------------------------------------------------------
def _frame(buf):
    """(content size, frame length) from the header and block headers alone (RFC 8878)."""
    need(buf[:4] == b"\x28\xb5\x2f\xfd" and len(buf) >= 5, "not a zstd frame")
    descriptor = buf[4]
    fcs, single, checksum = descriptor >> 6, (descriptor >> 5) & 1, (descriptor >> 2) & 1
    need(not descriptor & 0x08 and not descriptor & 0x03, "reserved bit or dictionary id")
    pos = 5
    if not single:
        need(len(buf) > pos and 10 + (buf[pos] >> 3) <= 31, "window log over 31")
        pos += 1
    size_len = (single, 2, 4, 8)[fcs]
    need(size_len and len(buf) >= pos + size_len, "no content size")
    size = int.from_bytes(buf[pos:pos + size_len], "little") + (256 if size_len == 2 else 0)
    pos += size_len
    produced = 0
    while True:
        need(pos + 3 <= len(buf), "truncated block")
        word = int.from_bytes(buf[pos:pos + 3], "little")
        kind, block = (word >> 1) & 3, word >> 3
        need(kind != 3 and block <= 128 << 10, "reserved block type or block over 128 KiB")
        produced += block if kind < 2 else 0
        need(produced <= size, "blocks produce more than the content size")
        pos += 3 + (1 if kind == 1 else block)
        if word & 1:
            break
    pos += 4 * checksum
    need(pos == len(buf), "bytes after the frame, or a truncated one")
    return size, pos


def _zstd(buf, params=None, n=None):
    size, _ = _frame(buf)
    try:
        raw = zstd.decompress(bytes(buf))  # verifies a content checksum (§ 5.1)
    except Exception as exc:
        raise SpecError(f"corrupt zstd data: {exc}") from None
    need(len(raw) == size, "frame decodes to another size than its content size")
    return raw


# ---- § 5.2 planar ---------------------------------------------------------------------------
def _planar(buf, params=None, n=None):
    n_values = int.from_bytes(buf[:4], "little")
    need(n_values % 8 == 0 and n_values <= 1 << 24, "planar value count")
    if n_values == 0:
        need(len(buf) == 4, "bytes after an empty planar header")
        return b""
    planes = np.frombuffer(_zstd(buf[4:]), np.uint8).reshape(2, 8, -1)
    words = (planes[0].astype(np.uint16) << 8) | planes[1]
    return np.ascontiguousarray(words.T).astype("<u2").tobytes()


# ---- § 5.3 quantize, § 5.4 entropy ------------------------------------------------------------
def _bits(params):
    return [params["position_bits"]] * 2 + [params["covariance_bits"]] * 3 + \
        [params["colour_bits"]] * 3


def _ranges(buf, n):
    need(n <= MAX_SPLATS and len(buf) >= 132, "quantize header")
    lo = np.frombuffer(buf, "<f8", 8, 4)
    hi = np.frombuffer(buf, "<f8", 8, 68)
    with np.errstate(over="ignore", invalid="ignore"):
        need(np.isfinite(lo).all() and np.isfinite(hi).all() and (hi >= lo).all()
             and np.isfinite(hi - lo).all(), "ranges")
    return lo, hi


def _dequantize(codes, bits, lo, hi):
    cols = []
    with np.errstate(over="ignore"):
        for col, b in enumerate(bits):
            value = lo[col] + codes[col] * ((hi[col] - lo[col]) / (2 ** b - 1))
            cols.append(np.exp(value) if col in (2, 4) else value)
        return np.stack(cols, 1).astype("<f2").tobytes()


def _quantize(buf, params, n_record=None):
    bits = _bits(params)
    n = int.from_bytes(buf[:4], "little")
    sizes = [(n * b + 7) // 8 for b in bits]
    need(len(buf) == 132 + sum(sizes), "quantize payload size")
    lo, hi = _ranges(buf, n)
    pos, codes = 132, []
    for b, size in zip(bits, sizes):
        stream = np.unpackbits(np.frombuffer(buf, np.uint8, size, pos), bitorder="little")
        need(not stream[n * b:].any(), "padding bits not zero (§ 5.3)")
        codes.append(stream[:n * b].reshape(n, b).astype(np.float64) @ (2.0 ** np.arange(b)))
        pos += size
    return _dequantize(codes, bits, lo, hi) if n else b""


def _entropy(buf, params, n_record=None):
    bits = _bits(params)
    n = int.from_bytes(buf[:4], "little")
    lo, hi = _ranges(buf, n)
    if n == 0:
        need(len(buf) == 132, "bytes after an empty entropy header")
        return b""
    raw = np.frombuffer(_zstd(buf[132:]), np.uint8)
    need(raw.size == 16 * n, "entropy frame size")

    def plane_values(offset, nbytes):
        value = np.zeros(n, np.uint64)
        for i in range(nbytes):
            value = (value << np.uint64(8)) | raw[offset + i * n: offset + (i + 1) * n]
        return value

    morton = np.cumsum(plane_values(0, 4), dtype=np.uint64)  # modulo 2^64
    codes = [np.zeros(n, np.int64), np.zeros(n, np.int64)]
    for k in range(32):  # de-interleave bit by bit
        codes[0] |= ((morton >> np.uint64(2 * k)) & np.uint64(1)).astype(np.int64) << k
        codes[1] |= ((morton >> np.uint64(2 * k + 1)) & np.uint64(1)).astype(np.int64) << k
    need((codes[0] < 2 ** bits[0]).all() and (codes[1] < 2 ** bits[1]).all(), "position codes")
    for i, b in enumerate(bits[2:]):
        z = plane_values(4 * n + 2 * n * i, 2).astype(np.int64)
        need((z < 2 ** b).all(), "a zig-zag value of 2^b or more (§ 5.4)")
        s = np.where(z % 2 == 0, z // 2, -(z + 1) // 2)
        codes.append(np.cumsum(s) % (1 << b))
    return _dequantize(codes, bits, lo, hi)


# ---- § 5.5 lattice, § 5.6 rANS --------------------------------------------------------------
def _rans_planes(buf, n, count):  # one symbol at a time
    T = (256, 304, 362, 431)
    pos, tables = 48, []
    for _ in range(count):
        need(pos < len(buf), "truncated mode")
        mode = buf[pos]
        pos += 1
        if mode == 0x80:
            need(pos + n <= len(buf), "truncated raw plane")
            tables.append(np.frombuffer(buf, np.uint8, n, pos))
            pos += n
            continue
        k, st, b = mode & 3, ((mode >> 2) & 3) + 2, ((mode >> 4) & 3) + 10
        need(not mode & 0xC0 and st <= 4 and b <= 12 and pos < len(buf), "mode")
        max_sym, table_bits = buf[pos], buf[pos + 1:]
        pos += 1

        def bit(i):
            need(i // 8 < len(table_bits), "table runs past the payload")
            return (table_bits[i // 8] >> (i % 8)) & 1

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
            need(0 <= q <= 1 + 48 // st, "table code out of range")
            t = (q - 1) * st
            weights.append((T[t % 4] << (t // 4)) >> 8 if q > 0 else 0)
        need(weights[-1] > 0, "the table does not end on a present symbol")
        need(at % 8 == 0 or not table_bits[at // 8] >> (at % 8), "table padding not zero")
        pos += (at + 7) // 8
        m, total = 1 << b, sum(weights)
        f = [max(1, w * m // total) if w else 0 for w in weights]
        f[f.index(max(f))] += m - sum(f)
        need(min(x for x in f if x) >= 1 and max(f) >= 1, "frequency fix-up")
        symbol_of_slot = [s for s, fs in enumerate(f) for _ in range(fs)]
        cum = [sum(f[:s]) for s in range(len(f))]
        tables.append((f, cum, b, symbol_of_slot))
    need(pos + 140 <= len(buf), "truncated states")
    x = [int(v) for v in np.frombuffer(buf, "<u4", 32, pos)]
    need(min(x) >= 1 << 16, "a lane state below 2^16")
    sizes = [int(v) for v in np.frombuffer(buf, "<u4", 3, pos + 128)]
    pos += 140
    rest = len(buf) - pos - 2 * sum(sizes)
    need(rest >= 0 and rest % 2 == 0, "stream sizes")
    sizes.append(rest // 2)
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
        if max(f) == 1 << b:  # § 5.6 Note: one symbol of frequency M: states never change
            planes.append(np.full(n, f.index(max(f)), np.uint8))
            g += n
            continue
        out = np.empty(n, np.uint8)
        for i in range(n):
            lane = g % 32
            slot = x[lane] % (1 << b)
            s = symbol_of_slot[slot]
            x[lane] = f[s] * (x[lane] >> b) + slot - cum[s]
            if x[lane] < 1 << 16:
                j = lane // 8
                need(read[j] < sizes[j], "a stream read past its end")
                x[lane] = (x[lane] << 16) | streams[j][read[j]]
                read[j] += 1
            out[i], g = s, g + 1
        planes.append(out)
    need(x == [1 << 16] * 32 and read == sizes, "the streams do not end where they should")
    return planes


def _lattice(buf, params, n_record=None, rans=False):
    n = int.from_bytes(buf[:4], "little")
    need(n <= MAX_SPLATS and len(buf) >= 48, "lattice header")
    if n == 0:
        need(len(buf) == 48 and not any(buf[4:]), "an empty lattice header is not zero")
        return b""
    width = int.from_bytes(buf[4:8], "little")
    code_min = [int(v) for v in np.frombuffer(buf, "<i4", 8, 8)]  # Python ints: no overflow
    planes = list(buf[40:48])
    need(width >= 1 and planes[1] == 0
         and all(1 <= planes[s] <= 4 for s in (0, 2, 3, 4, 5, 6, 7)), "plane counts")
    if rans:
        frames = _rans_planes(buf, n, sum(planes))
    else:
        need(len(buf) >= 48 + 4 * sum(planes), "frame table")
        sizes = np.frombuffer(buf, "<u4", sum(planes), 48)
        pos = 48 + 4 * sum(planes)
        need(pos + int(sizes.sum()) == len(buf), "frames do not fill the payload")
        frames = []
        for size in sizes:
            frame = buf[pos:pos + int(size)]
            need(_frame(frame)[0] == n, "a plane's frame does not claim N bytes")
            frames.append(np.frombuffer(_zstd(frame), np.uint8))
            pos += int(size)
    streams = {}  # int64: every value below 2^53 in magnitude (§ 5.5, 1.5)
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
    p, s, h, c = (params[k] for k in ("position_step", "scale_step", "shear_step",
                                      "colour_step"))
    with np.errstate(over="ignore"):
        l22 = np.exp(streams[4] * s)
        cols = [cx * p, cy * p, np.exp(streams[2] * s), (streams[3] * h) * l22, l22,
                r * c, g * c, b * c]
        return np.stack(cols, 1).astype("<f4").astype("<f2").tobytes()  # float64 → f32 → FP16


DECODERS = {"zstd": _zstd, "gsformat.planar": _planar, "gsformat.quantize": _quantize,
            "gsformat.entropy": _entropy, "gsformat.lattice": _lattice,
            "gsformat.lattice-rans": lambda buf, params, n: _lattice(buf, params, n, rans=True)}


# ---- § 6.4, § 6.5: a dataset ----------------------------------------------------------------
def _name(name) -> str:
    need(type(name) is str and 0 < len(name) <= 1024, "a file name")
    need(not ("\x00" in name or "\\" in name or "://" in name or name.startswith("/")
              or name[1:2] == ":" or any(p in ("", ".", "..") for p in name.split("/"))),
         f"not a relative path inside the dataset: {name!r}")
    return name


def spec_read_dataset(root: str) -> list[dict]:
    """Every sample of a local dataset ({column: value}, ``splats`` decoded to params)."""
    path = os.path.join(root, "index.json")
    need(os.path.getsize(path) <= 64 << 20, "index.json over 64 MiB")
    index = json.load(open(path, "rb"))
    need(type(index) is dict and index.get("version") == 2 and type(index.get("shards")) is
         list, "an MDS index of version 2")
    names = []
    for entry in index["shards"]:  # every name, before any I/O (§ 6.4)
        need(type(entry) is dict and entry.get("format") == "mds", "a shard entry")
        for part in ("raw_data", "zip_data"):
            if entry.get(part) is not None:
                names.append(_name(entry[part]["basename"]))
    need(len(set(names)) == len(names), "a file listed twice")
    manifest = json.load(open(os.path.join(root, "gsformat.json"), "rb"))
    need(manifest.get("format") == "gsformat" and manifest["format_version"][0] == 1,
         "manifest format or major version")
    samples = []
    for entry in index["shards"]:
        stored = entry.get("zip_data") or entry["raw_data"]
        real = os.path.realpath(os.path.join(root, stored["basename"]))
        need(os.path.commonpath([os.path.realpath(root), real]) == os.path.realpath(root),
             "a name resolving outside the dataset")
        data = open(real, "rb").read()
        need(len(data) == stored["bytes"], "shard size")
        if entry.get("zip_data"):
            need(str(entry.get("compression")).split(":")[0] == "zstd", "compression")
            data = _zstd(data)
        need(len(data) == entry["raw_data"]["bytes"], "raw shard size")
        samples += _shard(data, entry)
    return samples


def _shard(data: bytes, entry: dict) -> list[dict]:
    num = int.from_bytes(data[:4], "little")
    need(num == entry["samples"] and 8 + 4 * num <= len(data), "sample count")
    offsets = [int(v) for v in np.frombuffer(data, "<u4", num + 1, 4)]
    need(offsets[0] >= 8 + 4 * num and offsets[-1] == len(data)
         and all(a <= b for a, b in zip(offsets, offsets[1:])), "offsets")
    fixed = {"int": 8}
    out = []
    for i in range(num):
        sample = data[offsets[i]:offsets[i + 1]]
        columns = list(zip(entry["column_names"], entry["column_encodings"],
                           entry["column_sizes"]))
        n_var = sum(size is None for _, _, size in columns)
        need(len(sample) >= 4 * n_var, "sample sizes")
        var = iter(np.frombuffer(sample, "<u4", n_var).tolist())
        pos, row = 4 * n_var, {}
        for name, encoding, size in columns:
            size = next(var) if size is None else size
            need(fixed.get(encoding, size) == size and pos + size <= len(sample), "column size")
            value = sample[pos:pos + size]
            pos += size
            row[name] = (value.decode("utf-8") if encoding == "str" else
                         int.from_bytes(value, "little", signed=True) if encoding == "int"
                         else bytes(value))
        need(pos == len(sample), "the columns do not fill the sample")
        row["splats"] = spec_decode(row["splats"])[0]
        out.append(row)
    return out
