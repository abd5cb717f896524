"""One source unit → one finished part: read, check, resize, batch, fit, write (`convert_unit`),
redone from scratch after a transient failure (`convert_with_retries`), or recorded as failed
(`run_unit`); the progress bar.

A unit whose data is damaged part-way (a truncated tar) keeps the samples complete before the
damage, as WebDataset does: its part is written and merged, and its ``part.json`` carries the
failure, so that it counts as failed (exit status, summary) and a re-run converts it again. A
unit that cannot be read at all leaves no ``part.json``; its ``failure.json`` (`FAILURE_JSON`)
records why, for the merge's summary."""
from __future__ import annotations

import json
import math
import sys
import zlib

import numpy as np

from ..io import failures, storage
from ..io.dataset_files import SplatWriter
from ..fitting import fit_images
from ..fitting.images import MIN_SIDE
from .imageio import RejectedImage, decode_image, encode_jpeg, resize
from .options import FAILURE_JSON, PART_JSON, REJECTS, ConvertOptions


def columns_of(source, options: ConvertOptions) -> list[str]:
    return list(source.columns) + (["image"] if options.keep_image else [])


class ImageBudget:
    """``--limit``: how many more images this process may read (inf without a limit)."""

    def __init__(self, limit: int | None = None):
        self.left = math.inf if limit is None else limit

    def take(self) -> bool:
        """One more image, if the budget allows."""
        if self.left <= 0:
            return False
        self.left -= 1
        return True


class Progress:
    """A tqdm bar over images, with images/s and an ETA where the total is known (folders,
    MDS shards; a tar's count is only known once read), the running mean PSNR, rejects and the
    units done (silent when disabled)."""

    def __init__(self, total, disable: bool, n_units: int | None = None):
        from tqdm import tqdm
        self.bar = tqdm(total=total, unit="img", desc="convert", disable=disable,
                        dynamic_ncols=True, file=sys.stderr)
        self.psnr_sum, self.n_ok, self.n_rejected = 0.0, 0, 0
        self.n_units, self.units_done = n_units, 0

    def update(self, psnr_values, rejected: int = 0):
        self.n_ok += len(psnr_values)
        self.psnr_sum += float(np.sum(psnr_values))
        self.n_rejected += rejected
        self._postfix()  # before the update that draws it: a drawn line is final off a terminal
        self.bar.update(len(psnr_values) + rejected)

    def unit_done(self):
        self.units_done += 1
        self._postfix()

    def _postfix(self):
        postfix = {"psnr": f"{self.psnr_sum / max(self.n_ok, 1):.2f}",
                   "rejects": self.n_rejected}
        if self.n_units and self.n_units > 1:
            postfix["units"] = f"{self.units_done}/{self.n_units}"
        self.bar.set_postfix(postfix, refresh=False)

    def snapshot(self) -> tuple:
        return self.psnr_sum, self.n_ok, self.n_rejected, self.bar.n

    def restore(self, saved: tuple):
        """Back to `snapshot`'s counts (a unit redone from scratch is not counted twice)."""
        self.psnr_sum, self.n_ok, self.n_rejected, n = saved
        if n != self.bar.n:  # a redrawn bar is a new line without a terminal
            self.bar.n = n
            self.bar.refresh()

    def close(self):
        self.bar.close()


def convert_unit(source, unit, part_dir: str, options: ConvertOptions, digest: str,
                 progress: Progress, budget: ImageBudget) -> dict:
    """Convert one unit into ``part_dir``; returns its part.json content."""
    columns = columns_of(source, options)
    writer = SplatWriter(part_dir, columns=columns, codecs=options.codecs,
                         compression=options.shard_compression, exist_ok=True)
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
        seed = options.seed + zlib.crc32(f"{unit.name}/{batch[0][0].key}".encode())
        result = fit_images(images, options.splats, options.iters, backend=options.backend,
                            init=options.init, prune_threshold=options.prune_threshold,
                            prune_at=options.prune_at, l1_colour=options.l1_colour, seed=seed,
                            quantize=options.lossy_codec,
                            matched_steps=options.matched_steps)
        stats["fit_seconds"] += result.seconds
        for (item, image, nbytes), splats in zip(batch, result.splats):
            record_size = write_sample(writer, item, splats,
                                       image if options.keep_image else None, columns)
            stats["n_written"] += 1
            stats["psnr"].append(round(float(splats.meta["psnr"]), 3))
            stats["record_bytes"] += record_size
            stats["source_bytes"] += nbytes
            stats["pixel_bytes"] += image.size
        progress.update(result.psnr)

    try:
        try:
            _fill(source, unit, options, budget, stats, pending, seen, reject, flush)
        except Exception as exc:
            if failures.failure_kind(exc) != failures.DAMAGED:
                raise
            # the data is cut short or corrupt: keep the samples read before it (WebDataset's
            # behaviour); the part carries the failure, so a re-run converts the unit again
            for shape in list(pending):
                flush(shape)
            stats["complete"] = False
            stats["failure"] = failure_record(unit, exc, digest, stats["n_written"])
    except BaseException:
        writer.cancel()  # keep no half-written part: a rerun redoes it
        raise
    writer.finish()
    rejects_text = "".join(json.dumps(r) + "\n" for r in rejects)
    storage.write_bytes(storage.join(part_dir, REJECTS), rejects_text.encode())
    storage.write_bytes(storage.join(part_dir, PART_JSON), json.dumps(stats).encode())  # last
    return stats


