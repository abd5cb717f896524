"""``gsformat merge``: join finished parts into one dataset.

The root ``index.json`` lists every part's shards with the part's directory prefixed to their
basenames (what streaming's `merge_index` writes); each file is written beside its final name
and renamed into place (`storage.write_bytes`), the manifest last, so a merge killed at any
point leaves either the old dataset or none, and running it again completes it. Re-running
merge on a merged dataset rewrites the same files.
"""
from __future__ import annotations

import json

import numpy as np

from ..format import constants as C
from ..format import mds, storage
from ..format.dataset import make_manifest, read_index, write_manifest
from ..format.errors import FormatError

from .options import CONVERT_JSON, PART_JSON, REJECTS


def find_parts(root: str, digest: str | None) -> list[tuple[str, dict]]:
    """(part dir name, part.json) of every finished part of the current conversion."""
    names = sorted({f.split("/")[0] for f in (p.replace("\\", "/") for p in
                                              storage.list_files(root))
                    if f.startswith("part-") and f.endswith("/" + PART_JSON)})
    parts = []
    for name in names:
        mds.check_basename(name, "part directory")
        try:
            stats = json.loads(storage.read_bytes(storage.join(root, name, PART_JSON),
                                                  C.MAX_JSON_BYTES))
        except (ValueError, UnicodeDecodeError) as exc:
            raise FormatError(f"not valid JSON: {exc}", f"{name}/{PART_JSON}") from None
        if not isinstance(stats, dict):
            raise FormatError("expected a JSON object", f"{name}/{PART_JSON}")
        if digest is None or stats.get("hash") == digest:
            parts.append((name, stats))
    return parts


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


def merge_parts(root: str) -> dict:
    """Build ROOT/index.json, gsformat.json, summary.json and rejects.jsonl from the parts."""
    convert = None
    try:
        convert = json.loads(storage.read_bytes(storage.join(root, CONVERT_JSON)))
    except FileNotFoundError:
        pass
    parts = find_parts(root, convert["hash"] if convert else None)
    if not parts:
        raise FileNotFoundError(f"{root}: no finished parts to merge")
    index = merged_index(root, [name for name, _ in parts])
    storage.write_bytes(storage.join(root, C.INDEX_NAME), json.dumps(index).encode())
    stats = [p for _, p in parts]
    summary = summarise(stats, index)
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
