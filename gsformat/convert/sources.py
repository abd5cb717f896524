"""Image sources for ``gsformat convert``: folders, WebDataset tars, MDS datasets.

A source is split into *units* (a chunk of files, one tar, one MDS shard) in a deterministic
order; a unit is what a rank converts and what resumption skips once it is finished. Items carry
their key, the encoded image bytes, and caption / label where the source has them.
"""
from __future__ import annotations

import glob
import io
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from typing import Iterator

from ..format import mds, storage
from ..format.errors import FormatError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm", "gif")
MAX_IMAGE_BYTES = 256 << 20


@dataclass
class Item:
    key: str
    data: bytes | None          # encoded image (None: the reason says why)
    source: str                 # where it came from (path, tar#member, shard#index)
    caption: str | None = None
    label: int | None = None
    reason: str | None = None   # set for an item that must be rejected


@dataclass
class Unit:
    name: str                   # stable, used for the part directory
    refs: list = field(default_factory=list)


class SourceError(ValueError):
    """The source as a whole cannot be read (empty, missing, unknown format)."""


def expand_braces(pattern: str) -> list[str]:
    """``shards/{00000..00002}.tar`` → three names (zero padding kept); ``{a,b}`` lists too."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    body, head, tail = match.group(1), pattern[:match.start()], pattern[match.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        options = [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [name for option in options for name in expand_braces(head + option + tail)]


# ---- folders ------------------------------------------------------------------------------
class FolderSource:
    """Images below a directory (recursive). Class sub-folders (every image one or more levels
    down) give ``label`` = index of the first path component in sorted order; a ``.txt`` beside
    an image (same stem) gives its caption. Keys are relative paths without extension."""

    kind = "folder"

    def __init__(self, root: str, chunk_size: int = 512):
        if storage.is_remote(root):
            raise SourceError("image folders must be local; put remote images in WebDataset "
                              "tars or an MDS dataset")
        if not os.path.isdir(root):
            raise SourceError(f"{root}: not a directory")
        self.root = root
        files = storage.list_files(root)
        self.images = [f for f in files if f.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS]
        self.captions = {f.rsplit(".", 1)[0] for f in files if f.endswith(".txt")}
        if not self.images:
            raise SourceError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
        nested = [os.sep in f for f in self.images]
        self.class_names = (sorted({f.split(os.sep)[0] for f in self.images})
                            if all(nested) else None)
        self.chunk_size = chunk_size

    @property
    def columns(self) -> list[str]:
        cols = ["source"]
        if self.captions:
            cols.append("caption")
        if self.class_names:
            cols.append("label")
        return cols

    def units(self) -> list[Unit]:
        return [Unit(f"files-{i // self.chunk_size:05d}", self.images[i:i + self.chunk_size])
                for i in range(0, len(self.images), self.chunk_size)]

    def items(self, unit: Unit) -> Iterator[Item]:
        for rel in unit.refs:
            path = os.path.join(self.root, rel)
            stem = rel.rsplit(".", 1)[0]
            caption = None
            if self.captions:
                caption = ""
                if stem in self.captions:
                    with open(os.path.join(self.root, stem + ".txt"), encoding="utf-8",
                              errors="replace") as f:
                        caption = f.read().strip()
            label = self.class_names.index(rel.split(os.sep)[0]) if self.class_names else None
            try:
                data = storage.read_bytes(path, MAX_IMAGE_BYTES)
                yield Item(stem.replace(os.sep, "/"), data, path, caption, label)
            except (OSError, ValueError) as exc:
                yield Item(stem, None, path, caption, label, reason=f"unreadable: {exc}")


# ---- WebDataset tars ----------------------------------------------------------------------
def _split_member(name: str) -> tuple[str, str]:
    """WebDataset convention: key = path up to the first dot of the basename."""
    directory, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


class WebDatasetSource:
    """WebDataset/img2dataset tar shards: a list, a glob or a brace pattern; local or URL.
    Per key: the image member (jpg, png, …), caption from ``.txt`` or ``.json`` (``caption`` or
    ``text``), label from ``.cls``. A key without an image member is rejected."""

    kind = "webdataset"

    def __init__(self, spec: str | list[str]):
        specs = spec if isinstance(spec, list) else spec.split()
        tars = []
        for item in specs:
            for name in expand_braces(item):
                if storage.is_remote(name):
                    tars.append(name)
                elif any(c in name for c in "*?["):
                    tars.extend(sorted(glob.glob(name)))
                elif os.path.isdir(name):
                    tars.extend(sorted(glob.glob(os.path.join(name, "*.tar"))))
                else:
                    tars.append(name)
        if not tars:
            raise SourceError(f"{spec}: no tar shards found")
        missing = [t for t in tars if not storage.is_remote(t) and not os.path.exists(t)]
        if missing:
            raise SourceError(f"tar shards not found: {', '.join(missing[:5])}")
        self.tars = tars
        self.class_names = None

    columns = ["source", "caption", "label"]

    def units(self) -> list[Unit]:
        return [Unit(f"tar-{i:05d}", [t]) for i, t in enumerate(self.tars)]

    def items(self, unit: Unit) -> Iterator[Item]:
        path = unit.refs[0]
        try:
            data = storage.read_bytes(path)
            archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
            members = [m for m in archive.getmembers() if m.isfile()]
        except (OSError, tarfile.TarError) as exc:
            yield Item(os.path.basename(path), None, path, reason=f"unreadable tar: {exc}")
            return
        groups: dict[str, dict[str, tarfile.TarInfo]] = {}
        for member in members:
            key, ext = _split_member(member.name)
            groups.setdefault(key, {})[ext] = member
        for key, parts in groups.items():
            where = f"{path}#{key}"
            image_ext = next((e for e in IMAGE_EXTENSIONS if e in parts), None)
            caption, label = "", -1
            try:
                if "txt" in parts:
                    caption = archive.extractfile(parts["txt"]).read().decode("utf-8",
                                                                              "replace").strip()
                elif "json" in parts:
                    meta = json.loads(archive.extractfile(parts["json"]).read())
                    caption = str(meta.get("caption") or meta.get("text") or "")
                if "cls" in parts:
                    label = int(archive.extractfile(parts["cls"]).read().strip())
            except (ValueError, OSError, tarfile.TarError) as exc:
                yield Item(key, None, where, reason=f"bad caption/label member: {exc}")
                continue
            if image_ext is None:
                yield Item(key, None, where, caption, label,
                           reason=f"no image member (has: {', '.join(sorted(parts))})")
                continue
            try:
                blob = archive.extractfile(parts[image_ext]).read()
            except (OSError, tarfile.TarError) as exc:
                yield Item(key, None, where, caption, label, reason=f"unreadable member: {exc}")
                continue
            yield Item(key, blob, where, caption, label)


# ---- MDS datasets -------------------------------------------------------------------------
IMAGE_ENCODINGS = ("jpeg", "png", "pil", "bytes")


class MDSSource:
    """An MDS dataset with an image column (jpeg, png, pil or bytes) and optional caption and
    label columns; local or URL. One unit per shard. Pickle columns are never decoded."""

    kind = "mds"

    def __init__(self, root: str, image_column: str | None = None):
        from ..format.dataset import read_index
        try:
            self.index = read_index(root)
        except FileNotFoundError:
            raise SourceError(f"{root}: no index.json (not an MDS dataset)") from None
        except FormatError as exc:
            raise SourceError(f"{root}: {exc}") from None
        self.root = root
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
        return [Unit(f"shard-{i:05d}", [i]) for i in range(len(self.index["shards"]))]

    def items(self, unit: Unit) -> Iterator[Item]:
        from streaming.base.format.mds.encodings import mds_decode
        from ..format.dataset import read_shard
        info = self.index["shards"][unit.refs[0]]
        name = info["raw_data"]["basename"]
        try:
            raw = read_shard(self.root, info)
            samples = list(mds.iter_samples(raw, info))
        except (OSError, ValueError) as exc:
            yield Item(name, None, f"{self.root}/{name}", reason=f"unreadable shard: {exc}")
            return
        for i, sample in samples:
            where = f"{name}#{i}"
            if isinstance(sample, FormatError):
                yield Item(where, None, where, reason=sample.reason)
                continue
            key = sample.get(self.key_column) if self.key_column else None
            key = key or f"{os.path.splitext(name)[0]}-{i:06d}"
            caption = sample.get(self.caption_column) if self.caption_column else None
            label = sample.get(self.label_column) if self.label_column else None
            data = sample[self.image_column]
            if self.image_encoding == "pil":  # streaming's raw-pixel layout → PNG bytes
                try:
                    buffer = io.BytesIO()
                    mds_decode("pil", data).save(buffer, format="PNG")
                    data = buffer.getvalue()
                except Exception as exc:
                    yield Item(key, None, where, caption, label, reason=f"bad pil cell: {exc}")
                    continue
            yield Item(key, data, where, caption, label)


def open_source(src: str, source_format: str = "auto", chunk_size: int = 512,
                image_column: str | None = None):
    """The source for ``src`` (detected unless ``source_format`` names it)."""
    if source_format == "auto":
        if any(s.endswith(".tar") or ".tar" in s or "{" in s for s in src.split()):
            source_format = "webdataset"
        elif storage.is_remote(src) or os.path.exists(os.path.join(src, "index.json")):
            source_format = "mds"
        elif os.path.isdir(src):
            tars = glob.glob(os.path.join(src, "*.tar"))
            source_format = "webdataset" if tars else "folder"
        else:
            raise SourceError(f"{src}: not found (expected a folder, tar shards or MDS)")
    if source_format == "folder":
        return FolderSource(src, chunk_size)
    if source_format == "webdataset":
        return WebDatasetSource(src)
    if source_format == "mds":
        return MDSSource(src, image_column)
    raise SourceError(f"unknown source format {source_format!r}")
