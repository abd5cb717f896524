"""The CUDA tile kernels (gsformat.fitting.cuda_tiles), compiled for the CPU by tests/cuda_shim.py
and run block by block with their threads in lockstep between barriers, against the C tile engine
(values, loss, gradients) and the dense reference twins, on mixed batches; and the shim itself.

CI has no GPU: this is where every run checks the kernels' arithmetic, their barriers, warp
shuffles and atomics (tests/test_gpu.py runs them on a GPU). Tolerances: the render and the loss
within float32 rounding of the C engine (both sum a pixel's splats in entry order; exp differs
in the last bits), gradients within 10⁻⁶ of each kind's largest value (the block reduces its
pixels' terms as a tree, C in lanes of 8).
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from gsformat.core.render_math import sigma_max
from gsformat.fitting import cuda_tiles, cupy_available, fit_images, tiles
from gsformat.fitting.cuda_tiles import CudaTileEngine
from gsformat.fitting.fit import FitOptions, _BatchFit, lr_decay
from gsformat.fitting.tiles import _loss_grad_boxes, _render_boxes
from cuda_shim import CudaOnCpu, ShimError, compiler
from test_tiles import make_params, target_images

pytestmark = pytest.mark.skipif(compiler() is None, reason="no C++ compiler")
needs_c_engine = pytest.mark.skipif(tiles.native() is None, reason="the C tile engine is not built")

SHIM_KERNELS = r"""
// each thread doubles its value into shared memory; after the barrier it reads its neighbour's
extern "C" __global__ void neighbour(const float* values, float* out) {
    __shared__ float cell[256];
    const int i = threadIdx.x, n = blockDim.x;
    cell[i] = 2.0f * values[blockIdx.x * n + i];
    __syncthreads();
    out[blockIdx.x * n + i] = cell[(i + 1) % n];
}

// shfl_down and shfl_xor reductions over each warp; atomics into one counter
extern "C" __global__ void warp_sums(const float* values, float* down, double* butterfly,
                                     float* total, int* hits) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    float a = values[i];
    double b = values[i];
    for (int offset = 16; offset > 0; offset >>= 1) {
        a += __shfl_down_sync(0xffffffffu, a, offset);
        b += __shfl_xor_sync(0xffffffffu, b, offset);
    }
    down[i] = a;
    butterfly[i] = b;
    atomicAdd(total, values[i]);
    atomicAdd(hits + threadIdx.x % 4, 1);
}

