"""Parquet files for ``gsformat convert``: the shards the Hugging Face hub stores (``datasets``:
an image column of ``{bytes, path}`` structs, ``ClassLabel`` names in the schema's
``huggingface`` metadata) and img2dataset's ``--output_format parquet`` (a binary ``jpg``
column beside ``key``, ``caption``, ``url`` and the other sidecar fields).

- `open_parquet`: a ``pyarrow.parquet.ParquetFile`` reading byte ranges of any location
  `io.storage` reads: local, fsspec URLs, ``s3://`` through streaming's boto3 client (one S3
  client, as `io.storage` says); a server that ignores ranges is copied to a temporary file.
- `find_columns`: the image column by type (or name), caption / label / key columns by name,
  every other scalar column for ``meta``.
- `read_rows`: the rows of some row groups, one row group read at a time, only the columns
  used. Footers are read with `failures.with_retries`; a transient failure while reading rows
  fails the unit, which `unit.convert_with_retries` redoes (units are small).

pyarrow is imported inside the functions: the convert layer loads without it.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import urllib.parse
from dataclasses import dataclass
from typing import Iterator

from ..io import failures, storage

IMAGE_NAMES = ("image", "img", "jpg", "jpeg", "png", "webp")  # preferred among image columns
CAPTION_NAMES = ("caption", "text", "txt")
LABEL_NAMES = ("label", "labels", "cls")
KEY_NAMES = ("key",)
FOOTER_THREADS = 16  # remote footers are read concurrently when units are planned
BATCH_ROWS = 4       # rows decoded at a time (of the one row group being read)


@dataclass(frozen=True)
class Columns:
    """What a Parquet source reads: the image column, the optional ones, the ``meta`` ones."""
    image: str
    caption: str | None = None
    label: str | None = None
    key: str | None = None
    meta: tuple[str, ...] = ()
    class_names: tuple[str, ...] | None = None  # the label column's ClassLabel names

    @property
    def read(self) -> list[str]:
        return [c for c in (self.image, self.caption, self.label, self.key) if c] + list(
            self.meta)


@dataclass
class Row:
    index: int                  # in the file
    image: bytes | None         # encoded image (None: ``problem`` says why)
    problem: str | None
    caption: str | None
    label: int | None
    key: str | None
    meta: str | None            # the meta columns as JSON text


# ---- opening ------------------------------------------------------------------------------
class _S3Ranges(io.RawIOBase):
    """An S3 object as a seekable file: every read one ranged GET, through the boto3 client
    streaming creates (``S3_ENDPOINT_URL`` and the AWS variables apply)."""

    def __init__(self, url: str):
        from streaming.base.storage.download import S3Downloader
        downloader = S3Downloader()
        downloader._create_s3_client()  # streaming's own settings (endpoint, retries)
        self.client = downloader._s3_client
        parsed = urllib.parse.urlparse(url)
        self.bucket, self.name, self.position = parsed.netloc, parsed.path.lstrip("/"), 0
        try:
            self.size = self.client.head_object(Bucket=self.bucket, Key=self.name)[
                "ContentLength"]
        except Exception as exc:  # botocore's ClientError says "404" in its response
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in ("404", "NoSuchKey", "NoSuchBucket"):
                raise FileNotFoundError(f"{url}: not found") from None
            raise

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.position, os.SEEK_END: self.size}[whence]
        self.position = max(base + offset, 0)
        return self.position

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.size - self.position)
        if n <= 0:
            return 0
        body = self.client.get_object(Bucket=self.bucket, Key=self.name,
                                      Range=f"bytes={self.position}-{self.position + n - 1}")
        data = body["Body"].read()
        buffer[:len(data)] = data
        self.position += len(data)
        return len(data)


@contextlib.contextmanager
def open_parquet(url: str):
    """A ``ParquetFile`` for ``url`` (its footer read); OSError / ValueError when it cannot be
    opened or is not Parquet."""
    import pyarrow.parquet as pq
    url = storage.local_path(url)
    kind = storage.scheme_of(url)
    if kind == "":
        with pq.ParquetFile(url) as parquet_file:
            yield parquet_file
        return
    if kind == "pipe":
        raise ValueError(f"{url}: Parquet needs random access, which pipe: cannot give")
    if kind == "s3":
        with _S3Ranges(url) as f, pq.ParquetFile(f) as parquet_file:
            yield parquet_file
        return
    import fsspec
    with fsspec.open(url, "rb") as f:
        try:
            parquet_file = pq.ParquetFile(f)  # the footer: a range at the end of the file
        except ValueError as exc:  # fsspec: "the HTTP server doesn't … support range requests"
            if "range" not in str(exc):
                raise
            parquet_file = None
        if parquet_file is not None:
            with parquet_file:
                yield parquet_file
            return
    with tempfile.TemporaryDirectory(prefix="gsformat-parquet-") as tmp:
        local = os.path.join(tmp, "file.parquet")  # on disk, not in memory
        with fsspec.open(url, "rb", block_size=0) as stream, open(local, "wb") as out:
            shutil.copyfileobj(stream, out, 1 << 20)
        with pq.ParquetFile(local) as parquet_file:
            yield parquet_file


def read_footer(url: str):
    """(arrow schema, rows per row group) of one file, transient failures retried."""
    def footer():
        with open_parquet(url) as parquet_file:
            meta = parquet_file.metadata
            return parquet_file.schema_arrow, [meta.row_group(g).num_rows
                                               for g in range(meta.num_row_groups)]
    return failures.with_retries(footer)


def read_footers(urls: list[str]) -> list:
    """`read_footer` of every file, concurrently for remote ones; a file that cannot be read
    gives its exception in its place."""
    def attempt(url):
        try:
            return read_footer(url)
        except Exception as exc:
            return exc
    if all(storage.scheme_of(storage.local_path(u)) == "" for u in urls) or len(urls) == 1:
        return [attempt(u) for u in urls]
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(min(FOOTER_THREADS, len(urls))) as pool:
        return list(pool.map(attempt, urls))


def chunk_row_groups(rows_per_group: list[int], chunk_rows: int) -> list[list[int]]:
    """Consecutive row groups of about ``chunk_rows`` rows each (at least one group each; one
    chunk for an empty file)."""
    chunks, rows = [[]], 0
    for group, n in enumerate(rows_per_group):
        if chunks[-1] and rows + n > chunk_rows:
            chunks.append([])
            rows = 0
        chunks[-1].append(group)
        rows += n
    return chunks


# ---- columns ------------------------------------------------------------------------------
def _is_image_type(t) -> bool:
    import pyarrow as pa
    if pa.types.is_struct(t):  # datasets' Image feature: {bytes: binary, path: string}
        names = [t.field(i).name for i in range(t.num_fields)]
        return "bytes" in names and _is_image_type(t.field(names.index("bytes")).type)
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _is_string(t) -> bool:
    import pyarrow as pa
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_scalar(t) -> bool:
    """Kept in ``meta`` (JSON): numbers, strings, booleans, times; not bytes, lists, structs."""
    import pyarrow as pa
    if pa.types.is_dictionary(t):
        t = t.value_type
    return not (pa.types.is_nested(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)
                or pa.types.is_fixed_size_binary(t))


def hf_features(schema) -> dict:
    """The ``datasets`` features in the schema's ``huggingface`` metadata ({} when absent)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    try:
        features = json.loads(raw)["info"]["features"] if raw else {}
    except (ValueError, KeyError, TypeError):
        return {}
    return features if isinstance(features, dict) else {}


