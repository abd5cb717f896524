"""The C tile engine against its reference twins: values (dense NumPy with each splat masked to
its footprint) and gradients (PyTorch autograd, and finite differences), on splats from
sub-pixel to canvas-sized, thin and rotated, at borders and corners, in mixed batches."""
import subprocess
import sys

import numpy as np
import pytest

from gsformat.fitting import tiles
from gsformat.fitting.tiles import K_SIGMA, TileEngine, _loss_grad_boxes, _render_boxes
from conftest import photo

pytestmark = pytest.mark.skipif(tiles.native() is None, reason="the C tile engine is not built")


def make_params(rng, batch, n, height, width, k_sigma=K_SIGMA):
    """Splats of every size (σ from 0.3 px to twice the canvas), shapes and places, none with a
    pixel within 10⁻³ of its cut q = k² (where a float32 and a float64 mask may disagree)."""
    def draw():
        p = np.zeros((batch, n, 8), np.float32)
        p[..., 0] = rng.uniform(-4, width + 4, (batch, n))
        p[..., 1] = rng.uniform(-4, height + 4, (batch, n))
        p[:, 0, :2] = [0.1, 0.2]                       # top-left corner
        p[:, 1, :2] = [width - 0.05, height / 2]       # right edge
        p[:, 2, :2] = [width / 2, height - 0.01]       # bottom edge
        big = 2.0 * max(height, width)
        p[..., 2] = np.exp(rng.uniform(np.log(0.3), np.log(big), (batch, n)))
        p[..., 4] = np.exp(rng.uniform(np.log(0.3), np.log(big), (batch, n)))
        p[:, 3, 2:5] = [0.4, 3.0, 0.3]                 # thin and rotated
        p[:, 4, 2:5] = [6.0, -5.5, 0.35]
        p[..., 3] = np.where(np.arange(n) < 5, p[..., 3],
                             rng.normal(0, 1, (batch, n)) * p[..., 4])
        p[..., 5:8] = rng.uniform(-1, 1.5, (batch, n, 3))
        return p
    params = draw()
    for _ in range(100):
        near = (np.abs(tiles.exponent(params, height, width) - k_sigma ** 2) < 1e-3).any(
            axis=(2, 3))
        if not near.any():
            return params
        params[near] = draw()[near]
    raise AssertionError("could not draw splats away from their cut")


def drop_near_cut(params, height, width):
    """Splats with a pixel within 10⁻³ of their cut made into ones that cover nothing (colour
    0, one pixel at the origin): there a float32 and a float64 mask may disagree."""
    near = (np.abs(tiles.exponent(params, height, width) - K_SIGMA ** 2) < 1e-3).any(axis=(2, 3))
    params[near] = 0.0
    params[near, 2] = params[near, 4] = 1e-3


def target_images(batch, height, width):
    return np.stack([photo(name, max(height, width))[:height, :width] for name in
                     ("coffee", "astronaut", "rocket")[:batch]]).astype(np.float32) / 255


@pytest.mark.parametrize("height, width, n", [(37, 45, 40), (16, 16, 12), (9, 70, 20),
                                              (50, 3, 10)])
def test_forward_matches_dense_reference(height, width, n):
    params = make_params(np.random.default_rng(height), 2, n, height, width)
    image = TileEngine(2, n, height, width, threads=2).forward(params)
    ref = _render_boxes(params, height, width)
    np.testing.assert_allclose(image, ref, atol=3e-6 * np.abs(ref).max(), rtol=1e-5)


@pytest.mark.parametrize("height, width, n", [(37, 45, 30), (20, 33, 12)])
def test_loss_and_gradient_match_autograd(height, width, n):
    params = make_params(np.random.default_rng(width), 3, n, height, width)
    target = target_images(3, height, width)
    engine = TileEngine(3, n, height, width, threads=2)
    render, mse, grad = engine.loss_grad(params, target, 2.0 / (height * width * 3))
    loss, ref = _loss_grad_boxes(params, target)
    np.testing.assert_allclose(mse.sum(), loss, rtol=1e-5)
    np.testing.assert_allclose(render, _render_boxes(params, height, width), atol=1e-5)
    scale = np.abs(ref).max(axis=(0, 1))  # per parameter kind
    np.testing.assert_array_less(np.abs(grad - ref).max(axis=(0, 1)), 2e-5 * scale + 1e-9)


