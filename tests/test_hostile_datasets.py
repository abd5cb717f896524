"""Hostile and damaged datasets, through `gsformat validate` and through `SplatDataset` (0 and 2
workers): files outside the dataset, missing shards, values and counts that contradict, the
command line's errors, idempotent conversion re-runs."""
import itertools
import json
import os
import re
import subprocess
import sys
import time

import pytest
from torch.utils.data import DataLoader

from gsformat import FormatError
from gsformat.cli import main
from gsformat.io.dataset_files import SplatWriter, iter_dataset, read_index
from gsformat.io.validate import validate_dataset
from gsformat.loaders import SplatDataset
from conftest import write_image_folder
from damage import patch_params, rewrite_sample_record, shard_path

N = 12
pytestmark = pytest.mark.timeout(300)  # a hang fails the test instead of the run


@pytest.fixture()
def ds(tmp_path, fitted_splats):
    out = str(tmp_path / "data" / "ds")
    with SplatWriter(out, columns=["caption"], codecs=[{"id": "gsformat.planar"}],
                     size_limit=1 << 14) as writer:
        for i in range(N):
            writer.write(f"k{i:03d}", fitted_splats[i % 2], caption=f"c{i}")
    return out


def edit_index(root, edit):
    path = os.path.join(root, "index.json")
    index = json.load(open(path))
    edit(index)
    json.dump(index, open(path, "w"))


def read_all(root, tmp_path, workers=0, remote=True, name="cache", fast=True, keys=None):
    """Every sample through SplatDataset (+ a DataLoader with ``workers``); ``keys``, a list,
    receives the keys yielded before an error."""
    import gc
    gc.collect()  # no loader of an earlier call left for a forked worker to collect
    kwargs = dict(remote=root, local=str(tmp_path / name)) if remote else dict(local=root)
    dataset = SplatDataset(shuffle=False, batch_size=2, download_timeout=5,
                           fast_iteration=fast, **kwargs)
    batches = iter(DataLoader(dataset, batch_size=2, num_workers=workers, collate_fn=list))
    keys = [] if keys is None else keys
    try:
        for batch in batches:
            keys += [s["key"] for s in batch]
    finally:  # after an error torch's own shutdown, run later by the garbage collector, waits
        if workers:  # 5 s for a worker it has marked done
            batches._shutdown_workers()
    return keys


def loader_fails(root, tmp_path, match, workers=0, remote=True, name="cache", fast=True):
    start = time.monotonic()
    with pytest.raises(FormatError, match=match):
        read_all(root, tmp_path, workers, remote, name, fast)
    assert time.monotonic() - start < 60  # never a hang


# every way SplatDataset reads: its iterator or streaming's, in the process or in 2 workers, from
# a remote (into a cache) or from the local copy alone
CONFIGS = [(fast, workers, remote) for fast in (True, False) for workers in (0, 2)
           for remote in (True, False)]


def stream_until_error(root, tmp_path, fast, workers, remote, name):
    """(keys yielded, the error's text) of one epoch."""
    keys = []
    try:
        read_all(root, tmp_path, workers, remote, name, fast, keys)
    except FormatError as exc:
        return keys, str(exc)
    return keys, None


def assert_every_configuration_fails(root, tmp_path, capfd, match, shard=1, configs=CONFIGS,
                                     runs=1):
    """Each configuration raises a FormatError matching ``match``, after exactly the samples
    before the first batch that holds one of ``shard``'s (in index order), with no traceback
    printed by a background thread; ``runs`` times each."""
    entries = read_index(root)["shards"]
    first_bad = sum(entry["samples"] for entry in entries[:shard])
    expected = [f"k{i:03d}" for i in range(first_bad - first_bad % 2)]
    for fast, workers, remote in configs:
        for run in range(runs):
            start = time.monotonic()
            keys, error = stream_until_error(root, tmp_path, fast, workers, remote,
                                             f"c{fast:d}{workers}{remote:d}{run}")
            where = f"fast_iteration={fast}, {workers} workers, remote={remote}"
            assert error is not None and re.search(match, error), (where, keys, error)
            assert keys == expected, (where, keys)
            assert time.monotonic() - start < 60, where
    err = capfd.readouterr().err  # no background thread's traceback (streaming's callback)
    assert "exception calling callback" not in err and "streaming/base" not in err, err[-3000:]


