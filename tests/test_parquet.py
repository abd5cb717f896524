"""Parquet sources (issue 26): files in the layouts ``datasets`` (the Hugging Face hub) and
img2dataset write, written by pyarrow and served from local disk, a real S3 server (moto),
http.server and memory://; every row converted once, captions, labels, class names and meta
as in the source, bad rows rejected with their keys, a truncated file a failed unit that a rerun
converts; memory flat in the file's size."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gsformat.cli import main
from gsformat.convert.sources import SourceError, open_source
from gsformat.io.dataset_files import iter_dataset, read_manifest
from gsformat.io.validate import validate_dataset
from test_sources import http_root  # noqa: F401  (the http.server fixture)

TINY = ["--splats", "24", "--iters", "4", "--size", "16", "--no-progress"]
CLASSES = ["cat", "dog", "bird"]


def jpeg(index: int) -> bytes:
    from PIL import Image
    from gsformat.testing.photos import PHOTOS, load_photo
    buf = io.BytesIO()
    Image.fromarray(load_photo(PHOTOS[index % len(PHOTOS)], 32)).save(buf, "JPEG")
    return buf.getvalue()


def write_hf(folder, n_files=2, rows=5, row_group_size=2, padding=0) -> dict:
    """``datasets``' layout: data/train-0000i-of-0000n.parquet, an Image feature (a {bytes,
    path} struct), a ClassLabel, two more columns. Row 3 of the first file is not an image, row
    1 of the second is stored by path only. ``padding`` bytes of an unread binary column per
    row. Returns {dataset key: row} of the good rows and {key: reason part} of the bad ones."""
    features = {"image": {"decode": True, "id": None, "_type": "Image"},
                "label": {"names": CLASSES, "id": None, "_type": "ClassLabel"},
                "photographer": {"dtype": "string", "id": None, "_type": "Value"},
                "score": {"dtype": "float64", "id": None, "_type": "Value"}}
    os.makedirs(os.path.join(folder, "data"), exist_ok=True)
    good, bad = {}, {}
    for f in range(n_files):
        stem = f"train-{f:05d}-of-{n_files:05d}"
        table = {"image": [], "label": [], "photographer": [], "score": [], "padding": []}
        for r in range(rows):
            key = f"{stem}/{r:06d}"  # (a key column's absence: file stem / row index)
            image = {"bytes": jpeg(f * rows + r), "path": f"{r}.jpg"}
            if (f, r) == (0, 3):
                image["bytes"], bad[key] = b"not a jpeg at all", ""  # (the decoder's words)
            if (f, r) == (1, 1):
                image["bytes"], bad[key] = None, "not embedded"
            row = {"label": (f + r) % 3, "photographer": f"p{f}{r}", "score": r / 4}
            for name, value in row.items():
                table[name].append(value)
            table["image"].append(image)
            table["padding"].append(os.urandom(padding))
            if key not in bad:
                good[key] = row
        schema_meta = {"huggingface": json.dumps({"info": {"features": features}})}
        pq.write_table(pa.table(table).replace_schema_metadata(schema_meta),
                       os.path.join(folder, "data", f"{stem}.parquet"),
                       row_group_size=row_group_size)
    return good, bad


SIDECAR = ("url", "width", "height", "original_width", "original_height", "status",
           "error_message", "exif", "sha256")


def write_img2dataset(folder, n_files=2, rows=3) -> tuple[dict, dict]:
    """img2dataset's ``--output_format parquet``: 00000.parquet, … with key, caption, a binary
    jpg column and the sidecar fields; the last row of the last file failed to download (null
    jpg). Returns {dataset key: row} of the good rows, {key: reason part} of the bad one."""
    os.makedirs(folder, exist_ok=True)
    good, bad = {}, {}
    for f in range(n_files):
        columns = {name: [] for name in ("key", "caption", "jpg") + SIDECAR}
        for r in range(rows):
            key = f"{f:05d}{r:04d}"
            failed = (f, r) == (n_files - 1, rows - 1)
            row = {"key": key, "caption": f"a photograph {f}-{r}",
                   "url": f"https://example.com/{key}.jpg", "width": 32, "height": 32,
                   "original_width": 640 + r, "original_height": None if r == 0 else 480,
                   "status": "failed_to_download" if failed else "success",
                   "error_message": "HTTP 404" if failed else None, "exif": "{}",
                   "sha256": f"{f:02d}{r:02d}" * 16}
            for name, value in row.items():
                columns[name].append(value)
            columns["jpg"].append(None if failed else jpeg(f * rows + r))
            dataset_key = f"{f:05d}/{key}" if n_files > 1 else key
            if failed:
                bad[dataset_key] = "no image"
            else:
                good[dataset_key] = row
        pq.write_table(pa.table(columns), os.path.join(folder, f"{f:05d}.parquet"))
    return good, bad


def convert(*args):
    return main(["convert", *map(str, args), *TINY])


def samples_of(root) -> dict:
    samples = {}
    for sample in iter_dataset(str(root), decode=False):
        assert sample["key"] not in samples, f"{sample['key']} twice"
        samples[sample["key"]] = sample
    return samples


def rejects_of(root) -> dict:
    return {r["key"]: r["reason"] for r in map(json.loads, open(os.path.join(root,
                                                                             "rejects.jsonl")))}


def check_hf(out, good, bad):
    """Every good row once with its label and meta; the bad ones rejected by key."""
    samples = samples_of(out)
    assert sorted(samples) == sorted(good)
    for key, row in good.items():
        assert samples[key]["label"] == row["label"]
        assert json.loads(samples[key]["meta"]) == {"photographer": row["photographer"],
                                                    "score": row["score"]}
    rejects = rejects_of(out)
    assert sorted(rejects) == sorted(bad)
    assert all(part in rejects[key] for key, part in bad.items()), rejects
    assert read_manifest(str(out))["class_names"] == CLASSES
    assert validate_dataset(str(out)).valid


def check_img2dataset(out, good, bad):
    samples = samples_of(out)
    assert sorted(samples) == sorted(good)
    for key, row in good.items():
        assert samples[key]["caption"] == row["caption"]
        assert json.loads(samples[key]["meta"]) == {name: row[name] for name in SIDECAR}
    rejects = rejects_of(out)
    assert sorted(rejects) == sorted(bad) and all(part in rejects[k] for k, part in bad.items())
    assert validate_dataset(str(out)).valid


def test_hf_layout_local_glob_row_group_units(tmp_path):
    good, bad = write_hf(tmp_path / "hub", rows=5, row_group_size=2)
    out = tmp_path / "out"
    assert convert(tmp_path / "hub" / "data" / "train-*.parquet", out, "--chunk-size", "2") == 0
    check_hf(out, good, bad)
    # a unit per row group here (2 rows each): 3 per file, 6 parts
    assert sorted(p.name for p in out.glob("part-*")) == [
        f"part-parquet-{f:05d}-{c:05d}" for f in range(2) for c in range(3)]
    # the repository's prefix is listed like a folder; file:// with a brace list: same keys
    assert convert(tmp_path / "hub", tmp_path / "prefix") == 0
    assert sorted(samples_of(tmp_path / "prefix")) == sorted(good)
    braces = f"file://{tmp_path}/hub/data/train-{{00000..00001}}-of-00002.parquet"
    assert convert(braces, tmp_path / "braces") == 0
    assert sorted(samples_of(tmp_path / "braces")) == sorted(good)


def test_img2dataset_layout_on_s3_prefix_glob_and_braces(tmp_path, s3_bucket, s3_server):
    good, bad = write_img2dataset(tmp_path / "i2d")
    client = boto3.client("s3", endpoint_url=s3_server)
    for name in sorted(os.listdir(tmp_path / "i2d")):
        client.upload_file(str(tmp_path / "i2d" / name), s3_bucket, f"i2d/{name}")
    out = tmp_path / "prefix"
    assert convert(f"s3://{s3_bucket}/i2d/", out) == 0
    check_img2dataset(out, good, bad)
    assert convert(f"s3://{s3_bucket}/i2d/*.parquet", tmp_path / "glob") == 0
    assert samples_of(tmp_path / "glob").keys() == samples_of(out).keys()
    assert convert(f"s3://{s3_bucket}/i2d/{{00000..00001}}.parquet", tmp_path / "braces") == 0
    assert samples_of(tmp_path / "braces").keys() == samples_of(out).keys()


def test_http_server_without_ranges_and_memory(tmp_path, http_root):
    """http.server ignores byte ranges: a file larger than fsspec's 5 MiB block is copied to
    a temporary file; memory:// reads ranges."""
    import fsspec
    root, url = http_root
    good, bad = write_hf(root / "hub", rows=3, row_group_size=3, padding=2 << 20)
    assert os.path.getsize(root / "hub" / "data" / "train-00000-of-00002.parquet") > 5 << 20
    out = tmp_path / "http"
    assert convert(f"{url}/hub/data/train-*.parquet", out) == 0
    check_hf(out, good, bad)
    fs = fsspec.filesystem("memory")
    for name in os.listdir(root / "hub" / "data"):
        fs.pipe(f"/hub/data/{name}", (root / "hub" / "data" / name).read_bytes())
    assert convert("memory://hub/data", tmp_path / "memory") == 0
    check_hf(tmp_path / "memory", good, bad)