def test_gradient_matches_finite_differences():
    """Central differences in float64 on the reference loss, where every splat's footprint is
    far from a pixel centre (so a small step changes no mask)."""
    height, width, n = 14, 18, 6
    params = make_params(np.random.default_rng(5), 1, n, height, width)
    target = target_images(1, height, width)
    _, _, grad = TileEngine(1, n, height, width).loss_grad(params, target,
                                                           2.0 / (height * width * 3))
    p64 = params.astype(np.float64)
    for s in range(n):
        for c in range(8):
            step = 1e-4 * max(1.0, abs(p64[0, s, c]))
            up, down = p64.copy(), p64.copy()
            up[0, s, c] += step
            down[0, s, c] -= step
            masks = [tiles._box_masks(q, height, width, K_SIGMA) for q in (up, down, p64)]
            if not (np.array_equal(masks[0], masks[2]) and np.array_equal(masks[1], masks[2])):
                continue  # the step moves a cut across a pixel centre
            diff = (_loss_fixed(up, target, masks[2]) - _loss_fixed(down, target, masks[2])) / (
                2 * step)
            assert abs(grad[0, s, c] - diff) <= 1e-3 * abs(diff) + 1e-6, (s, c, grad[0, s, c], diff)


def _loss_fixed(params, target, mask):
    height, width = target.shape[1:3]
    g = np.where(mask, np.exp(-0.5 * tiles.exponent(params, height, width)), 0.0)
    image = np.einsum("bnhw,bnc->bhwc", g, params[..., 5:8])
    return float(((image - target) ** 2).mean())


def test_results_identical_for_any_thread_count():
    height, width, n = 64, 80, 120
    params = make_params(np.random.default_rng(1), 2, n, height, width)
    target = target_images(2, height, width)
    results = [TileEngine(2, n, height, width, threads=t).loss_grad(params, target, 1e-3)
               for t in (1, 2, 5)]
    for render, mse, grad in results[1:]:
        np.testing.assert_array_equal(render, results[0][0])
        np.testing.assert_array_equal(mse, results[0][1])
        np.testing.assert_array_equal(grad, results[0][2])


def test_thin_tilted_splats_and_a_crowded_tile_match_autograd():
    """Rows an entry reaches are found per tile from its ellipse: thin splats at ±60° whose
    ellipses cross tile corners and edges only partly; one thread meets a few sparse tiles and
    then one with ~250 entries (its store of G per row grows mid-call)."""
    height = width = 48
    rng = np.random.default_rng(11)
    n = 260
    params = np.zeros((1, n, 8), np.float32)
    params[0, :, 0] = rng.uniform(32, 48, n)  # most in the last tile
    params[0, :, 1] = rng.uniform(32, 48, n)
    params[0, :10, :2] = rng.uniform(0, 48, (10, 2))
    angle = rng.choice([-1.05, 1.05], n) + rng.normal(0, 0.05, n)
    long_, short = rng.uniform(2, 9, n), rng.uniform(0.3, 0.8, n)
    # L Lᵀ = R diag(long², short²) Rᵀ, L lower triangular (Cholesky, as the fitter stores it)
    sxx = (long_ * np.cos(angle)) ** 2 + (short * np.sin(angle)) ** 2
    sxy = (long_ ** 2 - short ** 2) * np.cos(angle) * np.sin(angle)
    syy = (long_ * np.sin(angle)) ** 2 + (short * np.cos(angle)) ** 2
    params[0, :, 2] = np.sqrt(sxx)
    params[0, :, 3] = sxy / params[0, :, 2]
    params[0, :, 4] = np.sqrt(syy - params[0, :, 3].astype(np.float64) ** 2)
    params[0, :, 5:8] = rng.uniform(-0.3, 0.4, (n, 3))
    drop_near_cut(params, height, width)
    target = target_images(1, height, width)
    scale = 2.0 / (height * width * 3)
    render, mse, grad = TileEngine(1, n, height, width, threads=1).loss_grad(params, target,
                                                                             scale)
    loss, ref = _loss_grad_boxes(params, target)
    np.testing.assert_allclose(mse.sum(), loss, rtol=1e-5)
    np.testing.assert_allclose(render, _render_boxes(params, height, width), atol=1e-5)
    np.testing.assert_array_less(np.abs(grad - ref).max(axis=(0, 1)),
                                 2e-5 * np.abs(ref).max(axis=(0, 1)) + 1e-9)
    again = TileEngine(1, n, height, width, threads=2).loss_grad(params, target, scale)
    np.testing.assert_array_equal(again[2], grad)


