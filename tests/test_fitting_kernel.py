"""Fast windowed kernel vs its reference twins: values (dense NumPy) and gradients (autograd)."""
import numpy as np
import pytest

from gsformat.fitting.kernel import WindowKernel
from gsformat.fitting.reference import _loss_torch, _render_dense
from conftest import photo


def make_params(rng, batch, n, height, width, radius, anisotropy=1.0):
    """Splats whose 3σ fits the window (what the fitter guarantees), some on the border."""
    p = np.zeros((batch, n, 8), np.float32)
    p[..., 0] = rng.uniform(0, width, (batch, n))
    p[..., 1] = rng.uniform(0, height, (batch, n))
    p[:, 0, :2] = [0.1, 0.2]                       # top-left corner
    p[:, 1, :2] = [width - 0.05, height / 2]       # right edge
    p[:, 2, :2] = [width / 2, height - 0.01]       # bottom edge
    s = radius / 5.0  # 5σ inside the window: truncation below e^-12.5
    p[..., 2] = rng.uniform(0.3, s, (batch, n))
    p[..., 4] = rng.uniform(0.3, s, (batch, n)) / anisotropy
    p[..., 3] = rng.uniform(-0.5, 0.5, (batch, n)) * p[..., 4]
    p[..., 5:8] = rng.uniform(-1, 1.5, (batch, n, 3))
    return p


@pytest.mark.parametrize("height, width, n, radius, anisotropy", [
    (24, 30, 16, 6, 1.0), (17, 9, 8, 5, 4.0), (12, 40, 10, 20, 2.0)])
def test_forward_matches_dense_reference(height, width, n, radius, anisotropy):
    rng = np.random.default_rng(height)
    params = make_params(rng, 2, n, height, width, radius, anisotropy)
    image = WindowKernel(np, 2, n, height, width, radius).forward(params)
    for b in range(2):
        ref = _render_dense(params[b], height, width)
        np.testing.assert_allclose(image[b], ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("height, width, n, radius, anisotropy", [
    (20, 26, 12, 6, 1.0), (16, 16, 6, 4, 5.0)])
def test_backward_matches_autograd(height, width, n, radius, anisotropy):
    rng = np.random.default_rng(7)
    params = make_params(rng, 2, n, height, width, radius, anisotropy)
    target = photo("coffee", 64)[:height, :width].astype(np.float32)[None].repeat(2, 0) / 255
    kernel = WindowKernel(np, 2, n, height, width, radius)
    image = kernel.forward(params)
    grad = kernel.backward(params, (image - target) * (2.0 / (height * width * 3)))
    loss, ref = _loss_torch(params, target)
    scale = np.abs(ref).max(axis=(0, 1))  # per parameter kind
    np.testing.assert_array_less(np.abs(grad - ref).max(axis=(0, 1)), 1e-4 * scale + 1e-9)


def test_window_clipped_to_canvas_smaller_than_window():
    params = make_params(np.random.default_rng(3), 1, 5, 7, 9, 3)
    image = WindowKernel(np, 1, 5, 7, 9, radius=10).forward(params)
    np.testing.assert_allclose(image[0], _render_dense(params[0], 7, 9), atol=2e-5)


def test_memory_estimate_covers_buffers():
    kernel = WindowKernel(np, 2, 100, 32, 32, 4)
    held = sum(a.nbytes for a in (kernel.g, kernel.tmp, kernel.idx,
                                  kernel.gathered))
    assert held <= WindowKernel.bytes_needed(2, 100, 32, 32, 4)


def test_threaded_kernel_matches_single():
    from gsformat.fitting.kernel import RangeKernel
    rng = np.random.default_rng(5)
    params = make_params(rng, 2, 300, 40, 52, 6, 2.0)
    target = rng.random((2, 40, 52, 3), dtype=np.float32)
    results = []
    for kernel in (WindowKernel(np, 2, 300, 40, 52, 6), RangeKernel(np, 2, 40, 52, [(300, 6)], 3)):
        image = kernel.forward(params)
        results.append((image, kernel.backward(params, (image - target) * 1e-3)))
    np.testing.assert_allclose(results[1][0], results[0][0], atol=1e-6)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-5, atol=1e-9)


def test_moved_windows_are_rewritten():
    """A kernel reused across steps rewrites only the windows whose centre crossed a pixel;
    after any move it must render what a fresh kernel renders (and the dense reference)."""
    rng = np.random.default_rng(11)
    params = make_params(rng, 2, 20, 30, 34, 5)
    kernel = WindowKernel(np, 2, 20, 30, 34, 5)
    kernel.forward(params)
    moved = params.copy()
    moved[:, ::3, 0] += 1.7   # every third splat crosses at least one pixel column
    moved[:, 1::4, 1] -= 0.6  # some cross a row
    np.clip(moved[..., 0], 0, 34, out=moved[..., 0])
    np.clip(moved[..., 1], 0, 30, out=moved[..., 1])
    image = kernel.forward(moved)
    np.testing.assert_array_equal(image, WindowKernel(np, 2, 20, 30, 34, 5).forward(moved))
    for b in range(2):
        np.testing.assert_allclose(image[b], _render_dense(moved[b], 30, 34), atol=2e-5,
                                   rtol=1e-4)