def validate_reports(root, *fragments):
    report = validate_dataset(root)
    assert not report.valid
    for fragment in fragments:
        assert fragment in report.text(), report.text()
    assert main(["validate", root]) == 1


# ---- paths taken from a dataset ------------------------------------------------------------
@pytest.mark.parametrize("basename", ["../ESCAPED.bin", "/tmp/ESCAPED-abs.bin", "a/../../x",
                                      "ok\x00.mds", "C:/x.mds", "..\\x.mds"])
def test_index_basenames_outside_the_dataset_are_refused(ds, tmp_path, basename):
    def edit(index):
        index["shards"][0]["zip_data"]["basename"] = basename
    edit_index(ds, edit)
    validate_reports(ds, "index.json", "not a relative path")
    with pytest.raises(FormatError, match="not a relative path"):
        list(iter_dataset(ds))
    for workers in (0, 2):
        loader_fails(ds, tmp_path, "not a relative path", workers, name=f"c{workers}")
    for command in (["inspect", ds], ["render", ds, "-o", str(tmp_path / "r.png")]):
        assert main(command) == 2
    assert not os.path.exists(tmp_path / "ESCAPED.bin")
    assert not os.path.exists(tmp_path / "data" / "ESCAPED.bin")
    assert not os.path.exists("/tmp/ESCAPED-abs.bin")


