"""A plain ``pip install gsformat`` (no extras, no torch) decodes every golden vector and
validates the golden dataset (issue 19). `make test` builds that install in ``.venv-core``
(Makefile: ``pip install .``) and names it in ``GSFORMAT_CORE_VENV``; run alone without it, this
test is skipped."""
from __future__ import annotations

import os
import subprocess

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
VECTORS = os.path.join(ROOT, "spec", "vectors")

SCRIPT = r'''
import glob, hashlib, json, os, sys
vectors = sys.argv[1]
import gsformat
from gsformat import FormatError, decode_record
from gsformat.io.validate import validate_dataset
assert "torch" not in sys.modules and "scipy" not in sys.modules and "streaming" not in sys.modules
assert "site-packages" in gsformat.__file__, gsformat.__file__  # the installed copy, not the tree
decoded = refused = 0
for path in sorted(glob.glob(os.path.join(vectors, "records", "*.msgpack"))):
    want = json.load(open(path[:-len(".msgpack")] + ".json"))
    splats = decode_record(open(path, "rb").read())
    digest = hashlib.sha256(splats.params.astype("<f2").tobytes()).hexdigest()
    assert digest == want["params_sha256"], path
    decoded += 1
for path in sorted(glob.glob(os.path.join(vectors, "invalid", "*.msgpack"))):
    want = json.load(open(path[:-len(".msgpack")] + ".json"))
    try:
        decode_record(open(path, "rb").read())
    except FormatError as exc:
        assert __import__("re").search(want["error"], str(exc)), (path, str(exc))
        refused += 1
report = validate_dataset(os.path.join(vectors, "dataset-1.0"))
assert report.valid, report.text()
for root in sorted(glob.glob(os.path.join(vectors, "invalid-datasets", "*"))):
    assert not validate_dataset(root).valid, root
from gsformat.codecs import LatticeRans
import numpy as np
rows = np.abs(np.random.default_rng(0).random((64, 8))).astype(np.float16) + 0.01
assert np.asarray(LatticeRans().decode(LatticeRans().encode(rows))).size == 64 * 8
assert "torch" not in sys.modules, "a core path imported torch"
print(json.dumps({"decoded": decoded, "refused": refused, "validated": report.n_samples}))
'''


def core_python() -> str:
    venv = os.environ.get("GSFORMAT_CORE_VENV")
    if not venv:
        pytest.skip("no plain install to test (make test builds .venv-core)")
    python = os.path.join(ROOT, venv, "bin", "python") if not os.path.isabs(venv) else \
        os.path.join(venv, "bin", "python")
    assert os.path.exists(python), f"GSFORMAT_CORE_VENV={venv} has no bin/python"
    return python


def test_plain_install_has_no_torch():
    python = core_python()
    probe = subprocess.run([python, "-c", "import torch"], capture_output=True, cwd="/")
    assert probe.returncode != 0, "torch is importable in the plain install"


def test_plain_install_decodes_vectors_and_validates_the_golden_dataset():
    python = core_python()
    done = subprocess.run([python, "-c", SCRIPT, os.path.abspath(VECTORS)], capture_output=True,
                          text=True, cwd="/", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    import json
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts["decoded"] >= 18 and counts["refused"] >= 21 and counts["validated"] > 0


def test_plain_install_cli_validates():
    python = core_python()
    cli = os.path.join(os.path.dirname(python), "gsformat")
    done = subprocess.run([cli, "validate", os.path.join(os.path.abspath(VECTORS), "dataset-1.0")],
                          capture_output=True, text=True, cwd="/", timeout=120)
    assert done.returncode == 0 and "valid" in done.stdout, done.stdout + done.stderr