// thread 0 leaves before the barrier the others wait at
extern "C" __global__ void early_exit(float* out) {
    __shared__ float cell[64];
    if (threadIdx.x == 0) return;
    cell[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = cell[threadIdx.x - 1];
}

// half a warp shuffles, the other half does not
extern "C" __global__ void divergent_shuffle(float* out, unsigned mask) {
    float v = (float)threadIdx.x;
    if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(mask, v, 1);
    out[threadIdx.x] = v;
}
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cuda_on_cpu"))


@pytest.fixture(scope="module")
def kernels(folder):
    return CudaOnCpu(cuda_tiles.SOURCE, folder=folder)


@pytest.fixture(scope="module")
def shim_kernels(folder):
    return CudaOnCpu(SHIM_KERNELS, folder=folder)


# ---- the shim --------------------------------------------------------------------------------
def test_barrier_orders_shared_memory_and_is_needed(folder, shim_kernels):
    values = np.arange(3 * 64, dtype=np.float32)
    expected = 2 * np.roll(values.reshape(3, 64), -1, axis=1).ravel()
    out = np.zeros_like(values)
    shim_kernels("neighbour", 3, 64, (values, out))
    np.testing.assert_array_equal(out, expected)
    without = CudaOnCpu(SHIM_KERNELS, defines=("SHIM_NO_BARRIER",), folder=folder)
    out[:] = 0
    without("neighbour", 3, 64, (values, out))  # each thread reads before its neighbour wrote
    assert (out != expected).sum() >= 3


def test_shuffles_and_atomics(shim_kernels):
    values = np.random.default_rng(0).integers(-50, 50, 128).astype(np.float32)
    down, butterfly = np.zeros(128, np.float32), np.zeros(128, np.float64)
    total, hits = np.zeros(1, np.float32), np.zeros(4, np.int32)
    shim_kernels("warp_sums", 2, 64, (values, down, butterfly, total, hits))
    lane = np.arange(32)
    for first in range(0, 128, 32):  # what CUDA defines, warp by warp
        a = values[first:first + 32].copy()
        b = a.astype(np.float64)
        for offset in (16, 8, 4, 2, 1):
            a = a + a[np.where(lane + offset < 32, lane + offset, lane)]  # beyond: its own
            b = b + b[lane ^ offset]
        np.testing.assert_array_equal(down[first:first + 32], a)
        np.testing.assert_array_equal(butterfly[first:first + 32], b)
    assert total[0] == values.sum()
    np.testing.assert_array_equal(hits, [32, 32, 32, 32])


def test_divergent_barriers_and_shuffles_are_errors(shim_kernels):
    with pytest.raises(ShimError, match="thread 0: returned while other threads wait"):
        shim_kernels("early_exit", 1, 64, (np.zeros(64, np.float32),))
    with pytest.raises(ShimError, match="returned while its warp waits at a shuffle"):
        shim_kernels("divergent_shuffle", 1, 32, (np.zeros(32, np.float32),
                                                  np.uint32(0xffffffff)))
    with pytest.raises(ShimError, match="shuffle mask 0xffff .only full warps"):
        shim_kernels("divergent_shuffle", 1, 32, (np.zeros(32, np.float32), np.uint32(0xffff)))
    with pytest.raises(TypeError, match="NumPy scalars"):
        shim_kernels("early_exit", 1, 64, (3,))


# ---- the tile kernels against the C engine and the dense references --------------------------
def scale_of(reference):
    return np.abs(reference).max(axis=(0, 1))  # per parameter kind


@pytest.mark.parametrize("batch, height, width, n", [(3, 32, 40, 24), (2, 17, 35, 16)])
def test_forward_matches_the_c_engine_and_the_dense_reference(kernels, batch, height, width, n):
    params = make_params(np.random.default_rng(height), batch, n, height, width)
    image = CudaTileEngine(batch, n, height, width, xp=np, kernels=kernels).forward(params)
    reference = _render_boxes(params, height, width)
    np.testing.assert_allclose(image, reference, atol=3e-6 * np.abs(reference).max(), rtol=1e-5)
    if tiles.native() is not None:
        c_image = tiles.TileEngine(batch, n, height, width).forward(params)
        np.testing.assert_allclose(image, c_image, atol=1e-6 * np.abs(c_image).max(), rtol=1e-6)


@needs_c_engine
@pytest.mark.parametrize("batch, height, width, n, wide", [(3, 32, 40, 24, False),
                                                           (2, 17, 35, 16, True)])
def test_loss_and_gradient_match_the_c_engine(kernels, batch, height, width, n, wide):
    params = make_params(np.random.default_rng(width), batch, n, height, width)
    target = target_images(batch, height, width)
    scale = 2.0 / (height * width * 3)
    engine = CudaTileEngine(batch, n, height, width, xp=np, kernels=kernels, wide_keys=wide)
    render, mse, grad = engine.loss_grad(params, target, scale)
    c_render, c_mse, c_grad = tiles.TileEngine(batch, n, height, width).loss_grad(
        params, target, scale)
    np.testing.assert_allclose(render, c_render, atol=1e-6 * np.abs(c_render).max(), rtol=1e-6)
    np.testing.assert_allclose(mse, c_mse, rtol=1e-6)
    np.testing.assert_array_less(np.abs(grad - c_grad).max(axis=(0, 1)),
                                 1e-6 * scale_of(c_grad) + 1e-12)
    assert engine.pairs > batch * n  # splats span several tiles


def test_loss_and_gradient_match_autograd(kernels):
    batch, height, width, n = 3, 32, 40, 24
    params = make_params(np.random.default_rng(7), batch, n, height, width)
    target = target_images(batch, height, width)
    engine = CudaTileEngine(batch, n, height, width, xp=np, kernels=kernels)
    render, mse, grad = engine.loss_grad(params, target, 2.0 / (height * width * 3))
    loss, reference = _loss_grad_boxes(params, target)
    np.testing.assert_allclose(mse.sum(), loss, rtol=1e-5)
    np.testing.assert_allclose(render, _render_boxes(params, height, width), atol=1e-5)
    np.testing.assert_array_less(np.abs(grad - reference).max(axis=(0, 1)),
                                 2e-5 * scale_of(reference) + 1e-9)


@needs_c_engine
def test_a_crowded_tile_loads_its_splats_in_batches(kernels):
    """600 splats on one tile: three loads of at most 256 into shared memory, 19 reduction
    rounds of at most 32 splats (the last partial)."""
    height = width = 16
    n = 600
    rng = np.random.default_rng(3)
    params = np.zeros((1, n, 8), np.float32)
    params[..., 0:2] = rng.uniform(0, 16, (1, n, 2))
    params[..., 2] = params[..., 4] = rng.uniform(0.4, 3.0, (1, n))
    params[..., 3] = rng.normal(0, 0.5, (1, n))
    params[..., 5:8] = rng.uniform(-0.2, 0.3, (1, n, 3))
    near = np.abs(tiles.exponent(params, height, width) - tiles.K_SIGMA ** 2) < 1e-3
    params[..., 5:8] *= ~near.any(axis=(2, 3))[..., None]  # splats near their cut: colour 0
    target = target_images(1, height, width)
    engine = CudaTileEngine(1, n, height, width, xp=np, kernels=kernels)
    render, mse, grad = engine.loss_grad(params, target, 1e-2)
    assert engine.pairs == n
    c_render, c_mse, c_grad = tiles.TileEngine(1, n, height, width).loss_grad(params, target, 1e-2)
    np.testing.assert_allclose(render, c_render, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(mse, c_mse, rtol=1e-6)
    live = params[0, :, 5:8].any(axis=1)  # the geometry gradient of a colourless splat is 0
    np.testing.assert_array_less(np.abs(grad - c_grad)[:, live].max(axis=(0, 1)),
                                 1e-6 * scale_of(c_grad) + 1e-12)


@pytest.mark.parametrize("defines, same", [(("SHIM_REVERSE",), True),
                                            (("SHIM_NO_BARRIER",), False)])
def test_the_tile_kernel_has_no_race_and_needs_its_barriers(folder, kernels, defines, same):
    """Threads run in the opposite order within each phase: the same bits (no two accesses of
    one phase conflict); without barriers: a different result."""
    batch, height, width, n = 2, 20, 33, 300
    params = make_params(np.random.default_rng(11), batch, n, height, width)
    target = target_images(batch, height, width)
    results = [CudaTileEngine(batch, n, height, width, xp=np, kernels=k).loss_grad(
        params, target, 1e-3) for k in (kernels, CudaOnCpu(cuda_tiles.SOURCE, defines, folder))]
    equal = [np.array_equal(a, b) for a, b in zip(*results)]
    assert equal == [same] * 3


def test_garbage_splats_and_empty_images_cover_nothing(kernels):
    params = make_params(np.random.default_rng(4), 2, 6, 10, 10)
    params[0, 0, 0] = np.nan
    params[0, 1, 2] = np.inf
    params[0, 2, 4] = 0.0
    params[1, :, 0] = -100.0  # the whole second image: off the canvas
    engine = CudaTileEngine(2, 6, 10, 10, xp=np, kernels=kernels)
    image = engine.forward(params)
    np.testing.assert_allclose(image[0], _render_boxes(params[:1, 3:], 10, 10)[0], atol=1e-5)
    assert not image[1].any()
    render, mse, grad = engine.loss_grad(params, np.ones((2, 10, 10, 3), np.float32), 1.0)
    assert not grad[0, :3].any() and not grad[1].any()
    np.testing.assert_allclose(mse[1], 1.0)
    engine = CudaTileEngine(1, 2, 10, 10, xp=np, kernels=kernels)
    blank = np.zeros((1, 2, 8), np.float32)  # l11 = l22 = 0: no pair at all
    assert not engine.forward(blank).any() and engine.pairs == 0
    with pytest.raises(ValueError, match="params: expected"):
        engine.forward(params)


def test_fused_adam_step_matches_the_fitter(kernels):
    batch, n, height, width = 2, 40, 24, 30
    rng = np.random.default_rng(9)
    params = make_params(rng, batch, n, height, width)
    params[..., 2:5] = np.abs(params[..., 2:5]) * rng.uniform(0.1, 1.0, (batch, n, 1))
    grad = rng.normal(0, 1e-3, (batch, n, 8)).astype(np.float32)
    fit = object.__new__(_BatchFit)  # only what adam_step reads
    fit.xp, fit.opts = np, FitOptions(iters=300, lr_final=0.2, lr_decay_from=0.3)
    fit.engine = None  # the array code's Adam (the CUDA engine's own would call itself)
    fit.height, fit.width = height, width
    fit.lr_base = np.asarray([0.03] * 2 + [0.015] * 3 + [0.008] * 3, np.float32)
    fit.radii = np.where(np.arange(n) < 30, 8.0, 20.0).astype(np.float32)
    fit.params, fit.m = params.copy(), rng.normal(0, 1e-3, (batch, n, 8)).astype(np.float32)
    fit.v = (fit.m ** 2 * 2).astype(np.float32)
    engine = CudaTileEngine(batch, n, height, width, xp=np, kernels=kernels)
    ours = params.copy(), fit.m.copy(), fit.v.copy()
    for step in (0, 57, 299):
        fit.adam_step(step, grad)
        decay = lr_decay(step, 300, 0.2, 0.3)
        lr = fit.lr_base * (decay / (1 - 0.9 ** (step + 1)))
        engine.adam_step(ours[0], grad, ours[1], ours[2], lr, 1 - 0.999 ** (step + 1), fit.radii)
        for mine, theirs in zip(ours, (fit.params, fit.m, fit.v)):
            np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-9)
    assert (3 * sigma_max(np, params) > fit.radii).any()  # the clamps had work to do
    assert (3 * sigma_max(np, ours[0]) <= fit.radii * (1 + 1e-6)).all()


@needs_c_engine
def test_the_fitter_runs_on_the_emulated_kernels(kernels, monkeypatch):
    """`fit_images` with its tile engine replaced by the kernels (as engine.py hands CuPy fits
    to them): the same fit as with the C engine, relocation included."""
    from gsformat.fitting import fit as fit_module
    from conftest import photo
    images = np.stack([photo("astronaut", 32), photo("coffee", 32)])
    options = dict(backend="numpy", engine="tiles", relocate_every=10)
    c_fit = fit_images(images, 48, 40, **options)
    made = []

    def make_engine(name, threads, xp, batch, height, width, classes, k_sigma):
        made.append(CudaTileEngine(batch, sum(c for c, _ in classes), height, width, k_sigma,
                                   xp=xp, kernels=kernels))
        return made[-1]

    monkeypatch.setattr(fit_module, "make_engine", make_engine)
    emulated = fit_images(images, 48, 40, **options)
    assert made and made[0].pairs > 0
    np.testing.assert_allclose(emulated.psnr, c_fit.psnr, atol=0.01)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA compiler")
def test_the_source_compiles_for_a_gpu(tmp_path):
    """Where a CUDA toolkit is installed: the same source compiles for sm_90 without spills."""
    source = tmp_path / "tiles.cu"
    source.write_text(cuda_tiles.SOURCE)
    out = subprocess.run(["nvcc", "-cubin", "-arch=sm_90", "-Xptxas", "-v", str(source), "-o",
                          str(tmp_path / "tiles.cubin")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "0 bytes spill stores" in out.stderr and " spill stores" in out.stderr
    assert all(line.endswith("0 bytes spill loads") for line in out.stderr.splitlines()
               if "spill loads" in line)


# ---- the GPU benchmark's script, where there is no GPU ----------------------------------------
def test_gpu_bench_explains_itself_without_a_gpu():
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "gpu_bench.py")
    usage = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True)
    assert usage.returncode == 0 and "--budget-s" in usage.stdout and "--dry-run" in usage.stdout
    if cupy_available():
        return
    run = subprocess.run([sys.executable, script], capture_output=True, text=True)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and "needs CuPy and a CUDA GPU" in run.stderr
