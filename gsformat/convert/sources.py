"""Image sources for ``gsformat convert``: folders, WebDataset tars, MDS datasets, Parquet
files, at any location `io.storage` reads (local, ``file://``, ``s3://``, fsspec URLs, ``pipe:``).

A source is split into *units* (a chunk of files, one tar, one MDS shard, a Parquet file or a
run of its row groups) in a deterministic
order; a unit is what a rank converts and what resumption skips once it is finished. Items carry
their key, the encoded image bytes, and caption / label / sidecar metadata where the source has
them. A unit that cannot be read raises `UnitError` (the unit is then not finished: a rerun
converts it); an item that cannot be used is yielded with a ``reason`` (it is rejected).

Keys are unique by construction: a folder's keys are relative paths without the extension (with
it, for images that share a stem); a tar's, MDS shard's or Parquet file's keys are the source's
own, prefixed by the unit (``<tar name>/<key>``, ``<shard name>/<key>``) when the source has
several; Parquet rows without a key are ``<file stem>/<row index>``.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from typing import Iterator

from ..core.errors import FormatError
from ..io import failures, storage, mds
from . import parquet

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm", "gif")
MAX_IMAGE_BYTES = 256 << 20
MAX_SIDECAR_BYTES = 1 << 20


@dataclass
class Item:
    key: str
    data: bytes | None          # encoded image (None: the reason says why)
    source: str                 # where it came from (path, tar#member, shard#index)
    caption: str | None = None
    label: int | None = None
    reason: str | None = None   # set for an item that must be rejected
    meta: str | None = None     # a sidecar's JSON text (img2dataset's .json), as stored


@dataclass
class Unit:
    name: str                   # stable, used for the part directory
    refs: list = field(default_factory=list)
    label: str = ""             # the key prefix of this unit's items ("" for none)


class SourceError(ValueError):
    """The source as a whole cannot be read (empty, missing, unknown format)."""


class UnitError(OSError):
    """One unit could not be read (missing, network, permission): not finished, retried on a
    rerun. The message names the location and the cause."""


def _unit_labels(paths: list[str], suffix: str) -> list[str]:
    """Each path relative to the paths' common directory, ``suffix`` dropped: unit key prefixes
    (distinct for distinct paths)."""
    if len(paths) == 1:
        return [""]
    split = [p.replace(os.sep, "/").split("/") for p in paths]
    depth = 0  # directories every path shares (compared as strings: URLs keep their "//")
    while all(len(parts) > depth + 1 and parts[depth] == split[0][depth] for parts in split):
        depth += 1
    out = []
    for parts in split:
        rel = "/".join(parts[depth:])
        out.append(rel[:-len(suffix)] if suffix and rel.endswith(suffix) else rel)
    return out


# ---- folders ------------------------------------------------------------------------------
class FolderSource:
    """Images below a directory or prefix (recursive). Class sub-folders (every image one or
    more levels down) give ``label`` = index of the first path component in sorted order; a
    ``.txt`` beside an image (same stem) gives its caption."""

    kind = "folder"

    def __init__(self, root: str, chunk_size: int = 512, files: list[str] | None = None):
        self.root = root.rstrip("/") if storage.scheme_of(root) else root
        files = storage.list_files(root) if files is None else files
        self.images = [f for f in files if f.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS]
        self.captions = {f.rsplit(".", 1)[0] for f in files if f.endswith(".txt")}
        if not self.images:
            raise SourceError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
        stems = [f.rsplit(".", 1)[0] for f in self.images]
        shared = {s for s in stems if stems.count(s) > 1} if len(set(stems)) < len(stems) else ()
        self.keys = {f: (f if stem in shared else stem).replace(os.sep, "/")
                     for f, stem in zip(self.images, stems)}
        nested = ["/" in f.replace(os.sep, "/") for f in self.images]
        self.class_names = (sorted({f.replace(os.sep, "/").split("/")[0] for f in self.images})
                            if all(nested) else None)
        self.chunk_size = chunk_size

    @property
    def columns(self) -> list[str]:
        return ["source"] + (["caption"] if self.captions else []) + (
            ["label"] if self.class_names else [])

    def units(self) -> list[Unit]:
        return [Unit(f"files-{i // self.chunk_size:05d}", self.images[i:i + self.chunk_size])
                for i in range(0, len(self.images), self.chunk_size)]

    def items(self, unit: Unit) -> Iterator[Item]:
        for rel in unit.refs:
            path = storage.join(self.root, rel)
            stem = rel.rsplit(".", 1)[0]
            label = (self.class_names.index(rel.replace(os.sep, "/").split("/")[0])
                     if self.class_names else None)
            try:
                caption = None
                if self.captions:
                    caption = ""
                    if stem in self.captions:
                        text = failures.with_retries(lambda: storage.read_bytes(
                            storage.join(self.root, stem + ".txt"), MAX_SIDECAR_BYTES))
                        caption = text.decode("utf-8", "replace").strip()
                data = failures.with_retries(lambda: storage.read_bytes(path,
                                                                           MAX_IMAGE_BYTES))
            except ValueError as exc:  # over the size limit: this image only
                yield Item(self.keys[rel], None, path, None, label, reason=f"unreadable: {exc}")
                continue
            except Exception as exc:
                if storage.scheme_of(path) == "" and not failures.is_transient(exc):
                    yield Item(self.keys[rel], None, path, None, label,
                               reason=f"unreadable: {exc}")  # a broken local file: rejected
                    continue
                raise UnitError(f"{path}: {type(exc).__name__}: {exc}") from None
            yield Item(self.keys[rel], data, path, caption, label)


# ---- WebDataset tars ----------------------------------------------------------------------
def _split_member(name: str) -> tuple[str, str]:
    """WebDataset convention: key = path up to the first dot of the basename."""
    directory, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


class WebDatasetSource:
    """WebDataset/img2dataset tar shards at any location (a list, globs, brace patterns,
    ``pipe:`` commands). Per key: the image member (jpg, png, …); caption from ``.txt``, else
    ``.json``'s ``caption`` or ``text``; label from ``.cls``; the ``.json`` sidecar itself (url,
    original size, exif, hashes: img2dataset's) kept as the ``meta`` column. A key without an
    image member is rejected. Members are read as the tar streams past (a tar is never held in
    memory whole)."""

    kind = "webdataset"
    columns = ["source", "caption", "label", "meta"]

    def __init__(self, tars: list[str]):
        if not tars:
            raise SourceError("no tar shards given")
        self.tars = tars
        self.class_names = None

    def units(self) -> list[Unit]:
        labels = _unit_labels(self.tars, ".tar")
        return [Unit(f"tar-{i:05d}", [t], label) for i, (t, label)
                in enumerate(zip(self.tars, labels))]

    def items(self, unit: Unit) -> Iterator[Item]:
        path = unit.refs[0]
        prefix = f"{unit.label}/" if unit.label else ""
        try:
            with storage.open_stream(path) as stream:
                archive = tarfile.open(fileobj=stream, mode="r|*")
                key, parts = None, {}
                for member in archive:
                    if not member.isfile():
                        continue
                    name_key, ext = _split_member(member.name)
                    if name_key != key and key is not None:
                        yield self._item(prefix + key, f"{path}#{key}", parts)
                        parts = {}
                    key = name_key
                    if member.size > MAX_IMAGE_BYTES:
                        parts[ext] = None  # over the limit: the sample is rejected below
                        continue
                    parts[ext] = archive.extractfile(member).read()
                if key is not None:
                    yield self._item(prefix + key, f"{path}#{key}", parts)
        except (OSError, tarfile.TarError, EOFError) as exc:
            raise UnitError(f"{path}: {type(exc).__name__}: {exc}") from None

    @staticmethod
    def _item(key: str, where: str, parts: dict) -> Item:
        caption, label, meta = "", -1, None
        try:
            if parts.get("txt") is not None:
                caption = parts["txt"].decode("utf-8", "replace").strip()
            if parts.get("json") is not None and len(parts["json"]) <= MAX_SIDECAR_BYTES:
                sidecar = json.loads(parts["json"])
                meta = json.dumps(sidecar, sort_keys=True)
                if "txt" not in parts and isinstance(sidecar, dict):
                    caption = str(sidecar.get("caption") or sidecar.get("text") or "")
            if parts.get("cls") is not None:
                label = int(parts["cls"].strip())
        except ValueError as exc:
            return Item(key, None, where, reason=f"bad caption/label/json member: {exc}")
        image_ext = next((e for e in IMAGE_EXTENSIONS if e in parts), None)
        if image_ext is None:
            return Item(key, None, where, caption, label, meta=meta,
                        reason=f"no image member (has: {', '.join(sorted(parts))})")
        if parts[image_ext] is None:
            return Item(key, None, where, caption, label, meta=meta,
                        reason=f"image member over {MAX_IMAGE_BYTES} bytes")
        return Item(key, parts[image_ext], where, caption, label, meta=meta)


# ---- MDS datasets -------------------------------------------------------------------------
IMAGE_ENCODINGS = ("jpeg", "png", "pil", "bytes")


class MDSSource:
    """An MDS dataset with an image column (jpeg, png, pil or bytes) and optional caption and
    label columns, at any location. One unit per shard. Pickle columns are never decoded."""

    kind = "mds"

    def __init__(self, root: str, image_column: str | None = None):
        self.root = root.rstrip("/") if storage.scheme_of(root) else root
        try:
            index_bytes = failures.with_retries(lambda: storage.read_bytes(
                storage.join(self.root, "index.json"), 64 << 20))
            self.index = mds.read_index(index_bytes)
        except FileNotFoundError:
            raise SourceError(f"{root}: no index.json (not an MDS dataset)") from None
        except FormatError as exc:
            raise SourceError(f"{root}: index.json: {exc}") from None
        except Exception as exc:
            raise SourceError(f"{root}/index.json: {type(exc).__name__}: {exc}") from None
        if not self.index["shards"]:
            raise SourceError(f"{root}: the MDS index lists no shards")
        names, encodings, _ = mds.shard_config(self.index["shards"][0])
        columns = dict(zip(names, encodings))
        if image_column is None:
            for name in ("image", "jpg", "jpeg", "png", "img"):
                if columns.get(name) in IMAGE_ENCODINGS:
                    image_column = name
                    break
            else:
                found = [n for n, e in columns.items() if e in ("jpeg", "png", "pil")]
                if len(found) != 1:
                    raise SourceError(f"{root}: cannot tell the image column among {columns}; "
                                      f"name it with --image-column")
                image_column = found[0]
        if columns.get(image_column) not in IMAGE_ENCODINGS:
            raise SourceError(f"{root}: column {image_column!r} is not an image column "
                              f"({columns.get(image_column)})")
        self.image_column, self.image_encoding = image_column, columns[image_column]
        self.caption_column = next((c for c in ("caption", "txt", "text") if
                                    columns.get(c) == "str"), None)
        self.label_column = next((c for c in ("label", "cls") if columns.get(c) in
                                  ("int", "int64", "int32")), None)
        self.key_column = "key" if columns.get("key") == "str" else None
        self.class_names = None

    @property
    def columns(self) -> list[str]:
        return ["source"] + (["caption"] if self.caption_column else []) + (
            ["label"] if self.label_column else [])

    def units(self) -> list[Unit]:
        shards = self.index["shards"]
        names = [info["raw_data"]["basename"] for info in shards]
        labels = _unit_labels(names, ".mds")
        return [Unit(f"shard-{i:05d}", [i], label) for i, label in enumerate(labels)]

    def _read_shard(self, info: dict) -> bytes:
        raw, zipped = info["raw_data"], info.get("zip_data")
        name = (zipped or raw)["basename"]
        url = storage.join(self.root, name)
        try:
            data = failures.with_retries(lambda: storage.read_bytes(url, mds.MAX_SHARD_BYTES))
        except Exception as exc:
            raise UnitError(f"{url}: {type(exc).__name__}: {exc}") from None
        return mds.decompress(data, info.get("compression") if zipped else None, raw["bytes"])

    def items(self, unit: Unit) -> Iterator[Item]:
        info = self.index["shards"][unit.refs[0]]
        name = info["raw_data"]["basename"]
        prefix = f"{unit.label}/" if unit.label else ""
        try:
            samples = list(mds.iter_samples(self._read_shard(info), info))
        except FormatError as exc:  # the shard itself is damaged: every sample rejected
            yield Item(prefix + name, None, f"{self.root}/{name}",
                       reason=f"unreadable shard: {exc}")
            return
        for i, sample in samples:
            where = f"{name}#{i}"
            if isinstance(sample, FormatError):
                yield Item(prefix + f"{i:06d}", None, where, reason=sample.reason)
                continue
            key = sample.get(self.key_column) if self.key_column else None
            key = prefix + (key or f"{os.path.splitext(name)[0]}-{i:06d}")
            caption = sample.get(self.caption_column) if self.caption_column else None
            label = sample.get(self.label_column) if self.label_column else None
            data = sample[self.image_column]
            if self.image_encoding == "pil":  # streaming's raw-pixel layout → PNG bytes
                try:
                    from streaming.base.format.mds.encodings import mds_decode
                    buffer = io.BytesIO()
                    mds_decode("pil", data).save(buffer, format="PNG")
                    data = buffer.getvalue()
                except Exception as exc:
                    yield Item(key, None, where, caption, label, reason=f"bad pil cell: {exc}")
                    continue
            yield Item(key, data, where, caption, label)


# ---- Parquet files ------------------------------------------------------------------------
class ParquetSource:
    """Parquet files (Hugging Face ``datasets`` shards, img2dataset's parquet output, any table
    with encoded images) at any location. The image column is a ``{bytes, path}`` struct or a
    binary column (found by type, or named); caption, label and key columns are found by name
    (`parquet.CAPTION_NAMES`, …) or named; ``ClassLabel`` names in the schema's ``huggingface``
    metadata are the class names; every other scalar column is kept in ``meta`` (JSON). One unit
    per file, or per run of row groups of about ``chunk_size`` rows of a larger one; rows are
    read a row group at a time, only the columns used."""

    kind = "parquet"

    def __init__(self, files: list[str], chunk_size: int = 512, image_column: str | None = None,
                 caption_column: str | None = None, label_column: str | None = None,
                 key_column: str | None = None):
        if not files:
            raise SourceError("no Parquet files given")
        self.files, self.chunk_size = files, chunk_size
        footers = parquet.read_footers(files)  # (schema, rows per row group) or the exception
        readable = [(url, f) for url, f in zip(files, footers) if not isinstance(f, Exception)]
        if not readable:
            raise SourceError(f"{files[0]}: not readable as Parquet: "
                              f"{type(footers[0]).__name__}: {footers[0]}")
        try:
            self.read = parquet.find_columns(readable[0][1][0], image_column, caption_column,
                                             label_column, key_column)
        except ValueError as exc:
            raise SourceError(f"{readable[0][0]}: {exc}") from None
        for url, (schema, _) in readable[1:]:  # one column plan for every file (and every run)
            missing = [name for name in self.read.read if name not in schema.names]
            if missing:
                raise SourceError(
                    f"{url}: no column {', '.join(map(repr, missing))}, which "
                    f"{readable[0][0]} has: the files of one Parquet source must share "
                    f"their columns (convert them as separate sources)")
        self.class_names = list(self.read.class_names) if self.read.class_names else None
        # a file whose footer cannot be read now is one unit, which fails when converted
        self.group_rows = [None if isinstance(f, Exception) else f[1] for f in footers]
        self.chunks = [rows if rows is None else parquet.chunk_row_groups(rows, chunk_size)
                       for rows in self.group_rows]

    @property
    def columns(self) -> list[str]:
        return ["source"] + (["caption"] if self.read.caption else []) + (
            ["label"] if self.read.label else []) + (["meta"] if self.read.meta else [])

    def units(self) -> list[Unit]:
        labels = _unit_labels(self.files, ".parquet")
        return [Unit(f"parquet-{i:05d}-{c:05d}", [i, groups], label)
                for i, (chunks, label) in enumerate(zip(self.chunks, labels))
                for c, groups in enumerate(chunks or [None])]

    def n_rows(self, unit: Unit) -> int:
        """The unit's rows, as its file's footer says (0 where it could not be read)."""
        index, groups = unit.refs
        return sum(self.group_rows[index][g] for g in groups) if groups is not None else 0

    def items(self, unit: Unit) -> Iterator[Item]:
        index, groups = unit.refs
        url = self.files[index]
        stem = unit.label or os.path.basename(url.rstrip("/")).removesuffix(".parquet")
        prefix = f"{unit.label}/" if unit.label else ""
        try:
            for row in parquet.read_rows(url, groups, self.read, self.chunk_size,
                                         MAX_IMAGE_BYTES):
                key = prefix + row.key if row.key else f"{stem}/{row.index:06d}"
                yield Item(key, row.image, f"{url}#{row.index}", row.caption, row.label,
                           reason=row.problem, meta=row.meta)
        except (OSError, ValueError, KeyError) as exc:  # pyarrow's errors derive from these
            raise UnitError(f"{url}: {type(exc).__name__}: {exc}") from None


SHARD_KINDS = ((".tar", "webdataset"), (".parquet", "parquet"))  # files named as shards


def _resolve(spec: str, source_format: str = "auto") -> tuple[str, list[str]]:
    """One SRC argument → (kind, locations): ``webdataset`` with tar URLs, ``parquet`` with
    Parquet files, ``mds`` or ``folder`` with the root. Patterns must match something. A prefix
    holding images is a folder even beside Parquet files (img2dataset's ``files`` output keeps
    its metadata in them), unless ``source_format`` is ``parquet``."""
    if spec.startswith("pipe:"):
        return "webdataset", [spec]
    names = storage.expand(spec)
    if (any(c in spec for c in storage.GLOB_CHARS) or "{" in spec) and not names:
        raise SourceError(f"{spec}: matches nothing")
    for suffix, kind in SHARD_KINDS:
        if names and all(n.endswith(suffix) for n in names):
            return kind, names
    if len(names) > 1:
        return "webdataset", names
    root = names[0] if names else spec
    kind = storage.scheme_of(root)
    if kind == "" and not os.path.exists(root):
        raise SourceError(f"{root}: not found (expected a folder, tar shards, Parquet files "
                          f"or MDS)")
    if kind == "" and not os.path.isdir(root):
        raise SourceError(f"{root}: not a folder, tar shard, Parquet file or MDS dataset")
    try:
        files = failures.with_retries(lambda: storage.list_files(root))
    except Exception as exc:
        if failures.failure_kind(exc) in (failures.UNREACHABLE, failures.DENIED):
            raise SourceError(f"{root}: {failures.describe(exc)}") from None  # as validate says
        raise SourceError(f"{root}: cannot list: {type(exc).__name__}: {exc}") from None
    if "index.json" in files:
        return "mds", [root]
    tars = [f for f in files if f.endswith(".tar") and "/" not in f.replace(os.sep, "/")]
    if tars:
        return "webdataset", [storage.join(root, t) for t in tars]
    tables = [f for f in files if f.endswith(".parquet")]
    if tables and (source_format == "parquet" or not any(
            f.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS for f in files)):
        return "parquet", [storage.join(root, t) for t in tables]
    if not files:
        raise SourceError(f"{root}: no images, tars or MDS index, nor Parquet files (empty, "
                          f"or not found)")
    return "folder", [root]


def open_source(srcs: list[str] | str, source_format: str = "auto", chunk_size: int = 512,
                image_column: str | None = None, caption_column: str | None = None,
                label_column: str | None = None, key_column: str | None = None):
    """The source for one or more SRC arguments (detected unless ``source_format`` names it).
    Several arguments must be of one kind: tars or Parquet files (any mix of locations) join
    into one source. The caption, label and key columns are named for Parquet sources only."""
    srcs = [srcs] if isinstance(srcs, str) else list(srcs)
    resolved = [_resolve(spec, source_format)
                if source_format in ("auto", "webdataset", "parquet") or len(srcs) > 1
                else (source_format, [spec]) for spec in srcs]
    kinds = {kind for kind, _ in resolved}
    if source_format != "auto":
        for spec, (kind, _) in zip(srcs, resolved):
            if kind in ("folder", "mds") and source_format in ("webdataset", "parquet"):
                raise SourceError(f"{spec}: --source-format {source_format}, but this is "
                                  f"{'an image folder' if kind == 'folder' else 'an MDS dataset'}"
                                  f" with no {'tar' if source_format == 'webdataset' else 'Parquet'}"
                                  f" files at its top (leave out --source-format to convert "
                                  f"it as it is)")
        kinds = {source_format}
    if len(kinds) > 1:
        raise SourceError(f"SRC arguments of different kinds ({', '.join(sorted(kinds))}): "
                          f"convert them separately")
    kind = kinds.pop()
    found = [name for _, names in resolved for name in names]
    named = {"--caption-column": caption_column, "--label-column": label_column,
             "--key-column": key_column}
    if kind != "parquet" and any(named.values()):
        raise SourceError(f"{', '.join(k for k, v in named.items() if v)}: for Parquet "
                          f"sources only (this one is {kind})")
    if kind == "parquet":
        return ParquetSource(found, chunk_size, image_column, caption_column, label_column,
                             key_column)
    if kind == "webdataset":
        return WebDatasetSource(found)
    if len(found) != 1:
        raise SourceError(f"one {kind} source at a time, got {len(found)}")
    if kind == "folder":
        return FolderSource(found[0], chunk_size)
    if kind == "mds":
        return MDSSource(found[0], image_column)
    raise SourceError(f"unknown source format {kind!r}")
