"""Fused CUDA forward and backward for the windowed sum renderer (CuPy; the GPU's fast path).

The same windows and the same gradient as `kernel.WindowKernel`, which stays the reference twin
(tests/test_gpu.py compares values and gradients). Instead of about fifteen array passes per
iteration, two kernels:

- ``window_forward``: one warp per splat, each lane walking every 32nd cell (i, j) of its
  ky × kx window: G = exp(−½ (z₁² + z₂²)) with z = L⁻¹ d, added to the pixel as G·colour with
  one float4 atomic (sm_90 and newer; three float atomics before; summation order varies
  between runs: float rounding only);
- ``window_backward``: one warp per splat: each lane walks the same cells, recomputes G, gathers
  ∂L/∂I there and accumulates (float per lane, float64 across the warp) the eight sums the
  gradient needs (Σ G ∂L/∂I_c and the moments of A = G·Σ_c colour_c ∂L/∂I_c in z₁, z₂).

Per-splat values (window origin, 1/l11, 1/l22) are computed once per lane and the cell's row
and column by a float reciprocal: no 64-bit division per entry.

Nothing is stored per window entry (the array version keeps 32 bytes each), so the batch is
bounded by the images, not the windows.
"""
from __future__ import annotations

_SOURCE = r"""
#ifndef LANES
#define LANES 32  // threads per splat: one warp
#endif

struct Window {       // one splat's window and what every entry of it needs
    float x0, y0;     // top-left pixel, clipped so the window stays on the canvas
    float x, y, inv_l11, l21, inv_l22;
    long long base;   // flat index of the window's top-left pixel in the batch
};

__device__ __forceinline__ Window window_of(const float* p, long long s, int n_splats, int H,
                                            int W, int R, int ky, int kx) {
    Window w;  // as WindowKernel
    w.x0 = fminf(fmaxf(floorf(p[0]) - R, 0.0f), (float)(W - kx));
    w.y0 = fminf(fmaxf(floorf(p[1]) - R, 0.0f), (float)(H - ky));
    w.x = p[0];
    w.y = p[1];
    w.inv_l11 = 1.0f / p[2];
    w.l21 = p[3];
    w.inv_l22 = 1.0f / p[4];
    w.base = (s / n_splats) * H * W + (long long)w.y0 * W + (long long)w.x0;
    return w;
}

// entry e of a window → its row i and column j (e < 2²⁰: the float quotient is exact)
__device__ __forceinline__ void cell(int e, int kx, float inv_kx, int* i, int* j) {
    *i = (int)(((float)e + 0.5f) * inv_kx);
    *j = e - *i * kx;
}

// G = exp(−½ (z₁² + z₂²)) with z = L⁻¹ d at cell (i, j); z₁, z₂ out for the backward pass
__device__ __forceinline__ float gaussian(const Window& w, int i, int j, float* z1, float* z2) {
    *z1 = (w.x0 + 0.5f + (float)j - w.x) * w.inv_l11;
    *z2 = ((w.y0 + 0.5f + (float)i - w.y) - w.l21 * *z1) * w.inv_l22;
    return expf(-0.5f * (*z1 * *z1 + *z2 * *z2));
}

// One warp (LANES threads) per splat, each lane walking every LANES-th entry of its window.
// mode bit 0: store G and the pixel index of every entry (g, idx); bit 1: add into image.
extern "C" __global__ void window_forward(
        const float* params,   // [B·N, 8] pixel units
        float* g,              // [B·N, ky·kx] Gaussian factor G (mode & 1)
        long long* idx,        // [B·N, ky·kx] flat pixel index into the batch (mode & 1)
        float* image,          // [B·H·W, 4] (r, g, b, unused), zeroed by the caller (mode & 2)
        long long splats, int n_splats, int H, int W, int R, int ky, int kx, int mode) {
    const long long s = ((long long)blockDim.x * blockIdx.x + threadIdx.x) / LANES;
    const int lane = threadIdx.x % LANES;
    if (s >= splats) return;
    const float* p = params + 8 * s;
    const Window w = window_of(p, s, n_splats, H, W, R, ky, kx);
    const float r = p[5], gr = p[6], b = p[7], inv_kx = 1.0f / (float)kx;
    const int k2 = ky * kx;
    for (int e = lane; e < k2; e += LANES) {
        int i, j;
        float z1, z2;
        cell(e, kx, inv_kx, &i, &j);
        const float G = gaussian(w, i, j, &z1, &z2);
        const long long pixel = w.base + (long long)i * W + j;
        if (mode & 1) {
            g[s * k2 + e] = G;
            idx[s * k2 + e] = pixel;
        }
        if (mode & 2) {
            float* out = image + 4 * pixel;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(SCALAR_ATOMICS)
            atomicAdd((float4*)out, make_float4(G * r, G * gr, G * b, 0.0f));  // one op
#else
            atomicAdd(out, G * r);
            atomicAdd(out + 1, G * gr);
            atomicAdd(out + 2, G * b);
#endif
        }
    }
}

extern "C" __global__ void window_backward(
        const float* params,
        const float* grad_image,  // [B·H·W, 3] ∂L/∂I
        float* grad,              // [B·N, 8] ∂L/∂params
        long long splats, int n_splats, int H, int W, int R, int ky, int kx) {
    // one warp per splat; G and the pixel are recomputed, not stored
    const long long s = ((long long)blockDim.x * blockIdx.x + threadIdx.x) / LANES;
    const int lane = threadIdx.x % LANES;
    if (s >= splats) return;  // whole warps leave together: blockDim.x is a multiple of LANES
    const float* p = params + 8 * s;
    const Window w = window_of(p, s, n_splats, H, W, R, ky, kx);
    const float inv_kx = 1.0f / (float)kx;
    const int k2 = ky * kx;
    // Σ G·∂L/∂I_r, _g, _b; Σ A z1, Σ A z1², Σ A z2, Σ A z1 z2, Σ A z2² — float per lane (a few
    // dozen terms), then float64 across the warp
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int e = lane; e < k2; e += LANES) {
        int i, j;
        float z1, z2;
        cell(e, kx, inv_kx, &i, &j);
        const float G = gaussian(w, i, j, &z1, &z2);
        const float* gi = grad_image + 3 * (w.base + (long long)i * W + j);
        const float a = G * (p[5] * gi[0] + p[6] * gi[1] + p[7] * gi[2]);
        acc[0] += G * gi[0];
        acc[1] += G * gi[1];
        acc[2] += G * gi[2];
        acc[3] += a * z1;
        acc[4] += a * z1 * z1;
        acc[5] += a * z2;
        acc[6] += a * z1 * z2;
        acc[7] += a * z2 * z2;
    }
    double sum[8];
    for (int k = 0; k < 8; k++) {
        sum[k] = acc[k];
        for (int offset = LANES / 2; offset > 0; offset >>= 1)
            sum[k] += __shfl_down_sync(0xffffffffu, sum[k], offset);
    }
    if (lane == 0) {
        const double l11 = p[2], l22 = p[4], shear = (double)p[3] / l22;
        float* out = grad + 8 * s;
        out[0] = (float)((sum[3] - shear * sum[5]) / l11);
        out[1] = (float)(sum[5] / l22);
        out[2] = (float)((sum[4] - shear * sum[6]) / l11);
        out[3] = (float)(sum[6] / l22);
        out[4] = (float)(sum[7] / l22);
        out[5] = (float)sum[0];
        out[6] = (float)sum[1];
        out[7] = (float)sum[2];
    }
}
"""
_KERNELS = []  # (window_forward, window_backward), compiled on first use
WARP = 32      # threads per splat (LANES in the source)
THREADS = 256  # threads per block, both kernels (a multiple of WARP)
FORWARD_STORE, FORWARD_ADD = 1, 2
MAX_WINDOW = 1 << 23  # cells per window: a cell's row is found by a float reciprocal, exact below


