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
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                    "examples"))
    from samples import load_photo

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
        from gsformat.format.dataset import SplatWriter
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


if __name__ == "__main__":
    main()
