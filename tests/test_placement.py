"""Per-splat extents (size classes) and error-driven relocation: the renderer against the dense
reference (values, gradients), relocation's budget, determinism and loss bound, rebinning."""
import numpy as np
import pytest

from gsformat.fitting import fit_images
from gsformat.fitting import fit as fit_module
from gsformat.fitting import placement
from gsformat.fitting.kernel import RangeKernel
from gsformat.fitting.reference import _loss_torch, _render_dense
from conftest import photo
from test_fitting_kernel import make_params

CLASSES = [(14, 4), (4, 12)]  # small windows, then a few large ones


def mixed_params(rng, height, width):
    """Splats of very different sizes, some on the border: each class within its window."""
    small = make_params(rng, 2, CLASSES[0][0], height, width, CLASSES[0][1])
    large = make_params(rng, 2, CLASSES[1][0], height, width, CLASSES[1][1])
    large[..., 2] = rng.uniform(1.6, CLASSES[1][1] / 5, large.shape[:2])
    large[..., 4] = rng.uniform(1.6, CLASSES[1][1] / 5, large.shape[:2])
    large[..., 3] = rng.uniform(-0.5, 0.5, large.shape[:2]) * large[..., 4]
    large[:, 0, :2] = [width - 0.2, 0.3]  # a large splat in a corner
    return np.concatenate([small, large], axis=1)


@pytest.mark.parametrize("threads", [1, 3])
def test_size_classes_match_dense_reference(threads):
    height, width = 30, 26
    params = mixed_params(np.random.default_rng(1), height, width)
    sigma = fit_module.sigma_max(np, params)
    assert sigma[:, 14:].min() > 1.5 * sigma[:, :14].max()  # really different sizes
    kernel = RangeKernel(np, 2, height, width, CLASSES, threads)
    image = kernel.forward(params)
    for b in range(2):
        np.testing.assert_allclose(image[b], _render_dense(params[b], height, width),
                                   atol=2e-5, rtol=1e-4)
    target = photo("coffee", 64)[:height, :width].astype(np.float32)[None].repeat(2, 0) / 255
    grad = kernel.backward(params, (image - target) * (2.0 / (height * width * 3)))
    _, ref = _loss_torch(params, target)
    scale = np.abs(ref).max(axis=(0, 1))
    np.testing.assert_array_less(np.abs(grad - ref).max(axis=(0, 1)), 1e-4 * scale + 1e-9)
    kernel.close()


def test_per_splat_clamp_keeps_each_class_in_its_window():
    params = np.zeros((1, 4, 8), np.float32)
    params[..., 2] = params[..., 4] = 50.0
    radii = np.array([4, 4, 12, 12], np.float32)
    fit_module.clamp_covariance(np, params, radii)
    np.testing.assert_allclose(3 * fit_module.sigma_max(np, params)[0], radii, rtol=1e-5)


def test_rebin_swaps_grown_and_shrunk_splats():
    params = np.zeros((1, 6, 8), np.float32)
    params[..., 2] = params[..., 4] = [1.0, 1.33, 0.5, 0.5, 4.0, 0.4]  # 3σ vs R_small = 4
    params[..., 5] = np.arange(6)  # identity of each splat
    m, v = params.copy(), params.copy()
    fit_module.rebin(np, params, (m, v), [(4, 4), (2, 12)])
    # splat 1 (3σ = 3.99 ≥ 0.95·4) went up, splat 5 (3σ = 1.2) came down; the rest stayed
    assert params[0, :, 5].tolist() == [0, 5, 2, 3, 4, 1]
    assert np.array_equal(m, params) and np.array_equal(v, params)


def _fit(**options):
    image = photo("astronaut", 48)[None]
    settings = dict(relocate_every=40, relocate_fraction=0.1, seed=3, history=True)
    return fit_images(image, 120, 160, **{**settings, **options})


def test_relocation_keeps_the_budget_and_is_deterministic():
    first, second = _fit(), _fit()
    assert first.splats[0].n_splats == 120
    assert first.splats[0] == second.splats[0]
    assert np.array_equal(first.history, second.history)
    assert not np.array_equal(first.history, _fit(relocate_every=0).history)


def test_relocation_never_raises_the_loss_beyond_its_tolerance():
    tolerance = fit_module.FitOptions().placement.relocate_tolerance
    history = _fit().history[:, 0]
    for step in placement.relocation_steps(160, 40, fit_module.FitOptions().placement.relocate_until):
        assert history[step] <= history[step - 1] * (1 + tolerance) + 1e-9


def test_relocated_colour_is_the_least_squares_fit():
    height = width = 20
    residual = np.zeros((1, height, width, 3), np.float32)
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    bump = np.exp(-0.5 * ((xx - 10.2) ** 2 + (yy - 9.7) ** 2) / 2.0 ** 2)
    residual[0] = -0.6 * bump[..., None]  # the render lacks a splat of colour 0.6 there
    colour = placement._fit_colour(np, np.array([[[10.2, 9.7]]], np.float32), 2.0, residual, 8)
    np.testing.assert_allclose(colour[0, 0], 0.6, rtol=1e-3)


def test_stratified_positions_cover_the_canvas():
    density = np.full((1, 32 * 32), 1 / 1024)
    centres, _ = placement.sample_positions(np, density, 64, 32, np.random.default_rng(0))
    cells = np.unique((centres[0] // 8).astype(int), axis=0)
    assert len(cells) == 16  # every 8×8 block holds some of the 64 (Z-order strata)
