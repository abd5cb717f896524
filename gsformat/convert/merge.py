"""``gsformat merge``: join finished parts into one dataset.

The root ``index.json`` lists every part's shards with the part's directory prefixed to their
basenames (what streaming's `merge_index` writes); each file is written beside its final name
and renamed into place (`storage.write_bytes`), the manifest last, so a merge killed at any
point leaves either the old dataset or none, and running it again completes it. Re-running
merge on a merged dataset rewrites the same files.

A conversion with failed units merges what converted: ``summary.json`` (and the manifest's
``summary``) says ``"complete": false`` and lists each failed unit on one line (``failed``),
from the parts' ``failure.json`` (a unit that left no part) and ``part.json`` (a unit that kept
the samples before damaged data).
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..core import constants as C
from ..io import mds, storage
from ..io.dataset_files import make_manifest, read_index, write_manifest
from ..core.errors import FormatError

from .options import CONVERT_JSON, FAILURE_JSON, PART_JSON, REJECTS


def _part_files(root: str, filename: str, files: list[str] | None = None) -> list[str]:
    """The part directories below ``root`` that hold ``filename``, sorted."""
    files = storage.list_files(root) if files is None else files
    return sorted({f.split("/")[0] for f in (p.replace("\\", "/") for p in files)
                   if f.startswith("part-") and f.endswith("/" + filename)})


def _read_part_json(root: str, name: str, filename: str) -> dict:
    mds.check_basename(name, "part directory")
    try:
        value = json.loads(storage.read_bytes(storage.join(root, name, filename),
                                              C.MAX_JSON_BYTES))
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"not valid JSON: {exc}", f"{name}/{filename}") from None
    if not isinstance(value, dict):
        raise FormatError("expected a JSON object", f"{name}/{filename}")
    return value


def find_parts(root: str, digest: str | None, files: list[str] | None = None
               ) -> list[tuple[str, dict]]:
    """(part dir name, part.json) of every finished part of the current conversion."""
    parts = []
    for name in _part_files(root, PART_JSON, files):
        stats = _read_part_json(root, name, PART_JSON)
        if "n_written" not in stats:
            continue  # retracted (`run.retract_part`): being converted again
        if digest is None or stats.get("hash") == digest:
            parts.append((name, stats))
    return parts


def find_failures(root: str, digest: str | None, parts: list[tuple[str, dict]],
                  files: list[str] | None = None) -> list[dict]:
    """The failure record of every unit of the current conversion that failed: those with a
    ``failure.json`` and no finished part, and finished parts that carry one (damaged data:
    the samples before it kept)."""
    finished = {name for name, _ in parts}
    failures = [stats["failure"] for _, stats in parts if stats.get("failure")]
    for name in _part_files(root, FAILURE_JSON, files):
        if name in finished:
            continue  # converted since: the record is stale
        record = _read_part_json(root, name, FAILURE_JSON)
        if digest is None or record.get("hash") == digest:
            failures.append(record)
    return sorted(failures, key=lambda f: str(f.get("unit")))


def failure_lines(failures: list[dict]) -> list[str]:
    """One line per failed unit: where, the kind of failure and its cause."""
    return [str(f.get("error")) + (f"; kept the {f['samples_kept']} samples before it"
                                   if f.get("kind") == "damaged" else "") for f in failures]


def completeness(failures: list[dict], n_parts: int, n_units: int | None) -> dict:
    """Whether a conversion is complete, and the one line per failed unit that says why not."""
    clean = n_parts - sum(1 for f in failures if f.get("kind") == "damaged")
    out = {"complete": not failures and (n_units is None or clean >= n_units),
           "units_converted": clean, "units_failed": len(failures),
           "failed": failure_lines(failures)}
    if n_units is not None:
        out["units"] = n_units
    return out


def merged_index(root: str, part_names: list[str]) -> dict:
    """One MDS index over the parts' indexes (each checked by `read_index`), basenames
    prefixed by their part."""
    shards = []
    for name in part_names:
        for info in read_index(storage.join(root, name))["shards"]:
            info = dict(info)
            for pair in ("raw_data", "zip_data"):
                if info.get(pair):
                    info[pair] = dict(info[pair], basename=f"{name}/{info[pair]['basename']}")
            shards.append(info)
    return {"version": 2, "shards": shards}


def summarise(parts: list[dict], index: dict, seconds: float | None = None) -> dict:
    psnr = np.array([v for p in parts for v in p["psnr"]] or [np.nan])
    n = sum(p["n_written"] for p in parts)
    record_bytes = sum(p["record_bytes"] for p in parts)
    stored = sum((s.get("zip_data") or s["raw_data"])["bytes"] for s in index["shards"])
    return {
        "images_converted": n,
        "images_rejected": sum(p["n_rejected"] for p in parts),
        "psnr": {"mean": float(np.nanmean(psnr)), "min": float(np.nanmin(psnr)),
                 "p5": float(np.nanpercentile(psnr, 5)),
                 "p50": float(np.nanpercentile(psnr, 50)),
                 "p95": float(np.nanpercentile(psnr, 95))} if n else {},
        "record_bytes_per_image": record_bytes / max(n, 1),
        "stored_bytes_per_image": stored / max(n, 1),
        "ratio_to_raw_pixels": sum(p["pixel_bytes"] for p in parts) / max(record_bytes, 1),
        "ratio_to_source_files": sum(p["source_bytes"] for p in parts) / max(record_bytes, 1),
        "fit_seconds": sum(p["fit_seconds"] for p in parts),
        "seconds_per_image": sum(p["fit_seconds"] for p in parts) / max(n, 1),
        "parts": len(parts),
    }


def read_convert_json(root: str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(storage.join(root, CONVERT_JSON)))
    except FileNotFoundError:
        return None


def merge_parts(root: str) -> dict:
    """Build ROOT/index.json, gsformat.json, summary.json and rejects.jsonl from the parts
    (the summary says which units failed, `completeness`)."""
    convert = read_convert_json(root)
    digest = convert["hash"] if convert else None
    files = storage.list_files(root)
    parts = find_parts(root, digest, files)
    failures = find_failures(root, digest, parts, files)
    if not parts:
        if storage.is_remote(root) or os.path.isdir(root):
            raise FileNotFoundError(f"{root}: no finished parts to merge"
                                    + (f" ({len(failures)} units failed)" if failures else ""))
        raise FileNotFoundError(f"{root}: not found")
    index = merged_index(root, [name for name, _ in parts])
    storage.write_bytes(storage.join(root, C.INDEX_NAME), json.dumps(index).encode())
    stats = [p for _, p in parts]
    summary = summarise(stats, index)
    summary.update(completeness(failures, len(parts), (convert or {}).get("n_units")))
    rejects = b"".join(storage.read_bytes(storage.join(root, name, REJECTS)) for name, _ in parts)
    storage.write_bytes(storage.join(root, REJECTS), rejects)
    storage.write_bytes(storage.join(root, "summary.json"), json.dumps(summary, indent=2).encode())
    columns = dict(zip(index["shards"][0]["column_names"], index["shards"][0]["column_encodings"])
                   ) if index["shards"] else {}
    settings = (convert or {}).get("settings", {})
    extra = {"summary": summary, "parts": [name for name, _ in parts]}
    if settings:
        extra["fit"] = {k: settings[k] for k in ("splats", "iters", "size", "resize", "init",
                                                 "prune_threshold", "prune_at", "l1_colour")}
    if convert and convert.get("class_names"):
        extra["class_names"] = convert["class_names"]
    psnr = [v for p in stats for v in p["psnr"]]
    manifest = make_manifest(
        columns, sum(s["samples"] for s in index["shards"]), settings.get("codecs", []),
        {"n_samples": summary["images_converted"], "psnr_mean": float(np.mean(psnr)) if psnr
         else None, "record_bytes_mean": summary["record_bytes_per_image"]}, **extra)
    write_manifest(root, manifest)  # last: a manifest means a complete dataset
    return manifest


def write_summary(root: str, failures: list[dict], n_units: int | None) -> dict:
    """``summary.json`` of a conversion of which nothing converted: the failures."""
    summary = {"images_converted": 0, "images_rejected": 0, "parts": 0,
               **completeness(failures, 0, n_units)}
    storage.write_bytes(storage.join(root, "summary.json"), json.dumps(summary, indent=2).encode())
    return summary
