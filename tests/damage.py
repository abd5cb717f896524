"""Damage a written dataset one way at a time (sizes and hashes kept consistent, so that only the
intended fault is left): the validator's and the hostile-input tests' shared helpers."""
import json
import os

import msgpack
import numpy as np
import zstd

from gsformat.io.dataset_files import read_index


def shard_path(root, i=0):
    info = read_index(root)["shards"][i]
    return os.path.join(root, info["zip_data"]["basename"]), info


def rewrite_sample_record(root, mutate_record, shard=0, sample=1, column="splats"):
    """Re-encode one sample's record (or another column's bytes), then fix sizes and hashes so
    only that value is bad."""
    from streaming.base.hashing import get_hash
    path, info = shard_path(root, shard)
    raw = bytearray(zstd.decompress(open(path, "rb").read()))
    n = int.from_bytes(raw[:4], "little")
    offsets = np.frombuffer(bytes(raw[4:8 + 4 * n]), "<u4").astype(np.int64)
    start, end = offsets[sample], offsets[sample + 1]
    names, sizes = info["column_names"], info["column_sizes"]
    n_var = sum(s is None for s in sizes)
    var_sizes = list(np.frombuffer(bytes(raw[start:start + 4 * n_var]), "<u4"))
    pos, parts, vi = start + 4 * n_var, {}, 0
    for name, size in zip(names, sizes):
        size = var_sizes[vi] if size is None else size
        vi += sizes[names.index(name)] is None
        parts[name] = bytes(raw[pos:pos + size])
        pos += size
    parts[column] = mutate_record(parts[column])
    new_sizes = [len(parts[nm]) for nm, sz in zip(names, sizes) if sz is None]
    sample_bytes = np.array(new_sizes, "<u4").tobytes() + b"".join(parts[nm] for nm in names)
    delta = len(sample_bytes) - (end - start)
    raw[start:end] = sample_bytes
    new_offsets = offsets.copy()
    new_offsets[sample + 1:] += delta
    raw[4:8 + 4 * n] = new_offsets.astype("<u4").tobytes()
    raw = bytes(raw)
    zipped = zstd.compress(raw)
    open(path, "wb").write(zipped)
    index = read_index(root)
    entry = index["shards"][shard]
    entry["raw_data"]["bytes"], entry["zip_data"]["bytes"] = len(raw), len(zipped)
    for algo in entry["raw_data"]["hashes"]:
        entry["raw_data"]["hashes"][algo] = get_hash(algo, raw)
        entry["zip_data"]["hashes"][algo] = get_hash(algo, zipped)
    json.dump(index, open(os.path.join(root, "index.json"), "w"))


def patch_record(**changes):
    def mutate(record):
        rec = msgpack.unpackb(record, raw=False)
        rec.update(changes)
        return msgpack.packb(rec, use_bin_type=True)
    return mutate


def patch_params(col, value):
    """Splat 5's column ``col`` set to ``value``, packed as a raw record directly (the encoder
    refuses the non-finite and non-positive values these tests need)."""
    def mutate(record):
        from gsformat import decode_record
        params = decode_record(record).params.copy()
        params[5, col] = value
        return patch_record(codecs=[], payload=params.astype("<f2").tobytes())(record)
    return mutate
