"""Windowed forward render and hand-derived backward for the sum renderer (the fast path).

Everything here is in pixel units: a splat is ``(x, y, l11, l21, l22, r, g, b)`` with the centre of
pixel (i, j) at (j + 0.5, i + 0.5). Each splat touches a ``ky × kx`` window (``k = 2R + 1``)
placed around its centre and clipped to stay inside the canvas, so the window always covers the
in-canvas part of the square of half-size R around the centre. The fitter keeps 3σ_max ≤ R,
so the largest value a splat drops at the window edge is exp(−4.5) ≈ 1.1% of its colour.

With z₁ = dx / l11 and z₂ = (dy − l21 z₁) / l22 (so that z = L⁻¹ d), the Gaussian factor is
G = exp(−½ (z₁² + z₂²)). z₁ depends only on the window column and z₂/√2 = u_y − κ z₁ₓ is a row
term minus a column term, which the code exploits: the backward pass needs only three moments of
A = G·∂L/∂G (its row sums, column sums and A·z₁). Per iteration the large ``[B, N, ky·kx]``
arrays are passed over about fifteen times: forward 4 (G) + the scatter; backward 3 gathers,
2 einsums (colour gradient, A), A·G and the 3 moments.

Reference twins: `gsformat.fitting.reference._render_dense` (values) and
`gsformat.fitting.reference._loss_torch` (gradients). The tests compare against both.
"""
from __future__ import annotations

import math

from ..core import constants as C

SQRT_HALF = math.sqrt(0.5)
# cuSPARSE (CuPy's sparse products) indexes the window matrix with int32: a batch must hold fewer
# window entries (images × splats × ky·kx) than this, or the product fails inside cuSPARSE
MAX_WINDOW_ENTRIES = 2**31 - 1


def window_entries(n_splats: int, height: int, width: int, radius: int) -> int:
    """Window entries (splats × ky·kx) one image adds to a batch."""
    return n_splats * min(2 * radius + 1, height) * min(2 * radius + 1, width)


def sparse_module(xp):
    """scipy.sparse for NumPy, cupyx.scipy.sparse for CuPy (same CSC API)."""
    if xp.__name__ == "cupy":
        import cupyx.scipy.sparse as sparse
    else:
        import scipy.sparse as sparse
    return sparse


def _take_into(xp, source, indices, out) -> None:
    """``out[...] = source[indices]`` for indices known to be in range."""
    if xp.__name__ == "numpy":
        # mode="wrap" skips the bounds check; the default "raise" also buffers `out` (3× slower)
        xp.take(source, indices, out=out, mode="wrap")
    else:
        xp.take(source, indices, out=out)


def _einsum_into(xp, subscripts: str, *operands, out) -> None:
    if xp.__name__ == "numpy":
        xp.einsum(subscripts, *operands, out=out)
    else:  # cupy.einsum has no `out`
        out[...] = xp.einsum(subscripts, *operands)


def channel_planes(xp, image):
    """``[B, H, W, 3]`` → contiguous ``[3, B·H·W]``: gathers from a contiguous plane are ~1.5×
    faster than strided ones."""
    return xp.ascontiguousarray(image.reshape(-1, 3).T)


