"""`gsformat inspect --html` opened in a real headless browser (Debian's chromium; .ci/run
installs it where missing), and `render --count` as a labelled grid."""
from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from gsformat.cli import main
from conftest import write_image_folder

TINY = ["--splats", "48", "--iters", "20", "--size", "32", "--no-progress"]
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    write_image_folder(root / "src")
    assert main(["convert", str(root / "src"), str(root / "ds"), "--keep-image", *TINY]) == 0
    return root


def screenshot(page: str, png: str) -> str:
    """Open ``page`` headless; returns the browser's log (console messages included)."""
    done = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", "--window-size=1100,900", "--enable-logging=stderr",
                           "--v=0", f"--screenshot={png}", f"file://{page}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and os.path.exists(png), done.stderr[-2000:]
    return done.stderr


@pytest.mark.skipif(BROWSER is None, reason="no chromium (.ci/run installs it)")
def test_html_report_renders_in_a_browser(dataset, capsys):
    page = str(dataset / "report.html")
    assert main(["inspect", str(dataset / "ds"), "--html", page]) == 0
    text = open(page, encoding="utf-8").read()
    for key in ("people/astronaut", "things/coffee", "fit PSNR per record", "bytes per record"):
        assert key in text
    assert text.count("<img ") == 10  # 5 samples × [stored | splats]
    log = screenshot(page, str(dataset / "shot.png"))
    assert "did not decode" not in log and "Uncaught" not in log
    shot = np.asarray(Image.open(dataset / "shot.png").convert("RGB"), np.float64)
    assert shot.std() > 20 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 500  # not blank
    # the page's check can fail: a picture that does not decode is reported on the console
    broken = text.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAA", 1)
    with open(dataset / "broken.html", "w", encoding="utf-8") as f:
        f.write(broken)
    assert "did not decode" in screenshot(str(dataset / "broken.html"),
                                          str(dataset / "broken.png"))


def test_render_count_is_a_labelled_grid(dataset):
    png = str(dataset / "grid.png")
    assert main(["render", str(dataset / "ds"), "--count", "5", "--size", "32", "-o", png]) == 0
    grid = np.asarray(Image.open(png).convert("RGB"))
    # 4 cells a row: [stored | splats] 32 + 2 + 32 wide, centred in the label's 150; under
    # each the key, and PSNR, bytes · caption or class on one line or, wrapped, two
    assert grid.shape[1] == 4 * (150 + 4) and grid.shape[0] in (2 * (32 + 28 + 4),
                                                                  2 * (32 + 28 + 13 + 4))
    tiles = grid[:32, 42:42 + 66]  # the first cell's two tiles, the 2-pixel gap between
    assert tiles[:, :32].std() > 10 and tiles[:, 34:].std() > 10 and not tiles[:, 32:34].any()


def test_render_without_stored_images_lays_out_the_splats_alone(tmp_path):
    """Issue 25 item 9: converted without --keep-image, each cell showed the splats beside an
    empty black half. The cell holds what exists: the splats, enlarged from a small canvas."""
    write_image_folder(tmp_path / "src")
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "ds"), *TINY]) == 0
    png = str(tmp_path / "grid.png")
    assert main(["render", str(tmp_path / "ds"), "--count", "5", "-o", png]) == 0
    grid = np.asarray(Image.open(png).convert("RGB")).astype(float)
    # 32² canvas drawn 3× (96 ≥ MIN_TILE), centred in a 150-wide cell: no black column inside
    tile = grid[:96, 27:27 + 96]
    assert grid.shape[1] == 4 * (150 + 4)
    assert (tile.std(axis=(0, 2)) > 1).all() and (tile.std(axis=(1, 2)) > 1).all()
    assert np.array_equal(tile[:3, :3].reshape(9, 3), np.repeat(tile[:1, :1], 9, 0).reshape(9, 3))


def test_labels_wrap_at_words_and_end_in_an_ellipsis():
    """Issue 25 item 9: captions were cut mid-word (at a character count)."""
    from PIL import ImageDraw, ImageFont
    from gsformat.render_cli import fit_lines
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def measure(text):
        return draw.textlength(text, font=font)
    caption = "a ginger cat sitting on a wooden floor, looking at the camera with green eyes"
    assert fit_lines("a ginger cat", 124, 2, measure) == ["a ginger cat"]
    lines = fit_lines(caption, 124, 2, measure)
    assert len(lines) == 2 and lines[1].endswith("…") and all(measure(l) <= 124 for l in lines)
    words = " ".join(lines)[:-1].split()
    assert words == caption.split()[:len(words)]  # whole words, in order
    assert fit_lines("x" * 80, 60, 2, measure)[1].endswith("…")  # one long word: cut


def test_inspect_prints_text_and_json(dataset, capsys):
    assert main(["inspect", str(dataset / "ds")]) == 0
    out = capsys.readouterr().out
    assert "5 samples in 1 shards" in out and "gsformat.planar" in out
    assert main(["inspect", str(dataset / "ds"), "--json"]) == 0
    import json
    assert json.loads(capsys.readouterr().out)["index"]["n_samples"] == 5
