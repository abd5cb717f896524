"""What `gsformat convert` does when sources fail (issue 25, items 1, 2, 4, 8, 11): failures told
apart and retried against a real http.server on 127.0.0.1 (stopped mid-run, 503, 404); partial
runs merged, recorded and finished by a re-run; --strict; truncated tars; options checked before
anything is written; one-line errors; the progress bar; --workers' threads."""
from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import tarfile
import threading

import pytest

from gsformat.cli import main
from gsformat.io import failures
from gsformat.io.dataset_files import iter_dataset
from gsformat.io.validate import validate_dataset
from conftest import write_image_folder, write_tars

TINY = ["--splats", "24", "--iters", "4", "--size", "16", "--no-progress"]


def keys_of(root):
    return sorted(s["key"] for s in iter_dataset(str(root), decode=False))


def convert(*args):
    return main(["convert", *map(str, args), *TINY])


def summary_of(out):
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    monkeypatch.setattr(failures, "BACKOFF_S", 0.01)


# ---- a real http.server that can fail on cue, stop and start again --------------------------
class Server:
    """http.server on 127.0.0.1 serving ``root``; ``fail[path]``: statuses to answer before
    serving it; ``requests[path]``: requests seen; `stop` (then: connection refused), `start`
    (on the same port)."""

    def __init__(self, root):
        self.root, self.fail, self.requests, self.port = root, {}, {}, 0
        self.start()

    def start(self):
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send_head(self):  # GET and HEAD
                server.requests[self.path] = server.requests.get(self.path, 0) + 1
                if server.fail.get(self.path):
                    self.send_error(server.fail[self.path].pop(0))
                    return None
                return super().send_head()

        handler = functools.partial(Handler, directory=str(self.root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server(tmp_path):
    (tmp_path / "www").mkdir()
    running = Server(tmp_path / "www")
    yield running
    running.stop()


def test_server_stopped_mid_run_is_unreachable_retried_and_the_rerun_finishes(
        tmp_path, server, capsys, monkeypatch):
    """Item 1 + 2: the server goes down after the first tar: the others are retried with
    backoff, then reported as unreachable (not "not found"); what converted is merged; a re-run
    with the server back converts exactly the failed tars and merges again."""
    from gsformat.convert import unit as unit_module
    keys = write_tars(server.root / "wds", n_tars=3, per_tar=2)
    real, converted = unit_module.convert_unit, []

    def then_stop(source, unit, *args):
        stats = real(source, unit, *args)
        converted.append(unit.name)
        if len(converted) == 1:
            server.stop()  # connection refused from now on
        return stats
    monkeypatch.setattr(unit_module, "convert_unit", then_stop)
    src, out = f"{server.url}/wds/{{00000..00002}}.tar", tmp_path / "out"
    assert convert(src, out) == 1
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("gsformat convert: failed:")]
    assert len(failed) == 2 and "Traceback" not in err
    for line, name in zip(failed, ("00001.tar", "00002.tar")):
        assert name in line and ": unreachable (" in line and "not found" not in line
        assert f"{failures.RETRIES} attempts" in line  # retried, with backoff
    assert "2 of 3 units failed (2 unreachable)" in err
    # the dataset holds what converted, valid, and says it is incomplete
    assert keys_of(out) == keys[:2] and validate_dataset(str(out)).valid
    summary = summary_of(out)
    assert summary["complete"] is False and summary["units"] == 3
    assert summary["units_failed"] == 2 and len(summary["failed"]) == 2
    assert all("\n" not in line and "unreachable" in line for line in summary["failed"])
    assert main(["inspect", str(out)]) == 0
    assert "incomplete: 2 of 3 source units failed" in capsys.readouterr().out
    server.start()  # back, on the same port
    assert convert(src, out) == 0
    err = capsys.readouterr().err
    assert "4 images converted" in err and "1 finished parts skipped" in err
    assert converted == ["tar-00000", "tar-00001", "tar-00002"]
    assert keys_of(out) == keys and validate_dataset(str(out)).valid
    assert summary_of(out)["complete"] is True and summary_of(out)["failed"] == []


def test_server_errors_are_retried_a_missing_object_is_not(tmp_path, server, capsys):
    """503 and 429 are the server's trouble (retried, then converted); 404 is the object's
    absence (not retried: one attempt, "not found")."""
    keys = write_tars(server.root / "wds", n_tars=3, per_tar=1)
    server.fail["/wds/00001.tar"] = [503, 503, 503]
    server.fail["/wds/00002.tar"] = [429, 429]
    out = tmp_path / "out"
    assert convert(f"{server.url}/wds/{{00000..00002}}.tar", out) == 0
    assert keys_of(out) == keys
    assert not server.fail["/wds/00001.tar"] and not server.fail["/wds/00002.tar"]
    capsys.readouterr()
    os.remove(server.root / "wds" / "00002.tar")
    out = tmp_path / "missing"
    assert convert(f"{server.url}/wds/{{00000..00002}}.tar", out) == 1
    err = capsys.readouterr().err
    line = next(l for l in err.splitlines() if l.startswith("gsformat convert: failed:"))
    assert "00002.tar: not found" in line and "attempts" not in line
    assert "those not found or denied fail again until they exist" in err
    record = json.loads((out / "part-tar-00002" / "failure.json").read_text())
    assert record["kind"] == "missing" and record["attempts"] == 1
    assert keys_of(out) == keys[:2]


def test_a_prefix_on_a_server_that_is_down_is_not_an_empty_folder(tmp_path, server, capsys):
    write_tars(server.root / "wds", n_tars=1, per_tar=1)
    url = server.url
    server.stop()
    assert convert(f"{url}/wds/", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"{url}/wds/: unreachable (" in err and "no images, tars or MDS index" not in err
    assert len(err.strip().splitlines()) == 1


# ---- partial runs: recorded, merged, finished by a re-run; --strict ------------------------
def truncate_in_member(path, member_name):
    """Cut a tar in the middle of one member's data."""
    with tarfile.open(path) as tar:
        info = tar.getmember(member_name)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:info.offset_data + info.size // 2])
    return data


def test_partial_run_merges_what_converted_and_a_rerun_finishes_it(tmp_path, capsys):
    keys = write_tars(tmp_path / "tars", n_tars=3, per_tar=3)
    whole = truncate_in_member(tmp_path / "tars" / "00001.tar", "sample0005.jpg")
    third = (tmp_path / "tars" / "00002.tar").read_bytes()
    os.remove(tmp_path / "tars" / "00002.tar")  # missing
    src, out = str(tmp_path / "tars") + "/{00000..00002}.tar", tmp_path / "out"
    assert convert(src, out) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    failed = [l for l in err.splitlines() if l.startswith("gsformat convert: failed:")]
    assert len(failed) == 2
    assert "00001.tar: damaged (ReadError" in failed[0]
    assert "kept the 2 samples before it" in failed[0]
    assert "00002.tar: not found" in failed[1]
    assert "2 of 3 units failed (1 damaged, 1 not found)" in err
    # the truncated tar keeps its complete samples before the cut, as WebDataset does
    assert keys_of(out) == keys[:5] and validate_dataset(str(out)).valid
    assert main(["validate", str(out)]) == 0
    summary = summary_of(out)
    assert summary["complete"] is False and summary["units_converted"] == 1
    assert summary["images_converted"] == 5 and len(summary["failed"]) == 2
    # fixed sources: the re-run converts the two failed units only, and merges
    (tmp_path / "tars" / "00001.tar").write_bytes(whole)
    (tmp_path / "tars" / "00002.tar").write_bytes(third)
    capsys.readouterr()
    assert convert(src, out) == 0
    err = capsys.readouterr().err
    assert "6 images converted" in err and "1 finished parts skipped" in err
    assert keys_of(out) == keys and summary_of(out)["complete"] is True
    assert convert(src, out) == 0
    assert "nothing to do" in capsys.readouterr().err


def test_strict_writes_no_dataset_unless_every_unit_converted(tmp_path, capsys):
    write_tars(tmp_path / "tars", n_tars=2, per_tar=2)
    src = str(tmp_path / "tars") + "/{00000..00002}.tar"  # 00002.tar does not exist
    out = tmp_path / "out"
    assert main(["convert", src, str(out), "--strict", *TINY]) == 1
    err = capsys.readouterr().err
    assert "--strict: no dataset merged" in err and f"gsformat merge {out}" in err
    for name in ("index.json", "gsformat.json"):
        assert not (out / name).exists()
    assert summary_of(out)["complete"] is False and summary_of(out)["units_failed"] == 1
    for command in ("validate", "inspect"):  # both say what OUT holds and what to run
        assert main([command, str(out)]) == 2
        err = capsys.readouterr().err
        assert f"`gsformat merge {out}` merges them" in err and err.count("\n") == 1, err
    assert main(["merge", str(out)]) == 0  # the finished parts, as they are
    assert "1 of 3 source units failed" in capsys.readouterr().err
    assert len(keys_of(out)) == 4 and summary_of(out)["units_failed"] == 1


def test_nothing_converted_records_the_failures(tmp_path, capsys):
    out = tmp_path / "out"
    assert convert(str(tmp_path) + "/{00000..00001}.tar", out) == 1
    err = capsys.readouterr().err
    assert "nothing converted, no dataset written" in err and "Traceback" not in err
    assert not (out / "index.json").exists()
    summary = summary_of(out)
    assert summary["units_failed"] == 2 and summary["images_converted"] == 0
    assert main(["inspect", str(out)]) == 2
    assert "not a gsformat dataset" in capsys.readouterr().err


def test_the_last_rank_merges_with_another_ranks_failure(tmp_path, capsys):
    keys = write_tars(tmp_path / "tars", n_tars=3, per_tar=1)
    os.remove(tmp_path / "tars" / "00001.tar")  # rank 1's only unit
    src, out = str(tmp_path / "tars") + "/{00000..00002}.tar", tmp_path / "out"
    assert convert(src, out, "--rank", 1, "--world-size", 2) == 1
    assert "the last rank to finish merges" in capsys.readouterr().err
    assert not (out / "index.json").exists()
    assert convert(src, out, "--rank", 0, "--world-size", 2) == 1  # merges, incomplete
    assert "finished last: merging" in capsys.readouterr().err
    assert keys_of(out) == [keys[0], keys[2]] and summary_of(out)["units_failed"] == 1


# ---- options checked before anything is written ------------------------------------------
@pytest.mark.parametrize("bad, message", [
    (["--compression", "foo"], "--compression must be none, zstd or zstd:LEVEL"),
    (["--compression", "gz"], "--compression must be none, zstd or zstd:LEVEL"),
    (["--quantize-aware"], "--quantize-aware fits through a lossy codec"),
    (["--splats", "400"], "--splats 400 needs a canvas of at least 20²"),
    (["--l1-colour", "nan"], "--l1-colour must be finite"),
])
def test_a_bad_option_writes_nothing_and_the_corrected_command_runs(tmp_path, capsys, bad,
                                                                    message):
    write_image_folder(tmp_path / "src")
    out = tmp_path / "out"
    assert main(["convert", str(tmp_path / "src"), str(out), *TINY, *bad]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert convert(tmp_path / "src", out) == 0  # no --overwrite needed


def test_settings_of_a_run_that_finished_nothing_do_not_lock_out(tmp_path, capsys):
    write_image_folder(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "convert.json").write_text(json.dumps({"hash": "0" * 16, "settings": {}}))
    assert convert(tmp_path / "src", out) == 0
    assert "other settings" not in capsys.readouterr().err


def test_not_found_paths_are_one_line(tmp_path, capsys):
    for command in ("inspect", "validate"):
        assert main([command, str(tmp_path / "nowhere")]) == 2
        err = capsys.readouterr().err
        assert err.strip() == f"gsformat {command}: error: {tmp_path / 'nowhere'}: not found"
    assert main(["render", str(tmp_path / "nowhere"), "-o", str(tmp_path / "r.png")]) == 2
    err = capsys.readouterr().err.strip()  # the file it looked for, in the same words
    assert err == f"gsformat render: error: {tmp_path / 'nowhere' / 'index.json'}: not found"


# ---- the progress bar, the help, a closed pipe ---------------------------------------------
def test_a_tar_sources_bar_counts_images(tmp_path, capsys):
    write_tars(tmp_path / "tars", n_tars=2, per_tar=3)
    args = [a for a in TINY if a != "--no-progress"]
    assert main(["convert", str(tmp_path / "tars"), str(tmp_path / "out"), *args]) == 0
    bar = capsys.readouterr().err.replace("\r", "\n")
    assert "6img [" in bar and "img/s" in bar and "units=2/2" in bar


def test_convert_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("splat budget per image (default: 1600)", "(default: 1000)",
                    "(default: 224)", "(default: gsformat.planar)", "(default: zstd)",
                    "(default: 8)", "(default: center-crop)", "--seed SEED random seed (with each batch's unit and first key) (default: 0)"):
        assert default in text, default


def test_a_closed_pipe_ends_inspect_quietly(tmp_path):
    write_image_folder(tmp_path / "src")
    assert convert(tmp_path / "src", tmp_path / "out") == 0
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head -1` gone before inspect writes
    done = subprocess.run([sys.executable, "-m", "gsformat.cli", "inspect",
                           str(tmp_path / "out"), "--json"], stdout=write_end,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write_end)
    assert done.returncode == 141 and done.stderr == ""


# ---- classification, store by store --------------------------------------------------------
def raised(inner, outer=None):
    """``outer`` raised while handling ``inner`` (as `sources` wraps errors)."""
    try:
        try:
            raise inner
        except BaseException:
            if outer is None:
                raise
            raise outer from None
    except BaseException as exc:
        return exc


def test_failure_kinds():
    import aiohttp
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
    from gsformat.convert.sources import UnitError

    def s3(code, status):
        return ClientError({"Error": {"Code": code, "Message": "m"},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")

    def http(status):
        return aiohttp.ClientResponseError(None, (), status=status)
    cases = [
        (raised(ConnectionRefusedError(111, "refused"), FileNotFoundError("http://h/a")),
         "unreachable"),  # fsspec's "not found" for a refused connection
        (raised(http(503), FileNotFoundError("http://h/a")), "unreachable"),
        (raised(http(429), FileNotFoundError("http://h/a")), "unreachable"),
        (raised(http(404), FileNotFoundError("http://h/a")), "missing"),
        (raised(http(403), FileNotFoundError("http://h/a")), "denied"),
        (FileNotFoundError("http://h/a"), "missing"),
        (s3("NoSuchKey", 404), "missing"), (s3("NoSuchBucket", 404), "missing"),
        (s3("AccessDenied", 403), "denied"), (s3("SlowDown", 503), "unreachable"),
        (s3("InternalError", 500), "unreachable"),
        (EndpointConnectionError(endpoint_url="http://h"), "unreachable"),
        (NoCredentialsError(), "denied"),  # no keys: retrying cannot help
        (TimeoutError("timed out"), "unreachable"), (ConnectionResetError(), "unreachable"),
        (raised(tarfile.ReadError("unexpected end of data"), UnitError("a.tar: ReadError")),
         "damaged"),
        (raised(ConnectionResetError(), UnitError("a.tar: reset")), "unreachable"),
        (PermissionError("no"), "denied"), (OSError("odd"), "error"), (ValueError("bug"), None),
    ]
    for exc, kind in cases:
        assert failures.failure_kind(exc) == kind, (exc, kind)
    assert failures.describe(cases[0][0]) == \
        "unreachable (ConnectionRefusedError: [Errno 111] refused)"


def test_retries_back_off_and_stop_at_permanent_failures(monkeypatch):
    waits = []
    monkeypatch.setattr(failures.time, "sleep", waits.append)
    calls = []

    def refused():
        calls.append(1)
        raise ConnectionRefusedError(111, "refused")
    with pytest.raises(ConnectionRefusedError) as caught:
        failures.with_retries(refused)
    assert len(calls) == failures.RETRIES and failures.attempts_of(caught.value) == 4
    assert len(waits) == 3 and waits[0] < waits[1] < waits[2]  # doubling (with jitter)
    calls.clear()

    def missing():
        calls.append(1)
        raise FileNotFoundError("gone")
    with pytest.raises(FileNotFoundError):
        failures.with_retries(missing)
    assert len(calls) == 1


# ---- --workers ------------------------------------------------------------------------------
def test_workers_share_the_cores(monkeypatch):
    from gsformat.convert import distribute
    monkeypatch.delenv("GSFORMAT_THREADS", raising=False)
    monkeypatch.setattr(distribute, "usable_cores", lambda: 8)
    assert distribute.threads_per_unit(2, 10) == 4  # two units side by side
    assert distribute.threads_per_unit(4, 1) == 8   # one unit: every core
    assert distribute.threads_per_unit(16, 40) == 1
    monkeypatch.setenv("GSFORMAT_THREADS", "3")
    assert distribute.threads_per_unit(2, 10) is None  # the user's setting rules


def test_workers_convert_a_partial_run_too(tmp_path, capsys):
    keys = write_tars(tmp_path / "tars", n_tars=3, per_tar=1)
    os.remove(tmp_path / "tars" / "00001.tar")
    out = tmp_path / "out"
    assert convert(str(tmp_path / "tars") + "/{00000..00002}.tar", out, "--workers", 2) == 1
    err = capsys.readouterr().err
    assert "00001.tar: not found" in err and "Traceback" not in err
    assert keys_of(out) == [keys[0], keys[2]]


def test_workers_and_a_source_that_is_not_there(tmp_path, capsys):
    """The workers start while the source is listed; a source that is not there is still one
    line and exit 2, without waiting for them."""
    assert convert(tmp_path / "nowhere", tmp_path / "out", "--workers", 2) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not found" in err