def test_splats_of_several_binning_blocks_match_autograd_at_any_thread_count():
    """700 splats an image: three binning blocks (of 256) that threads bin and reduce apart."""
    height, width, n = 40, 44, 700
    params = make_params(np.random.default_rng(4), 2, n, height, width)
    params[..., 2:5] *= 0.05  # smaller splats: many tiles, a few entries each
    drop_near_cut(params, height, width)
    target = target_images(2, height, width)
    scale = 2.0 / (height * width * 3)
    results = [TileEngine(2, n, height, width, threads=t).loss_grad(params, target, scale)
               for t in (1, 2, 3)]
    for render, mse, grad in results[1:]:
        np.testing.assert_array_equal(render, results[0][0])
        np.testing.assert_array_equal(mse, results[0][1])
        np.testing.assert_array_equal(grad, results[0][2])
    render, mse, grad = results[0]
    loss, ref = _loss_grad_boxes(params, target)
    np.testing.assert_allclose(mse.sum(), loss, rtol=1e-5)
    np.testing.assert_allclose(render, _render_boxes(params, height, width), atol=1e-5)
    np.testing.assert_array_less(np.abs(grad - ref).max(axis=(0, 1)),
                                 2e-5 * np.abs(ref).max(axis=(0, 1)) + 1e-9)


def test_footprint_twins_agree_and_bound_the_ellipse():
    height, width, n = 40, 50, 200
    params = make_params(np.random.default_rng(2), 1, n, height, width)[0]
    boxes = np.empty((n, 4), np.int32)
    tiles.native().footprints(params, boxes, n, height, width, K_SIGMA)
    np.testing.assert_array_equal(boxes, tiles.footprint(params, height, width))
    inside = tiles.exponent(params[None], height, width)[0] <= K_SIGMA ** 2  # [N, H, W]
    for s in range(n):  # every pixel of the ellipse lies in the box
        rows, cols = np.nonzero(inside[s])
        if len(rows):
            x0, x1, y0, y1 = boxes[s]
            assert x0 <= cols.min() and cols.max() < x1 and y0 <= rows.min() and rows.max() < y1


def test_garbage_splats_cover_nothing_and_bad_buffers_are_refused():
    params = make_params(np.random.default_rng(4), 1, 6, 10, 10)
    params[0, 0, 0] = np.nan
    params[0, 1, 2] = np.inf
    params[0, 2, 4] = 0.0
    engine = TileEngine(1, 6, 10, 10)
    image = engine.forward(params)
    np.testing.assert_allclose(image, _render_boxes(params[:, 3:], 10, 10), atol=1e-5)
    with pytest.raises(ValueError, match="params: expected"):
        engine.forward(params[:, :3])
    with pytest.raises(ValueError, match="C-contiguous buffer"):
        tiles.native().run(params, None, np.empty(5, np.float32), None, None, 1, 6, 10, 10,
                           3.5, 0.0, 1)
    with pytest.raises(ValueError, match="positive"):
        tiles.native().run(params, None, None, None, None, 0, 6, 10, 10, 3.5, 0.0, 1)


def test_fitter_falls_back_to_the_window_engine_with_a_warning():
    """Without the C engine (as after an install without a compiler) `fit_images` warns and fits
    with the NumPy window engine."""
    code = ("import warnings, numpy as np\n"
            "from gsformat.fitting import fit_images\n"
            "img = np.random.default_rng(0).random((1, 24, 24, 3))\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    result = fit_images(img, 16, 20)\n"
            "assert any('tile engine is not built' in str(w.message) for w in caught), caught\n"
            "print(float(result.psnr[0]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "GSFORMAT_NO_NATIVE": "1"})
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) > 10


def test_install_without_a_c_compiler_builds_and_falls_back(tmp_path):
    """A machine without a C compiler still installs: the wheel is built without the extensions
    (setuptools' optional extensions; the fallback test above shows it then fits)."""
    import glob
    import os
    import zipfile
    import shutil
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    source = tmp_path / "src"  # the tracked files alone: no extension built in the tree before
    source.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(root, name), source / name)
    shutil.copytree(os.path.join(root, "gsformat"), source / "gsformat",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    env = dict(os.environ, CC="false", LDSHARED="false")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                          "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    names = zipfile.ZipFile(glob.glob(str(tmp_path / "*.whl"))[0]).namelist()
    assert not any(name.endswith(".so") for name in names), names
    assert "gsformat/fitting/tiles.py" in names and "gsformat/fitting/kernel.py" in names
