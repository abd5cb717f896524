"""CLI paths not covered elsewhere: inspect, render, codec options, resize modes."""
import json

import numpy as np
import pytest
from PIL import Image

from gsformat import decode_record
from gsformat.cli import main
from gsformat.core.constants import FORMAT_VERSION
from gsformat.io.dataset_files import iter_dataset
from gsformat.io.validate import validate_dataset
from conftest import write_image_folder

TINY = ["--splats", "24", "--iters", "6", "--size", "16", "--no-progress"]


def test_inspect_and_render(tmp_path, capsys):
    write_image_folder(tmp_path / "src")
    out = str(tmp_path / "out")
    assert main(["convert", str(tmp_path / "src"), out, "--keep-image", *TINY]) == 0
    capsys.readouterr()
    assert main(["inspect", out, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["index"]["n_samples"] == 5 and info["manifest"]["fit"]["splats"] == 24
    png = str(tmp_path / "r.png")
    assert main(["render", out, "--index", "1", "--count", "2", "--size", "32", "-o", png]) == 0
    assert Image.open(png).size == (2 * (150 + 4), 32 + 28 + 4)  # two labelled cells a row
    assert main(["render", out, "--index", "99", "-o", png]) == 2  # a clear error, no trace


def test_lossy_codec_json_and_quantize_aware(tmp_path):
    write_image_folder(tmp_path / "src")
    out = str(tmp_path / "out")
    codec = '[{"id": "gsformat.lattice-rans", "position_step": 0.001, "colour_step": 0.03}]'
    assert main(["convert", str(tmp_path / "src"), out, "--codec", codec, "--quantize-aware",
                 *TINY]) == 0
    assert validate_dataset(out).valid
    n = 0
    for sample in iter_dataset(out, decode=False):
        import msgpack
        record = msgpack.unpackb(sample["splats"])
        assert record["codecs"][0]["id"] == "gsformat.lattice-rans"
        assert record["codecs"][0]["position_step"] == 0.001  # the whole config is stored
        assert record["version"] == list(FORMAT_VERSION)
        assert decode_record(sample["splats"]).n_splats == 24
        n += 1
    assert n == 5  # every image of the folder, not just the first


@pytest.mark.parametrize("codec_id", ["gsformat.quantize", "gsformat.entropy"])
def test_convert_refuses_legacy_codecs(tmp_path, capsys, codec_id):
    write_image_folder(tmp_path / "src")
    out = tmp_path / "out"
    assert main(["convert", str(tmp_path / "src"), str(out), "--codec", codec_id, *TINY]) == 2
    err = capsys.readouterr().err
    assert "legacy codec" in err and codec_id in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # refused before anything is written


@pytest.mark.parametrize("codec_id", ["gsformat.lattice", "gsformat.lattice-rans"])
def test_lattice_codec_with_solved_colours(tmp_path, codec_id):
    """--quantize-aware with the lattice codecs: the stored PSNR is the decoded records' PSNR."""
    write_image_folder(tmp_path / "src")
    out = str(tmp_path / "out")
    codec = '[{"id": "%s", "colour_step": 0.03}]' % codec_id
    assert main(["convert", str(tmp_path / "src"), out, "--codec", codec, "--quantize-aware",
                 "--keep-image", *TINY]) == 0
    assert validate_dataset(out).valid
    from gsformat.fitting.engine import evaluate_psnr
    samples = list(iter_dataset(out))
    assert len(samples) == 5  # every image of the folder
    for sample in samples:
        splats = sample["splats"]
        image = np.asarray(sample["image"].convert("RGB")) / 255.0
        assert splats.params.dtype == np.float16 and splats.n_splats == 24
        assert np.allclose(np.rint(splats.params[:, 5:].astype(np.float64) / 0.03) * 0.03,
                           splats.params[:, 5:], atol=2e-3)  # colours on the lattice
        assert image.shape == (16, 16, 3)
        # the PSNR the record carries is that of what it decodes to (against the fitted image,
        # which the stored JPEG approximates: within a dB or so)
        measured = evaluate_psnr([splats], image[None], 8)[0]
        assert splats.meta["psnr"] > 14 and abs(measured - splats.meta["psnr"]) < 1.5


def test_matched_steps_give_each_record_its_own_steps(tmp_path, capsys):
    """--matched-steps: each record's codec config holds the steps its image's fit chose (the
    configured ones times meta's step_scale); the dataset validates; misuse is one line."""
    from gsformat.fitting.solve import matched_step_scale
    from gsformat.core.record import read_header
    write_image_folder(tmp_path / "src")
    out = str(tmp_path / "out")
    codec = '[{"id": "gsformat.lattice-rans", "colour_step": 0.03}]'
    assert main(["convert", str(tmp_path / "src"), out, "--codec", codec, "--quantize-aware",
                 "--matched-steps", "25", *TINY]) == 0
    assert validate_dataset(out).valid
    steps = []
    for sample in iter_dataset(out, decode=False):
        header = read_header(sample["splats"])
        scale = header["fit"]["step_scale"]
        assert header["codecs"][0]["colour_step"] == pytest.approx(0.03 * scale)
        assert scale == matched_step_scale(header["fit"]["fit_psnr"], 25.0)
        steps.append(header["codecs"][0]["colour_step"])
        colours = decode_record(sample["splats"]).params[:, 5:].astype(np.float64)
        step = header["codecs"][0]["colour_step"]
        assert np.allclose(np.rint(colours / step) * step, colours, atol=2e-3)  # its lattice
    assert len(set(steps)) > 1  # five different images, not one step for all
    import argparse
    from gsformat.convert.options import add_convert_arguments
    from gsformat.fitting.solve import REFERENCE_PSNR
    parser = argparse.ArgumentParser()
    add_convert_arguments(parser)
    assert parser.parse_args(["s", "o", "--matched-steps"]).matched_steps == REFERENCE_PSNR
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "o2"), "--matched-steps",
                 *TINY]) == 2
    err = capsys.readouterr().err
    assert "--matched-steps needs --quantize-aware" in err and len(err.strip().splitlines()) == 1


def test_resize_pad_keeps_the_whole_image(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    wide = np.zeros((10, 40, 3), np.uint8)
    wide[:, :, 0] = 255
    Image.fromarray(wide).save(src / "wide.png")
    out = str(tmp_path / "out")
    assert main(["convert", str(src), out, "--resize", "pad", "--keep-image", *TINY]) == 0
    image = np.asarray(next(iter_dataset(out))["image"])
    assert image.shape == (16, 16, 3)
    assert image[0, :, 0].max() < 40 and image[8, :, 0].min() > 200  # black bars, red middle


def test_a_server_that_is_down_is_unreachable_not_missing_in_every_command(capsys):
    url = "http://127.0.0.1:9/ds"  # port 9: nothing listens
    for command in (["validate", url], ["inspect", url], ["render", url, "-o", "/dev/null"]):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert "unreachable" in err and "not found" not in err and err.count("\n") == 1, err