def _kernels():
    if not _KERNELS:
        import cupy
        try:
            module = cupy.RawModule(code=_SOURCE)
            module.get_function("window_forward")  # compiles now
        except cupy.cuda.compiler.CompileException:  # a toolkit without float4 atomicAdd
            module = cupy.RawModule(code=_SOURCE, options=("-DSCALAR_ATOMICS",))
        _KERNELS.extend([module.get_function("window_forward"),
                         module.get_function("window_backward")])
    return _KERNELS


def _blocks(splats: int) -> int:
    return (splats * WARP + THREADS - 1) // THREADS


class CudaWindowKernel:
    """`WindowKernel`'s interface (forward, backward, g, idx) with the fused kernels above.

    Nothing per window entry is kept between the passes; `g` and `idx` (what the colour
    initialisation reads) are filled on first access after a forward."""

    def __init__(self, xp, batch: int, n_splats: int, height: int, width: int, radius: int):
        self.xp = xp
        self.B, self.N, self.H, self.W, self.R = batch, n_splats, height, width, radius
        self.ky, self.kx = min(2 * radius + 1, height), min(2 * radius + 1, width)
        self.params = None
        self._windows = None

    def _launch_forward(self, mode: int, image=None, g=None, idx=None):
        xp = self.xp
        splats = self.B * self.N
        forward, _ = _kernels()
        forward((_blocks(splats),), (THREADS,),
                (self.params, g, idx, image, xp.int64(splats), xp.int32(self.N),
                 xp.int32(self.H), xp.int32(self.W), xp.int32(self.R), xp.int32(self.ky),
                 xp.int32(self.kx), xp.int32(mode)))

    def forward(self, params):
        """params ``[B, N, 8]`` float32 (pixel units) → image ``[B, H, W, 3]`` float32."""
        xp = self.xp
        self.params = xp.ascontiguousarray(params, dtype=xp.float32)
        self._windows = None
        image = xp.zeros((self.B * self.H * self.W, 4), xp.float32)  # 4: one vector atomic
        self._launch_forward(FORWARD_ADD, image=image)
        return image.reshape(self.B, self.H, self.W, 4)[..., :3]

    def _stored_windows(self):
        if self._windows is None:
            xp = self.xp
            g = xp.empty((self.B, self.N, self.ky, self.kx), xp.float32)
            idx = xp.empty((self.B, self.N, self.ky * self.kx), xp.int64)
            self._launch_forward(FORWARD_STORE, g=g, idx=idx)
            self._windows = g, idx
        return self._windows

    @property
    def g(self):
        """G of every window entry ``[B, N, ky, kx]`` for the last forward's params."""
        return self._stored_windows()[0]

    @property
    def idx(self):
        """Flat pixel index of every window entry ``[B, N, ky·kx]``."""
        return self._stored_windows()[1]

    def backward(self, params, grad_image):
        """∂L/∂image ``[B, H, W, 3]`` → ∂L/∂params ``[B, N, 8]``."""
        xp = self.xp
        params = xp.ascontiguousarray(params, dtype=xp.float32)
        grad_image = xp.ascontiguousarray(grad_image, dtype=xp.float32)
        grad = xp.empty((self.B, self.N, 8), xp.float32)
        splats = self.B * self.N
        _, backward = _kernels()
        backward((_blocks(splats),), (THREADS,),
                 (params, grad_image, grad, xp.int64(splats), xp.int32(self.N),
                  xp.int32(self.H), xp.int32(self.W), xp.int32(self.R), xp.int32(self.ky),
                  xp.int32(self.kx)))
        return grad
