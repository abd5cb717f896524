"""Golden vectors in spec/vectors/: decoded forever, never regenerated."""
import glob
import hashlib
import json
import os

import numpy as np
import pytest

from gsformat import FormatError, decode_record
from gsformat.format.dataset import iter_dataset, read_manifest
from gsformat.format.validate import validate_dataset
from spec_reader import spec_decode

VECTORS = os.path.join(os.path.dirname(__file__), "..", "spec", "vectors")
RECORDS = sorted(glob.glob(os.path.join(VECTORS, "records", "*.msgpack")))
INVALID = sorted(glob.glob(os.path.join(VECTORS, "invalid", "*.msgpack")))


def test_vectors_are_present():
    assert len(RECORDS) >= 18 and len(INVALID) >= 21 and len(INVALID_DATASETS) >= 2


@pytest.mark.parametrize("path", RECORDS, ids=os.path.basename)
def test_golden_record(path):
    record = open(path, "rb").read()
    want = json.load(open(path[:-len(".msgpack")] + ".json"))
    splats = decode_record(record, check=True)
    raw = splats.params.astype("<f2").tobytes()
    assert (splats.n_splats, splats.height, splats.width) == (
        want["n_splats"], want["height"], want["width"])
    assert hashlib.sha256(raw).hexdigest() == want["params_sha256"]
    assert splats.meta == want["fit"]
    if "params_hex" in want:
        assert raw.hex() == want["params_hex"]
        assert np.array_equal(splats.params.astype(float), np.array(want["params"]).reshape(-1, 8))
    spec_params, _, _ = spec_decode(record)  # the spec alone decodes it too
    assert spec_params.tobytes() == raw


@pytest.mark.parametrize("path", INVALID, ids=os.path.basename)
def test_golden_invalid_record(path):
    want = json.load(open(path[:-len(".msgpack")] + ".json"))
    with pytest.raises(FormatError, match=want["error"]):
        decode_record(open(path, "rb").read())


INVALID_DATASETS = sorted(glob.glob(os.path.join(VECTORS, "invalid-datasets", "*")))


@pytest.mark.parametrize("root", INVALID_DATASETS, ids=os.path.basename)
def test_golden_invalid_dataset(root, tmp_path):
    from gsformat.loaders import SplatDataset
    want = json.load(open(os.path.join(root, "error.json")))["error"]
    report = validate_dataset(root)
    assert not report.valid and want in report.text()
    with pytest.raises(FormatError, match=want):  # refused before any shard is opened
        SplatDataset(remote=root, local=str(tmp_path / "cache"))


def test_golden_dataset():
    root = os.path.join(VECTORS, "dataset-1.0")
    report = validate_dataset(root)
    assert report.valid, report.text()
    want = json.load(open(os.path.join(VECTORS, "dataset-1.0.expected.json")))
    got = list(iter_dataset(root))
    assert [s["key"] for s in got] == [w["key"] for w in want]
    for sample, row in zip(got, want):
        raw = sample["splats"].params.astype("<f2").tobytes()
        assert hashlib.sha256(raw).hexdigest() == row["params_sha256"]
        assert (sample["label"], sample["caption"]) == (row["label"], row["caption"])
    assert read_manifest(root)["class_names"] == ["person", "drink", "cat"]