class WindowKernel:
    """Preallocated buffers and the forward/backward passes for one batch geometry."""

    def __init__(self, xp, batch: int, n_splats: int, height: int, width: int, radius: int):
        self.xp = xp
        self.B, self.N, self.H, self.W, self.R = batch, n_splats, height, width, radius
        self.ky, self.kx = min(2 * radius + 1, height), min(2 * radius + 1, width)
        k2 = self.ky * self.kx
        f32 = xp.float32
        self.off_y = xp.arange(self.ky, dtype=f32)
        self.off_x = xp.arange(self.kx, dtype=f32)
        # flat pixel offset of each window cell relative to its top-left pixel
        self.cell_offset = (xp.arange(self.ky)[:, None] * width
                            + xp.arange(self.kx)[None, :]).reshape(-1).astype(xp.int64)
        self.image_base = (xp.arange(batch, dtype=xp.int64) * height * width)[:, None]  # [B, 1]
        shape = (batch, n_splats, self.ky, self.kx)
        self.g = xp.empty(shape, f32)       # Gaussian factor G
        self.tmp = xp.empty(shape, f32)     # weights, then A = G·∂L/∂G
        self.idx = xp.empty((batch, n_splats, k2), xp.int64)
        self.gathered = xp.empty((3, batch, n_splats, k2), f32)
        self.indptr = xp.arange(0, batch * n_splats * k2 + 1, k2, dtype=xp.int64)
        self.sparse = sparse_module(xp)
        self.base = None  # [B, N] window origins behind idx
        self.matrix = None
        if xp.__name__ == "numpy":
            # one CSC matrix whose data and indices are views of g and idx: building a new one
            # per call makes scipy scan the int64 indices and copy them as int32 (~0.4 ms)
            self.matrix = self.sparse.csc_matrix((batch * height * width, batch * n_splats),
                                                 dtype=f32)
            self.matrix.indptr = self.indptr
            self.matrix.indices = self.idx.reshape(-1)
            self.matrix.data = self.g.reshape(-1)

    @staticmethod
    def bytes_needed(batch: int, n_splats: int, height: int, width: int, radius: int) -> int:
        """Bytes of the buffers above plus the per-image arrays the fitter holds."""
        k2 = min(2 * radius + 1, height) * min(2 * radius + 1, width)
        per_window = 2 * 4 + 8 + 3 * 4  # g, tmp + idx + gathered
        per_pixel = 4 * 3 * 4  # target, render, residual, coverage scratch
        per_splat = 4 * 8 * 5  # params, grad, adam m and v, best
        return batch * (n_splats * (k2 * per_window + per_splat) + height * width * per_pixel)

    # ---- forward -------------------------------------------------------------------------
    def forward(self, params):
        """params ``[B, N, 8]`` float32 (pixel units) → image ``[B, H, W, 3]`` float32."""
        xp, B, N, H, W = self.xp, self.B, self.N, self.H, self.W
        x, y = params[..., 0], params[..., 1]
        l11, l21, l22 = params[..., 2], params[..., 3], params[..., 4]
        # window top-left pixel, clipped so the window stays on the canvas
        x0 = xp.clip(xp.floor(x) - self.R, 0, W - self.kx)  # [B, N]
        y0 = xp.clip(xp.floor(y) - self.R, 0, H - self.ky)
        dx = x0[..., None] + 0.5 + self.off_x - x[..., None]  # [B, N, kx]
        dy = y0[..., None] + 0.5 + self.off_y - y[..., None]  # [B, N, ky]
        self.z1 = dx / l11[..., None]                          # [B, N, kx]
        # z₂/√2 = u_y − κ·z₁ₓ: a row term minus a column term, kept for the backward pass
        self.u = dy * (SQRT_HALF / l22)[..., None]             # [B, N, ky]
        self.kappa = SQRT_HALF * l21 / l22                     # [B, N]
        v = self.z1 * self.kappa[..., None]                    # [B, N, kx]
        neg_half_z1sq = (-0.5 * self.z1 * self.z1)[..., None, :]  # [B, N, 1, kx]
        xp.subtract(self.u[..., :, None], v[..., None, :], out=self.g)  # z₂/√2
        xp.square(self.g, out=self.g)
        xp.subtract(neg_half_z1sq, self.g, out=self.g)
        xp.exp(self.g, out=self.g)
        base = (y0.astype(xp.int64) * W + x0.astype(xp.int64)) + self.image_base  # [B, N]
        # windows move only when a centre crosses a pixel: rewrite just those splats' indices
        if self.base is None:
            xp.add(base[..., None], self.cell_offset, out=self.idx)
        else:
            moved = base != self.base  # [B, N]
            if moved.any():
                self.idx[moved] = base[moved][:, None] + self.cell_offset
        self.base = base
        return self.splat_colours(params[..., C.COLOUR_COLS])

    def splat_colours(self, colours):
        """Scatter G·colour into the images: ``[B, H, W, 3]`` float32.

        The windows form a sparse matrix M ``[B·H·W, B·N]`` (column n holds splat n's G values at
        its window's pixels); the image is M @ colours. One float32 pass for all three channels,
        ~2.7× faster than three ``bincount`` calls (which accumulate in float64).
        """
        matrix = self.matrix
        if matrix is None:  # CuPy: a fresh matrix over the same buffers
            matrix = self.sparse.csc_matrix(
                (self.g.reshape(-1), self.idx.reshape(-1), self.indptr),
                shape=(self.B * self.H * self.W, self.B * self.N))
        image = matrix @ colours.reshape(-1, 3)  # [B·H·W, 3]
        return image.reshape(self.B, self.H, self.W, 3)

    # ---- backward ------------------------------------------------------------------------
    def backward(self, params, grad_image, grad_planes=None):
        """∂L/∂image ``[B, H, W, 3]`` → ∂L/∂params ``[B, N, 8]`` (after `forward`).

        grad_planes: `channel_planes(grad_image)` when the caller already has it."""
        xp, B, N = self.xp, self.B, self.N
        colours = params[..., C.COLOUR_COLS]
        l11, l21, l22 = params[..., 2], params[..., 3], params[..., 4]
        grad = xp.empty((B, N, 8), xp.float32)
        if grad_planes is None:
            grad_planes = channel_planes(xp, grad_image)  # [3, B·H·W]
        g = self.g.reshape(B, N, -1)
        for c in range(3):  # gather ∂L/∂I under every window, one channel at a time
            _take_into(xp, grad_planes[c], self.idx, self.gathered[c])
        grad[..., C.COLOUR_COLS] = xp.einsum("bnk,cbnk->bnc", g, self.gathered)  # ∂L/∂colour = Σ G·∂L/∂I
        # A = G · ∂L/∂G with ∂L/∂G = Σ_c colour_c · ∂L/∂I_c (in place: no large temporaries)
        a = self.tmp.reshape(B, N, -1)
        _einsum_into(xp, "cbnk,bnc->bnk", self.gathered, colours, out=a)  # 2.5× three passes
        a *= g
        # Every sum the gradient needs is a moment of A in z₁ and z₂/√2 = u_y − κ z₁ₓ, so three
        # passes over A give them all: its column sums C, row sums R and A·z₁ (per row)
        a4 = self.tmp  # [B, N, ky, kx] view of A
        f64 = xp.float64
        # (einsum and matmul: ~4× faster than ndarray.sum over an inner axis)
        cols = xp.einsum("bnyx->bnx", a4).astype(f64)                      # [B, N, kx]
        rows = xp.einsum("bnyx->bny", a4).astype(f64)                      # [B, N, ky]
        a_z1 = xp.matmul(a4, self.z1[..., None])[..., 0].astype(f64)       # [B, N, ky]
        z1 = self.z1.astype(f64)
        u, kappa = self.u.astype(f64), self.kappa.astype(f64)
        c_z1 = (cols * z1).sum(axis=-1)           # Σ A z₁
        c_z1z1 = (cols * z1 * z1).sum(axis=-1)    # Σ A z₁²
        r_u = (rows * u).sum(axis=-1)             # Σ A u
        r_uu = (rows * u * u).sum(axis=-1)        # Σ A u²
        u_az1 = (u * a_z1).sum(axis=-1)           # Σ A u z₁
        s_z2 = (r_u - kappa * c_z1) / SQRT_HALF                    # Σ A z₂
        s_z1z2 = (u_az1 - kappa * c_z1z1) / SQRT_HALF              # Σ A z₁ z₂
        s_z2z2 = 2.0 * (r_uu - 2.0 * kappa * u_az1 + kappa * kappa * c_z1z1)  # Σ A z₂²
        shear = l21 / l22
        grad[..., 0] = (c_z1 - shear * s_z2) / l11
        grad[..., 1] = s_z2 / l22
        grad[..., 2] = (c_z1z1 - shear * s_z1z2) / l11
        grad[..., 3] = s_z1z2 / l22
        grad[..., 4] = s_z2z2 / l22
        return grad


