"""The tile engine as CUDA kernels (CuPy): a translation of the C engine `_tiles.c` for a GPU.

The same footprints, the same loss and the same gradient as `tiles.TileEngine` (its twin, with
the dense references `tiles._render_boxes` / `_loss_grad_boxes` behind it): a splat covers the
pixel centres inside its ellipse at k σ, z₁² + z₂² ≤ k², within the ellipse's bounding box
|dx| ≤ k·|l11|, |dy| ≤ k·√(l21² + l22²), which bins it into 16×16 tiles. Per call:

1. ``tile_boxes``: one thread per splat: its box (in float64, as the C ``footprint``) and the
   number of tiles it touches;
2. an exclusive prefix sum of the counts (CuPy), then ``tile_pairs``: each splat writes one key
   per tile, tile·N + splat (32-bit keys while B·T·N < 2³², else 64-bit), sorted by CuPy's radix
   sort: the (tile, splat) pairs by tile, splats in index order within a tile, as in C; the
   tiles' ranges by a binary search of the sorted keys;
3. ``tile_loss_grad``: one block per tile, one thread per pixel (256). Forward: the tile's
   splats are loaded 256 at a time into shared memory and every thread sums G·c over them for
   its pixel (in entry order, as C does per pixel); the residual, the tile's Σ r² (float64,
   reduced by warp shuffles, then across the 8 warps in shared memory) and ∂L/∂I = scale · r
   stay in registers. Backward: for each splat every thread computes its pixel's terms of the
   eight sums (Σ A z₁, Σ A z₂, Σ A z₁², Σ A z₁z₂, Σ A z₂², Σ G ∂L/∂I_c with A = G·Σ c_c ∂L/∂I_c),
   a warp reduces its 8 sums by a butterfly of 9 shuffles (reduce-scatter: lane ℓ ends with
   the sum of value (ℓ >> 2) & 7; a warp whose two pixel rows the splat's box misses skips
   them), lanes 0, 4, … write them to shared memory, and once per 32 splats (one barrier) a
   thread per splat adds the 8 warps' sums in a fixed order, turns them into the gradient and
   adds it with one atomic per value: one per splat and tile.
4. ``adam_clamp`` (`CudaTileEngine.adam_step`): the fitter's Adam step, covariance clamps and
   position clips (`fit._BatchFit.adam_step`) for the whole batch in one pass.

The gradient of a splat that spans several tiles is summed by float atomics, so its rounding
depends on the order the blocks finish in (the C engine's is fixed): runs can differ in the
last bits of the gradient, never in the render or the loss. Counting the pairs reads one number
back per call (the size of the pair list, as gsplat does): the only host round trip of an
iteration.

The same source compiles for the CPU: tests/cuda_shim.py runs each block's threads as
coroutines in lockstep phases between barriers, with the shuffles and atomics used emulated,
and tests/test_cuda_tiles_on_cpu.py compares the result with the C engine and the dense
references in every CI run; tests/test_gpu.py compares the real thing on a GPU.
"""
from __future__ import annotations

import math

import numpy as np

from .tiles import K_SIGMA, TILE

BLOCK = TILE * TILE  # threads per tile block: one per pixel

