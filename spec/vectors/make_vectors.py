"""Write gsformat's golden test vectors — once. Existing vectors are never regenerated.

A format change adds vectors (under a new name); it never rewrites these. Run from the repo root:
``python spec/vectors/make_vectors.py``. Files already present are left untouched.
"""
from __future__ import annotations

import hashlib
import json
import os

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
    from gsformat.samples import load_photo

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
    for name, (record, message) in invalid.items():
        path = os.path.join(HERE, "invalid", name + ".msgpack")
        if not os.path.exists(path):
            write_once(path, msgpack.packb(record, use_bin_type=True))
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


if __name__ == "__main__":
    main()
