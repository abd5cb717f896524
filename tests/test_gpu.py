"""CuPy path against its NumPy twin (same xp code); skipped without a GPU."""
import numpy as np
import pytest

from gsformat.fitting import fit_images
from gsformat.fitting.kernel import WindowKernel
from test_fitting_kernel import make_params
from test_tiles import make_params as make_tile_params, target_images
from conftest import photo

pytestmark = pytest.mark.gpu


def test_cupy_kernel_matches_numpy():
    import cupy
    rng = np.random.default_rng(0)
    params = make_params(rng, 3, 64, 40, 48, 6, 2.0)
    target = rng.random((3, 40, 48, 3), dtype=np.float32)
    outs = []
    for xp in (np, cupy):
        k = WindowKernel(xp, 3, 64, 40, 48, 6)
        image = k.forward(xp.asarray(params))
        grad = k.backward(xp.asarray(params), (image - xp.asarray(target)) * 1e-3)
        outs.append((cupy.asnumpy(image) if xp is cupy else image,
                     cupy.asnumpy(grad) if xp is cupy else grad))
    np.testing.assert_allclose(outs[1][0], outs[0][0], atol=1e-5)
    np.testing.assert_allclose(outs[1][1], outs[0][1], atol=1e-6, rtol=1e-3)


def test_fused_cuda_kernels_match_numpy():
    """The fused kernels (threads, warp reduction, atomics) against the array-code twin."""
    import cupy
    from gsformat.fitting.cuda_kernel import CudaWindowKernel
    rng = np.random.default_rng(1)
    for batch, n, height, width, radius in ((3, 64, 40, 48, 6), (2, 300, 64, 64, 11)):
        params = make_params(rng, batch, n, height, width, radius, 2.0)
        target = rng.random((batch, height, width, 3), dtype=np.float32)
        twin = WindowKernel(np, batch, n, height, width, radius)
        image = twin.forward(params)
        grad = twin.backward(params, (image - target) * 1e-3)
        fused = CudaWindowKernel(cupy, batch, n, height, width, radius)
        image_gpu = fused.forward(cupy.asarray(params))
        grad_gpu = fused.backward(cupy.asarray(params), (image_gpu - cupy.asarray(target)) * 1e-3)
        np.testing.assert_allclose(cupy.asnumpy(image_gpu), image, atol=1e-5)
        np.testing.assert_allclose(cupy.asnumpy(grad_gpu), grad, atol=1e-6, rtol=1e-3)


@pytest.mark.parametrize("engine", ["window", "window-xp"])
def test_cupy_fit_matches_numpy_quality(engine):
    images = np.stack([photo("astronaut", 64), photo("coffee", 64)])
    cpu = fit_images(images, 256, 200, backend="numpy").psnr
    gpu = fit_images(images, 256, 200, backend="cupy", engine=engine).psnr
    np.testing.assert_allclose(gpu, cpu, atol=0.1)


def test_render_splats_cuda_matches_cpu():
    import torch
    from gsformat import render_splats
    splats = fit_images(photo("chelsea", 48)[None], 100, 50, backend="numpy").splats
    cpu = render_splats(splats)
    gpu = render_splats([s for s in splats], height=48, width=48)
    params = torch.from_numpy(splats[0].params.astype(np.float32)).cuda()
    cuda = render_splats(params, height=48, width=48).cpu()
    torch.testing.assert_close(cuda, cpu, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gpu, cpu)


# ---- the CUDA tile engine (gsformat.fitting.cuda_tiles) --------------------------------------
@pytest.mark.parametrize("batch, height, width, n", [(3, 37, 45, 40), (2, 64, 80, 300),
                                                     (3, 224, 224, 1600)])
def test_cuda_tiles_match_the_c_engine(batch, height, width, n):
    """Values and gradients against the C engine, as tests/test_cuda_tiles_on_cpu.py does
    through the shim; gradients are summed by float atomics here (order: float rounding)."""
    import cupy
    from gsformat.fitting import tiles
    from gsformat.fitting.cuda_tiles import CudaTileEngine
    params = make_tile_params(np.random.default_rng(n), batch, n, height, width)
    target = target_images(batch, height, width)
    scale = 2.0 / (height * width * 3)
    c_render, c_mse, c_grad = tiles.TileEngine(batch, n, height, width, threads=4).loss_grad(
        params, target, scale)
    engine = CudaTileEngine(batch, n, height, width)
    render, mse, grad = (cupy.asnumpy(a) for a in engine.loss_grad(
        cupy.asarray(params), cupy.asarray(target), scale))
    np.testing.assert_allclose(render, c_render, atol=1e-5 * np.abs(c_render).max(), rtol=1e-5)
    np.testing.assert_allclose(mse, c_mse, rtol=1e-5)
    np.testing.assert_array_less(np.abs(grad - c_grad).max(axis=(0, 1)),
                                 1e-5 * np.abs(c_grad).max(axis=(0, 1)) + 1e-12)
    forward = cupy.asnumpy(engine.forward(cupy.asarray(params)))
    np.testing.assert_array_equal(forward, render)  # no atomics in the render: the same bits


def test_cuda_tiles_fused_adam_matches_the_array_code():
    import cupy
    from gsformat.fitting.cuda_tiles import CudaTileEngine
    from gsformat.fitting.fit import FitOptions, _BatchFit
    batch, n, height, width = 4, 500, 64, 64
    rng = np.random.default_rng(2)
    params = make_tile_params(rng, batch, n, height, width)
    grad = rng.normal(0, 1e-3, params.shape).astype(np.float32)
    fit = object.__new__(_BatchFit)  # only what adam_step reads
    fit.xp, fit.opts, fit.height, fit.width = cupy, FitOptions(iters=100), height, width
    fit.lr_base = cupy.asarray([0.3] * 2 + [0.15] * 3 + [0.016] * 3, dtype=cupy.float32)
    fit.radii = cupy.full(n, 12.0, cupy.float32)
    fit.params = cupy.asarray(params)
    fit.m, fit.v = cupy.zeros_like(fit.params), cupy.zeros_like(fit.params)
    ours = [a.copy() for a in (fit.params, fit.m, fit.v)]
    engine = CudaTileEngine(batch, n, height, width)
    for step in range(3):
        fit.adam_step(step, cupy.asarray(grad))
        engine.adam_step(ours[0], cupy.asarray(grad), ours[1], ours[2],
                         fit.lr_base * (1.0 / (1 - 0.9 ** (step + 1))), 1 - 0.999 ** (step + 1),
                         fit.radii)
    for mine, theirs in zip(ours, (fit.params, fit.m, fit.v)):
        np.testing.assert_allclose(cupy.asnumpy(mine), cupy.asnumpy(theirs), rtol=1e-5,
                                   atol=1e-7)


def test_cupy_tile_fit_matches_the_cpu_tile_fit():
    """engine 'tiles' on CuPy (gsformat/fitting/engine.py hands it to CudaTileEngine): the same
    fit as the C engine's to within float rounding of the summation order."""
    images = np.stack([photo("astronaut", 64), photo("coffee", 64)])
    cpu = fit_images(images, 256, 200, backend="numpy", engine="tiles").psnr
    gpu = fit_images(images, 256, 200, backend="cupy", engine="tiles").psnr
    auto = fit_images(images, 256, 200, backend="cupy").psnr
    np.testing.assert_allclose(gpu, cpu, atol=0.1)
    np.testing.assert_allclose(auto, gpu, atol=0.05)
