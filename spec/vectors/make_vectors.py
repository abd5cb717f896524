"""Write gsformat's golden test vectors — once. Existing vectors are never regenerated.

A format change adds vectors (under a new name); it never rewrites these. Run from the repo root:
``python spec/vectors/make_vectors.py``. Files already present are left untouched.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

import msgpack
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def expected(record: bytes) -> dict:
    from gsformat import decode_record
    splats = decode_record(record)
    raw = splats.params.astype("<f2").tobytes()
    out = {"n_splats": splats.n_splats, "height": splats.height, "width": splats.width,
           "params_sha256": hashlib.sha256(raw).hexdigest(), "fit": splats.meta}
    if splats.n_splats <= 8:
        out["params_hex"] = raw.hex()
        out["params"] = splats.params.astype(float).tolist()
    return out


def write_once(path: str, data: bytes) -> None:
    if os.path.exists(path):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def main() -> None:
    from gsformat import SplatSet, encode_record
    from gsformat.fitting import fit_images
    from gsformat.testing.photos import load_photo

    two = SplatSet(np.array([[0.25, 0.5, 0.1, 0.0, 0.05, 1.0, 0.5, 0.0],
                             [0.75, 0.5, 0.05, -0.02, 0.1, 0.0, 0.25, 1.0]], np.float16),
                   height=4, width=6, meta={"psnr": 12.5, "iters": 0})
    fitted = fit_images(load_photo("astronaut", 32)[None], 48, 200, backend="numpy").splats[0]
    records = {
        "raw-2splats": encode_record(two),
        "raw-0splats": encode_record(SplatSet(np.zeros((0, 8), np.float16), 1, 1)),
        "zstd-fitted48": encode_record(fitted, [{"id": "zstd", "level": 9}]),
        "planar-fitted48": encode_record(fitted, [{"id": "gsformat.planar", "level": 9}]),
        "quantize-12-10-8-fitted48": encode_record(fitted, [{"id": "gsformat.quantize"}]),
        "quantize-zstd-fitted48": encode_record(
            fitted, [{"id": "gsformat.quantize", "position_bits": 10, "covariance_bits": 8,
                      "colour_bits": 6}, {"id": "zstd", "level": 3}]),
    }
    # added with format 1.1 (never regenerate the 1.0 vectors above)
    records["entropy-12-10-8-fitted48"] = encode_record(
        fitted, [{"id": "gsformat.entropy", "position_bits": 12, "covariance_bits": 10,
                  "colour_bits": 8, "level": 19}])
    records["entropy-10-8-6-fitted48"] = encode_record(
        fitted, [{"id": "gsformat.entropy", "position_bits": 10, "covariance_bits": 8,
                  "colour_bits": 6, "level": 3}])
    # added with format 1.2
    records["lattice-default-fitted48"] = encode_record(fitted, [{"id": "gsformat.lattice"}])
    records["lattice-fine-fitted48"] = encode_record(
        fitted, [{"id": "gsformat.lattice", "position_step": 2.0 ** -12, "scale_step": 0.02,
                  "shear_step": 0.02, "colour_step": 0.01, "level": 3}])
    # added with format 1.3
    records["lattice-rans-default-fitted48"] = encode_record(
        fitted, [{"id": "gsformat.lattice-rans"}])
    records["lattice-rans-fine-fitted48"] = encode_record(
        fitted, [{"id": "gsformat.lattice-rans", "position_step": 2.0 ** -12,
                  "scale_step": 0.02, "shear_step": 0.02, "colour_step": 0.01}])
    records.update(vectors_1_4(records))
    for name, record in records.items():
        path = os.path.join(HERE, "records", name + ".msgpack")
        if not os.path.exists(path):
            write_once(path, record)
            write_once(path[:-8] + ".json", json.dumps(expected(record), indent=1).encode())

    base = msgpack.unpackb(records["raw-2splats"], raw=False)
    invalid = {
        "unknown-major": ({**base, "version": [2, 0]}, "unknown major version 2"),
        "count-over-limit": ({**base, "n_splats": 2**31}, "splat count 2147483648"),
        "payload-short": ({**base, "payload": base["payload"][:-2]}, "expected 32"),
        "unknown-codec": ({**base, "codecs": [{"id": "gsformat.future"}]}, "unknown codec"),
        "unknown-layout": ({**base, "layout": "gs3d"}, "unknown parameter layout"),
    }
    lattice = msgpack.unpackb(records["lattice-default-fitted48"], raw=False)  # added in 1.2
    payload = bytearray(lattice["payload"])
    payload[40] = 5  # five byte planes of key gaps: at most four exist
    invalid["lattice-bad-planes"] = ({**lattice, "payload": bytes(payload)}, "plane counts")
    rans = msgpack.unpackb(records["lattice-rans-default-fitted48"], raw=False)  # added in 1.3
    payload = bytearray(rans["payload"])
    payload[-1] ^= 0x40  # one bit of the last word: the lanes do not end in their final state
    invalid["lattice-rans-bad-stream"] = ({**rans, "payload": bytes(payload)}, "do not end")
    invalid.update(invalid_1_4(records))
    for name, (record, message) in invalid.items():
        path = os.path.join(HERE, "invalid", name + ".msgpack")
        if not os.path.exists(path):
            write_once(path, record if isinstance(record, bytes) else
                       msgpack.packb(record, use_bin_type=True))
            write_once(path[:-8] + ".json", json.dumps({"error": message}).encode())

    dataset = os.path.join(HERE, "dataset-1.0")
    if not os.path.exists(dataset):
        from gsformat.io.dataset_files import SplatWriter
        images = np.stack([load_photo(n, 32) for n in ("astronaut", "coffee", "chelsea")])
        fits = fit_images(images, 40, 150, backend="numpy").splats
        rows = []
        with SplatWriter(dataset, columns=["caption", "label"],
                         codecs=[{"id": "gsformat.planar"}], size_limit=2200,
                         manifest={"class_names": ["person", "drink", "cat"]}) as writer:
            for i, splats in enumerate(fits * 2):
                key = f"golden-{i:02d}"
                writer.write(key, splats, caption=f"golden sample {i}", label=i % 3)
                raw = splats.params.astype("<f2").tobytes()
                rows.append({"key": key, "label": i % 3, "caption": f"golden sample {i}",
                             "n_splats": splats.n_splats,
                             "params_sha256": hashlib.sha256(raw).hexdigest()})
        with open(os.path.join(HERE, "dataset-1.0.expected.json"), "w") as f:
            json.dump(rows, f, indent=1)
    invalid_datasets_1_4(dataset)


# ---- added with format 1.4: one vector for each decision of SPEC.md 1.4 --------------------
EMPTY = {"version": [1, 4], "n_splats": 0, "height": 1, "width": 1,
         "layout": "gs2d.mu2.chol3.rgb3"}


def _edit(record: bytes, **changes) -> bytes:
    return msgpack.packb({**msgpack.unpackb(record, raw=False), **changes}, use_bin_type=True)


def _config(record: bytes, **changes) -> list:
    config = dict(msgpack.unpackb(record, raw=False)["codecs"][0], **changes)
    return [{k: v for k, v in config.items() if v is not None}]


def vectors_1_4(records: dict) -> dict:
    """Valid records: parameters a decoder ignores, empty records, the rounding tie rule."""
    import zstd
    from gsformat import SplatSet, encode_record
    from gsformat.codecs import LatticeRans
    zstd_codecs = msgpack.unpackb(records["zstd-fitted48"], raw=False)["codecs"]
    lattice = records["lattice-default-fitted48"]
    rans = records["lattice-rans-default-fitted48"]
    tie = np.zeros((3, 8), np.float16)
    tie[:, 0] = [0.0, 1.5, 3.0]  # 2 position bits over [0, 3]: step 1, 1.5 ties to even 2
    tie[:, 2] = tie[:, 4] = 0.1
    return {
        "zstd-unknown-param-fitted48": _edit(
            records["zstd-fitted48"], codecs=[dict(zstd_codecs[0], future_param=1)]),
        "lattice-rans-unknown-param-fitted48": _edit(rans, codecs=_config(rans, future=[1, 2])),
        "lattice-no-level-fitted48": _edit(lattice, codecs=_config(lattice, level=None)),
        "lattice-rans-0splats": msgpack.packb(
            {**EMPTY, "codecs": [LatticeRans().get_config()],
             "payload": LatticeRans().encode(np.zeros((0, 8), np.float16))}, use_bin_type=True),
        "zstd-empty-frame-0splats": msgpack.packb(
            {**EMPTY, "codecs": [{"id": "zstd", "level": 3}], "payload": zstd.compress(b"")},
            use_bin_type=True),
        "quantize-tie-3splats": encode_record(
            SplatSet(tie, 4, 4), [{"id": "gsformat.quantize", "position_bits": 2,
                                   "covariance_bits": 4, "colour_bits": 4}]),
    }


def invalid_1_4(records: dict) -> dict:
    """Invalid records, each with the error a reader gives (SPEC.md 1.4's reader checks)."""
    import zstd
    from gsformat.codecs import rans as rans_stage
    base = records["raw-2splats"]
    quantize = records["quantize-12-10-8-fitted48"]
    lattice = records["lattice-default-fitted48"]
    rans = records["lattice-rans-default-fitted48"]
    zstd_rec = records["zstd-fitted48"]
    zstd_payload = msgpack.unpackb(zstd_rec, raw=False)["payload"]
    nan = np.frombuffer(msgpack.unpackb(base, raw=False)["payload"], "<f2").copy()
    nan[5] = np.nan
    flat = nan.copy()
    flat[5], flat[12] = 1.0, 0.0  # l22 of splat 1 = 0
    q_payload = bytearray(msgpack.unpackb(quantize, raw=False)["payload"])
    q_payload[4 + 8 * 5:4 + 8 * 6] = np.float64(-1e308).tobytes()  # lo of r
    q_payload[68 + 8 * 5:68 + 8 * 6] = np.float64(1e308).tobytes()  # hi of r: hi − lo = inf
    r_payload = bytearray(msgpack.unpackb(rans, raw=False)["payload"])
    padding, states = _rans_offsets(rans_stage, bytes(r_payload[48:]), r_payload)
    padded = bytearray(r_payload)
    padded[48 + padding] |= 0x80
    low_state = bytearray(r_payload)
    low_state[48 + states:48 + states + 4] = (5).to_bytes(4, "little")
    return {
        "ext-timestamp": (_edit(base, future=msgpack.Timestamp(1, 0)), "extension type"),
        "fit-int-key": (_edit(base, fit={1: 2.0}), "key"),
        "zstd-two-frames": (_edit(zstd_rec, payload=zstd_payload + zstd.compress(b"x" * 100)),
                            "after the frame"),
        "zstd-stage-over-limit": (_edit(records["quantize-zstd-fitted48"],
                                        payload=zstd.compress(bytes(70_000))), "more than"),
        "param-out-of-range": (_edit(quantize, codecs=_config(quantize, position_bits=17)),
                               "outside"),
        "param-wrong-type": (_edit(quantize, codecs=_config(quantize, position_bits=8.0)),
                             "must be an integer"),
        "param-missing": (_edit(lattice, codecs=_config(lattice, position_step=None)),
                          "missing parameter"),
        "unknown-codec-0splats": ({**EMPTY, "codecs": [{"id": "gsformat.future"}],
                                   "payload": b""}, "unknown codec"),
        "planar-0splats-frame": ({**EMPTY, "codecs": [{"id": "gsformat.planar"}],
                                  "payload": bytes(4) + zstd.compress(b"")}, "after its header"),
        "raw-non-finite": (_edit(base, payload=nan.tobytes()), "non-finite"),
        "raw-l22-not-positive": (_edit(base, payload=flat.tobytes()), "l22 <= 0"),
        "quantize-range-overflow": (_edit(quantize, payload=bytes(q_payload)), "overflowing"),
        "lattice-rans-table-padding": (_edit(rans, payload=bytes(padded)), "padding"),
        "lattice-rans-state-low": (_edit(rans, payload=bytes(low_state)), "below 2"),
    }


def _rans_offsets(rans_stage, stage: bytes, payload) -> tuple[int, int]:
    """(offset of a table byte with padding bits, offset of the lane states) in a rANS stage."""
    data = np.frombuffer(stage, np.uint8)
    n, n_planes = int.from_bytes(bytes(payload[:4]), "little"), sum(payload[40:48])
    pos, padding = 0, None
    for _ in range(n_planes):
        mode = int(data[pos])
        if mode == rans_stage.RAW_MODE:
            pos += 1 + n
            continue
        k, st = mode & 3, ((mode >> 2) & 3) + 2
        q, used = rans_stage._read_table(data[pos + 2:pos + 2 + rans_stage.MAX_TABLE_BYTES],
                                         int(data[pos + 1]), k, st, 0)
        bits = rans_stage._rice_bits(rans_stage._zigzag(np.diff(q, prepend=0)), k)
        if padding is None and bits % 8:
            padding = pos + 2 + used - 1
        pos += 2 + used
    return padding, pos


def invalid_datasets_1_4(dataset: str) -> None:
    """Datasets a reader refuses before any shard I/O: index.json and gsformat.json only."""
    index = json.load(open(os.path.join(dataset, "index.json")))
    manifest = open(os.path.join(dataset, "gsformat.json"), "rb").read()
    escape = json.loads(json.dumps(index))
    escape["shards"][0]["zip_data"]["basename"] = "../dataset-1.0/shard.00000.mds.zstd"
    twice = json.loads(json.dumps(index))
    twice["shards"].append(twice["shards"][0])
    for name, bad, message in (("basename-escape", escape, "not a relative path"),
                               ("shard-listed-twice", twice, "listed twice")):
        root = os.path.join(HERE, "invalid-datasets", name)
        write_once(os.path.join(root, "index.json"), json.dumps(bad).encode())
        write_once(os.path.join(root, "gsformat.json"), manifest)
        write_once(os.path.join(root, "error.json"), json.dumps({"error": message}).encode())


# ---- added with format 1.5: one vector for each decision of SPEC.md 1.5 --------------------
# Built from the vectors already on disk (never from a new fit), so running this again writes
# the same bytes; existing files are left untouched (`write_once`).
def _vector(kind: str, name: str) -> bytes:
    return open(os.path.join(HERE, kind, name + ".msgpack"), "rb").read()


def _append_entry(record: bytes, key: str, value: bytes) -> bytes:
    """A record's map with one more entry, its value given as raw msgpack bytes (what a
    packer cannot write: deep nesting, invalid UTF-8, a key given twice)."""
    count = record[0] - 0x80
    assert 0 <= count < 15, "a fixmap record"
    return bytes([0x80 + count + 1]) + record[1:] + msgpack.packb(key) + value


def _lattice_payload(codec, n: int, width: int, code_min, counts, planes) -> bytes:
    """A gsformat.lattice(-rans) payload from its parts, whatever they decode to."""
    header = (np.array([n, width], "<u4").tobytes() + np.array(code_min, "<i4").tobytes()
              + bytes(counts))
    return header + codec._encode_planes(planes)


def vectors_1_5() -> dict:
    """Valid records for SPEC.md 1.5's decisions."""
    from gsformat.codecs import Lattice
    raw2 = _vector("records", "raw-2splats")
    zstd_rec = msgpack.unpackb(_vector("records", "zstd-fitted48"), raw=False)
    frame = zstd_rec["payload"]  # descriptor 0x60: single segment, 2-byte content size
    windowed = frame[:4] + bytes([0x40, 21 << 3]) + frame[5:]  # Window_Log 31: 2 GiB window
    import zstd
    # two splats whose raster keys pass 2^32 and whose codes pass int32: a reader's integers
    # must be 64-bit (SPEC.md § 5.5); every decoded value is an ordinary finite FP16
    wide = Lattice(2.0 ** -11, 2.0 ** -30, 0.05, 2.0 ** -20, level=3)
    u32 = lambda values: [np.array(values, "<u4").view(np.uint8)[k::4]  # noqa: E731
                          for k in (3, 2, 1, 0)]  # 4 byte planes, most significant first
    planes = (u32([0xFFFFFFFF, 0xFFFFFFFF])          # key gaps: keys 2^32 − 1, 2^33 − 2
              + u32([0xFFFFFFFF, 0xFFFFFFFE])         # s1 − min: up to 2^32 − 1
              + [np.zeros(2, np.uint8)]               # k
              + u32([0xFFFFFFFF, 0xFFFFFFFF])         # s2 − min
              + u32([0xFFFFFFFF, 0xFFFF0000])         # Y − min
              + [np.zeros(2, np.uint8)] * 2)          # Co, Cg
    code_min = [1024 - (1 << 20) + 1, -4095, -(1 << 31), 0, -(1 << 31), (1 << 31) - 1, 0, 0]
    wide_payload = _lattice_payload(wide, 2, 1 << 20, code_min, [4, 0, 4, 1, 4, 4, 1, 1],
                                    planes)
    rec2 = msgpack.unpackb(raw2, raw=False)
    return {
        "nesting-64-2splats": _append_entry(raw2, "future", b"\x91" * 63 + b"\x01"),
        "fit-nonscalar-2splats": _edit(raw2, fit={"psnr": 12.5, "iters": 0, "layers": [1, 2],
                                                  "stats": {"a": 1}, "digest": b"\x01"}),
        "zstd-zstd-0splats": msgpack.packb(
            {**EMPTY, "codecs": [{"id": "zstd", "level": 3}, {"id": "zstd", "level": 3}],
             "payload": zstd.compress(zstd.compress(b""))}, use_bin_type=True),
        "zstd-window-2gib-fitted48": _edit(_vector("records", "zstd-fitted48"),
                                           payload=windowed),
        "lattice-wide-integers-2splats": msgpack.packb(
            {**{k: rec2[k] for k in ("version", "n_splats", "height", "width", "layout")},
             "version": [1, 5], "codecs": [wide.get_config()], "payload": wide_payload},
            use_bin_type=True),
    }


def invalid_1_5() -> dict:
    """Invalid records for SPEC.md 1.5's decisions and issue 25's findings."""
    import zstd
    import numcodecs.zstd as numcodecs_zstd
    from gsformat.codecs import Lattice, LatticeRans
    raw2 = _vector("records", "raw-2splats")
    zstd_vec = _vector("records", "zstd-fitted48")
    frame = msgpack.unpackb(zstd_vec, raw=False)["payload"]
    checked = bytes(numcodecs_zstd.Zstd(level=9, checksum=True).encode(zstd.decompress(frame)))
    minus_zero = np.frombuffer(msgpack.unpackb(raw2, raw=False)["payload"], "<f2").copy()
    minus_zero[2] = -0.0  # l11 of splat 0
    overflow = {}
    for codec in (Lattice(level=3), LatticeRans()):  # l11 = 65,504 as the 1.4 encoders wrote
        codes = np.array([[1024, 1024], [1024, 1024], [-60, 222], [0, 0], [-60, -60],
                          [10, 10], [10, 10], [10, 10]], np.int64)  # s1 = 222: exp(11.1) → inf
        header, planes = codec.planes_of_codes(codes)
        overflow[codec.codec_id] = msgpack.packb(
            {**EMPTY, "version": [1, 4], "n_splats": 2, "height": 8, "width": 8,
             "codecs": [codec.get_config()], "payload": header + codec._encode_planes(planes)},
            use_bin_type=True)
    tie = msgpack.unpackb(_vector("records", "quantize-tie-3splats"), raw=False)
    tie_payload = bytearray(tie["payload"])
    tie_payload[132] |= 0x80  # attribute 0: 3 codes of 2 bits = 6 bits; bits 6–7 are padding
    entropy = msgpack.unpackb(_vector("records", "entropy-10-8-6-fitted48"), raw=False)
    streams = bytearray(zstd.decompress(entropy["payload"][132:]))
    n = entropy["n_splats"]
    streams[4 * n] = 0x10  # attribute 2 (8 bits), splat 0: zig-zag high byte 0x10, z ≥ 2^12
    zigzag = entropy["payload"][:132] + zstd.compress(bytes(streams), 3)
    return {
        "lattice-scale-overflow": (overflow["gsformat.lattice"], "non-finite"),
        "lattice-rans-scale-overflow": (overflow["gsformat.lattice-rans"], "non-finite"),
        "version-minor-negative": (_edit(raw2, version=[1, -1]), "version must be"),
        "param-bool-step": (_edit(_vector("records", "lattice-default-fitted48"),
                                  codecs=_config(_vector("records", "lattice-default-fitted48"),
                                                 position_step=True)), "must be a number"),
        "raw-minus-zero-l11": (_edit(raw2, payload=minus_zero.tobytes()), "l11 <= 0"),
        "zstd-dictionary-id-zero": (_edit(zstd_vec, payload=frame[:4] + bytes([0x61, 0])
                                          + frame[5:]), "dictionary"),
        "zstd-window-over-2gib": (_edit(zstd_vec, payload=frame[:4] + bytes([0x40, 22 << 3])
                                        + frame[5:]), "corrupt zstd data"),
        "zstd-checksum-mismatch": (_edit(zstd_vec, payload=checked[:-1]
                                         + bytes([checked[-1] ^ 1])), "checksum"),
        "nesting-65": (_append_entry(raw2, "future", b"\x91" * 64 + b"\x01"), "nests"),
        "str-invalid-utf8": (_append_entry(raw2, "future", b"\xa2\xff\xfe"), "utf-8"),
        "duplicate-key": (_append_entry(raw2, "height", msgpack.packb(5)), "appears twice"),
        "zstd-empty-intermediate-0splats": (msgpack.packb(
            {**EMPTY, "codecs": [{"id": "zstd", "level": 3}, {"id": "zstd", "level": 3}],
             "payload": zstd.compress(b"")}, use_bin_type=True), "not a zstd frame"),
        "quantize-padding-bits": (_edit(_vector("records", "quantize-tie-3splats"),
                                        payload=bytes(tie_payload)), "padding bits"),
        "entropy-zigzag-range": (_edit(_vector("records", "entropy-10-8-6-fitted48"),
                                       payload=zigzag), "zig-zag"),
    }


def datasets_1_5() -> None:
    """A valid dataset of what 1.5 states readers accept, an invalid one every reader refuses
    from its index, and datasets a validator reports (SPEC.md § 9)."""
    import hashlib
    import shutil
    golden = os.path.join(HERE, "dataset-1.0")
    index = json.load(open(os.path.join(golden, "index.json")))
    manifest = json.load(open(os.path.join(golden, "gsformat.json")))
    shards = {info["zip_data"]["basename"]: open(os.path.join(golden, info["zip_data"][
        "basename"]), "rb").read() for info in index["shards"]}

    def write_dataset(root, index, manifest, names=None, error=None):
        if os.path.exists(root):
            return
        for name, data in shards.items():
            write_once(os.path.join(root, (names or {}).get(name, name)), data)
        write_once(os.path.join(root, "index.json"), json.dumps(index, indent=1).encode())
        write_once(os.path.join(root, "gsformat.json"), json.dumps(manifest, indent=1).encode())
        if error:
            write_once(os.path.join(root, "error.json"), json.dumps({"error": error}).encode())

    # valid: zip names that are not raw name + ".zstd", in a sub-directory; "zstd:LEVEL";
    # two hash algorithms; unknown fields in index.json's top level and in the manifest (not in
    # shard entries: MosaicML streaming's reader refuses those, SPEC.md § 6.5)
    renamed = {name: f"packed/part-{i}.zst" for i, name in enumerate(shards)}
    valid = json.loads(json.dumps(index))
    valid["future_index_field"] = {"anything": [1, 2]}
    for info in valid["shards"]:
        zipped = shards[info["zip_data"]["basename"]]
        info["zip_data"]["basename"] = renamed[info["zip_data"]["basename"]]
        info["compression"] = "zstd:19"
        info["hashes"] = ["sha1", "xxh64"]
        info["zip_data"]["hashes"]["sha1"] = hashlib.sha1(zipped).hexdigest()
        info["raw_data"]["hashes"]["sha1"] = hashlib.sha1(zstd_decompress(zipped)).hexdigest()
    write_dataset(os.path.join(HERE, "dataset-1.5"), valid,
                  {**manifest, "future_manifest_field": True}, renamed)
    expected = os.path.join(HERE, "dataset-1.5.expected.json")
    if not os.path.exists(expected):
        shutil.copyfile(os.path.join(HERE, "dataset-1.0.expected.json"), expected)

    # invalid before any shard I/O (§ 6.4): a drive letter
    drive = json.loads(json.dumps(index))
    drive["shards"][0]["zip_data"]["basename"] = "C:shard.00000.mds.zstd"
    root = os.path.join(HERE, "invalid-datasets", "basename-drive-letter")
    write_once(os.path.join(root, "index.json"), json.dumps(drive).encode())
    write_once(os.path.join(root, "gsformat.json"), json.dumps(manifest).encode())
    write_once(os.path.join(root, "error.json"), json.dumps({"error": "not a relative path"})
               .encode())

    # a validator reports them (§ 9); a streaming reader may meet them only at the shard
    def shard0(edit):
        changed = json.loads(json.dumps(index))
        edit(changed["shards"][0])
        return changed

    upper = lambda e: e["zip_data"]["hashes"].update(  # noqa: E731
        xxh64=e["zip_data"]["hashes"]["xxh64"].upper())
    label = lambda e: e["column_sizes"].__setitem__(e["column_names"].index("label"), 4)  # noqa
    cases = {
        "compression-gz": (shard0(lambda e: e.update(compression="gz")), manifest,
                           "unsupported shard compression 'gz'"),
        "shard-version-3": (shard0(lambda e: e.update(version=3)), manifest, "shard version 3"),
        "shard-entry-no-version": (shard0(lambda e: e.pop("version")), manifest,
                                   "field 'version' is missing"),
        "raw-data-no-hashes": (shard0(lambda e: e["raw_data"].pop("hashes")), manifest,
                               "raw_data.hashes is missing"),
        "int-column-size-4": (shard0(label), manifest, "has size 4, its encoding's is 8"),
        "hash-upper-case": (shard0(upper), manifest, "lower-case hex"),
        "shard-entry-unknown-field": (shard0(lambda e: e.update(future_entry_field=1)),
                                      manifest, "field 'future_entry_field' is not"),
        "manifest-unknown-layout": (index, {**manifest, "layout": "gs3d.mu3"},
                                    "layout 'gs3d.mu3' is not"),
        "manifest-no-codecs": (index, {k: v for k, v in manifest.items() if k != "codecs"},
                               "codecs must be an array"),
    }
    for name, (bad_index, bad_manifest, error) in cases.items():
        write_dataset(os.path.join(HERE, "invalid-datasets-validate", name), bad_index,
                      bad_manifest, error=error)


def zstd_decompress(data: bytes) -> bytes:
    import zstd
    return zstd.decompress(data)


def main_1_5() -> None:
    """Only the 1.5 vectors (no fit needed: built from the vectors on disk)."""
    records = vectors_1_5()
    for name, record in records.items():
        path = os.path.join(HERE, "records", name + ".msgpack")
        if not os.path.exists(path):
            write_once(path, record)
            write_once(path[:-8] + ".json", json.dumps(expected(record), indent=1).encode())
    for name, (record, message) in invalid_1_5().items():
        path = os.path.join(HERE, "invalid", name + ".msgpack")
        if not os.path.exists(path):
            write_once(path, record)
            write_once(path[:-8] + ".json", json.dumps({"error": message}).encode())
    datasets_1_5()


if __name__ == "__main__":
    if sys.argv[1:] == ["--1.5"]:
        main_1_5()
    else:
        main()
        main_1_5()
