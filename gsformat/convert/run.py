"""``gsformat convert``: sources → fitted splats → one MDS part per source unit → merged dataset.

Resumption: a part is finished when its ``part.json`` exists (written last, after the part's
shards, index and rejects). Re-running the same command skips finished parts and redoes the
others from scratch, so every source key ends up exactly once; on a complete output it does
nothing and says so. Ranks take units ``rank::world``; ``gsformat merge`` (automatic with one
rank) joins the finished parts, atomically (merge.py).

Failures: a unit that cannot be read is retried while its location is unreachable
(`io.failures.with_retries`), then recorded (`unit.run_unit`) and left for a re-run; the run
merges everything that converted (``--strict``: nothing unless every unit did), says in
``summary.json`` which units failed and why, and exits 1.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time

from ..io import storage
from ..io.failures import DAMAGED, DENIED, KIND_TEXT, MISSING, UNREACHABLE, describe, failure_kind
from .distribute import Workers, run_units
from .options import CONVERT_JSON, FAILURE_JSON, PART_JSON, ConvertOptions
from .sources import SourceError, open_source
from .unit import ImageBudget, Progress, columns_of



def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def read_json_or_none(path: str):
    try:
        value = json.loads(storage.read_bytes(path))
    except (FileNotFoundError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def prepare_out(options: ConvertOptions, settings: dict, source) -> str:
    """Check OUT against earlier runs; write convert.json. Returns the settings hash. A
    conversion with other settings is kept unless --overwrite, once it has finished a part."""
    from .merge import find_parts
    digest = settings_hash(settings)
    path = storage.join(options.out, CONVERT_JSON)
    previous = read_json_or_none(path)
    if previous and previous.get("hash") != digest and not options.overwrite \
            and find_parts(options.out, previous.get("hash")):
        changed = sorted(k for k in settings if previous.get("settings", {}).get(k) != settings[k])
        raise ValueError(f"{options.out} holds a conversion with other settings ({', '.join(changed)}"
                         f"); re-run with the same options to resume, or pass --overwrite")
    if options.overwrite and options.rank == 0 and not storage.is_remote(options.out):
        shutil.rmtree(options.out, ignore_errors=True)
    meta = {"hash": digest, "settings": settings, "class_names": source.class_names,
            "columns": columns_of(source, options), "n_units": len(source.units())}
    storage.write_bytes(path, json.dumps(meta, indent=2).encode())
    return digest


def retract_part(part_dir: str) -> None:
    """Make a finished part unfinished (its ``part.json`` removed, or blanked on a store)."""
    path = storage.join(part_dir, PART_JSON)
    if storage.is_remote(path):
        storage.write_bytes(path, b"{}")  # (streaming's storage deletes nothing)
    elif os.path.exists(path):
        os.remove(path)


def image_total(source, todo, budget: ImageBudget) -> int | None:
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
    return int(min(total, max(budget.left, 0)))


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
    counts = ", ".join(f"{n} {KIND_TEXT.get(k, k)}" for k, n in sorted(kinds.items()))
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
    if kinds.get(MISSING) or kinds.get(DENIED):
        advice.append(f"those not found or denied fail again until they exist or are readable "
                      f"(to keep what converted without them: `gsformat merge {out}`)")
    if kinds.get(DAMAGED):
        advice.append("a damaged file kept the samples before the damage; replace it to "
                      "convert it whole")
    print(f"gsformat convert: {'; '.join(advice)}", file=sys.stderr)


def run_convert(args) -> int:
    """``gsformat convert`` from its parsed command line (`options.add_convert_arguments`)."""
    options = ConvertOptions.from_args(args)  # every option checked before anything happens
    # worker processes start now: their imports overlap with listing the source
    workers = Workers(options.workers) \
        if options.workers > 1 and options.distributor == "local" else None
    try:
        code = _convert(options, workers)
    except BaseException:
        if workers:
            workers.close(cancel=True)
        raise
    if workers:
        workers.close(cancel=code == 2)  # 2: an error before any unit ran
    return code


def _convert(options: ConvertOptions, workers) -> int:
    try:
        source = open_source(options.src, options.source_format, options.chunk_size,
                             options.image_column, **options.parquet_columns)
    except SourceError as exc:
        print(f"gsformat convert: error: {exc}", file=sys.stderr)
        return 2
    try:
        digest = prepare_out(options, options.settings(), source)
    except Exception as exc:  # OUT is the first thing written: name it when its store fails
        if failure_kind(exc) not in (UNREACHABLE, DENIED):
            raise
        print(f"gsformat convert: error: {options.out}: {describe(exc)}", file=sys.stderr)
        return 2
    everything = source.units()
    units = everything[options.rank::options.world_size]
    todo, skipped, budget = [], 0, ImageBudget(options.limit)
    for unit in units:
        part_dir = storage.join(options.out, f"part-{unit.name}")
        done = read_json_or_none(storage.join(part_dir, PART_JSON))
        if done and done.get("hash") == digest and not done.get("failure") \
                and not options.overwrite:
            skipped += 1
            budget.left -= done["n_written"] + done["n_rejected"]
            continue
        if done and done.get("failure"):  # a damaged unit, redone: its part is no longer
            retract_part(part_dir)         # one to merge while it is rewritten
        todo.append((unit, part_dir))
    progress = Progress(image_total(source, todo, budget), disable=options.no_progress,
                        n_units=len(todo))
    start = time.perf_counter()
    try:
        failures = run_units(todo, source, options, digest, progress, budget, workers) \
            if budget.left > 0 else []
    finally:
        progress.close()
    print(f"rank {options.rank}/{options.world_size}: {progress.n_ok} images converted, "
          f"{progress.n_rejected} rejected, {skipped} finished parts skipped, "
          f"{len(failures)} failed, {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return _finish(options, everything, units, failures, skipped, digest)


def _finish(options: ConvertOptions, everything, units, failures, skipped, digest) -> int:
    """After this rank's units: merge (the last rank to finish), validate, report."""
    from ..io.validate import validate_dataset
    from .merge import failure_lines, find_failures, find_parts, merge_parts, write_summary
    if options.world_size > 1:
        if settled_units(options.out, everything, digest) < len(everything):
            for line in failure_lines(failures):
                print(f"gsformat convert: failed: {line}", file=sys.stderr)
            note = (f" ({len(failures)} of its {len(units)} units failed: re-run it to retry "
                    f"them)" if failures else "")
            print(f"rank {options.rank} done{note}; the last rank to finish merges (or run "
                  f"`gsformat merge {options.out}`)", file=sys.stderr)
            return 1 if failures else 0
        # every unit of every rank is settled: this rank came last and merges (a merge is
        # atomic, so two ranks finishing together both merging is harmless)
        print(f"rank {options.rank} finished last: merging", file=sys.stderr)
    names = {f"part-{unit.name}" for unit in everything}
    parts = [(name, p) for name, p in find_parts(options.out, digest) if name in names]
    failures = [f for f in find_failures(options.out, digest, parts)
                if f"part-{f.get('unit')}" in names]  # every rank's, as OUT records them
    if failures and options.strict:
        write_summary(options.out, failures, len(everything))  # the failures, no dataset
        report_failures(options.out, failures, len(everything), True, None)
        return 1
    finished = read_json_or_none(storage.join(options.out, "gsformat.json"))
    if not failures and skipped == len(units) and finished and finished.get("parts") == [
            f"part-{unit.name}" for unit in sorted(units, key=lambda u: u.name)]:
        print(f"nothing to do: {options.out} is complete ({finished.get('n_samples')} samples "
              f"in {skipped} parts)", file=sys.stderr)
        return 0
    if not parts and failures:
        write_summary(options.out, failures, len(everything))
        report_failures(options.out, failures, len(everything), False, None)
        return 1
    manifest = merge_parts(options.out)
    report = validate_dataset(options.out)  # what convert wrote must validate
    if not report.valid:
        print(report.text(), file=sys.stderr)
        return 1
    print(json.dumps(manifest["summary"], indent=2))
    if failures:
        report_failures(options.out, failures, len(everything), False, manifest)
        return 1
    return 0
