"""``gsformat convert``: sources → fitted splats → one MDS part per source unit → merged dataset.

Resumption: a part is finished when its ``part.json`` exists (written last, after the part's
shards, index and rejects). Re-running the same command skips finished parts and redoes the
others from scratch, so every source key ends up exactly once; on a complete output it does
nothing and says so. Ranks take units ``rank::world``; ``gsformat merge`` (automatic with one
rank) joins the finished parts, atomically (merge.py).

Failures: a unit that cannot be read is retried while its location is unreachable
(`locations.with_retries`), then recorded (`unit.run_unit`) and left for a re-run; the run
merges everything that converted (``--strict``: nothing unless every unit did), says in
``summary.json`` which units failed and why, and exits 1.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time

from ..format import storage
from ..fitting.images import MIN_SIDE
from . import locations
from .distribute import Workers, run_units
from .options import (CONVERT_JSON, FAILURE_JSON, LEGACY_CODECS, LOSSY_CODECS, PART_JSON,
                      column_options, parse_codecs, resolve_rank)
from .sources import SourceError, open_source
from .unit import Progress, columns_of

MAX_SIZE = 8192  # --size: a 8192² float32 canvas batch is already ~800 MiB per image in the fit
ZSTD_LEVELS = range(1, 23)  # --compression zstd:N (gsformat's readers decompress zstd only)


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
    if args.matched_steps is not None:  # (check_args: only with --quantize-aware)
        settings["matched_steps"] = args.matched_steps
    settings.update(column_options(args))  # Parquet columns named (only those given)
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
    if not (math.isfinite(args.l1_colour) and args.l1_colour >= 0):
        raise ValueError(f"--l1-colour must be finite and ≥ 0, got {args.l1_colour}")
    if args.resize != "keep" and args.size * args.size < args.splats:
        raise ValueError(f"--splats {args.splats} needs a canvas of at least "
                         f"{math.isqrt(args.splats - 1) + 1}² pixels (--size {args.size} "
                         f"gives {args.size * args.size}): every image would be rejected")
    level = args.compression.partition(":")[2]
    if not (args.compression in ("none", "") or args.compression == "zstd" or (
            args.compression.startswith("zstd:") and level.isdigit()
            and int(level) in ZSTD_LEVELS)):
        raise ValueError(f"--compression must be none, zstd or zstd:LEVEL (LEVEL 1–22; "
                         f"gsformat's readers decompress zstd only), got {args.compression!r}")
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
    if args.quantize_aware and not any(c["id"] in LOSSY_CODECS for c in codecs):
        raise ValueError(f"--quantize-aware fits through a lossy codec ({', '.join(LOSSY_CODECS)}"
                         f"); --codec {args.codec} is lossless: drop --quantize-aware, or "
                         f"choose --codec gsformat.lattice-rans")
    if args.matched_steps is not None and not (
            args.quantize_aware and any(c["id"] in LOSSY_CODECS for c in codecs)
            and math.isfinite(args.matched_steps)):
        raise ValueError("--matched-steps needs --quantize-aware, a lossy codec (--codec "
                         "gsformat.lattice-rans) and a finite PSNR")
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
    """Check OUT against earlier runs; write convert.json. Returns the settings hash. A
    conversion with other settings is kept unless --overwrite, once it has finished a part."""
    from .merge import find_parts
    digest = settings_hash(settings)
    path = storage.join(args.out, CONVERT_JSON)
    previous = read_json_or_none(path)
    if previous and previous.get("hash") != digest and not args.overwrite \
            and find_parts(args.out, previous.get("hash")):
        changed = sorted(k for k in settings if previous.get("settings", {}).get(k) != settings[k])
        raise ValueError(f"{args.out} holds a conversion with other settings ({', '.join(changed)}"
                         f"); re-run with the same options to resume, or pass --overwrite")
    if args.overwrite and args.rank == 0 and not storage.is_remote(args.out):
        shutil.rmtree(args.out, ignore_errors=True)
    meta = {"hash": digest, "settings": settings, "class_names": source.class_names,
            "columns": columns_of(source, args), "n_units": len(source.units())}
    storage.write_bytes(path, json.dumps(meta, indent=2).encode())
    return digest


def retract_part(part_dir: str) -> None:
    """Make a finished part unfinished (its ``part.json`` removed, or blanked on a store)."""
    path = storage.join(part_dir, PART_JSON)
    if storage.is_remote(path):
        storage.write_bytes(path, b"{}")  # (streaming's storage deletes nothing)
    elif os.path.exists(path):
        os.remove(path)


def image_total(source, todo, budget: float) -> int | None:
    """Images in the units ``todo`` where the source says (folders, MDS shards, Parquet
    footers), at most the --limit budget; None where only reading tells (tars)."""
    if source.kind == "folder":
        total = sum(len(unit.refs) for unit, _ in todo)
    elif source.kind == "mds":
        total = sum(int(source.index["shards"][unit.refs[0]].get("samples", 0))
                    for unit, _ in todo)
    elif source.kind == "parquet":  # row counts from the footers
        total = sum(source.n_rows(unit) for unit, _ in todo)
    else:
        return None
    return int(min(total, max(budget, 0)))


def settled_units(out: str, units, digest: str) -> int:
    """How many of ``units`` OUT holds a finished part or a failure record of, now."""
    settled = 0
    for unit in units:
        for name in (PART_JSON, FAILURE_JSON):
            record = read_json_or_none(storage.join(out, f"part-{unit.name}", name))
            if record and record.get("hash") == digest:
                settled += 1
                break
    return settled


def report_failures(out: str, failures: list[dict], n_units: int, strict: bool,
                    merged: dict | None) -> None:
    """What failed, what OUT now holds, and what a re-run can do about it (stderr)."""
    from .merge import failure_lines
    for line in failure_lines(failures):
        print(f"gsformat convert: failed: {line}", file=sys.stderr)
    kinds: dict[str, int] = {}
    for failure in failures:
        kinds[failure.get("kind", "error")] = kinds.get(failure.get("kind", "error"), 0) + 1
    counts = ", ".join(f"{n} {locations.KIND_TEXT.get(k, k)}" for k, n in sorted(kinds.items()))
    if merged is not None:
        held = (f"{out} holds the {merged['summary']['units_converted']} units that converted "
                f"({merged['n_samples']} samples), valid, marked incomplete in summary.json")
    elif strict:
        held = (f"--strict: no dataset merged (the finished parts are kept; `gsformat merge "
                f"{out}` merges them as they are)")
    else:
        held = "nothing converted, no dataset written (summary.json lists the failures)"
    print(f"gsformat convert: incomplete: {len(failures)} of {n_units} units failed ({counts}); "
          f"{held}", file=sys.stderr)
    advice = ["re-running the same command retries only the failed units and merges again"]
    if kinds.get(locations.MISSING) or kinds.get(locations.DENIED):
        advice.append("those not found or denied fail again until they exist or are readable "
                      "(or leave them out of SRC)")
    if kinds.get(locations.DAMAGED):
        advice.append("a damaged file kept the samples before the damage; replace it to "
                      "convert it whole")
    print(f"gsformat convert: {'; '.join(advice)}", file=sys.stderr)


def run_convert(args) -> int:
    args.rank, args.world_size = resolve_rank(args.rank, args.world_size)
    check_args(args)
    # worker processes start now: their imports overlap with listing the source
    workers = Workers(args.workers) if args.workers > 1 and args.distributor == "local" \
        else None
    try:
        code = _convert(args, workers)
    except BaseException:
        if workers:
            workers.close(cancel=True)
        raise
    if workers:
        workers.close(cancel=code == 2)  # 2: an error before any unit ran
    return code


def _convert(args, workers) -> int:
    try:
        source = open_source(args.src, args.source_format, args.chunk_size, args.image_column,
                             **column_options(args))
    except SourceError as exc:
        print(f"gsformat convert: error: {exc}", file=sys.stderr)
        return 2
    settings = settings_of(args)
    digest = prepare_out(args, settings, source)
    everything = source.units()
    units = everything[args.rank::args.world_size]
    todo, skipped, budget = [], 0, [args.limit if args.limit is not None else math.inf]
    for unit in units:
        part_dir = storage.join(args.out, f"part-{unit.name}")
        done = read_json_or_none(storage.join(part_dir, PART_JSON))
        if done and done.get("hash") == digest and not done.get("failure") \
                and not args.overwrite:
            skipped += 1
            budget[0] -= done["n_written"] + done["n_rejected"]
            continue
        if done and done.get("failure"):  # a damaged unit, redone: its part is no longer
            retract_part(part_dir)         # one to merge while it is rewritten
        todo.append((unit, part_dir))
    progress = Progress(image_total(source, todo, budget[0]), disable=args.no_progress,
                        n_units=len(todo))
    start = time.perf_counter()
    try:
        failures = run_units(todo, source, args, digest, progress, budget, workers) \
            if budget[0] > 0 else []
    finally:
        progress.close()
    print(f"rank {args.rank}/{args.world_size}: {progress.n_ok} images converted, "
          f"{progress.n_rejected} rejected, {skipped} finished parts skipped, "
          f"{len(failures)} failed, {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return _finish(args, everything, units, failures, skipped, digest)


def _finish(args, everything, units, failures, skipped, digest) -> int:
    """After this rank's units: merge (the last rank to finish), validate, report."""
    from ..format.validate import validate_dataset
    from .merge import failure_lines, find_failures, find_parts, merge_parts, write_summary
    if args.world_size > 1:
        if settled_units(args.out, everything, digest) < len(everything):
            for line in failure_lines(failures):
                print(f"gsformat convert: failed: {line}", file=sys.stderr)
            note = (f" ({len(failures)} of its {len(units)} units failed: re-run it to retry "
                    f"them)" if failures else "")
            print(f"rank {args.rank} done{note}; the last rank to finish merges (or run "
                  f"`gsformat merge {args.out}`)", file=sys.stderr)
            return 1 if failures else 0
        # every unit of every rank is settled: this rank came last and merges (a merge is
        # atomic, so two ranks finishing together both merging is harmless)
        print(f"rank {args.rank} finished last: merging", file=sys.stderr)
    names = {f"part-{unit.name}" for unit in everything}
    parts = [(name, p) for name, p in find_parts(args.out, digest) if name in names]
    failures = [f for f in find_failures(args.out, digest, parts)
                if f"part-{f.get('unit')}" in names]  # every rank's, as OUT records them
    if failures and args.strict:
        report_failures(args.out, failures, len(everything), True, None)
        return 1
    finished = read_json_or_none(storage.join(args.out, "gsformat.json"))
    if not failures and skipped == len(units) and finished and finished.get("parts") == [
            f"part-{unit.name}" for unit in sorted(units, key=lambda u: u.name)]:
        print(f"nothing to do: {args.out} is complete ({finished.get('n_samples')} samples "
              f"in {skipped} parts)", file=sys.stderr)
        return 0
    if not parts and failures:
        write_summary(args.out, failures, len(everything))
        report_failures(args.out, failures, len(everything), False, None)
        return 1
    manifest = merge_parts(args.out)
    report = validate_dataset(args.out)  # what convert wrote must validate
    if not report.valid:
        print(report.text(), file=sys.stderr)
        return 1
    print(json.dumps(manifest["summary"], indent=2))
    if failures:
        report_failures(args.out, failures, len(everything), False, manifest)
        return 1
    return 0
