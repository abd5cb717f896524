"""gsformat convert: sources, rejects, resumption after SIGKILL, ranks + merge."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from gsformat.cli import main
from gsformat.io.dataset_files import iter_dataset, read_manifest
from gsformat.io.validate import validate_dataset
from conftest import write_image_folder, write_tars

TINY = ["--splats", "24", "--iters", "4", "--size", "16", "--no-progress"]


def keys_of(root):
    return [s["key"] for s in iter_dataset(root, decode=False)]


def convert(*args):
    return main(["convert", *map(str, args), *TINY])


def test_folder_with_broken_files(tmp_path):
    expected = write_image_folder(tmp_path / "src", broken=True)
    out = tmp_path / "out"
    assert convert(tmp_path / "src", out, "--keep-image") == 0
    assert validate_dataset(str(out)).valid
    assert sorted(keys_of(out)) == expected
    rejects = [json.loads(l) for l in open(out / "rejects.jsonl")]
    reasons = {r["key"]: r["reason"] for r in rejects}
    assert set(reasons) == {"things/empty", "things/truncated", "things/notimage",
                            "things/tiny"}
    assert "zero-byte" in reasons["things/empty"]
    assert "image too small" in reasons["things/tiny"]
    # the file named and "not an image" said, not Pillow's "<_io.BytesIO object at 0x…>"
    assert reasons["things/notimage"].startswith("not an image: ")
    assert "things/notimage.jpg" in reasons["things/notimage"]
    assert "BytesIO" not in "".join(reasons.values())
    summary = json.load(open(out / "summary.json"))
    assert summary["images_converted"] == 5 and summary["images_rejected"] == 4
    assert summary["ratio_to_raw_pixels"] > 1 and summary["psnr"]["mean"] > 5
    manifest = read_manifest(str(out))
    assert manifest["class_names"] == ["people", "things"]
    samples = {s["key"]: s for s in iter_dataset(str(out))}
    assert samples["people/astronaut"]["label"] == 0
    assert samples["people/astronaut"]["caption"] == "an astronaut in a suit"
    assert samples["things/coffee"]["caption"] == ""
    assert samples["things/coffee"]["image"].size == (16, 16)


def test_plain_streaming_dataset_opens_result(tmp_path):
    from streaming import StreamingDataset
    from gsformat import decode_record
    write_image_folder(tmp_path / "src")
    convert(tmp_path / "src", tmp_path / "out")
    dataset = StreamingDataset(local=str(tmp_path / "out"), shuffle=False)
    assert len(dataset) == 5
    for i in range(len(dataset)):
        assert decode_record(dataset[i]["splats"]).n_splats == 24


def test_webdataset_tars_brace_pattern(tmp_path):
    keys = write_tars(tmp_path / "tars", n_tars=3, per_tar=2, missing_image=True)
    out = tmp_path / "out"
    assert convert(str(tmp_path / "tars") + "/{00000..00002}.tar", out) == 0
    assert validate_dataset(str(out)).valid
    assert sorted(keys_of(out)) == keys
    samples = {s["key"]: s for s in iter_dataset(str(out))}
    fourth = samples["00002/sample0004"]  # keys prefixed by their tar: unique by construction
    assert fourth["caption"] == "caption 4" and fourth["label"] == 1
    rejects = [json.loads(l) for l in open(out / "rejects.jsonl")]
    assert [r["key"] for r in rejects] == ["00000/orphan"]
    assert "no image member" in rejects[0]["reason"]


def test_mds_source(tmp_path):
    from PIL import Image
    from streaming import MDSWriter
    from gsformat.testing.photos import load_photo
    src = str(tmp_path / "mds")
    with MDSWriter(out=src, columns={"jpg": "jpeg", "txt": "str", "cls": "int"}) as writer:
        for i, name in enumerate(["astronaut", "coffee", "rocket"]):
            writer.write({"jpg": Image.fromarray(load_photo(name, 24)), "txt": name, "cls": i})
    out = tmp_path / "out"
    assert convert(src, out) == 0
    samples = list(iter_dataset(str(out)))
    assert [(s["caption"], s["label"]) for s in samples] == [
        ("astronaut", 0), ("coffee", 1), ("rocket", 2)]


def test_empty_or_missing_source_fails_before_work(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert convert(tmp_path / "empty", tmp_path / "out") == 2
    assert "no images, tars or MDS index" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert convert(tmp_path / "nowhere", tmp_path / "out") == 2


def test_other_settings_need_overwrite(tmp_path, capsys):
    write_image_folder(tmp_path / "src")
    out = tmp_path / "out"
    assert convert(tmp_path / "src", out) == 0
    assert main(["convert", str(tmp_path / "src"), str(out), "--splats", "30", "--iters", "2",
                 "--size", "16", "--no-progress"]) == 2
    assert "other settings (iters, splats)" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "src"), str(out), "--splats", "30", "--iters", "2",
                 "--size", "16", "--no-progress", "--overwrite"]) == 0
    assert read_manifest(str(out))["fit"]["splats"] == 30


def test_two_ranks_then_merge_equal_one_rank(tmp_path):
    expected = write_image_folder(tmp_path / "src")
    for rank in (0, 1):
        assert convert(tmp_path / "src", tmp_path / "ranks", "--rank", rank, "--world-size", 2,
                       "--chunk-size", 2) == 0
        # the last rank to finish merges; before it, nothing claims a complete dataset
        assert (tmp_path / "ranks" / "gsformat.json").exists() == (rank == 1)
    assert validate_dataset(str(tmp_path / "ranks")).valid
    assert sorted(keys_of(tmp_path / "ranks")) == expected
    assert main(["merge", str(tmp_path / "ranks")]) == 0  # `merge` by hand: the same dataset
    assert sorted(keys_of(tmp_path / "ranks")) == expected


def test_rank_from_slurm_environment(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "src")
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "3")
    assert convert(tmp_path / "src", tmp_path / "out", "--chunk-size", 1) == 0
    parts = sorted(p for p in os.listdir(tmp_path / "out") if p.startswith("part-"))
    assert parts == ["part-files-00001", "part-files-00004"]


@pytest.mark.slow
@pytest.mark.parametrize("finished_parts", [0, 1, 3])
def test_resume_after_sigkill(tmp_path, finished_parts):
    expected = write_image_folder(tmp_path / "src")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "gsformat.cli", "convert", str(tmp_path / "src"), str(out),
           "--chunk-size", "1", "--splats", "24", "--iters", "150", "--size", "24",
           "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        done = len([p for p in os.listdir(out) if os.path.exists(out / p / "part.json")]) \
            if out.exists() else 0
        if done >= finished_parts and (out / f"part-files-{finished_parts:05d}").exists():
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p: os.path.getmtime(out / p / "part.json") for p in os.listdir(out)
                if os.path.exists(out / p / "part.json")}
    assert len(finished) >= finished_parts
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert sorted(keys_of(out)) == expected  # every key exactly once
    assert validate_dataset(str(out)).valid
    for part, mtime in finished.items():  # finished parts were not rewritten
        assert os.path.getmtime(out / part / "part.json") == mtime


def test_kept_image_is_the_quality_95_jpeg_verbatim(tmp_path):
    """--keep-image stores convert's own quality-95 JPEG of the resized image, byte for byte
    (streaming's JPEG encoding would re-encode a decoded image at quality 75)."""
    from gsformat.convert.imageio import decode_image, encode_jpeg, resize
    write_image_folder(tmp_path / "src")
    assert convert(tmp_path / "src", tmp_path / "out", "--keep-image") == 0
    samples = list(iter_dataset(str(tmp_path / "out"), decode=False))
    assert len(samples) == 5
    for sample in samples:
        with open(tmp_path / "src" / sample["source"], "rb") as f:
            expected = encode_jpeg(resize(decode_image(f.read()), 16, "center-crop"))
        assert sample["image"] == expected, sample["key"]


def test_convert_options_are_built_once_frozen_and_keep_earlier_outputs_resuming():
    """The settings hash names a run's parts: the same options must give 0.1's hashes (computed
    then by its `settings_of`), or every earlier partial conversion would start over."""
    import argparse
    import dataclasses
    import pickle
    from gsformat.convert.options import ConvertOptions, add_convert_arguments
    from gsformat.convert.run import settings_hash
    parser = argparse.ArgumentParser()
    add_convert_arguments(parser)
    plain = ConvertOptions.from_args(parser.parse_args(["src", "out"]))
    assert settings_hash(plain.settings()) == "9ac13c95eba27bf7"
    many = ConvertOptions.from_args(parser.parse_args([
        "a.tar", "b.tar", "out", "--splats", "400", "--codec", "gsformat.lattice-rans",
        "--quantize-aware", "--matched-steps", "--caption-column", "txt", "--world-size", "2",
        "--rank", "1"]))
    assert settings_hash(many.settings()) == "539002b8882bab2f"
    assert many.src == ("a.tar", "b.tar") and many.rank == 1 and many.lossy_codec["id"] == \
        "gsformat.lattice-rans"
    with pytest.raises(dataclasses.FrozenInstanceError):
        plain.splats = 3
    assert pickle.loads(pickle.dumps(many)) == many  # to worker processes and Ray tasks
    for f in dataclasses.fields(ConvertOptions):  # one help text per option, beside its field
        assert f.metadata["help"], f.name
    with pytest.raises(ValueError, match="--compression must be none, zstd or zstd:LEVEL"):
        ConvertOptions.from_args(parser.parse_args(["src", "out", "--compression", "foo"]))