class RangeKernel:
    """Window kernels over contiguous splat ranges, each range with its own window half-size:
    per-splat extents (size classes: a range of small windows, a range of large ones) and
    threads (NumPy: each range split further by cost) are both ranges.

    NumPy's ufuncs, ``take`` and scipy's sparse products release the GIL, so T threads, each with
    its own kernel over part of the splats, use T cores. The partial images are summed in a fixed
    order, so results do not depend on thread timing. ``classes``: ``[(count, radius), …]``
    in splat order; ``make``: the kernel for (batch, count, H, W, radius) — `WindowKernel`, or
    the fused CUDA one.
    """

    def __init__(self, xp, batch: int, height: int, width: int, classes, threads: int = 1,
                 make=None):
        from concurrent.futures import ThreadPoolExecutor
        make = make or (lambda *a: WindowKernel(xp, *a))
        self.xp = xp
        self.slices, self.kernels = [], []
        cost = [count * min(2 * r + 1, height) * min(2 * r + 1, width) for count, r in classes]
        start = 0
        for (count, radius), c in zip(classes, cost):
            pieces = max(1, min(count, round(threads * c / max(sum(cost), 1))))
            bounds = [start + round(i * count / pieces) for i in range(pieces + 1)]
            for a, b in zip(bounds[:-1], bounds[1:]):
                if b > a:
                    self.slices.append(slice(a, b))
                    self.kernels.append(make(batch, b - a, height, width, radius))
            start += count
        self.pool = ThreadPoolExecutor(max_workers=len(self.slices)) if threads > 1 and len(
            self.slices) > 1 else None

    def _map(self, fn):
        pairs = list(zip(self.kernels, self.slices))
        return list(self.pool.map(fn, pairs)) if self.pool else [fn(p) for p in pairs]

    def forward(self, params):
        parts = self._map(lambda ks: ks[0].forward(params[:, ks[1]]))
        image = parts[0].copy() if len(parts) > 1 else parts[0]
        for part in parts[1:]:
            image += part
        return image

    def backward(self, params, grad_image):
        if all(isinstance(k, WindowKernel) for k in self.kernels):
            planes = channel_planes(self.xp, grad_image)  # once, shared by the ranges
            grads = self._map(lambda ks: ks[0].backward(params[:, ks[1]], grad_image, planes))
        else:  # the fused CUDA kernels take the image as it is
            grads = self._map(lambda ks: ks[0].backward(params[:, ks[1]], grad_image))
        return self.xp.concatenate(grads, axis=1)

    def close(self):
        if self.pool:
            self.pool.shutdown()