SOURCE = r"""
#define TILE 16
#define BLOCK (TILE * TILE)   // threads per tile block, one per pixel
#define WARPS (BLOCK / 32)
#define GROUP 32              // splats whose gradients are reduced per barrier
#define FULL 0xffffffffu

struct TileSplat {            // what every pixel of a tile needs of one splat
    float x, y, il11, l21, il22, r, g, b;
    int x0, x1, y0, y1;       // its box: pixel columns [x0, x1), rows [y0, y1)
};

// The footprint's bounding box of one splat (C `footprint`, in float64 as there) and the
// number of 16×16 tiles it touches; non-finite or degenerate splats cover nothing.
extern "C" __global__ void tile_boxes(
        const float* params,   // [S, 8] pixel units, S = B·N
        int* boxes,            // [S, 4] x0, x1, y0, y1
        int* counts,           // [S] tiles touched
        long long splats, int height, int width, float k_sigma) {
    const long long s = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= splats) return;
    const float* p = params + 8 * s;
    bool ok = p[2] != 0.0f && p[4] != 0.0f;
    for (int c = 0; c < 8; c++)
        ok = ok && fabsf(p[c]) <= 3.40282347e38f;  // finite: not ±inf, not NaN
    int box[4] = {0, 0, 0, 0};
    int count = 0;
    if (ok) {
        const double ex = k_sigma * fabs((double)p[2]);
        const double ey = k_sigma * sqrt((double)p[3] * p[3] + (double)p[4] * p[4]);
        double x0 = ceil(p[0] - ex - 0.5), x1 = floor(p[0] + ex - 0.5) + 1;
        double y0 = ceil(p[1] - ey - 0.5), y1 = floor(p[1] + ey - 0.5) + 1;
        x0 = x0 < 0 ? 0 : x0;
        y0 = y0 < 0 ? 0 : y0;
        x1 = x1 > width ? width : x1;
        y1 = y1 > height ? height : y1;
        if (x1 > x0 && y1 > y0) {
            box[0] = (int)x0, box[1] = (int)x1, box[2] = (int)y0, box[3] = (int)y1;
            count = ((box[1] - 1) / TILE - box[0] / TILE + 1)
                    * ((box[3] - 1) / TILE - box[2] / TILE + 1);
        }
    }
    for (int c = 0; c < 4; c++)
        boxes[4 * s + c] = box[c];
    counts[s] = count;
}

// One key per (tile, splat): (image·T + tile)·N + splat, at the splat's place in the list
// (`offsets`: the exclusive prefix sum of the counts), its tiles in row-major order.
extern "C" __global__ void tile_pairs(
        const int* boxes,             // [S, 4]
        const long long* offsets,     // [S]
        void* keys,                   // [E] unsigned int (wide = 0) or unsigned long long
        long long splats, int n_splats, int tiles_x, int tiles, int wide) {
    const long long s = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= splats) return;
    const int* box = boxes + 4 * s;
    if (box[1] <= box[0]) return;
    const long long image = s / n_splats, splat = s % n_splats;
    long long at = offsets[s];
    for (int ty = box[2] / TILE; ty <= (box[3] - 1) / TILE; ty++)
        for (int tx = box[0] / TILE; tx <= (box[1] - 1) / TILE; tx++, at++) {
            const unsigned long long key =
                (unsigned long long)((image * tiles + ty * tiles_x + tx) * n_splats + splat);
            if (wide)
                ((unsigned long long*)keys)[at] = key;
            else
                ((unsigned int*)keys)[at] = (unsigned int)key;
        }
}

__device__ __forceinline__ TileSplat load_splat(const float* p, const int* box) {
    TileSplat sp;
    sp.x = p[0], sp.y = p[1], sp.il11 = 1.0f / p[2], sp.l21 = p[3], sp.il22 = 1.0f / p[4];
    sp.r = p[5], sp.g = p[6], sp.b = p[7];
    sp.x0 = box[0], sp.x1 = box[1], sp.y0 = box[2], sp.y1 = box[3];
    return sp;
}

// G at pixel (px, py) (0 outside the splat's footprint), z₁ and z₂ for the backward pass
__device__ __forceinline__ float gaussian(const TileSplat& sp, int px, int py, float k2,
                                          float* z1, float* z2) {
    const float dx = ((float)px + 0.5f) - sp.x, dy = ((float)py + 0.5f) - sp.y;
    const float a = dx * sp.il11;
    const float b = (dy - sp.l21 * a) * sp.il22;
    const float q = a * a + b * b;
    *z1 = a;
    *z2 = b;
    const bool in = px >= sp.x0 && px < sp.x1 && py >= sp.y0 && py < sp.y1 && q <= k2;
    return in ? expf(-0.5f * q) : 0.0f;
}

// The warp's sums of 8 values, reduce-scatter by a butterfly: 4 + 2 + 1 + 2 shuffles; lane ℓ
// returns the total of value (ℓ >> 2) & 7.
__device__ __forceinline__ float warp_sums8(const float* v, int lane) {
    float half[4], quarter[2];
    const bool b4 = (lane & 16) != 0, b3 = (lane & 8) != 0, b2 = (lane & 4) != 0;
    for (int i = 0; i < 4; i++) {
        const float keep = b4 ? v[i + 4] : v[i], send = b4 ? v[i] : v[i + 4];
        half[i] = keep + __shfl_xor_sync(FULL, send, 16);
    }
    for (int i = 0; i < 2; i++) {
        const float keep = b3 ? half[i + 2] : half[i], send = b3 ? half[i] : half[i + 2];
        quarter[i] = keep + __shfl_xor_sync(FULL, send, 8);
    }
    float sum = (b2 ? quarter[1] : quarter[0])
                + __shfl_xor_sync(FULL, b2 ? quarter[0] : quarter[1], 4);
    sum += __shfl_xor_sync(FULL, sum, 2);
    sum += __shfl_xor_sync(FULL, sum, 1);
    return sum;
}

// One block per tile of the batch, one thread per pixel. mode 0: render only; mode 1: render,
// the tile's Σ (render − target)² and the gradient of grad_scale/2 · Σ r², added into `grad`
// (zeroed by the caller).
extern "C" __global__ void __launch_bounds__(BLOCK) tile_loss_grad(
        const float* params,          // [B·N, 8] pixel units
        const int* boxes,             // [B·N, 4]
        const long long* tile_start,  // [B·T + 1] entries of tile t: [tile_start[t], [t + 1])
        const int* tile_splats,       // [E] splat (within its image) of each entry
        const float* target,          // [B·H·W, 3] (mode 1)
        float* render,                // [B·H·W, 3]
        float* grad,                  // [B·N, 8] (mode 1)
        double* tile_sse,             // [B·T] (mode 1)
        int n_splats, int height, int width, int tiles_x, int tiles, float k_sigma,
        float grad_scale, int mode) {
    __shared__ TileSplat batch[BLOCK];
    __shared__ float partial[2][GROUP][WARPS][8];  // per splat of a group, per warp: 8 sums
    __shared__ double warp_sse[WARPS];
    const long long tile = blockIdx.x;
    const long long image = tile / tiles;
    const int t = (int)(tile % tiles);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int px = (t % tiles_x) * TILE + tid % TILE, py = (t / tiles_x) * TILE + tid / TILE;
    const bool inside = px < width && py < height;
    const float k2 = k_sigma * k_sigma;
    const long long first = tile_start[tile], last = tile_start[tile + 1];
    const float* image_params = params + image * n_splats * 8;
    const int* image_boxes = boxes + image * n_splats * 4;
    const long long pixel = (image * height + py) * width + px;

    // forward: Σ G·c over the tile's splats, 256 at a time through shared memory
    float acc[3] = {0.0f, 0.0f, 0.0f};
    for (long long base = first; base < last; base += BLOCK) {
        const int count = last - base < BLOCK ? (int)(last - base) : BLOCK;
        __syncthreads();  // the previous batch is used up
        if (tid < count) {
            const int s = tile_splats[base + tid];
            batch[tid] = load_splat(image_params + 8 * s, image_boxes + 4 * s);
        }
        __syncthreads();
        for (int j = 0; j < count; j++) {
            float z1, z2;
            const float G = gaussian(batch[j], px, py, k2, &z1, &z2);
            acc[0] += G * batch[j].r;
            acc[1] += G * batch[j].g;
            acc[2] += G * batch[j].b;
        }
    }
    if (inside)
        for (int c = 0; c < 3; c++)
            render[3 * pixel + c] = acc[c];
    if (mode == 0) return;  // the whole block

    // loss and ∂L/∂I = scale · (render − target); pixels off the canvas give 0
    float d[3] = {0.0f, 0.0f, 0.0f};
    double sse = 0.0;
    if (inside)
        for (int c = 0; c < 3; c++) {
            const float residual = acc[c] - target[3 * pixel + c];
            sse += (double)residual * residual;
            d[c] = grad_scale * residual;
        }
    for (int offset = 16; offset > 0; offset >>= 1)
        sse += __shfl_xor_sync(FULL, sse, offset);
    if (lane == 0) warp_sse[warp] = sse;
    __syncthreads();
    if (tid == 0) {
        double total = 0.0;
        for (int w = 0; w < WARPS; w++)
            total += warp_sse[w];
        tile_sse[tile] = total;
    }

    // backward: per splat, the block's 8 sums → its gradient, one atomic per value
    const int warp_row = (t / tiles_x) * TILE + 2 * warp;  // a warp's pixels: two rows
    int round = 0;
    for (long long base = first; base < last; base += BLOCK) {
        const int count = last - base < BLOCK ? (int)(last - base) : BLOCK;
        __syncthreads();
        if (tid < count) {
            const int s = tile_splats[base + tid];
            batch[tid] = load_splat(image_params + 8 * s, image_boxes + 4 * s);
        }
        __syncthreads();
        for (int group = 0; group < count; group += GROUP, round++) {
            const int members = count - group < GROUP ? count - group : GROUP;
            float (*sums)[WARPS][8] = partial[round & 1];  // double-buffered: one barrier
            for (int j = 0; j < members; j++) {
                const TileSplat& sp = batch[group + j];
                if (sp.y0 > warp_row + 1 || sp.y1 <= warp_row) {  // the warp's two rows: none
                    if ((lane & 3) == 0) sums[j][warp][lane >> 2] = 0.0f;
                    continue;
                }
                float z1, z2;
                const float G = gaussian(sp, px, py, k2, &z1, &z2);
                const float a = G * (sp.r * d[0] + sp.g * d[1] + sp.b * d[2]);
                const float az1 = a * z1, az2 = a * z2;
                const float v[8] = {az1, az2, az1 * z1, az1 * z2, az2 * z2,
                                    G * d[0], G * d[1], G * d[2]};
                const float sum = warp_sums8(v, lane);
                if ((lane & 3) == 0) sums[j][warp][lane >> 2] = sum;
            }
            __syncthreads();
            if (tid < members) {
                const TileSplat& sp = batch[group + tid];
                float s[8];
                for (int k = 0; k < 8; k++) {
                    s[k] = 0.0f;
                    for (int w = 0; w < WARPS; w++)
                        s[k] += sums[tid][w][k];
                }
                const float shear = sp.l21 * sp.il22;
                float* out = grad + 8 * (image * n_splats + tile_splats[base + group + tid]);
                atomicAdd(out + 0, (s[0] - shear * s[1]) * sp.il11);  // ∂L/∂x
                atomicAdd(out + 1, s[1] * sp.il22);                    // ∂L/∂y
                atomicAdd(out + 2, (s[2] - shear * s[3]) * sp.il11);  // ∂L/∂l11
                atomicAdd(out + 3, s[3] * sp.il22);                    // ∂L/∂l21
                atomicAdd(out + 4, s[4] * sp.il22);                    // ∂L/∂l22
                atomicAdd(out + 5, s[5]);
                atomicAdd(out + 6, s[6]);
                atomicAdd(out + 7, s[7]);
            }
        }
    }
}

// The fitter's Adam step with its clamps (`fit._BatchFit.adam_step`), one thread per splat:
// m, v updated; params −= lr·m / (√(v / bias2) + eps); l11, l22 ≥ min_sigma; the covariance
// scaled so that 3·σ_max ≤ the splat's radius; x in [0, W], y in [0, H].
extern "C" __global__ void adam_clamp(
        float* params, const float* grad, float* m, float* v,  // [B·N, 8] each
        const float* lr,      // [8] learning rates × decay / bias1
        const float* radii,   // [N] 3σ_max bound per splat (pixels)
        long long splats, int n_splats, float height, float width, float beta1,
        float one_minus_beta1, float beta2, float one_minus_beta2, float bias2, float eps,
        float min_sigma) {
    const long long s = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= splats) return;
    float* p = params + 8 * s;
    for (int c = 0; c < 8; c++) {
        const long long i = 8 * s + c;
        const float g = grad[i];
        const float mi = m[i] * beta1 + one_minus_beta1 * g;
        const float vi = v[i] * beta2 + one_minus_beta2 * g * g;
        m[i] = mi;
        v[i] = vi;
        p[c] -= lr[c] * mi / (sqrtf(vi / bias2) + eps);
    }
    p[2] = p[2] > min_sigma ? p[2] : min_sigma;
    p[4] = p[4] > min_sigma ? p[4] : min_sigma;
    const float a = p[2] * p[2], b = p[2] * p[3], c = p[3] * p[3] + p[4] * p[4];
    const float sigma = sqrtf(0.5f * (a + c) + sqrtf(0.25f * ((a - c) * (a - c)) + b * b));
    const float bound = radii[s % n_splats] / (3.0f * sigma);
    const float scale = bound < 1.0f ? bound : 1.0f;
    for (int k = 2; k < 5; k++)
        p[k] *= scale;
    p[0] = p[0] < 0.0f ? 0.0f : p[0] > width ? width : p[0];
    p[1] = p[1] < 0.0f ? 0.0f : p[1] > height ? height : p[1];
}
"""
KERNELS = ("tile_boxes", "tile_pairs", "tile_loss_grad", "adam_clamp")
THREADS = 256  # threads per block of the per-splat kernels
_MODULE = []   # the compiled CuPy kernels, on first use