def _fill(source, unit, options: ConvertOptions, budget: ImageBudget, stats, pending, seen,
          reject, flush) -> None:
    """Read, check, resize and batch the unit's images; ``flush`` fits and writes a batch."""
    for item in source.items(unit):
        if not budget.take():
            stats["complete"] = False
            break
        if item.reason:
            reject(item, item.reason)
            continue
        if item.key in seen:
            reject(item, "duplicate key")
            continue
        seen.add(item.key)
        try:
            decoded = decode_image(item.data, item.source)
        except RejectedImage as exc:
            reject(item, str(exc))
            continue
        if min(decoded.shape[:2]) < MIN_SIDE:
            reject(item, f"image too small: {decoded.shape[0]}×{decoded.shape[1]} pixels "
                         f"(need ≥ {MIN_SIDE} per side)")
            continue
        image = resize(decoded, options.size, options.resize)
        h, w = image.shape[:2]
        if h * w < options.splats:
            reject(item, f"image too small: {h}×{w} pixels for {options.splats} splats")
            continue
        pending.setdefault(image.shape, []).append((item, image, len(item.data)))
        if len(pending[image.shape]) >= options.batch:
            flush(image.shape)
    for shape in list(pending):
        flush(shape)


def write_sample(writer, item, splats, image, columns) -> int:
    """Write one fitted image; returns its record size. Missing captions are "", labels -1."""
    from ..fitting.solve import record_codecs
    from ..core.record import encode_record
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


def convert_with_retries(source, unit, part_dir, options, digest, progress, budget) -> dict:
    """`convert_unit`, redone from scratch after a transient failure (`failures.with_retries`:
    refused, reset, timed out, 5xx, throttled); any other failure is raised at once."""
    spent, counted = budget.left, progress.snapshot()

    def attempt():
        budget.left = spent  # a retried unit starts over, its items uncounted
        progress.restore(counted)
        return convert_unit(source, unit, part_dir, options, digest, progress, budget)
    return failures.with_retries(attempt)


def unit_location(unit) -> str:
    """Where a unit's data is, for messages: a tar's URL, else the unit's name."""
    return str(unit.refs[0]) if unit.name.startswith("tar-") and unit.refs else unit.name


def failure_line(unit, exc: BaseException) -> str:
    """One line: where, what kind of failure and its innermost cause, the attempts made
    (``http://…/00002.tar: unreachable (ClientConnectorError: …), 4 attempts``)."""
    from .sources import UnitError
    head = unit_location(unit)
    if isinstance(exc, UnitError):  # "WHERE: Type: message" of the exception it came from
        text, context = " ".join(str(exc).split()), exc.__cause__ or exc.__context__
        tail = f"{type(context).__name__}: {' '.join(str(context).split())}" if context \
            else ""
        head = text[:-len(tail)].rstrip(": ") if tail and text.endswith(tail) \
            and len(text) > len(tail) else text
    attempts = failures.attempts_of(exc)
    return f"{head}: {failures.describe(exc)}" + (f", {attempts} attempts" if attempts > 1
                                                   else "")


def failure_record(unit, exc: BaseException, digest: str, kept: int = 0) -> dict:
    """What `FAILURE_JSON` (and a damaged part's ``part.json``) records of a failed unit."""
    return {"hash": digest, "unit": unit.name, "location": unit_location(unit),
            "kind": failures.failure_kind(exc) or failures.ERROR,
            "error": failure_line(unit, exc), "attempts": failures.attempts_of(exc),
            "samples_kept": kept}


def run_unit(source, unit, part_dir, options, digest, progress, budget) -> dict:
    """One unit, retried as `convert_with_retries` does: ``{"unit", "stats", "failure"}`` —
    stats of its part (None when it failed before one was written), and the failure record
    (None when it converted whole; also written to the part's `FAILURE_JSON` when no part
    was). An exception that is not about reading the source (a bug) propagates."""
    try:
        stats = convert_with_retries(source, unit, part_dir, options, digest, progress, budget)
    except Exception as exc:
        if failures.failure_kind(exc) is None:
            raise
        failure = failure_record(unit, exc, digest)
        write_failure(part_dir, failure)
        return {"unit": unit.name, "stats": None, "failure": failure}
    return {"unit": unit.name, "stats": stats, "failure": stats.get("failure")}


def write_failure(part_dir: str, failure: dict) -> None:
    """Record a unit that left no part (`FAILURE_JSON`: the merge's summary lists it)."""
    try:
        storage.write_bytes(storage.join(part_dir, FAILURE_JSON), json.dumps(failure).encode())
    except OSError:
        pass  # OUT itself unwritable: the run's own report still names the unit
