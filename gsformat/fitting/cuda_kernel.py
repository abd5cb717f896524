"""Fused CUDA forward and backward for the windowed sum renderer (CuPy; the GPU's fast path).

The same windows and the same gradient as `kernel.WindowKernel`, which stays the reference twin
(tests/test_gpu.py compares values and gradients). Instead of about fifteen array passes per
iteration, two kernels:

- ``window_forward``: one thread per window entry (splat s, cell (i, j) of its ky × kx window):
  G = exp(−½ (z₁² + z₂²)) with z = L⁻¹ d, stores G and the pixel index for the backward pass, and
  adds G·colour to the image with atomics (summation order varies between runs: float rounding
  only);
- ``window_backward``: one block per splat: every thread walks some of the splat's entries,
  gathers ∂L/∂I there and accumulates, in float64, the eight sums the gradient needs
  (Σ G ∂L/∂I_c and the moments of A = G·Σ_c colour_c ∂L/∂I_c in z₁, z₂), then a block reduction.

Memory per window entry: G (4 B) and the pixel index (8 B), against 32 B for the array version.
"""
from __future__ import annotations

_SOURCE = r"""
__device__ __forceinline__ void window_origin(float x, float y, int R, int H, int W, int ky,
                                              int kx, float* x0, float* y0) {
    // as WindowKernel: top-left pixel, clipped so the window stays on the canvas
    *x0 = fminf(fmaxf(floorf(x) - R, 0.0f), (float)(W - kx));
    *y0 = fminf(fmaxf(floorf(y) - R, 0.0f), (float)(H - ky));
}

extern "C" __global__ void window_forward(
        const float* params,   // [B·N, 8] pixel units
        float* g,              // [B·N, ky·kx] Gaussian factor G
        long long* idx,        // [B·N, ky·kx] flat pixel index into the batch
        float* image,          // [B·H·W, 3], zeroed by the caller
        long long entries, int n_splats, int H, int W, int R, int ky, int kx) {
    long long t = (long long)blockDim.x * blockIdx.x + threadIdx.x;
    if (t >= entries) return;
    const int k2 = ky * kx;
    const long long s = t / k2;
    const int e = (int)(t - s * k2), i = e / kx, j = e - i * kx;
    const float* p = params + 8 * s;
    float x0, y0;
    window_origin(p[0], p[1], R, H, W, ky, kx, &x0, &y0);
    const float dx = x0 + 0.5f + (float)j - p[0];
    const float dy = y0 + 0.5f + (float)i - p[1];
    const float z1 = dx / p[2];
    const float z2 = (dy - p[3] * z1) / p[4];
    const float G = expf(-0.5f * (z1 * z1 + z2 * z2));
    const long long pixel = (s / n_splats) * H * W + (long long)(y0 + i) * W + (long long)(x0 + j);
    g[t] = G;
    idx[t] = pixel;
    atomicAdd(image + 3 * pixel, G * p[5]);
    atomicAdd(image + 3 * pixel + 1, G * p[6]);
    atomicAdd(image + 3 * pixel + 2, G * p[7]);
}

extern "C" __global__ void window_backward(
        const float* params, const float* g, const long long* idx,
        const float* grad_image,  // [B·H·W, 3] ∂L/∂I
        float* grad,              // [B·N, 8] ∂L/∂params
        int H, int W, int R, int ky, int kx) {
    const long long s = blockIdx.x;
    const int k2 = ky * kx;
    const float* p = params + 8 * s;
    const float x = p[0], y = p[1], l11 = p[2], l21 = p[3], l22 = p[4];
    float x0, y0;
    window_origin(x, y, R, H, W, ky, kx, &x0, &y0);
    // Σ G·∂L/∂I_r, _g, _b; Σ A z1, Σ A z1², Σ A z2, Σ A z1 z2, Σ A z2²
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int e = threadIdx.x; e < k2; e += blockDim.x) {
        const int i = e / kx, j = e - i * kx;
        const float z1 = (x0 + 0.5f + (float)j - x) / l11;
        const float z2 = ((y0 + 0.5f + (float)i - y) - l21 * z1) / l22;
        const long long t = s * k2 + e;
        const float G = g[t];
        const float* gi = grad_image + 3 * idx[t];
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
    __shared__ double part[8][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int k = 0; k < 8; k++) {
        double v = acc[k];
        for (int offset = 16; offset > 0; offset >>= 1)
            v += __shfl_down_sync(0xffffffffu, v, offset);
        if (lane == 0) part[k][warp] = v;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double r[8];
        for (int k = 0; k < 8; k++) {
            r[k] = 0;
            for (int w = 0; w < (int)(blockDim.x + 31) / 32; w++) r[k] += part[k][w];
        }
        const double shear = (double)l21 / l22;
        float* out = grad + 8 * s;
        out[0] = (float)((r[3] - shear * r[5]) / l11);
        out[1] = (float)(r[5] / l22);
        out[2] = (float)((r[4] - shear * r[6]) / l11);
        out[3] = (float)(r[6] / l22);
        out[4] = (float)(r[7] / l22);
        out[5] = (float)r[0];
        out[6] = (float)r[1];
        out[7] = (float)r[2];
    }
}
"""
_MODULE = []
THREADS = 256        # forward: threads per block
BACKWARD_THREADS = 128  # backward: threads per splat (a multiple of 32, at most 1024)


def _kernels():
    if not _MODULE:
        import cupy
        _MODULE.append(cupy.RawModule(code=_SOURCE))
    module = _MODULE[0]
    return module.get_function("window_forward"), module.get_function("window_backward")


class CudaWindowKernel:
    """`WindowKernel`'s interface (forward, backward, g, idx) with the fused kernels above."""

    def __init__(self, xp, batch: int, n_splats: int, height: int, width: int, radius: int):
        self.xp = xp
        self.B, self.N, self.H, self.W, self.R = batch, n_splats, height, width, radius
        self.ky, self.kx = min(2 * radius + 1, height), min(2 * radius + 1, width)
        self.g = xp.empty((batch, n_splats, self.ky, self.kx), xp.float32)
        self.idx = xp.empty((batch, n_splats, self.ky * self.kx), xp.int64)
        self.params = None

    def forward(self, params):
        """params ``[B, N, 8]`` float32 (pixel units) → image ``[B, H, W, 3]`` float32."""
        xp = self.xp
        self.params = xp.ascontiguousarray(params, dtype=xp.float32)
        image = xp.zeros((self.B * self.H * self.W, 3), xp.float32)
        entries = self.g.size
        forward, _ = _kernels()
        forward(((entries + THREADS - 1) // THREADS,), (THREADS,),
                (self.params, self.g, self.idx, image, xp.int64(entries), xp.int32(self.N),
                 xp.int32(self.H), xp.int32(self.W), xp.int32(self.R), xp.int32(self.ky),
                 xp.int32(self.kx)))
        return image.reshape(self.B, self.H, self.W, 3)

    def backward(self, params, grad_image):
        """∂L/∂image ``[B, H, W, 3]`` → ∂L/∂params ``[B, N, 8]`` (after `forward` on params)."""
        xp = self.xp
        params = xp.ascontiguousarray(params, dtype=xp.float32)
        grad_image = xp.ascontiguousarray(grad_image, dtype=xp.float32)
        grad = xp.empty((self.B, self.N, 8), xp.float32)
        _, backward = _kernels()
        backward((self.B * self.N,), (BACKWARD_THREADS,),
                 (params, self.g, self.idx, grad_image, grad, xp.int32(self.H),
                  xp.int32(self.W), xp.int32(self.R), xp.int32(self.ky), xp.int32(self.kx)))
        return grad
