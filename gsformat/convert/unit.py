"""One source unit → one finished part: read, check, resize, batch, fit, write (`convert_unit`),
redone from scratch after a transient failure (`convert_with_retries`); the progress bar."""
from __future__ import annotations

import json
import sys
import time
import zlib

import numpy as np

from ..format import storage
from ..format.dataset import SplatWriter
from ..fitting import fit_images
from ..fitting.images import MIN_SIDE
from . import locations
from .imageio import RejectedImage, decode_image, encode_jpeg, resize
from .options import LOSSY_CODECS, PART_JSON, REJECTS, parse_codecs


def columns_of(source, args) -> list[str]:
    return list(source.columns) + (["image"] if args.keep_image else [])


class Progress:
    """A tqdm bar with its total and ETA: over images (``unit="img"``) or over source units
    (``"shard"``: tars and MDS shards, whose image counts are unknown until read), with
    images/s, running mean PSNR and rejects (silent when disabled)."""

    def __init__(self, total, disable: bool, unit: str = "img"):
        from tqdm import tqdm
        self.per_unit = unit != "img"
        self.bar = tqdm(total=total, unit=unit, desc="convert", disable=disable,
                        dynamic_ncols=True, file=sys.stderr)
        self.psnr_sum, self.n_ok, self.n_rejected = 0.0, 0, 0
        self.start = time.perf_counter()

    def update(self, psnr_values, rejected: int = 0):
        self.n_ok += len(psnr_values)
        self.psnr_sum += float(np.sum(psnr_values))
        self.n_rejected += rejected
        if not self.per_unit:
            self.bar.update(len(psnr_values) + rejected)
        rate = self.n_ok / max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix(psnr=f"{self.psnr_sum / max(self.n_ok, 1):.2f}",
                             rejects=self.n_rejected, img_s=f"{rate:.2f}", refresh=False)

    def unit_done(self):
        if self.per_unit:
            self.bar.update(1)

    def close(self):
        self.bar.close()


def convert_unit(source, unit, part_dir: str, args, digest: str, progress: Progress,
                 budget: list[int]) -> dict:
    """Convert one unit into ``part_dir``; returns its part.json content."""
    codecs = parse_codecs(args.codec)
    lossy = next((c for c in codecs if c.get("id") in LOSSY_CODECS), None) \
        if args.quantize_aware else None
    backend = {"auto": "auto", "cpu": "numpy", "gpu": "cupy"}[args.device]
    compression = None if args.compression in ("none", "") else args.compression
    columns = columns_of(source, args)
    writer = SplatWriter(part_dir, columns=columns, codecs=codecs, compression=compression,
                         exist_ok=True)
    stats = {"hash": digest, "unit": unit.name, "n_written": 0, "n_rejected": 0, "psnr": [],
             "record_bytes": 0, "source_bytes": 0, "pixel_bytes": 0, "fit_seconds": 0.0,
             "complete": True}
    rejects: list[dict] = []
    pending: dict[tuple, list] = {}  # image shape → [(item, image, source_bytes)]
    seen: set[str] = set()

    def reject(item, reason):
        rejects.append({"key": item.key, "source": item.source, "reason": reason})
        stats["n_rejected"] += 1
        progress.update([], 1)

    def flush(shape):
        batch = pending.pop(shape, [])
        if not batch:
            return
        images = np.stack([image for _, image, _ in batch])
        seed = args.seed + zlib.crc32(f"{unit.name}/{batch[0][0].key}".encode())
        result = fit_images(images, args.splats, args.iters, backend=backend, init=args.init,
                            prune_threshold=args.prune_threshold, prune_at=args.prune_at,
                            l1_colour=args.l1_colour, seed=seed, quantize=lossy,
                            quantize_reference_psnr=args.matched_steps)
        stats["fit_seconds"] += result.seconds
        for (item, image, nbytes), splats in zip(batch, result.splats):
            record_size = write_sample(writer, item, splats,
                                       image if args.keep_image else None, columns)
            stats["n_written"] += 1
            stats["psnr"].append(round(float(splats.meta["psnr"]), 3))
            stats["record_bytes"] += record_size
            stats["source_bytes"] += nbytes
            stats["pixel_bytes"] += image.size
        progress.update(result.psnr)

    try:
        _fill(source, unit, args, budget, stats, pending, seen, reject, flush)
    except BaseException:
        writer._writer.cancel_future_jobs()  # keep no half-written part: a rerun redoes it
        raise
    writer.finish()
    rejects_text = "".join(json.dumps(r) + "\n" for r in rejects)
    storage.write_bytes(storage.join(part_dir, REJECTS), rejects_text.encode())
    storage.write_bytes(storage.join(part_dir, PART_JSON), json.dumps(stats).encode())  # last
    return stats


def _fill(source, unit, args, budget, stats, pending, seen, reject, flush) -> None:
    """Read, check, resize and batch the unit's images; ``flush`` fits and writes a batch."""
    for item in source.items(unit):
        if budget[0] <= 0:
            stats["complete"] = False
            break
        budget[0] -= 1
        if item.reason:
            reject(item, item.reason)
            continue
        if item.key in seen:
            reject(item, "duplicate key")
            continue
        seen.add(item.key)
        try:
            decoded = decode_image(item.data)
        except RejectedImage as exc:
            reject(item, str(exc))
            continue
        if min(decoded.shape[:2]) < MIN_SIDE:
            reject(item, f"image too small: {decoded.shape[0]}×{decoded.shape[1]} pixels "
                         f"(need ≥ {MIN_SIDE} per side)")
            continue
        image = resize(decoded, args.size, args.resize)
        h, w = image.shape[:2]
        if h * w < args.splats:
            reject(item, f"image too small: {h}×{w} pixels for {args.splats} splats")
            continue
        pending.setdefault(image.shape, []).append((item, image, len(item.data)))
        if len(pending[image.shape]) >= args.batch:
            flush(image.shape)
    for shape in list(pending):
        flush(shape)


def write_sample(writer, item, splats, image, columns) -> int:
    """Write one fitted image; returns its record size. Missing captions are "", labels -1."""
    from ..fitting.solve import record_codecs
    from ..format.record import encode_record
    record = encode_record(splats, record_codecs(writer.codecs, splats))  # matched steps
    extra = {"source": item.source}
    if "caption" in columns:
        extra["caption"] = item.caption if item.caption is not None else ""
    if "label" in columns:
        extra["label"] = item.label if item.label is not None else -1
    if "meta" in columns:
        extra["meta"] = item.meta if item.meta is not None else ""
    if image is not None:
        extra["image"] = encode_jpeg(image)  # stored verbatim (quality 95)
    writer.write(item.key, record, **extra)
    return len(record)


def convert_with_retries(source, unit, part_dir, args, digest, progress, budget) -> dict:
    """`convert_unit`, redone from scratch after a transient failure (`locations.with_retries`);
    a unit that still cannot be read raises `UnitError` and is left unfinished."""
    spent = budget[0]

    def attempt():
        budget[0] = spent  # a retried unit starts over, its items uncounted
        return convert_unit(source, unit, part_dir, args, digest, progress, budget)
    return locations.with_retries(attempt)