class CupyKernels:
    """The kernels of `SOURCE` compiled by CuPy (NVRTC): ``kernels(name, blocks, threads,
    args)`` launches one on a 1-D grid. tests/cuda_shim.py has the same call for the CPU."""

    def __init__(self):
        import cupy
        module = cupy.RawModule(code=SOURCE)
        self.functions = {name: module.get_function(name) for name in KERNELS}

    def __call__(self, name: str, blocks: int, threads: int, args: tuple) -> None:
        if blocks > 0:
            self.functions[name]((blocks,), (threads,), args)


def cupy_kernels() -> CupyKernels:
    if not _MODULE:
        _MODULE.append(CupyKernels())
    return _MODULE[0]


def _blocks(count: int) -> int:
    return (count + THREADS - 1) // THREADS


class CudaTileEngine:
    """`tiles.TileEngine`'s interface (``forward``, ``loss_grad``) with the kernels above, on
    CuPy arrays; ``adam_step`` is the fitter's Adam step and clamps, fused.

    ``xp`` and ``kernels`` default to CuPy and the compiled kernels; the tests pass NumPy and
    the same source compiled for the CPU (tests/cuda_shim.py). ``wide_keys``: 64-bit sort keys
    (None: only where B·T·N ≥ 2³² needs them)."""

    def __init__(self, batch: int, n_splats: int, height: int, width: int,
                 k_sigma: float = K_SIGMA, *, xp=None, kernels=None,
                 wide_keys: bool | None = None):
        if xp is None:
            import cupy as xp
        self.xp = xp
        self.kernels = kernels if kernels is not None else cupy_kernels()
        self.B, self.N, self.H, self.W = batch, n_splats, height, width
        self.k_sigma = float(k_sigma)
        self.tiles_x, tiles_y = math.ceil(width / TILE), math.ceil(height / TILE)
        self.tiles = self.tiles_x * tiles_y
        splats = batch * n_splats
        self.wide = batch * self.tiles * n_splats >= 2 ** 32 if wide_keys is None else wide_keys
        self.key_dtype = xp.uint64 if self.wide else xp.uint32
        # tile t's first entry's key is t·N: the tiles' ranges by one binary search
        self.tile_keys = xp.arange(batch * self.tiles + 1, dtype=self.key_dtype) * \
            self.key_dtype(n_splats)
        self.boxes = xp.empty((splats, 4), xp.int32)
        self.counts = xp.empty(splats, xp.int32)
        self.render = xp.empty((batch, height, width, 3), xp.float32)
        self.grad = xp.empty((batch, n_splats, 8), xp.float32)
        self.tile_sse = xp.empty(batch * self.tiles, xp.float64)
        self.nothing = xp.zeros(1, xp.float32)  # a pointer argument that is not used
        self.pairs = 0  # (tile, splat) entries of the last call

    def _params(self, params):
        params = self.xp.ascontiguousarray(params, dtype=self.xp.float32)
        if params.shape != (self.B, self.N, 8):
            raise ValueError(f"params: expected {(self.B, self.N, 8)}, got {params.shape}")
        return params

    def _bin(self, params):
        """(tile_start ``[B·T + 1]`` int64, tile_splats ``[E]`` int32) for ``params``."""
        xp, splats = self.xp, self.B * self.N
        self.kernels("tile_boxes", _blocks(splats), THREADS,
                     (params, self.boxes, self.counts, np.int64(splats), np.int32(self.H),
                      np.int32(self.W), np.float32(self.k_sigma)))
        ends = xp.cumsum(self.counts, dtype=xp.int64)
        self.pairs = entries = int(ends[-1])  # the one read-back of a call
        if entries == 0:
            return xp.zeros(self.B * self.tiles + 1, xp.int64), xp.zeros(1, xp.int32)
        keys = xp.empty(entries, self.key_dtype)
        self.kernels("tile_pairs", _blocks(splats), THREADS,
                     (self.boxes, ends - self.counts, keys, np.int64(splats), np.int32(self.N),
                      np.int32(self.tiles_x), np.int32(self.tiles), np.int32(self.wide)))
        keys = xp.sort(keys)
        tile_start = xp.searchsorted(keys, self.tile_keys).astype(xp.int64, copy=False)
        tile_splats = (keys % self.key_dtype(self.N)).astype(xp.int32)
        return tile_start, tile_splats

    def _run(self, params, target, render, grad_scale: float, mode: int) -> None:
        tile_start, tile_splats = self._bin(params)
        if mode:
            self.grad.fill(0)
        self.kernels("tile_loss_grad", self.B * self.tiles, BLOCK,
                     (params, self.boxes, tile_start, tile_splats,
                      target if mode else self.nothing, render,
                      self.grad if mode else self.nothing,
                      self.tile_sse if mode else self.nothing, np.int32(self.N),
                      np.int32(self.H), np.int32(self.W), np.int32(self.tiles_x),
                      np.int32(self.tiles), np.float32(self.k_sigma), np.float32(grad_scale),
                      np.int32(mode)))

    def forward(self, params):
        """params ``[B, N, 8]`` float32 pixel units → image ``[B, H, W, 3]`` (a new array)."""
        render = self.xp.empty_like(self.render)
        self._run(self._params(params), None, render, 0.0, 0)
        return render

    def loss_grad(self, params, target, grad_scale: float):
        """(render ``[B, H, W, 3]``, MSE ``[B]`` float64, gradient ``[B, N, 8]`` of
        ``grad_scale``/2 · Σ (render − target)²), as `tiles.TileEngine.loss_grad`; the arrays
        are the engine's buffers, overwritten by the next call."""
        xp = self.xp
        target = xp.ascontiguousarray(target, dtype=xp.float32)
        if target.shape != self.render.shape:
            raise ValueError(f"target: expected {self.render.shape}, got {target.shape}")
        self._run(self._params(params), target, self.render, grad_scale, 1)
        sse = self.tile_sse.reshape(self.B, self.tiles).sum(axis=1)
        return self.render, sse / (self.H * self.W * 3), self.grad

    def adam_step(self, params, grad, m, v, lr, bias2: float, radii, eps: float = 1e-15,
                  min_sigma: float = 0.3, beta1: float = 0.9, beta2: float = 0.999) -> None:
        """`fit._BatchFit.adam_step` in one kernel, in place: params, m, v ``[B, N, 8]``
        float32 (contiguous); lr ``[8]`` the learning rates × decay / bias1; bias2 = 1 − β₂ᵗ;
        radii ``[N]``: each splat's 3σ_max bound (pixels)."""
        xp = self.xp
        for name, array in (("params", params), ("m", m), ("v", v)):
            if array.shape != (self.B, self.N, 8) or array.dtype != xp.float32 or \
                    not array.flags.c_contiguous:
                raise ValueError(f"{name}: expected contiguous float32 {(self.B, self.N, 8)}, "
                                 f"got {array.dtype} {array.shape}")
        grad = xp.ascontiguousarray(grad, dtype=xp.float32)
        lr = xp.ascontiguousarray(lr, dtype=xp.float32)
        radii = xp.ascontiguousarray(radii, dtype=xp.float32)
        f32 = np.float32
        self.kernels("adam_clamp", _blocks(self.B * self.N), THREADS,
                     (params, grad, m, v, lr, radii, np.int64(self.B * self.N),
                      np.int32(self.N), f32(self.H), f32(self.W), f32(beta1), f32(1 - beta1),
                      f32(beta2), f32(1 - beta2), f32(bias2), f32(eps), f32(min_sigma)))
