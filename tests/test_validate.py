"""`gsformat validate`: 0 on valid datasets, 1 naming the place for every kind of damage."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gsformat.cli import main
from gsformat.io.dataset_files import iter_dataset, read_index
from gsformat.io.validate import validate_dataset

from damage import patch_record, rewrite_sample_record, shard_path


def raw_params_with(col, value):
    """A sample's record rewritten as a raw record with one bad value (splat 5): no writer
    writes one (`encode_record` refuses, SPEC.md § 8), so it is packed here."""
    def mutate(record):
        from gsformat import decode_record
        params = decode_record(record).params.copy()
        params[5, col] = value
        return patch_record(codecs=[], payload=params.astype("<f2").tobytes())(record)
    return mutate


def assert_invalid(root, *fragments):
    report = validate_dataset(root)
    assert not report.valid
    text = report.text()
    for fragment in fragments:
        assert fragment in text, text
    assert main(["validate", root]) == 1
    return report


def test_valid_dataset(small_dataset, capsys):
    report = validate_dataset(small_dataset)
    assert report.valid, report.text()
    assert report.n_samples == 12 and report.n_shards >= 2
    assert main(["validate", small_dataset]) == 0
    assert main(["validate", "--json", small_dataset]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["valid"]


def test_cli_entry_point(small_dataset):
    result = subprocess.run([sys.executable, "-m", "gsformat.cli", "validate", small_dataset],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_truncated_shard(small_dataset):
    path, _ = shard_path(small_dataset)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])
    assert_invalid(small_dataset, os.path.basename(path), "truncated")


def test_flipped_byte_fails_hash(small_dataset):
    path, _ = shard_path(small_dataset)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x40
    open(path, "wb").write(bytes(data))
    assert_invalid(small_dataset, os.path.basename(path), "hash mismatch")


def test_missing_shard(small_dataset):
    path, _ = shard_path(small_dataset, 1)
    os.remove(path)
    assert_invalid(small_dataset, os.path.basename(path), "missing shard file")


def test_unknown_major_version(small_dataset):
    rewrite_sample_record(small_dataset, patch_record(version=[2, 0]))
    assert_invalid(small_dataset, "shard.00000.mds, sample 1", "unknown major version 2")


def test_splat_count_over_limit(small_dataset):
    rewrite_sample_record(small_dataset, patch_record(n_splats=2**31))
    assert_invalid(small_dataset, "sample 1", "splat count 2147483648")


@pytest.mark.parametrize("col, value, message", [
    (0, np.nan, "non-finite"), (2, 0.0, "l11 <= 0"), (4, -0.5, "l22 <= 0")])
def test_bad_parameters(small_dataset, col, value, message):
    rewrite_sample_record(small_dataset, raw_params_with(col, value))
    assert_invalid(small_dataset, "shard.00000.mds, sample 1", message)


def test_duplicate_keys(tmp_path, fitted_splats):
    from gsformat.io.dataset_files import SplatWriter
    from streaming import MDSWriter
    out = str(tmp_path / "dup")
    with SplatWriter(out) as writer:  # a valid manifest first …
        writer.write("a", fitted_splats[0])
        writer.write("b", fitted_splats[1])
    manifest = open(os.path.join(out, "gsformat.json")).read()
    from gsformat import encode_record
    with MDSWriter(out=out, columns={"key": "str", "splats": "bytes"}, compression="zstd",
                   hashes=["xxh64"], exist_ok=True) as writer:  # … then keys written twice
        for key in ("a", "a"):
            writer.write({"key": key, "splats": encode_record(fitted_splats[0])})
    open(os.path.join(out, "gsformat.json"), "w").write(manifest)
    assert_invalid(out, "sample 1", "duplicate key 'a'")


def test_manifest_contradicts_index(small_dataset):
    path = os.path.join(small_dataset, "gsformat.json")
    manifest = json.load(open(path))
    manifest["n_samples"] = 99
    json.dump(manifest, open(path, "w"))
    assert_invalid(small_dataset, "gsformat.json", "n_samples 99 contradicts index.json")


def test_manifest_columns_contradict_index(small_dataset):
    path = os.path.join(small_dataset, "gsformat.json")
    manifest = json.load(open(path))
    manifest["columns"]["label"] = "str"
    json.dump(manifest, open(path, "w"))
    assert_invalid(small_dataset, "gsformat.json", "contradict")


def test_missing_index_and_manifest(tmp_path, small_dataset):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_invalid(str(empty), "index.json", "missing")
    report = validate_dataset(str(tmp_path / "nowhere"))  # (the CLI: a path that is not there)
    assert not report.valid and "index.json: missing" in report.text()
    os.remove(os.path.join(small_dataset, "gsformat.json"))
    assert_invalid(small_dataset, "gsformat.json: missing")


def test_sample_count_contradicts_index(small_dataset):
    index = read_index(small_dataset)
    index["shards"][0]["samples"] += 1
    json.dump(index, open(os.path.join(small_dataset, "index.json"), "w"))
    assert_invalid(small_dataset, "index says")


def test_iter_dataset_reads_everything(small_dataset):
    samples = list(iter_dataset(small_dataset))
    assert [s["key"] for s in samples] == [f"img-{i:03d}" for i in range(12)]
    assert samples[3]["label"] == 1 and samples[3]["caption"] == "photo 3"
    assert samples[0]["splats"].n_splats > 0


# ---- issue 25, item 19 and § 9 item 1: every field of § 6.5 --------------------------------
def edit_index(root, edit):
    path = os.path.join(root, "index.json")
    index = json.load(open(path))
    edit(index)
    json.dump(index, open(path, "w"))


def test_index_over_64_mib_is_a_report_not_a_crash(small_dataset, capsys):
    path = os.path.join(small_dataset, "index.json")
    with open(path, "r+b") as f:
        f.truncate((64 << 20) + 1)  # sparse: the size is refused before anything is read
    assert_invalid(small_dataset, "index.json", "exceeds limit 67108864")
    capsys.readouterr()
    result = subprocess.run([sys.executable, "-m", "gsformat.cli", "validate", small_dataset],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "index.json" in result.stdout + result.stderr


@pytest.mark.parametrize("field, message", [
    ("version", "field 'version' is missing"), ("hashes", "field 'hashes' is missing"),
    ("size_limit", "field 'size_limit' is missing"), ("zip_data", "field 'zip_data' is missing"),
    ("compression", "must name its compression")])
def test_shard_entry_fields_are_required(small_dataset, field, message):
    edit_index(small_dataset, lambda index: index["shards"][0].pop(field))
    assert_invalid(small_dataset, "index.json, shard entry 0", message)


@pytest.mark.parametrize("edit, message", [
    (lambda e: e["raw_data"].pop("hashes"), "raw_data.hashes is missing"),
    (lambda e: e["zip_data"].pop("hashes"), "zip_data.hashes is missing"),
    (lambda e: e.update(version=3), "shard version 3"),
    (lambda e: e.update(size_limit="64mb"), "field 'size_limit' has type str"),
    (lambda e: e.update(hashes=["xxh64", "sha1"]), "hashes lists ['sha1', 'xxh64']"),
    (lambda e: e["column_sizes"].__setitem__(e["column_names"].index("label"), 4),
     "column 'label' (int) has size 4, its encoding's is 8"),
    (lambda e: e["column_sizes"].__setitem__(e["column_names"].index("key"), 8),
     "column 'key' (str) has size 8, its encoding's is null"),
    (lambda e: e["zip_data"]["hashes"].update(xxh64=e["zip_data"]["hashes"]["xxh64"].upper()),
     "is not 16 lower-case hex digits"),
    (lambda e: e.update(compression="gz"), "unsupported shard compression 'gz'"),
])
def test_shard_entry_field_values(small_dataset, edit, message):
    edit_index(small_dataset, lambda index: edit(index["shards"][0]))
    assert_invalid(small_dataset, message)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(layout="gs3d"), "layout 'gs3d' is not"),
    (lambda m: m.pop("layout"), "layout None is not"),
    (lambda m: m.pop("codecs"), "codecs must be an array"),
    (lambda m: m.update(codecs=[{"level": 3}]), "codecs must be an array")])
def test_manifest_fields_a_validator_checks(small_dataset, edit, message):
    path = os.path.join(small_dataset, "gsformat.json")
    manifest = json.load(open(path))
    edit(manifest)
    json.dump(manifest, open(path, "w"))
    assert_invalid(small_dataset, "gsformat.json", message)
