"""Sources at any location (issue 17): fsspec memory://, a real http.server and a real S3 server
(moto) on 127.0.0.1, pipe:, globs, braces, prefixes; failures that are retried, not skipped;
keys unique by construction; --workers."""
from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading

import boto3
import pytest

from gsformat.cli import main
from gsformat.io.dataset_files import iter_dataset
from gsformat.io.validate import validate_dataset
from conftest import write_image_folder, write_tars

TINY = ["--splats", "24", "--iters", "4", "--size", "16", "--no-progress"]


def keys_of(root):
    return sorted(s["key"] for s in iter_dataset(str(root), decode=False))


def convert(*args, **kw):
    return main(["convert", *map(str, args), *TINY])


@pytest.fixture()
def http_root(tmp_path):
    """Python's http.server serving tmp_path/www on 127.0.0.1 (a free port)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_brace_list_glob_and_prefix(tmp_path, http_root):
    root, url = http_root
    keys = write_tars(root / "wds", n_tars=2, per_tar=2)
    out = tmp_path / "braces"
    assert convert(f"{url}/wds/{{00000..00001}}.tar", out) == 0
    assert keys_of(out) == keys and validate_dataset(str(out)).valid
    assert convert(f"{url}/wds/*.tar", tmp_path / "glob") == 0  # globs on the server's listing
    assert keys_of(tmp_path / "glob") == keys
    assert convert(f"{url}/wds/", tmp_path / "prefix") == 0  # a prefix listed like a folder
    assert keys_of(tmp_path / "prefix") == keys


def test_validate_and_inspect_of_a_remote_path_say_what_happened(tmp_path, http_root, capsys):
    """Missing: "not found" as for a local path; a server that is down: unreachable."""
    root, url = http_root
    for command in ("validate", "inspect"):
        assert main([command, f"{url}/nothing-here"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"gsformat {command}: error: {url}/nothing-here") \
            and "not found" in err and err.count("\n") == 1, err
    assert main(["validate", "http://127.0.0.1:9/x"]) == 2  # port 9: nothing listens
    err = capsys.readouterr().err
    assert "http://127.0.0.1:9/x: unreachable (ConnectionRefusedError" in err \
        and err.count("unreachable") == 1 and err.count("\n") == 1, err


def test_memory_filesystem_folder_and_mds(tmp_path):
    import fsspec
    fs = fsspec.filesystem("memory")
    expected = write_image_folder(tmp_path / "src")
    for dirpath, _, files in os.walk(tmp_path / "src"):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), tmp_path / "src")
            fs.pipe(f"/imgs/{rel}", open(os.path.join(dirpath, name), "rb").read())
    assert convert("memory://imgs", tmp_path / "out") == 0
    assert keys_of(tmp_path / "out") == expected
    # the converted dataset is itself an MDS source, read back through memory:// too
    for dirpath, _, files in os.walk(tmp_path / "out"):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), tmp_path / "out")
            fs.pipe(f"/ds/{rel}", open(os.path.join(dirpath, name), "rb").read())
    assert main(["convert", "memory://ds", str(tmp_path / "again"), "--image-column", "image",
                 *TINY]) == 2  # no stored images in it: a clear error, not an empty dataset


def test_pipe_several_srcs_and_a_path_with_a_space(tmp_path):
    keys = write_tars(tmp_path / "my tars", n_tars=2, per_tar=2)
    first, second = (tmp_path / "my tars" / f"{i:05d}.tar" for i in range(2))
    out = tmp_path / "pipe"
    assert convert(f"pipe:cat '{first}'", f"pipe:cat '{second}'", out) == 0
    assert len(keys_of(out)) == 4 and validate_dataset(str(out)).valid
    out = tmp_path / "two"
    assert convert(first, second, out) == 0  # several SRC arguments, a space in the path
    assert keys_of(out) == keys


def test_pipe_that_fails_is_a_failed_unit(tmp_path, capsys):
    out = tmp_path / "out"
    assert convert("pipe:exit 3", out) == 1
    err = capsys.readouterr().err
    assert "pipe:exit 3" in err and "status 3" in err and "Traceback" not in err


def test_a_folder_named_as_tars_is_refused_before_anything_is_written(tmp_path, capsys):
    write_image_folder(tmp_path / "photos")
    out = tmp_path / "out"
    for source_format in ("webdataset", "parquet"):
        assert convert(str(tmp_path / "photos"), out, "--source-format", source_format) == 2
        err = capsys.readouterr().err
        assert "an image folder" in err and "--source-format" in err and err.count("\n") == 1
        assert not out.exists()  # no convert.json: the corrected command is not refused


def test_missing_shard_fails_then_rerun_converts_exactly_it(tmp_path, s3_bucket, s3_server,
                                                            capsys):
    keys = write_tars(tmp_path / "tars", n_tars=4, per_tar=2)
    client = boto3.client("s3", endpoint_url=s3_server)
    for i in (0, 2):  # shards 1 and 3 are missing
        client.upload_file(str(tmp_path / "tars" / f"{i:05d}.tar"), s3_bucket, f"wds/{i:05d}.tar")
    src, out = f"s3://{s3_bucket}/wds/{{00000..00003}}.tar", tmp_path / "out"
    assert convert(src, out) == 1
    err = capsys.readouterr().err
    assert "00001.tar" in err and "00003.tar" in err and "2 of 4 units" in err
    assert not (out / "part-tar-00001" / "part.json").exists()  # never marked finished
    # what converted is merged, valid, and said to be incomplete
    assert validate_dataset(str(out)).valid and len(keys_of(out)) == 4
    assert json.loads((out / "summary.json").read_text())["complete"] is False
    for i in (1, 3):
        client.upload_file(str(tmp_path / "tars" / f"{i:05d}.tar"), s3_bucket, f"wds/{i:05d}.tar")
    assert convert(src, out) == 0
    err = capsys.readouterr().err
    assert "2 finished parts skipped" in err and "4 images converted" in err
    assert keys_of(out) == keys and validate_dataset(str(out)).valid


def test_s3_glob_and_prefix(tmp_path, s3_bucket, s3_server):
    keys = write_tars(tmp_path / "tars", n_tars=2, per_tar=2)
    client = boto3.client("s3", endpoint_url=s3_server)
    for i in range(2):
        client.upload_file(str(tmp_path / "tars" / f"{i:05d}.tar"), s3_bucket, f"raw/{i:05d}.tar")
    assert convert(f"s3://{s3_bucket}/raw/*.tar", tmp_path / "glob") == 0
    assert keys_of(tmp_path / "glob") == keys
    assert convert(f"s3://{s3_bucket}/raw/", tmp_path / "prefix") == 0
    assert keys_of(tmp_path / "prefix") == keys
    assert convert(f"s3://{s3_bucket}/raw/*.zip", tmp_path / "none") == 2  # matches nothing


def test_nonexistent_bucket_and_refused_connection_are_one_line(tmp_path, s3_server, capsys,
                                                                 monkeypatch):
    assert convert("s3://no-such-bucket-here/wds/{00000..00001}.tar", tmp_path / "a") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert all("Traceback" not in line for line in err)
    assert any("no-such-bucket-here/wds/00000.tar" in line for line in err)
    import socket
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr("gsformat.io.failures.BACKOFF_S", 0.01)
    assert convert(f"http://127.0.0.1:{port}/00000.tar", tmp_path / "b") == 1
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}/00000.tar" in err and "Traceback" not in err


def test_duplicate_keys_across_tars_still_validate(tmp_path):
    write_tars(tmp_path / "a", n_tars=1, per_tar=2)
    write_tars(tmp_path / "b", n_tars=1, per_tar=2)  # the same keys in another tar
    out = tmp_path / "out"
    assert convert(tmp_path / "a" / "00000.tar", tmp_path / "b" / "00000.tar", out) == 0
    assert validate_dataset(str(out)).valid
    assert keys_of(out) == ["a/00000/sample0000", "a/00000/sample0001", "b/00000/sample0000",
                            "b/00000/sample0001"]


def test_folder_images_sharing_a_stem_keep_both(tmp_path):
    write_image_folder(tmp_path / "src")
    shutil.copy(tmp_path / "src" / "things" / "coffee.png", tmp_path / "src" / "things" /
                "coffee.jpg")
    out = tmp_path / "out"
    assert convert(tmp_path / "src", out) == 0
    keys = keys_of(out)
    assert "things/coffee.png" in keys and "things/coffee.jpg" in keys
    assert validate_dataset(str(out)).valid


def test_img2dataset_sidecar_is_kept(tmp_path):
    import io
    import tarfile
    from gsformat.testing.photos import load_photo
    path = tmp_path / "00000.tar"
    sidecar = {"url": "http://example.com/a.jpg", "caption": "a cat", "width": 640,
               "height": 480, "sha256": "ab" * 32, "exif": "{}"}
    with tarfile.open(path, "w") as tar:
        for name, data in (("000000001.jpg", _jpeg(load_photo("chelsea", 32))),
                           ("000000001.json", json.dumps(sidecar).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    assert convert(path, out) == 0
    sample = next(iter_dataset(str(out)))
    assert sample["caption"] == "a cat" and json.loads(sample["meta"]) == sidecar


def _jpeg(array) -> bytes:
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG")
    return buf.getvalue()


def test_workers_give_the_single_process_dataset(tmp_path, monkeypatch):
    """Bit-identical records at a fixed thread count of the fitter (GSFORMAT_THREADS)."""
    monkeypatch.setenv("GSFORMAT_THREADS", "1")
    write_image_folder(tmp_path / "src")
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["convert", str(tmp_path / "src"), str(one), "--chunk-size", "2", *TINY]) == 0
    assert main(["convert", str(tmp_path / "src"), str(two), "--chunk-size", "2",
                 "--workers", "2", *TINY]) == 0
    a = {s["key"]: s["splats"] for s in iter_dataset(str(one), decode=False)}
    b = {s["key"]: s["splats"] for s in iter_dataset(str(two), decode=False)}
    assert a == b and len(a) == 5


def test_ray_gives_the_single_process_dataset_and_resumes_after_a_kill(tmp_path, monkeypatch):
    """A local Ray (2 CPUs): the same keys and records as one process; killed half-way, a
    rerun gives every key once."""
    import signal
    import subprocess
    import sys
    import time
    pytest.importorskip("ray")
    monkeypatch.setenv("GSFORMAT_THREADS", "1")
    write_image_folder(tmp_path / "src")
    one, ray_out = tmp_path / "one", tmp_path / "ray"
    common = [str(tmp_path / "src"), "--chunk-size", "1", *TINY]
    assert main(["convert", common[0], str(one), *common[1:]]) == 0
    cli = [sys.executable, "-m", "gsformat.cli", "convert", common[0], str(ray_out),
           *common[1:], "--distributor", "ray", "--workers", "2", "--iters", "3000"]
    proc = subprocess.Popen(cli, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(ray_out.glob("part-*/part.json")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray, half-way
    proc.wait()
    finished = -1
    while finished != len(list(ray_out.glob("part-*/part.json"))):  # tasks in flight may end
        finished = len(list(ray_out.glob("part-*/part.json")))
        time.sleep(2)
    assert 1 <= finished < 5, finished  # parts of 3,000 iterations: the kill lands first
    done = subprocess.run(cli[:-2] + ["--iters", "4"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0 and "other settings" in done.stderr  # --iters is a setting
    done = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{finished} finished parts skipped" in done.stderr
    keys = keys_of(ray_out)
    assert keys == sorted(set(keys)) and len(keys) == 5 and validate_dataset(str(ray_out)).valid
    # the same records as one process at the same settings
    same = tmp_path / "ray-same"
    assert main(["convert", common[0], str(same), *common[1:], "--distributor", "ray",
                 "--workers", "2"]) == 0
    a = {s["key"]: s["splats"] for s in iter_dataset(str(one), decode=False)}
    b = {s["key"]: s["splats"] for s in iter_dataset(str(same), decode=False)}
    assert a == b