def find_columns(schema, image: str | None = None, caption: str | None = None,
                 label: str | None = None, key: str | None = None) -> Columns:
    """The columns to read: named ones checked, the rest found (ValueError, one line, when a
    named column is missing or of the wrong type, or the image column cannot be told)."""
    import pyarrow as pa
    types = {name: schema.field(name).type for name in schema.names}
    features = hf_features(schema)

    def named(name, check, what):
        if name not in types:
            raise ValueError(f"no column {name!r} (columns: {', '.join(types)})")
        if not check(types[name]):
            raise ValueError(f"column {name!r} is {types[name]}, not {what}")
        return name

    def found(names, check):
        return next((n for n in names if n in types and check(types[n])), None)

    if image is not None:
        image = named(image, _is_image_type, "an image ({bytes, path} struct or binary)")
    else:
        images = [n for n, t in types.items() if _is_image_type(t)]
        tagged = [n for n in images if features.get(n, {}).get("_type") == "Image"]
        preferred = [n for n in images if n in IMAGE_NAMES]
        choice = tagged or preferred or images
        if not images or (len(choice) > 1 and not tagged and not preferred):
            raise ValueError(f"cannot tell the image column among {', '.join(types)} (a "
                             f"{{bytes, path}} struct or binary column); name it with "
                             f"--image-column")
        image = choice[0]
    is_key = (lambda t: _is_string(t) or pa.types.is_integer(t))
    caption = named(caption, _is_string, "text") if caption else found(CAPTION_NAMES, _is_string)
    label = (named(label, pa.types.is_integer, "integers") if label
             else found(LABEL_NAMES, pa.types.is_integer))
    key = named(key, is_key, "text or integers") if key else found(KEY_NAMES, is_key)
    used = {image, caption, label, key}
    meta = tuple(n for n, t in types.items() if n not in used and _is_scalar(t))
    feature = features.get(label, {}) if label else {}
    names = feature.get("names") if feature.get("_type") == "ClassLabel" else None
    class_names = tuple(map(str, names)) if isinstance(names, list) else None
    return Columns(image, caption, label, key, meta, class_names)


