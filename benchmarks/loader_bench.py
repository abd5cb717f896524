"""Loader benchmark: splat shards vs the JPEG pipeline they replace, measured in one run.

The same real photographs are written twice: as splat shards (lossless and lossy codecs) and as
an MDS dataset with a ``jpeg`` column (quality 90, 224²). Samples/s of (a) SplatDataset decode +
collate_splats and (b) the JPEG column decoded by Pillow into a ``[3, 224, 224]`` tensor +
default collate, single-process and with 2 workers; bytes per sample on disk; samples/s with
``render=(224, 224)`` on the CPU. To separate the format from the iterator, also: the splats
behind streaming's own iterator and the JPEG pipeline behind gsformat's shard-by-shard one; and
float16 samples converted to float32 once per batch. Prints JSON.

    python benchmarks/loader_bench.py [--quick]
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import os
import sys
import tempfile
import time

import numpy as np

import torch
from torch.utils.data import DataLoader, default_collate


def write_datasets(root: str, n_samples: int, n_splats: int, iters: int) -> dict:
    from PIL import Image
    from streaming import MDSWriter
    from gsformat.fitting import fit_images
    from gsformat.io.dataset_files import SplatWriter
    from gsformat.testing.photos import PHOTOS, load_photo
    photos = np.stack([load_photo(name, 224) for name in PHOTOS])
    fits = fit_images(photos, n_splats, iters).splats
    codecs = {"raw": [], "planar": [{"id": "gsformat.planar"}],
              "quantize": [{"id": "gsformat.quantize"}, {"id": "zstd", "level": 9}],
              "lattice": [{"id": "gsformat.lattice"}],
              "lattice-rans": [{"id": "gsformat.lattice-rans"}]}
    paths = {}
    # shards uncompressed (both formats): samples repeat a few photographs, and shard-level zstd
    # would deduplicate them and understate bytes per sample
    for name, pipeline in codecs.items():
        paths[name] = os.path.join(root, f"splats-{name}")
        with SplatWriter(paths[name], codecs=pipeline, compression=None) as writer:
            for i in range(n_samples):
                writer.write(f"{i:06d}", fits[i % len(fits)])
    paths["jpeg"] = os.path.join(root, "jpeg90")
    jpegs = []
    for photo in photos:
        buf = io.BytesIO()
        Image.fromarray(photo).save(buf, format="JPEG", quality=90)
        jpegs.append(buf.getvalue())
    with MDSWriter(out=paths["jpeg"], columns={"key": "str", "jpeg": "jpeg"},
                   hashes=["xxh64"]) as writer:
        for i in range(n_samples):
            writer.write({"key": f"{i:06d}", "jpeg": Image.open(io.BytesIO(jpegs[i % len(jpegs)]))})
    return paths


def disk_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
               if f.startswith("shard."))


class JPEGDataset:
    """The RGB pipeline: streaming's jpeg column → Pillow decode → float tensor [3, 224, 224].

    ``fast_iteration=True`` walks the epoch with gsformat's `ShardwiseIteration` (the iterator
    SplatDataset uses), so that the comparison of decoding alone is like for like."""

    @staticmethod
    def make(remote, local, fast_iteration=False):
        from streaming import StreamingDataset
        from gsformat.loaders import ShardwiseIteration

        class _JPEG(ShardwiseIteration, StreamingDataset):
            def __getitem__(self, idx):
                return self._sample(super().__getitem__(idx), idx)

            def _sample(self, row, idx):
                array = np.asarray(row["jpeg"].convert("RGB"))
                return {"key": row["key"],
                        "image": torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255}
        dataset = _JPEG(remote=remote, local=local, shuffle=False, batch_size=64)
        dataset.fast_iteration = fast_iteration
        return dataset


def samples_per_second(make_dataset, collate, workers: int, limit: int | None = None) -> float:
    """Steady-state rate: one untimed pass (caches shards), then a pass with a fresh dataset
    timed from its first batch on (epoch start-up — partitioning, shared memory, worker
    start — is a one-off cost per epoch, reported separately as ``startup_seconds``)."""
    for timed in (False, True):
        dataset = make_dataset()
        loader = DataLoader(dataset, batch_size=64, num_workers=workers, collate_fn=collate,
                            persistent_workers=False)
        count, begin, start = 0, time.perf_counter(), None
        for batch in loader:
            if start is None:  # the clock starts once the first batch is out
                start = time.perf_counter()
                STARTUP.append(start - begin)
                continue
            count += len(batch["key"])
            if limit and count >= limit:
                break
        elapsed = time.perf_counter() - start
        del loader, dataset
    return count / elapsed


STARTUP: list[float] = []


def main(quick: bool = False) -> dict:
    from streaming.base.util import clean_stale_shared_memory
    from gsformat.loaders import SplatDataset, collate_splats
    clean_stale_shared_memory()
    n_samples = 512 if quick else 4096
    root = tempfile.mkdtemp(prefix="gsformat-loader-bench-")
    paths = write_datasets(root, n_samples, 1600, 100 if quick else 500)
    caches = iter(range(1000))

    def local():
        return os.path.join(root, f"cache-{next(caches)}")

    def splat_ds(name, **kw):
        return lambda: SplatDataset(remote=paths[name], local=local(), shuffle=False,
                                    batch_size=64, **kw)

    jpeg_ds = lambda: JPEGDataset.make(paths["jpeg"], local())  # noqa: E731
    jpeg_fast_ds = lambda: JPEGDataset.make(paths["jpeg"], local(), True)  # noqa: E731
    out = {"n_samples": n_samples, "splats_per_image": 1600, "image_size": 224,
           "bytes_per_sample": {k: round(disk_bytes(p) / n_samples, 1) for k, p in paths.items()}}
    rates = {}
    for workers in (0, 2):
        rates[f"jpeg_workers{workers}"] = samples_per_second(jpeg_ds, default_collate, workers)
        for name in ("raw", "planar", "quantize", "lattice", "lattice-rans"):
            rates[f"splats_{name}_workers{workers}"] = samples_per_second(
                splat_ds(name), collate_splats, workers)
        print(rates, file=sys.stderr)
    # how much of the gain is the iterator rather than the format: the splats behind streaming's
    # own iterator, and the JPEG pipeline behind gsformat's shard-by-shard one
    for name in ("raw", "planar"):
        rates[f"splats_{name}_streaming_iterator_workers0"] = samples_per_second(
            splat_ds(name, fast_iteration=False), collate_splats, 0)
    rates["jpeg_shardwise_iterator_workers0"] = samples_per_second(jpeg_fast_ds, default_collate,
                                                                   0)
    # samples kept in the stored float16, converted to float32 once per batch by the collate
    # (the same float32 batch as the default)
    to_fp32 = functools.partial(collate_splats, dtype=torch.float32)
    for name in ("raw", "planar"):
        rates[f"splats_{name}_fp16_samples_workers0"] = samples_per_second(
            splat_ds(name, dtype=torch.float16), to_fp32, 0)
    render_limit = 128 if quick else 512
    rates["splats_planar_render224_workers0"] = samples_per_second(
        splat_ds("planar", render=(224, 224)), default_collate, 0, limit=render_limit)
    out["samples_per_second"] = {k: round(v, 1) for k, v in rates.items()}
    out["startup_seconds_median"] = round(float(np.median(STARTUP)), 2)
    out["speedup_vs_jpeg"] = {
        f"{name}_workers{w}": round(rates[f"splats_{name}_workers{w}"] / rates[f"jpeg_workers{w}"],
                                    1)
        for name in ("raw", "planar", "quantize", "lattice", "lattice-rans") for w in (0, 2)}
    for name in ("raw", "planar"):
        for variant in ("streaming_iterator", "fp16_samples"):
            key = f"{name}_{variant}_workers0"
            out["speedup_vs_jpeg"][key] = round(rates["splats_" + key] / rates["jpeg_workers0"],
                                                1)
    out["speedup_vs_jpeg_shardwise_iterator"] = {
        key: round(rates["splats_" + key] / rates["jpeg_shardwise_iterator_workers0"], 1)
        for key in ("raw_workers0", "planar_workers0", "raw_fp16_samples_workers0",
                    "planar_fp16_samples_workers0")}
    out["bytes_ratio_vs_jpeg"] = {
        name: round(out["bytes_per_sample"][name] / out["bytes_per_sample"]["jpeg"], 2)
        for name in ("raw", "planar", "quantize", "lattice", "lattice-rans")}
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    print(json.dumps(main(**vars(parser.parse_args())), indent=2))