def test_truncated_file_is_a_failed_unit_and_a_rerun_converts_it(tmp_path, capsys):
    good, bad = write_img2dataset(tmp_path / "i2d", n_files=3)
    damaged = tmp_path / "i2d" / "00001.parquet"
    whole = damaged.read_bytes()
    damaged.write_bytes(whole[:len(whole) // 2])
    out = tmp_path / "out"
    assert convert(tmp_path / "i2d", out) == 1
    err = capsys.readouterr().err
    assert "00001.parquet" in err and "Traceback" not in err
    assert not list(out.glob("part-parquet-00001-*/part.json"))  # not finished
    damaged.write_bytes(whole)
    assert convert(tmp_path / "i2d", out) == 0
    err = capsys.readouterr().err
    assert "2 finished parts skipped" in err and "3 images converted" in err
    check_img2dataset(out, good, bad)


def test_transient_failure_retried_and_an_unreachable_file_a_failed_unit(tmp_path, capsys,
                                                                          monkeypatch):
    import socket
    from gsformat.convert import parquet
    monkeypatch.setattr("gsformat.io.failures.BACKOFF_S", 0.01)
    good, bad = write_img2dataset(tmp_path / "i2d", n_files=2)
    real, failed = parquet.open_parquet, []

    def reset_once(url):  # each file's first open (its footer) is reset by the peer
        if url not in failed:
            failed.append(url)
            raise ConnectionResetError(f"{url}: connection reset by peer")
        return real(url)
    monkeypatch.setattr(parquet, "open_parquet", reset_once)
    assert convert(tmp_path / "i2d", tmp_path / "retried") == 0 and len(failed) == 2
    check_img2dataset(tmp_path / "retried", good, bad)
    monkeypatch.setattr(parquet, "open_parquet", real)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    nowhere = f"http://127.0.0.1:{port}/00002.parquet"
    assert convert(tmp_path / "i2d" / "00000.parquet", tmp_path / "i2d" / "00001.parquet",
                   nowhere, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert nowhere in err and "Traceback" not in err and "1 of 3 units" in err
    assert len(list((tmp_path / "out").glob("part-*/part.json"))) == 2  # the others converted


def test_columns_found_by_type_or_named(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"picture": [jpeg(0), jpeg(1)], "thumb": [b"x", b"y"],
                             "description": ["one", "two"], "category": [4, 5],
                             "id": [10, 11], "tags": [["a"], ["b"]]}), path)
    with pytest.raises(SourceError, match="cannot tell the image column.*--image-column"):
        open_source(str(path))
    with pytest.raises(SourceError, match="'description' is string, not integers"):
        open_source(str(path), image_column="picture", label_column="description")
    with pytest.raises(SourceError, match="no column 'nope'"):
        open_source(str(path), image_column="nope")
    with pytest.raises(SourceError, match="--caption-column: for Parquet sources only"):
        open_source(str(tmp_path), source_format="folder", caption_column="caption")
    source = open_source(str(path), image_column="picture", caption_column="description",
                         label_column="category", key_column="id")
    items = [item for unit in source.units() for item in source.items(unit)]
    assert [(i.key, i.caption, i.label) for i in items] == [("10", "one", 4), ("11", "two", 5)]
    assert items[0].data == jpeg(0) and items[0].source.endswith("t.parquet#0")
    assert items[0].meta is None  # lists and bytes are not meta: it holds the other scalars
    assert source.columns == ["source", "caption", "label"]
    assert [source.n_rows(unit) for unit in source.units()] == [2]  # (from the footer)


def test_convert_names_the_columns_and_resumes_only_with_the_same(tmp_path, capsys):
    path = tmp_path / "src" / "t.parquet"
    os.makedirs(path.parent)
    pq.write_table(pa.table({"picture": [jpeg(0), jpeg(1)], "description": ["one", "two"],
                             "caption": ["not this", "nor this"], "id": ["a", "b"]}), path)
    out = tmp_path / "out"
    assert main(["convert", str(path.parent), str(out), "--source-format", "parquet",
                 "--image-column", "picture", "--caption-column", "description",
                 "--key-column", "id", *TINY]) == 0
    rows = {r["key"]: r["caption"] for r in iter_dataset(str(out))}
    assert rows == {"a": "one", "b": "two"}
    capsys.readouterr()
    assert main(["convert", str(path.parent), str(out), "--source-format", "parquet",
                 "--image-column", "picture", "--key-column", "id", *TINY]) == 2
    assert "other settings" in capsys.readouterr().err  # another caption column: not a resume


def test_files_with_other_columns_are_refused_before_any_work(tmp_path):
    """A new-user trial: an img2dataset file beside a `datasets` file failed as "unreadable"
    (and, with the first file truncated and then fixed, a re-run merged two column plans into
    an invalid dataset)."""
    pq.write_table(pa.table({"image": [{"bytes": jpeg(0), "path": "a.jpg"}], "label": [1]}),
                   tmp_path / "a.parquet")
    pq.write_table(pa.table({"jpg": [jpeg(1)], "caption": ["x"]}), tmp_path / "b.parquet")
    with pytest.raises(SourceError, match=r"b\.parquet: no column 'image', 'label', which "
                                          r".*a\.parquet has: the files of one Parquet source"):
        open_source(str(tmp_path / "*.parquet"))


def test_folder_beside_parquet_metadata_stays_a_folder(tmp_path):
    """img2dataset's ``files`` output: images in folders, metadata in 00000.parquet."""
    from gsformat.convert.sources import _resolve
    write_img2dataset(tmp_path / "files", n_files=1)
    os.makedirs(tmp_path / "files" / "00000")
    (tmp_path / "files" / "00000" / "000000000.jpg").write_bytes(jpeg(0))
    assert _resolve(str(tmp_path / "files"))[0] == "folder"
    assert _resolve(str(tmp_path / "files"), "parquet") == (
        "parquet", [str(tmp_path / "files" / "00000.parquet")])


MEMORY_SCRIPT = r'''
import sys
import pyarrow as pa
from gsformat.convert.sources import open_source
source = open_source(sys.argv[1], chunk_size=10**9)
(unit,) = source.units()
def peak():  # this process's peak RSS (ru_maxrss would count the forking parent's)
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024
rss = [peak()]  # after the footer; after 2 row groups; after all
for n, item in enumerate(source.items(unit), 1):
    if n == 2 * int(sys.argv[2]):
        rss.append(peak())
print(*rss, peak(), pa.default_memory_pool().max_memory(), n)
'''


def test_memory_is_flat_in_the_file_size(tmp_path):
    """A file of 10 row groups of 8 MiB of images (and as much of an unread column): reading
    it holds a few row groups, not the file, nor the column it does not use; the peak RSS
    after 2 row groups is the peak after all 10."""
    rows, groups, cell = 64, 10, 128 << 10
    path = tmp_path / "big.parquet"
    schema = pa.schema([("jpg", pa.binary()), ("unused", pa.binary())])
    with pq.ParquetWriter(path, schema, compression="none") as writer:
        for _ in range(groups):
            writer.write_table(pa.table({"jpg": [os.urandom(cell) for _ in range(rows)],
                                         "unused": [os.urandom(cell) for _ in range(rows)]},
                                        schema=schema))
    assert pq.ParquetFile(path).metadata.num_row_groups == groups
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(path), str(rows)],
                          capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.abspath(__file__)))
    assert done.returncode == 0, done.stderr[-2000:]
    base, warm, peak, arrow_peak, n = map(int, done.stdout.split())
    row_group, mib = rows * cell, 2**20
    assert n == rows * groups
    print(f"row group {row_group / mib:.0f} MiB, file {os.path.getsize(path) / mib:.0f} MiB: "
          f"peak RSS {base / mib:.0f} MiB after the footer, {warm / mib:.0f} after 2 row "
          f"groups, {peak / mib:.0f} after {groups}; Arrow's peak {arrow_peak / mib:.0f} MiB")
    assert peak - warm < row_group  # flat: the last 8 row groups add nothing
    assert arrow_peak <= 3 * row_group  # a group's bytes read, rows decoded from them
    assert peak - base < groups * row_group / 2  # the image column alone: 10 row groups


def test_reading_parquet_is_lazy():
    """The convert layer loads without pyarrow (tests/test_layers.py allows it lazily only)."""
    done = subprocess.run([sys.executable, "-c", "import sys, gsformat.convert.sources, "
                           "gsformat.convert.options; assert 'pyarrow' not in sys.modules"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