# ---- rows ---------------------------------------------------------------------------------
def _image_cell(value, max_bytes: int) -> tuple[bytes | None, str | None]:
    """An image cell (bytes, or datasets' {bytes, path}) → (bytes, None) or (None, why)."""
    path = None
    if isinstance(value, dict):
        value, path = value.get("bytes"), value.get("path")
    if value is None:
        return None, (f"image not embedded (path {path!r})" if path else "no image (null)")
    if len(value) > max_bytes:
        return None, f"image cell over {max_bytes} bytes"
    return value, None


def read_rows(url: str, row_groups: list[int] | None, columns: Columns, chunk_rows: int,
              max_image_bytes: int) -> Iterator[Row]:
    """The rows of ``row_groups`` of one file, a row group at a time, decoded `BATCH_ROWS`
    rows at a time (``None``: the file's only chunk, for a file whose footer could not be read
    when units were planned: a ValueError if the file now needs more than one chunk)."""
    with open_parquet(url) as parquet_file:
        meta = parquet_file.metadata
        rows_per_group = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        if row_groups is None:
            chunks = chunk_row_groups(rows_per_group, chunk_rows)
            if len(chunks) > 1:
                raise ValueError("its footer could not be read when the units were planned; "
                                 "re-run to plan and convert it")
            row_groups = chunks[0]
        for group in row_groups:
            first = sum(rows_per_group[:group])
            for batch in parquet_file.iter_batches(BATCH_ROWS, row_groups=[group],
                                                   columns=columns.read, use_threads=False):
                yield from _rows(batch, first, columns, max_image_bytes)
                first += batch.num_rows


def _rows(batch, first: int, columns: Columns, max_image_bytes: int) -> Iterator[Row]:
    images = batch.column(columns.image)
    values = {name: batch.column(name).to_pylist() for name in columns.read
              if name != columns.image}  # the small columns, as Python values
    none = [None] * batch.num_rows
    captions, labels, keys = (values.get(c, none) for c in (columns.caption, columns.label,
                                                             columns.key))
    for i in range(batch.num_rows):
        image, problem = _image_cell(images[i].as_py(), max_image_bytes)  # one row's copy
        meta = None
        if columns.meta:
            meta = json.dumps({name: values[name][i] for name in columns.meta},
                              sort_keys=True, default=str)  # dates, decimals as text
        key = keys[i]
        yield Row(first + i, image, problem, captions[i], labels[i],
                  None if key is None else str(key), meta)
