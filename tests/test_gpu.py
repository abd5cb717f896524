"""CuPy path against its NumPy twin (same xp code); skipped without a GPU."""
import numpy as np
import pytest

from gsformat.fitting import fit_images
from gsformat.fitting.kernel import WindowKernel
from test_fitting_kernel import make_params
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