def test_loader_cannot_delete_a_file_outside_its_cache(ds, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")

    def edit(index):  # raw present and zip "elsewhere": streaming would remove the zip
        index["shards"][0]["zip_data"]["basename"] = "../../victim.txt"
    edit_index(ds, edit)
    loader_fails(ds, tmp_path, "not a relative path")
    assert victim.read_text() == "keep me"


def test_symlinked_shard_out_of_the_dataset_is_refused(ds, tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"not yours")
    path, _ = shard_path(ds, 1)
    os.remove(path)
    os.symlink(secret, path)
    validate_reports(ds, os.path.basename(path), "resolves outside the dataset")
    loader_fails(ds, tmp_path, "resolves outside the dataset")
    loader_fails(ds, tmp_path, "resolves outside the dataset", remote=False)


def test_s3_index_cannot_write_outside_the_cache(tmp_path, s3_bucket, s3_server, fitted_splats):
    import boto3
    url = f"s3://{s3_bucket}/ds"
    with SplatWriter(url, codecs=[{"id": "gsformat.planar"}]) as writer:
        for i in range(4):
            writer.write(f"k{i}", fitted_splats[i % 2])
    client = boto3.client("s3", endpoint_url=s3_server)
    index = json.loads(client.get_object(Bucket=s3_bucket, Key="ds/index.json")["Body"].read())
    index["shards"][0]["zip_data"]["basename"] = "../ESCAPED.bin"
    client.put_object(Bucket=s3_bucket, Key="ds/index.json", Body=json.dumps(index).encode())
    (tmp_path / "cache").mkdir()
    with pytest.raises(FormatError, match="not a relative path"):
        SplatDataset(remote=url, local=str(tmp_path / "cache" / "ds"))
    assert not os.path.exists(tmp_path / "cache" / "ESCAPED.bin")
    assert main(["validate", url]) == 1


# ---- damaged datasets: the validator and the loader agree --------------------------------------
@pytest.mark.parametrize("workers, remote", [(0, True), (0, False), (2, True)])
def test_deleted_shard_is_named_never_a_hang(ds, tmp_path, workers, remote):
    path, _ = shard_path(ds, 1)
    os.remove(path)
    validate_reports(ds, os.path.basename(path), "missing shard file")
    loader_fails(ds, tmp_path, os.path.basename(path).replace(".", r"\."), workers, remote)


def damage_file(path, how):
    data = open(path, "rb").read()
    if how == "delete":
        os.remove(path)
    elif how == "truncate":
        open(path, "wb").write(data[:len(data) // 2])
    else:  # one bit flipped in the middle (inside a record's payload)
        middle = len(data) // 2
        open(path, "wb").write(data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1:])


@pytest.mark.parametrize("how, message", [("delete", "shard file is missing"),
                                          ("truncate", "xxh64 hash mismatch"),
                                          ("flip", "xxh64 hash mismatch")])
def test_damaged_shard_fails_alike_in_every_configuration(ds, tmp_path, capfd, how, message):
    """Issue 25 item 5: 27 of 60 runs ended silently short (streaming's iterator: 0, 2 or 4
    samples of 6 and no error). Every configuration now yields the samples before the shard,
    then raises the error naming it, every run, and no thread prints a traceback."""
    damage_file(shard_path(ds, 1)[0], how)
    assert_every_configuration_fails(ds, tmp_path, capfd, rf"shard\.00001\.mds\.zstd: {message}",
                                     runs=2 if how == "flip" else 1)


@pytest.mark.parametrize("how, message", [("flip", "xxh64 hash mismatch"),
                                          ("truncate", "bytes, the index says")])
def test_every_reader_checks_the_shard_hashes(ds, tmp_path, how, message):
    """Issue 25 item 3: 40 flipped bytes in a compressed shard passed `inspect --html`, `render`
    and `iter_dataset` (398 of 400 splats changed, exit 0). Each reader of shards checks the
    index's size and hash first, and fails in one line naming the shard."""
    path = shard_path(ds, 1)[0]
    if how == "flip":
        data = bytearray(open(path, "rb").read())
        for i in range(40):
            data[len(data) // 4 + 7 * i] ^= 0x5A
        open(path, "wb").write(bytes(data))
    else:
        damage_file(path, how)
    where = rf"shard\.00001\.mds\.zstd: .*{message}"
    with pytest.raises(FormatError, match=where):
        list(iter_dataset(ds, decode=False))
    assert [s["key"] for s in itertools.islice(iter_dataset(ds), 3)] == ["k000", "k001", "k002"]
    for args in (["inspect", ds, "--html", tmp_path / "page.html"],
                 ["render", ds, "--count", "12", "-o", tmp_path / "grid.png"]):
        code, err = run_cli(*args)
        assert code == 2 and re.search(where, err) and "\n" not in err, (args, err)
    assert main(["validate", ds]) == 1


def test_local_copy_altered_after_decompression_is_refused(ds, tmp_path, capfd):
    """Issue 25 item 5: streaming decompresses a local dataset's shards beside them and then
    reads those copies unchecked: a bit flipped in one streamed altered. The copy is checked
    against the index's raw hash; from a remote, the intact compressed file is fetched."""
    assert len(read_all(ds, tmp_path, remote=False)) == N  # leaves shard.0000N.mds beside
    raw = os.path.join(ds, read_index(ds)["shards"][1]["raw_data"]["basename"])
    assert os.path.exists(raw)
    damage_file(raw, "flip")
    local_only = [config for config in CONFIGS if not config[2]]
    assert_every_configuration_fails(ds, tmp_path, capfd,
                                     r"shard\.00001\.mds: xxh64 hash mismatch", configs=local_only)
    assert read_all(ds, tmp_path, remote=True, name="fresh") == [f"k{i:03d}" for i in range(N)]


def test_empty_key_is_refused_in_every_configuration(ds, tmp_path, capfd):
    rewrite_sample_record(ds, lambda key: b"", column="key", shard=1, sample=0)
    validate_reports(ds, "shard.00001.mds, sample 0", "missing or empty key")
    assert_every_configuration_fails(ds, tmp_path, capfd,
                                     r"shard\.00001\.mds, sample 0: missing or empty key")


@pytest.mark.timeout(60)
def test_failed_prefetch_of_a_shard_the_loop_also_wants_is_never_a_hang(ds, tmp_path,
                                                                          monkeypatch):
    """The interleaving CI once hit: the loop sees a missing shard as not yet prepared, the
    prefetch thread takes it and fails (streaming leaves it "preparing" for ever), then the loop
    asks streaming to prepare it. Two events force that order."""
    import threading
    path, _ = shard_path(ds, 1)
    os.remove(path)
    prepare = SplatDataset.prepare_shard
    loop_asks, prefetch_failed = threading.Event(), threading.Event()

    def ordered(self, shard_id, blocking=True):
        if shard_id != 1:
            return prepare(self, shard_id, blocking)
        if threading.current_thread() is threading.main_thread():  # the loop
            loop_asks.set()
            prefetch_failed.wait(10)
            return prepare(self, shard_id, blocking)
        loop_asks.wait(10)  # the prefetch thread: take the shard only once the loop has looked
        try:
            return prepare(self, shard_id, blocking)
        finally:
            prefetch_failed.set()
    monkeypatch.setattr(SplatDataset, "prepare_shard", ordered)
    loader_fails(ds, tmp_path, os.path.basename(path).replace(".", r"\."), remote=False)


@pytest.mark.parametrize("workers", [0, 2])
def test_non_finite_record_is_not_streamed(ds, tmp_path, workers):
    rewrite_sample_record(ds, patch_params(0, float("nan")))
    validate_reports(ds, "shard.00000.mds, sample 1", "non-finite")
    loader_fails(ds, tmp_path, r"shard\.00000\.mds, sample 1.*non-finite", workers)


@pytest.mark.parametrize("workers", [0, 2])
def test_duplicated_shard_entry(ds, tmp_path, workers):
    edit_index(ds, lambda index: index["shards"].append(index["shards"][0]))
    validate_reports(ds, "listed twice")
    loader_fails(ds, tmp_path, "listed twice", workers)


@pytest.mark.parametrize("workers", [0, 2])
def test_invalid_utf8_key_is_named(ds, tmp_path, workers):
    rewrite_sample_record(ds, lambda key: b"\xff\xfe" + key, column="key")
    validate_reports(ds, "shard.00000.mds, sample 1", "UTF-8")
    loader_fails(ds, tmp_path, r"shard\.00000\.mds, sample 1.*'key'", workers)


def test_duplicate_keys_across_shards_are_caught_while_streaming(ds, tmp_path, fitted_splats):
    with SplatWriter(os.path.join(ds, "more"), codecs=[{"id": "gsformat.planar"}]) as writer:
        writer.write("k000", fitted_splats[0])  # the key of ds's first sample, in a 2nd shard
    extra = read_index(os.path.join(ds, "more"))["shards"][0]
    for pair in ("raw_data", "zip_data"):
        extra[pair]["basename"] = "more/" + extra[pair]["basename"]
    edit_index(ds, lambda index: index["shards"].append(extra))
    validate_reports(ds, "duplicate key 'k000'")
    # every configuration, two workers included (each reads one of the two shards): the same
    # error, naming both samples in index order whichever worker meets the second first
    errors = set()
    for fast, workers, remote in CONFIGS:
        keys, error = stream_until_error(ds, tmp_path, fast, workers, remote,
                                         f"d{fast:d}{workers}{remote:d}")
        assert error is not None, (fast, workers, remote, keys)
        errors.add(error[error.index("more/"):].split("\n")[0])
    assert errors == {"more/shard.00000.mds, sample 0: key 'k000' appears twice in this epoch: "
                      "also at shard.00000.mds, sample 0 (duplicate samples or shards)"}


@pytest.mark.parametrize("change", [-1, +1])
def test_index_sample_count_contradicting_the_header(ds, tmp_path, capfd, change):
    """SPEC.md § 6.5 / § 9 (issue 25 item 20): a shard's header and the index disagree on its
    sample count; every configuration refuses it before reading its rows."""
    def edit(index):
        index["shards"][1]["samples"] += change
    edit_index(ds, edit)
    validate_reports(ds, "index says")
    assert_every_configuration_fails(ds, tmp_path, capfd,
                                     r"shard\.00001\.mds: header claims \d+ samples, the index")


@pytest.mark.parametrize("remote", [True, False])
def test_index_entry_claiming_no_samples(ds, tmp_path, remote):
    """Issue 25 item 5: streaming never opens a shard the index calls empty, so its samples were
    dropped without a word (4 of 6); the loader opens such a shard when it opens the dataset."""
    edit_index(ds, lambda index: index["shards"][1].update(samples=0))
    validate_reports(ds, "index says 0")
    for workers in (0, 2):
        loader_fails(ds, tmp_path, r"shard\.00001\.mds: header claims \d+ samples, the index 0",
                     workers, remote, name=f"c{workers}")


@pytest.mark.parametrize("workers", [0, 2])
def test_manifest_with_unknown_major_is_refused(ds, tmp_path, workers):
    path = os.path.join(ds, "gsformat.json")
    manifest = json.load(open(path))
    manifest["format_version"] = [2, 0]
    json.dump(manifest, open(path, "w"))
    validate_reports(ds, "unknown major version 2")
    loader_fails(ds, tmp_path, "unknown major version 2", workers)


@pytest.mark.parametrize("edit, message", [
    (lambda index: index["shards"][0].update(samples="6"), "samples must be an integer"),
    (lambda index: index["shards"].__setitem__(0, "shard.mds"), "a shard entry must be a map"),
    (lambda index: index["shards"][0].pop("raw_data"), "raw_data must be a map"),
    (lambda index: index["shards"][0].update(column_sizes=[None]), "consistent"),
    (lambda index: index["shards"][0]["raw_data"].update(hashes=["xxh64"]),
     "raw_data.hashes must map"),
])
def test_malformed_index_entries_are_reported_not_raised(ds, tmp_path, edit, message, capsys):
    edit_index(ds, edit)
    validate_reports(ds, "shard entry 0", message)  # the entry named (issue 25 item 5)
    assert main(["inspect", ds]) == 2
    assert "Traceback" not in capsys.readouterr().err
    loader_fails(ds, tmp_path, f"shard entry 0: .*{message}")
    loader_fails(ds, tmp_path, f"shard entry 0: .*{message}", fast=False)


def test_validate_of_a_file_is_a_report(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"x")
    validate_reports(str(path), "is a file, not a dataset directory")


# ---- the command line: one line, never a traceback ---------------------------------------------
def run_cli(*args, env=None):
    result = subprocess.run([sys.executable, "-m", "gsformat.cli", *map(str, args)],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, **(env or {})})
    return result.returncode, result.stderr.strip()


TINY = ["--splats", "8", "--iters", "2", "--size", "8", "--no-progress"]


@pytest.mark.parametrize("extra, message", [
    (["--codec", "[1]"], "each codec config must be a JSON object"),
    (["--codec", '{"id": "gsformat.planar", "level": Infinity}'], "not JSON"),
    (["--codec", "gsformat.nope"], "unknown codec id"),
    (["--size", "70000"], "--size must be in"),
    (["--chunk-size", "0"], "--chunk-size must be"),
    (["--device", "gpu"], "needs CuPy and a CUDA GPU"),
])
def test_convert_option_errors_are_one_line_and_early(tmp_path, extra, message):
    write_image_folder(tmp_path / "src")
    out = tmp_path / "out"
    code, err = run_cli("convert", tmp_path / "src", out, *TINY, *extra)
    assert code == 2 and message in err and "\n" not in err, err
    assert not out.exists()  # nothing written, nothing fitted: the corrected rerun just runs


def test_cli_errors_are_one_line(tmp_path, ds):
    (tmp_path / "afile").write_bytes(b"x")
    write_image_folder(tmp_path / "src")
    cases = [
        (["convert", tmp_path / "src", tmp_path / "afile", *TINY], "is a file"),
        (["render", ds, "--index", "-1"], "--index must be"),
        (["validate", "s3://bucket/ds"], "s3://bucket/ds: unreachable"),  # refused
    ]
    env = {"S3_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}
    for args, message in cases:
        code, err = run_cli(*args, env=env)
        assert code == 2 and message in err and "\n" not in err and "Traceback" not in err, err
    code, err = run_cli("--debug", "render", ds, "--index", "-1")
    assert "Traceback" in err  # --debug shows it


def test_missing_credentials_name_the_url(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), HOME=str(tmp_path))
    denied = "access denied (NoCredentialsError: Unable to locate credentials)"
    write_image_folder(tmp_path / "src")
    for command, where in ((["validate", "s3://bucket/ds"], "s3://bucket/ds"),
                           (["convert", str(tmp_path / "src"), "s3://bucket/out", *TINY],
                            "s3://bucket/out"),  # the output store
                           (["convert", "s3://bucket/raw/", str(tmp_path / "out"), *TINY],
                            "s3://bucket/raw/")):  # the source
        result = subprocess.run([sys.executable, "-m", "gsformat.cli", *command],
                                capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines()[-1] == \
            f"gsformat {command[0]}: error: {where}: {denied}"


# ---- conversion re-runs ------------------------------------------------------------------------
def test_rerun_of_a_finished_conversion_does_nothing(tmp_path):
    expected = write_image_folder(tmp_path / "src")
    out = tmp_path / "out"
    args = ["convert", tmp_path / "src", out, "--chunk-size", "2", *TINY]
    assert run_cli(*args)[0] == 0
    stamp = os.path.getmtime(out / "gsformat.json")
    code, err = run_cli(*args)
    assert code == 0 and "nothing to do" in err, err
    assert os.path.getmtime(out / "gsformat.json") == stamp
    # a merge killed before its manifest: the rerun completes it
    os.remove(out / "gsformat.json")
    (out / "index.json.tmp-4242").write_bytes(b"{half")
    assert run_cli(*args)[0] == 0
    assert validate_dataset(str(out)).valid
    assert sorted(s["key"] for s in iter_dataset(str(out), decode=False)) == expected
    assert main(["merge", str(out)]) == 0  # merge again: the same dataset
    assert validate_dataset(str(out)).valid


@pytest.mark.slow
def test_sigkill_during_merge_then_rerun(tmp_path):
    """Kill convert at many points (the final merge included), rerun: every key once."""
    expected = write_image_folder(tmp_path / "src")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "gsformat.cli", "convert", str(tmp_path / "src"), str(out),
           "--chunk-size", "1", *TINY]
    for delay in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.kill()
        proc.wait()
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert validate_dataset(str(out)).valid
    assert sorted(s["key"] for s in iter_dataset(str(out), decode=False)) == expected


def test_merge_refuses_a_part_index_that_leaves_the_dataset(ds, tmp_path):
    root = tmp_path / "parts"
    part = root / "part-x"
    part.mkdir(parents=True)
    index = read_index(ds)
    index["shards"][0]["zip_data"]["basename"] = "../../outside.mds.zstd"
    (part / "index.json").write_text(json.dumps(index))
    (part / "part.json").write_text(json.dumps({"hash": None, "n_written": 1}))
    code, err = run_cli("merge", root)
    assert code == 2 and "not a relative path" in err and "\n" not in err, err
    assert not (root / "index.json").exists()


def test_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    import errno
    from gsformat.io import storage
    write_image_folder(tmp_path / "src")

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", path)
    monkeypatch.setattr(storage, "write_bytes", full)
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "out"), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert "No space left on device" in err and "\n" not in err
