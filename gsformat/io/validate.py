"""`validate_dataset`: check a dataset (local or remote) against SPEC.md § 8.

Checks, in SPEC.md § 9's order: index.json (MDS v2, every field of § 6.5; a fault in reading
or parsing it ends the run), gsformat.json (format, version, layout, codecs; columns and sample
count agree with the index), every shard in index order (present, size, hashes, decompression,
sample count, sample offsets — the first of these that fails ends that shard's checks) and every
sample (record decodes, finite parameters, l11 > 0 and l22 > 0, limits, unique keys, column
types). Problems are collected, not raised, so one run reports everything it finds.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core import constants as C
from . import failures, mds, storage
from .dataset_files import read_index, read_manifest
from ..core.errors import FormatError
from ..core.record import decode_record

MAX_PROBLEMS_PER_SHARD = 20


@dataclass
class Report:
    path: str
    problems: list[dict] = field(default_factory=list)
    n_shards: int = 0
    n_samples: int = 0
    n_splats: list[int] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems

    def add(self, where: str, problem: str) -> None:
        self.problems.append({"where": where, "problem": problem})

    def to_json(self) -> dict:
        stats = {}
        if self.n_splats:
            stats = {"n_splats_mean": float(np.mean(self.n_splats)),
                     "n_splats_min": int(np.min(self.n_splats)),
                     "n_splats_max": int(np.max(self.n_splats))}
        if self.psnr:
            stats["psnr_mean"] = float(np.mean(self.psnr))
        return {"path": self.path, "valid": self.valid, "n_shards": self.n_shards,
                "n_samples": self.n_samples, "stats": stats, "problems": self.problems}

    def text(self) -> str:
        head = (f"{self.path}: {'valid' if self.valid else 'INVALID'} — {self.n_shards} shards, "
                f"{self.n_samples} samples checked")
        lines = [head] + [f"  {p['where']}: {p['problem']}" for p in self.problems]
        if not self.valid:
            lines.append(f"{len(self.problems)} problem(s)")
        return "\n".join(lines)


def _check_hashes(report: Report, where: str, data: bytes, hashes: dict) -> bool:
    ok = True
    for algo, expected in (hashes or {}).items():
        if algo not in mds.hash_names():
            report.add(where, f"unknown hash algorithm {algo!r}")
            ok = False
            continue
        digest = mds.hex_digest(algo, data)
        if len(expected) != len(digest) or expected.strip(HEX_DIGITS):
            report.add(where, f"{algo} digest {expected!r:.80} is not {len(digest)} lower-case "
                              f"hex digits (SPEC.md § 6.5)")
            ok = False
        elif digest != expected:
            report.add(where, f"{algo} hash mismatch (file changed or corrupt)")
            ok = False
    return ok


HEX_DIGITS = "0123456789abcdef"
# § 6.5's fields a reader may do without but a writer writes and a validator checks (§ 9 item 1)
ENTRY_FIELDS = {"version": (int,), "hashes": (list,), "size_limit": (int, type(None)),
                "compression": (str, type(None)), "zip_data": (dict, type(None))}
ENTRY_KEYS = frozenset(("format", "version", "column_names", "column_encodings", "column_sizes",
                        "compression", "hashes", "raw_data", "zip_data", "samples",
                        "size_limit"))
FILE_KEYS = frozenset(("basename", "bytes", "hashes"))
FIXED_COLUMN_SIZES = {"str": None, "bytes": None, "jpeg": None, **mds.FIXED_SIZES}


def _check_entry_fields(report: Report, i: int, info: dict) -> None:
    """SPEC.md § 9 item 1 beyond what every reader checks (`mds.check_shard_entry`): every field
    of § 6.5 present with its type, ``version`` 2, ``hashes`` naming exactly the digests given,
    column sizes those of their encodings."""
    where = f"{C.INDEX_NAME}, shard entry {i}"
    for name, kinds in ENTRY_FIELDS.items():
        if name not in info:
            report.add(where, f"field {name!r} is missing (SPEC.md § 6.5)")
        elif type(info[name]) not in kinds:
            report.add(where, f"field {name!r} has type {type(info[name]).__name__}, expected "
                              f"{' or '.join('null' if k is type(None) else k.__name__ for k in kinds)}")
    for name in sorted(set(info) - ENTRY_KEYS):
        report.add(where, f"field {name!r} is not one of § 6.5's (MDS readers refuse it)")
    for part in ("raw_data", "zip_data"):
        if isinstance(info.get(part), dict):
            for name in sorted(set(info[part]) - FILE_KEYS):
                report.add(where, f"field {part}.{name} is not one of § 6.5's (MDS readers "
                                  f"refuse it)")
    if type(info.get("version")) is int and info["version"] != 2:
        report.add(where, f"shard version {info['version']} (MDS shards here are version 2)")
    algos = info.get("hashes")
    algos = set(algos) if type(algos) is list and all(type(a) is str for a in algos) else None
    for part in ("raw_data", "zip_data"):
        files = info.get(part)
        if not isinstance(files, dict):
            continue
        if not isinstance(files.get("hashes"), dict):
            report.add(where, f"{part}.hashes is missing (SPEC.md § 6.5: algorithm → hex)")
        elif algos is not None and set(files["hashes"]) != algos:
            report.add(where, f"{part}.hashes has {sorted(files['hashes'])}, hashes lists "
                              f"{sorted(algos)}")
    for name, encoding, size in zip(info.get("column_names", ()),
                                    info.get("column_encodings", ()),
                                    info.get("column_sizes", ())):
        if encoding in FIXED_COLUMN_SIZES and size != FIXED_COLUMN_SIZES[encoding]:
            expected = FIXED_COLUMN_SIZES[encoding]
            report.add(where, f"column {name!r} ({encoding}) has size {size}, its encoding's "
                              f"is {'null' if expected is None else expected}")


def _check_manifest(report: Report, root: str, index: dict) -> None:
    try:
        manifest = read_manifest(root)
    except FileNotFoundError:
        report.add(C.MANIFEST_NAME, "missing")
        return
    except FormatError as exc:
        report.add(C.MANIFEST_NAME, exc.reason)
        return
    if manifest.get("layout") != C.LAYOUT_ID:
        report.add(C.MANIFEST_NAME, f"layout {manifest.get('layout')!r:.80} is not "
                                    f"{C.LAYOUT_ID!r} (the only layout of version 1)")
    codecs = manifest.get("codecs")
    if type(codecs) is not list or not all(isinstance(c, dict) and type(c.get("id")) is str
                                           for c in codecs):
        report.add(C.MANIFEST_NAME, "codecs must be an array of codec configs with a string "
                                    "'id' (SPEC.md § 6.2)")
    total = sum(int(s.get("samples", 0)) for s in index["shards"])
    if manifest.get("n_samples") != total:
        report.add(C.MANIFEST_NAME, f"n_samples {manifest.get('n_samples')} contradicts "
                                    f"index.json ({total} samples)")
    columns = manifest.get("columns")
    if not isinstance(columns, dict):
        report.add(C.MANIFEST_NAME, "columns must be a map of column name to MDS encoding")
        return
    for i, info in enumerate(index["shards"]):
        try:
            names, encodings, _ = mds.shard_config(info)
        except FormatError:
            continue  # reported with the shard
        if dict(zip(names, encodings)) != columns:
            report.add(C.MANIFEST_NAME, f"columns {columns} contradict index.json shard {i} "
                                        f"({dict(zip(names, encodings))})")
            break


def _check_sample(report: Report, where: str, sample: dict, keys: set) -> None:
    key = sample.get("key")
    if not isinstance(key, str) or not key:
        report.add(where, "missing or empty key")
    elif key in keys:
        report.add(where, f"duplicate key {key!r}")
    else:
        keys.add(key)
    try:
        splats = decode_record(sample.get("splats", b""))
    except FormatError as exc:
        report.add(where, f"splat record: {exc}")
        return
    report.n_splats.append(splats.n_splats)
    psnr = splats.meta.get("psnr")
    if isinstance(psnr, (int, float)):
        report.psnr.append(float(psnr))


def validate_dataset(root: str, progress: bool = False) -> Report:
    """Check everything SPEC.md § 8 lists; return a `Report` (``report.valid``)."""
    report = Report(root)
    try:
        index = read_index(root)
    except FileNotFoundError as exc:
        if failures.failure_kind(exc) != failures.MISSING:  # fsspec: a server that is down
            report.add(C.INDEX_NAME, f"cannot read: {failures.describe(exc)}")
        elif storage.is_remote(root) and not _lists_anything(root):
            report.add(C.INDEX_NAME, f"missing: nothing at {root} (not found)")
        else:
            report.add(C.INDEX_NAME, "missing (not an MDS dataset)")
        return report
    except FormatError as exc:
        report.add(C.INDEX_NAME, str(exc).removeprefix(f"{C.INDEX_NAME}: "))
        return report
    except NotADirectoryError:
        report.add(C.INDEX_NAME, f"missing ({root} is a file, not a dataset directory)")
        return report
    except (ValueError, OSError) as exc:  # over 64 MiB, unreadable: a report, not a crash
        report.add(C.INDEX_NAME, f"cannot read: {exc}")
        return report
    for i, info in enumerate(index["shards"]):
        _check_entry_fields(report, i, info)
    _check_manifest(report, root, index)
    keys: set[str] = set()
    shards = index["shards"]
    if progress:
        from tqdm import tqdm
        shards = tqdm(shards, desc="validate", unit="shard")
    for info in shards:
        report.n_shards += 1
        before = len(report.problems)
        _check_shard(report, root, info, keys)
        extra = len(report.problems) - before - MAX_PROBLEMS_PER_SHARD
        if extra > 0:
            name = report.problems[before]["where"].split(",")[0]
            del report.problems[before + MAX_PROBLEMS_PER_SHARD:]
            report.add(name, f"... and {extra} more problems")
    return report


def _lists_anything(root: str) -> bool:
    try:
        return bool(storage.list_files(root))
    except Exception as exc:  # noqa: BLE001 — the report already says index.json is missing
        return failures.failure_kind(exc) != failures.MISSING  # (a bucket that is not there)


def _check_shard(report: Report, root: str, info: dict, keys: set) -> None:
    # read_index checked every entry's fields and names (relative, inside the dataset)
    raw_info, zip_info = info["raw_data"], info.get("zip_data") or {}
    name = raw_info["basename"]
    stored = zip_info or raw_info
    try:
        data = storage.read_bytes(storage.member(root, stored["basename"]), mds.MAX_SHARD_BYTES)
    except FileNotFoundError:
        report.add(stored["basename"], "missing shard file")
        return
    except FormatError as exc:
        report.add(stored["basename"], exc.reason)
        return
    except (ValueError, OSError) as exc:
        report.add(stored["basename"], f"cannot read: {exc}")
        return
    where = stored["basename"]
    if len(data) != stored.get("bytes"):
        report.add(where, f"size {len(data)} bytes, index says {stored.get('bytes')} "
                          f"(truncated or overwritten)")
        return
    if not _check_hashes(report, where, data, stored.get("hashes")):
        return
    try:
        raw = mds.decompress(data, info.get("compression") if zip_info else None,
                             raw_info.get("bytes", -1))
    except FormatError as exc:
        report.add(where, exc.reason)
        return
    if zip_info and not _check_hashes(report, name, raw, raw_info.get("hashes")):
        return
    try:
        spans = mds.sample_spans(raw)
    except FormatError as exc:
        report.add(name, exc.reason)
        return
    if len(spans) != info.get("samples"):
        report.add(name, f"holds {len(spans)} samples, index says {info.get('samples')}")
    try:
        names, _, _ = mds.shard_config(info)
    except FormatError as exc:
        report.add(name, exc.reason)
        return
    missing = [c for c in C.REQUIRED_COLUMNS if c not in names]
    if missing:
        report.add(name, f"missing required columns {missing}")
        return
    for i, sample in mds.iter_samples(raw, info):
        report.n_samples += 1
        where = f"{name}, sample {i}"
        if isinstance(sample, FormatError):
            report.add(where, sample.reason)
        else:
            _check_sample(report, where, sample, keys)
