"""The fused CUDA kernels' source (gsformat.fitting.cuda_kernel), compiled for the CPU with a
small shim, against the array-code twin `WindowKernel`: values and gradients.

CI has no GPU, so this is where the kernels' arithmetic is checked on every run; the shim runs
one thread at a time, one "lane" per splat in the backward pass (LANES = 1: the warp reduction
adds nothing); the float4 atomic is GPU-only (sm_90), its three-float fallback runs here. tests/test_gpu.py checks the real thing, threads and atomics included, on a GPU.
"""
import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from gsformat.fitting import cuda_kernel
from gsformat.fitting.kernel import WindowKernel
from test_fitting_kernel import make_params

SHIM = r"""
#define LANES 1  // one "thread" per splat: the warp reduction adds nothing
#include <math.h>
#include <stdint.h>
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
struct Dim { unsigned x; };
static Dim blockIdx, threadIdx, blockDim;
static float atomicAdd(float* p, float v) { float old = *p; *p += v; return old; }
static double __shfl_down_sync(unsigned, double, int) { return 0.0; }  // lanes 1–31 are absent
static void __syncthreads() {}
"""

DRIVER = r"""
extern "C" void run_forward(const float* params, float* g, long long* idx, float* image,
                            long long splats, int n, int H, int W, int R, int ky, int kx,
                            int mode) {
    blockDim.x = 1; threadIdx.x = 0;
    for (long long s = 0; s < splats; s++) {
        blockIdx.x = (unsigned)s;
        window_forward(params, g, idx, image, splats, n, H, W, R, ky, kx, mode);
    }
}
extern "C" void run_backward(const float* params, const float* grad_image, float* grad,
                             long long splats, int n, int H, int W, int R, int ky, int kx) {
    blockDim.x = 1; threadIdx.x = 0;
    for (long long s = 0; s < splats; s++) {
        blockIdx.x = (unsigned)s;
        window_backward(params, grad_image, grad, splats, n, H, W, R, ky, kx);
    }
}
"""


@pytest.fixture(scope="module")
def cpu_kernels(tmp_path_factory):
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    folder = tmp_path_factory.mktemp("cuda_on_cpu")
    source = folder / "kernels.cpp"
    source.write_text(SHIM + cuda_kernel._SOURCE + DRIVER)
    library = folder / "kernels.so"
    subprocess.run([compiler, "-O1", "-shared", "-fPIC", str(source), "-o", str(library)],
                   check=True, capture_output=True)
    return ctypes.CDLL(str(library))


def ptr(array):
    return array.ctypes.data_as(ctypes.c_void_p)


@pytest.mark.parametrize("height, width, n, radius, anisotropy", [
    (24, 30, 16, 6, 1.0), (17, 9, 8, 5, 4.0), (12, 40, 10, 20, 2.0)])
def test_fused_kernels_match_the_array_twin(cpu_kernels, height, width, n, radius, anisotropy):
    rng = np.random.default_rng(height)
    batch = 2
    params = make_params(rng, batch, n, height, width, radius, anisotropy)
    twin = WindowKernel(np, batch, n, height, width, radius)
    image = twin.forward(params)
    grad_image = rng.normal(0, 1e-3, image.shape).astype(np.float32)
    grad = twin.backward(params, grad_image)

    ky, kx = twin.ky, twin.kx
    g = np.empty((batch, n, ky, kx), np.float32)
    idx = np.empty((batch, n, ky * kx), np.int64)
    fused_image = np.zeros((batch * height * width, 4), np.float32)
    args = (ctypes.c_int(n), ctypes.c_int(height), ctypes.c_int(width), ctypes.c_int(radius),
            ctypes.c_int(ky), ctypes.c_int(kx))
    splats = ctypes.c_longlong(batch * n)
    store, add = cuda_kernel.FORWARD_STORE, cuda_kernel.FORWARD_ADD
    cpu_kernels.run_forward(ptr(params), None, None, ptr(fused_image), splats, *args,
                            ctypes.c_int(add))
    cpu_kernels.run_forward(ptr(params), ptr(g), ptr(idx), None, splats, *args,
                            ctypes.c_int(store))
    fused_grad = np.empty_like(grad)
    cpu_kernels.run_backward(ptr(params), ptr(np.ascontiguousarray(grad_image)),
                             ptr(fused_grad), ctypes.c_longlong(batch * n), *args)
    np.testing.assert_array_equal(idx, twin.idx)
    np.testing.assert_allclose(g, twin.g, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fused_image[:, :3].reshape(image.shape), image, rtol=1e-5,
                               atol=1e-6)
    assert not fused_image[:, 3].any()
    np.testing.assert_allclose(fused_grad, grad, rtol=1e-3, atol=1e-7)
