"""Object storage end to end on a real S3 server (moto) on 127.0.0.1."""
import os

import boto3

from gsformat.cli import main
from gsformat.io.dataset_files import iter_dataset
from gsformat.io.validate import validate_dataset
from conftest import write_image_folder, write_tars

TINY = ["--splats", "24", "--iters", "4", "--size", "16", "--no-progress"]


def test_folder_to_s3_then_validate(tmp_path, s3_bucket):
    expected = write_image_folder(tmp_path / "src")
    url = f"s3://{s3_bucket}/splats"
    assert main(["convert", str(tmp_path / "src"), url, *TINY]) == 0
    report = validate_dataset(url)
    assert report.valid, report.text()
    assert report.n_samples == len(expected)
    assert main(["validate", url]) == 0
    assert sorted(s["key"] for s in iter_dataset(url)) == expected


def test_tars_in_bucket_to_local(tmp_path, s3_bucket, s3_server):
    keys = write_tars(tmp_path / "tars", n_tars=2, per_tar=2)
    client = boto3.client("s3", endpoint_url=s3_server)
    for name in sorted(os.listdir(tmp_path / "tars")):
        client.upload_file(str(tmp_path / "tars" / name), s3_bucket, f"wds/{name}")
    src = f"s3://{s3_bucket}/wds/{{00000..00001}}.tar"
    out = tmp_path / "out"
    assert main(["convert", src, str(out), *TINY]) == 0
    assert validate_dataset(str(out)).valid
    assert sorted(s["key"] for s in iter_dataset(str(out))) == keys


def test_corrupt_shard_in_bucket_is_reported(tmp_path, s3_bucket, s3_server):
    write_image_folder(tmp_path / "src")
    url = f"s3://{s3_bucket}/splats"
    main(["convert", str(tmp_path / "src"), url, *TINY])
    client = boto3.client("s3", endpoint_url=s3_server)
    listing = client.list_objects_v2(Bucket=s3_bucket, Prefix="splats/")["Contents"]
    shard = next(o["Key"] for o in listing if o["Key"].endswith(".mds.zstd"))
    body = bytearray(client.get_object(Bucket=s3_bucket, Key=shard)["Body"].read())
    body[len(body) // 2] ^= 1
    client.put_object(Bucket=s3_bucket, Key=shard, Body=bytes(body))
    report = validate_dataset(url)
    assert not report.valid and "hash mismatch" in report.text()
    assert os.path.basename(shard) in report.text()


def test_missing_objects_and_a_server_that_is_down_are_told_apart(tmp_path, s3_bucket,
                                                                  s3_server, capsys,
                                                                  monkeypatch):
    """Issue 25 item 1 on S3: a missing key or bucket is "not found" (not retried); a server
    that refuses connections is "unreachable" (retried); what converted is merged."""
    import json
    import socket
    monkeypatch.setattr("gsformat.io.failures.BACKOFF_S", 0.01)
    keys = write_tars(tmp_path / "tars", n_tars=2, per_tar=1)
    client = boto3.client("s3", endpoint_url=s3_server)
    client.upload_file(str(tmp_path / "tars" / "00000.tar"), s3_bucket, "wds/00000.tar")
    src = f"s3://{s3_bucket}/wds/{{00000..00001}}.tar"
    assert main(["convert", src, str(tmp_path / "out"), *TINY]) == 1
    err = capsys.readouterr().err
    assert f"s3://{s3_bucket}/wds/00001.tar: not found (ClientError: 404" in err
    assert "attempts" not in err and "Traceback" not in err
    assert [s["key"] for s in iter_dataset(str(tmp_path / "out"))] == [keys[0]]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["complete"] is False and "00001.tar: not found" in summary["failed"][0]
    assert main(["convert", "s3://no-such-bucket-here/a.tar", str(tmp_path / "b"), *TINY]) == 1
    assert "no-such-bucket-here/a.tar: not found (" in capsys.readouterr().err
    with socket.socket() as sock:  # the S3 endpoint down: a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries off: ours count
    assert main(["convert", src, str(tmp_path / "c"), *TINY]) == 1
    err = capsys.readouterr().err
    assert "00000.tar: unreachable (ConnectionRefusedError" in err and "4 attempts" in err
    assert "2 of 2 units failed (2 unreachable)" in err
