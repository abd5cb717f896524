"""Golden vectors in spec/vectors/: decoded forever, never regenerated."""
import glob
import hashlib
import json
import os

import numpy as np
import pytest

from gsformat import FormatError, decode_record
from gsformat.io.dataset_files import iter_dataset, read_manifest
from gsformat.io.validate import validate_dataset
from spec_reader import SpecError, spec_decode, spec_read_dataset, spec_record

VECTORS = os.path.join(os.path.dirname(__file__), "..", "spec", "vectors")
RECORDS = sorted(glob.glob(os.path.join(VECTORS, "records", "*.msgpack")))
INVALID = sorted(glob.glob(os.path.join(VECTORS, "invalid", "*.msgpack")))


def test_vectors_are_present():
    assert len(RECORDS) >= 23 and len(INVALID) >= 35 and len(INVALID_DATASETS) >= 3
    assert len(VALIDATOR_DATASETS) >= 9


@pytest.mark.parametrize("path", RECORDS, ids=os.path.basename)
def test_golden_record(path):
    record = open(path, "rb").read()
    want = json.load(open(path[:-len(".msgpack")] + ".json"))
    splats = decode_record(record)
    raw = splats.params.astype("<f2").tobytes()
    assert (splats.n_splats, splats.height, splats.width) == (
        want["n_splats"], want["height"], want["width"])
    assert hashlib.sha256(raw).hexdigest() == want["params_sha256"]
    assert splats.meta == want["fit"]
    if "params_hex" in want:
        assert raw.hex() == want["params_hex"]
        assert np.array_equal(splats.params.astype(float), np.array(want["params"]).reshape(-1, 8))
    spec_params, _, _ = spec_decode(record)  # the spec alone decodes it too
    assert spec_params.tobytes() == raw and spec_record(record)["fit"] == want["fit"]


@pytest.mark.parametrize("path", INVALID, ids=os.path.basename)
def test_golden_invalid_record(path):
    want = json.load(open(path[:-len(".msgpack")] + ".json"))
    with pytest.raises(FormatError, match=want["error"]):
        decode_record(open(path, "rb").read())
    with pytest.raises(SpecError):  # the spec alone rejects it too
        spec_decode(open(path, "rb").read())


INVALID_DATASETS = sorted(glob.glob(os.path.join(VECTORS, "invalid-datasets", "*")))


@pytest.mark.parametrize("root", INVALID_DATASETS, ids=os.path.basename)
def test_golden_invalid_dataset(root, tmp_path):
    from gsformat.loaders import SplatDataset
    want = json.load(open(os.path.join(root, "error.json")))["error"]
    report = validate_dataset(root)
    assert not report.valid and want in report.text()
    with pytest.raises(FormatError, match=want):  # refused before any shard is opened
        SplatDataset(remote=root, local=str(tmp_path / "cache"))
    with pytest.raises(SpecError):
        spec_read_dataset(root)


VALIDATOR_DATASETS = sorted(glob.glob(os.path.join(VECTORS, "invalid-datasets-validate", "*")))


@pytest.mark.parametrize("root", VALIDATOR_DATASETS, ids=os.path.basename)
def test_golden_dataset_a_validator_reports(root):
    """SPEC.md § 9 (1.5): what a validator reports, with the error in error.json."""
    want = json.load(open(os.path.join(root, "error.json")))["error"]
    report = validate_dataset(root)
    assert not report.valid and want in report.text(), report.text()


@pytest.mark.parametrize("name", ["dataset-1.0", "dataset-1.5"])
def test_golden_dataset(name):
    root = os.path.join(VECTORS, name)
    report = validate_dataset(root)
    assert report.valid, report.text()
    want = json.load(open(os.path.join(VECTORS, f"{name}.expected.json")))
    got = list(iter_dataset(root))
    assert [s["key"] for s in got] == [w["key"] for w in want]
    for sample, row in zip(got, want):
        raw = sample["splats"].params.astype("<f2").tobytes()
        assert hashlib.sha256(raw).hexdigest() == row["params_sha256"]
        assert (sample["label"], sample["caption"]) == (row["label"], row["caption"])
    assert read_manifest(root)["class_names"] == ["person", "drink", "cat"]
    by_spec = spec_read_dataset(root)  # § 6.4–6.5 alone read it the same
    assert [(s["key"], s["label"], s["caption"]) for s in by_spec] == \
        [(w["key"], w["label"], w["caption"]) for w in want]
    assert [hashlib.sha256(s["splats"].tobytes()).hexdigest() for s in by_spec] == \
        [w["params_sha256"] for w in want]


def test_dataset_1_5_streams(tmp_path):
    """What 1.5 says readers accept (zip names unlike raw + .zstd, "zstd:LEVEL", two hash
    algorithms, unknown index.json and manifest fields), read by the streaming loader."""
    from gsformat.loaders import SplatDataset
    want = json.load(open(os.path.join(VECTORS, "dataset-1.5.expected.json")))
    dataset = SplatDataset(remote=os.path.join(VECTORS, "dataset-1.5"),
                           local=str(tmp_path / "cache"), batch_size=2)
    assert sorted(s["key"] for s in dataset) == sorted(w["key"] for w in want)
