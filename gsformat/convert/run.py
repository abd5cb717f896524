"""``gsformat convert``: sources → fitted splats → one MDS part per source unit → merged dataset.

Resumption: a part is finished when its ``part.json`` exists (written last, after the part's
shards, index and rejects). Re-running the same command skips finished parts and redoes the
others from scratch, so every source key ends up exactly once; on a complete output it does
nothing and says so. Ranks take units ``rank::world``; ``gsformat merge`` (automatic with one
rank) joins the finished parts, atomically (merge.py).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
import zlib

import numpy as np

from ..format import storage
from ..format.dataset import SplatWriter
from ..fitting import fit_images
from .imageio import RejectedImage, decode_image, encode_jpeg, resize
from ..fitting.images import MIN_SIDE
from .options import CONVERT_JSON, PART_JSON, REJECTS, parse_codecs, resolve_rank
from . import locations
from .sources import SourceError, UnitError, open_source

MAX_SIZE = 8192  # --size: a 8192² float32 canvas batch is already ~800 MiB per image in the fit


def settings_of(args) -> dict:
    """Everything that decides the output; resuming requires the same settings."""
    src = args.src[0] if isinstance(args.src, list) and len(args.src) == 1 else args.src
    settings = {"src": src, "source_format": args.source_format, "splats": args.splats,
            "iters": args.iters, "size": args.size, "resize": args.resize, "init": args.init,
            "prune_threshold": args.prune_threshold, "prune_at": args.prune_at,
            "l1_colour": args.l1_colour, "codecs": parse_codecs(args.codec),
            "compression": args.compression, "keep_image": args.keep_image,
            "limit": args.limit, "chunk_size": args.chunk_size, "seed": args.seed,
            "quantize_aware": args.quantize_aware,
            "world_size": args.world_size}
    if args.quantize_aware:  # (absent otherwise: older outputs keep resuming)
        settings["quantize_method"] = "solve"  # the one method (kept: earlier outputs resume)
    return settings


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def read_json_or_none(path: str):
    try:
        value = json.loads(storage.read_bytes(path))
    except (FileNotFoundError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def check_args(args) -> list[dict]:
    """Every option checked before anything is written or fitted; returns the codec configs.
    ValueError (one line) for a bad one."""
    from ..format.record import get_codec
    for name, value, low, high in (("--splats", args.splats, 1, None),
                                   ("--iters", args.iters, 0, None),
                                   ("--size", args.size, MIN_SIDE, MAX_SIZE),
                                   ("--batch", args.batch, 1, None),
                                   ("--chunk-size", args.chunk_size, 1, None),
                                   ("--workers", args.workers, 1, None),
                                   ("--limit", args.limit, 0, None)):
        if value is not None and (value < low or (high is not None and value > high)):
            span = f"≥ {low}" if high is None else f"in [{low}, {high}]"
            raise ValueError(f"{name} must be {span}, got {value}")
    if (args.workers > 1 or args.distributor != "local") and args.limit is not None:
        raise ValueError("--limit needs one local worker (it counts images in source order)")
    if args.distributor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ValueError("--distributor ray needs Ray (pip install 'gsformat[ray]')") \
                from None
    if not 0 <= args.prune_at <= 1 or not math.isfinite(args.prune_threshold):
        raise ValueError("--prune-at must be in [0, 1] and --prune-threshold finite")
    try:
        codecs = parse_codecs(args.codec)
    except ValueError as exc:
        raise ValueError(f"--codec is not a codec id or JSON: {exc}") from None
    for config in codecs:
        if not isinstance(config, dict) or not isinstance(config.get("id"), str):
            raise ValueError(f"--codec: each codec config must be a JSON object with an 'id', "
                             f"got {config!r}")
        if config["id"] in LEGACY_CODECS:
            raise ValueError(f"--codec: {config['id']} is a legacy codec (readers decode it, "
                             f"writers should not write it: SPEC.md § 5); use "
                             f"gsformat.lattice-rans (lossy) or gsformat.planar (lossless)")
        get_codec(config)  # FormatError (one line) for an unknown id or a bad parameter
    if args.device == "gpu":
        from ..fitting.backend import cupy_available
        if not cupy_available():
            raise ValueError("--device gpu needs CuPy and a CUDA GPU (pip install "
                             "'gsformat[gpu]'); none is available here (use --device cpu)")
    if not storage.is_remote(args.out) and os.path.exists(args.out) \
            and not os.path.isdir(args.out):
        raise ValueError(f"OUT {args.out} is a file, not a directory")
    return codecs


def prepare_out(args, settings: dict, source) -> str:
    """Check OUT against earlier runs; write convert.json. Returns the settings hash."""
    digest = settings_hash(settings)
    path = storage.join(args.out, CONVERT_JSON)
    previous = read_json_or_none(path)
    if previous and previous.get("hash") != digest and not args.overwrite:
        changed = sorted(k for k in settings if previous.get("settings", {}).get(k) != settings[k])
        raise ValueError(f"{args.out} holds a conversion with other settings ({', '.join(changed)}"
                         f"); re-run with the same options to resume, or pass --overwrite")
    if args.overwrite and args.rank == 0 and not storage.is_remote(args.out):
        shutil.rmtree(args.out, ignore_errors=True)
    meta = {"hash": digest, "settings": settings, "class_names": source.class_names,
            "columns": columns_of(source, args)}
    storage.write_bytes(path, json.dumps(meta, indent=2).encode())
    return digest


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


LOSSY_CODECS = ("gsformat.lattice", "gsformat.lattice-rans")
LEGACY_CODECS = ("gsformat.quantize", "gsformat.entropy")


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
                            l1_colour=args.l1_colour, seed=seed, quantize=lossy)
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
    import io
    from PIL import Image
    from ..format.record import encode_record
    record = encode_record(splats, writer.codecs)
    extra = {"source": item.source}
    if "caption" in columns:
        extra["caption"] = item.caption if item.caption is not None else ""
    if "label" in columns:
        extra["label"] = item.label if item.label is not None else -1
    if "meta" in columns:
        extra["meta"] = item.meta if item.meta is not None else ""
    if image is not None:
        extra["image"] = Image.open(io.BytesIO(encode_jpeg(image)))
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


def _unit_task(source, unit, part_dir, args, digest) -> tuple[str, dict | str]:
    """One unit in a worker process (or a Ray task): ("ok", part stats) or ("failed", why)."""
    if args.device == "gpu":
        bind_gpu()
    progress = Progress(None, disable=True)
    try:
        return "ok", convert_with_retries(source, unit, part_dir, args, digest, progress,
                                          [math.inf])
    except UnitError as exc:
        return "failed", str(exc)


def bind_gpu() -> None:
    """The GPU of this process: ``LOCAL_RANK`` (torchrun, Slurm's per-node rank) modulo the
    GPUs visible (Ray sets ``CUDA_VISIBLE_DEVICES`` per task, so its tasks see one: GPU 0)."""
    import cupy
    count = cupy.cuda.runtime.getDeviceCount()
    cupy.cuda.Device(int(os.environ.get("LOCAL_RANK", 0)) % max(count, 1)).use()


def _run_on_ray(todo, source, args, digest, progress) -> list[str]:
    """Every unit a Ray task (``num_gpus=1`` with ``--device gpu``); results as they finish."""
    import ray
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": max(args.workers, 1)}))
    task = ray.remote(num_cpus=1, num_gpus=1 if args.device == "gpu" else 0,
                      max_retries=0)(_unit_task)
    pending = {task.remote(source, unit, part_dir, args, digest): unit for unit, part_dir in todo}
    failures = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        unit = pending.pop(done[0])
        try:
            status, value = ray.get(done[0])
        except Exception as exc:  # the task itself died (a node lost, out of memory)
            status, value = "failed", f"{unit.name}: Ray task failed: {type(exc).__name__}"
        if status == "ok":
            progress.update(value["psnr"], value["n_rejected"])
        else:
            failures.append(value)
        progress.unit_done()
    return failures


def _number_worker(counter) -> None:
    """Worker i of this node takes GPU i (`bind_gpu` reads it as its LOCAL_RANK)."""
    with counter.get_lock():
        index, counter.value = counter.value, counter.value + 1
    os.environ["LOCAL_RANK"] = str(int(os.environ.get("LOCAL_RANK", 0)) + index)


def _run_units(todo, source, args, digest, progress, budget) -> list[str]:
    """Convert the units ``todo`` ([(unit, part_dir)]) here, in ``args.workers`` processes or as
    Ray tasks; returns one line per unit that failed."""
    failures = []
    if args.distributor == "ray":
        return _run_on_ray(todo, source, args, digest, progress)
    if args.workers <= 1:
        if args.device == "gpu":
            bind_gpu()
        for unit, part_dir in todo:
            try:
                convert_with_retries(source, unit, part_dir, args, digest, progress, budget)
            except UnitError as exc:
                failures.append(str(exc))
            progress.unit_done()
            if budget[0] <= 0:
                break
        return failures
    import concurrent.futures
    import multiprocessing
    threads = max(1, (os.cpu_count() or 1) // args.workers)  # the fitter's threads per worker
    os.environ.setdefault("GSFORMAT_THREADS", str(threads))
    context = multiprocessing.get_context("spawn")  # no forked threads or locks
    counter = context.Value("i", 0)
    with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=context,
                                                initializer=_number_worker,
                                                initargs=(counter,)) as pool:
        futures = [pool.submit(_unit_task, source, unit, part_dir, args, digest)
                   for unit, part_dir in todo]
        for future in concurrent.futures.as_completed(futures):
            status, value = future.result()
            if status == "ok":
                progress.update(value["psnr"], value["n_rejected"])
            else:
                failures.append(value)
            progress.unit_done()
    return failures


def run_convert(args) -> int:
    from ..format.validate import validate_dataset
    from .merge import merge_parts
    args.rank, args.world_size = resolve_rank(args.rank, args.world_size)
    check_args(args)
    try:
        source = open_source(args.src, args.source_format, args.chunk_size, args.image_column)
    except SourceError as exc:
        print(f"gsformat convert: error: {exc}", file=sys.stderr)
        return 2
    settings = settings_of(args)
    digest = prepare_out(args, settings, source)
    units = source.units()[args.rank::args.world_size]
    todo, skipped, budget = [], 0, [args.limit if args.limit is not None else math.inf]
    for unit in units:
        part_dir = storage.join(args.out, f"part-{unit.name}")
        done = read_json_or_none(storage.join(part_dir, PART_JSON))
        if done and done.get("hash") == digest and not args.overwrite:
            skipped += 1
            budget[0] -= done["n_written"] + done["n_rejected"]
        else:
            todo.append((unit, part_dir))
    if source.kind == "folder":  # a bar over images; over units for tars and shards
        total = sum(len(u.refs) for u, _ in todo)
        total = total if args.limit is None else min(total, max(int(budget[0]), 0))
        progress = Progress(total, disable=args.no_progress)
    else:
        progress = Progress(len(todo), disable=args.no_progress, unit="shard")
    start = time.perf_counter()
    try:
        failures = _run_units(todo, source, args, digest, progress, budget) \
            if budget[0] > 0 else []
    finally:
        progress.close()
    print(f"rank {args.rank}/{args.world_size}: {progress.n_ok} images converted, "
          f"{progress.n_rejected} rejected, {skipped} finished parts skipped, "
          f"{len(failures)} failed, {time.perf_counter() - start:.1f} s", file=sys.stderr)
    if failures:  # never marked finished: a rerun converts exactly these
        for line in failures:
            print(f"gsformat convert: failed: {line}", file=sys.stderr)
        print(f"gsformat convert: {len(failures)} of {len(units)} units could not be read; "
              f"re-run the same command to convert them", file=sys.stderr)
        return 1
    if args.world_size > 1:
        everything = [unit for unit in source.units()]
        finished = [read_json_or_none(storage.join(args.out, f"part-{u.name}", PART_JSON))
                    for u in everything]
        if not all(p and p.get("hash") == digest for p in finished):
            print(f"rank {args.rank} done; the last rank to finish merges (or run "
                  f"`gsformat merge {args.out}`)", file=sys.stderr)
            return 0
        # every unit of every rank is finished: this rank came last and merges (a merge is
        # atomic, so two ranks finishing together both merging is harmless)
        print(f"rank {args.rank} finished last: merging", file=sys.stderr)
    finished = read_json_or_none(storage.join(args.out, "gsformat.json"))
    if skipped == len(units) and finished and finished.get("parts") == [
            f"part-{unit.name}" for unit in sorted(units, key=lambda u: u.name)]:
        print(f"nothing to do: {args.out} is complete ({finished.get('n_samples')} samples "
              f"in {skipped} parts)", file=sys.stderr)
        return 0
    manifest = merge_parts(args.out)
    report = validate_dataset(args.out)  # what convert wrote must validate
    if not report.valid:
        print(report.text(), file=sys.stderr)
        return 1
    print(json.dumps(manifest["summary"], indent=2))
    return 0
