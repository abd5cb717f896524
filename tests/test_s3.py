"""Object storage end to end on a real S3 server (moto) on 127.0.0.1."""
import os

import boto3

from gsformat.cli import main
from gsformat.format.dataset import iter_dataset
from gsformat.format.validate import validate_dataset
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
