"""Slow, obvious reference twins of the fast windowed path in `kernel.py`.

- `_render_dense`: the spec's equation over every pixel, float64 NumPy (values).
- `_loss_torch`: the same dense render in PyTorch autograd, MSE against a target (gradients).
- `DenseTorchEngine`: dense autograd forward/backward (every splat over every pixel), which the
  fitter's loop can run instead of the kernel: the naive baseline of `benchmarks/fit_bench.py`.
All take pixel-unit parameters ``[N, 8]`` or ``[B, N, 8]`` like the kernel.
"""
from __future__ import annotations

import numpy as np


def _render_dense(params, height: int, width: int) -> np.ndarray:
    """Twin of `WindowKernel.forward`: ``[N, 8]`` pixel-unit params → ``[H, W, 3]`` float64."""
    p = np.asarray(params, np.float64)
    x, y, l11, l21, l22 = (p[:, i, None, None] for i in range(5))
    py, px = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    z1 = (px - x) / l11
    z2 = ((py - y) - l21 * z1) / l22
    g = np.exp(-0.5 * (z1 * z1 + z2 * z2))  # [N, H, W]
    return np.einsum("nhw,nc->hwc", g, p[:, 5:8])


def _render_dense_torch(params, height: int, width: int):
    """Dense torch render of ``[B, N, 8]`` pixel-unit params → ``[B, H, W, 3]``."""
    import torch
    ys = torch.arange(height, dtype=params.dtype, device=params.device) + 0.5
    xs = torch.arange(width, dtype=params.dtype, device=params.device) + 0.5
    x, y, l11, l21, l22 = (params[..., i, None, None] for i in range(5))
    z1 = (xs[None, None, None, :] - x) / l11  # [B, N, 1, W]
    z2 = ((ys[None, None, :, None] - y) - l21 * z1) / l22  # [B, N, H, W]
    g = torch.exp(-0.5 * (z1 * z1 + z2 * z2))
    return torch.einsum("bnhw,bnc->bhwc", g, params[..., 5:8])


def _loss_torch(params, target):
    """Twin of the fitter's loss and `WindowKernel.backward`: (loss, ∂loss/∂params).

    loss = Σ_images mean((render − target)²), params ``[B, N, 8]``, target ``[B, H, W, 3]``.
    """
    import torch
    p = torch.tensor(np.asarray(params), dtype=torch.float64, requires_grad=True)
    t = torch.tensor(np.asarray(target), dtype=torch.float64)
    image = _render_dense_torch(p, t.shape[1], t.shape[2])
    loss = ((image - t) ** 2).mean(dim=(1, 2, 3)).sum()
    loss.backward()
    return float(loss.detach()), p.grad.numpy()


class DenseTorchEngine:
    """Twin of `WindowKernel` with the same ``forward``/``backward`` interface, by dense
    PyTorch autograd: every splat over every pixel. `fit_images(engine="dense-torch")` runs the
    fitter's own init, Adam and clamps on it — the naive baseline of `benchmarks/fit_bench.py`."""

    def __init__(self, xp, batch, n_splats, height, width, radius):
        self.H, self.W = height, width

    def forward(self, params):
        import torch
        self._p = torch.tensor(np.asarray(params, np.float32), requires_grad=True)
        self._image = _render_dense_torch(self._p, self.H, self.W)
        return self._image.detach().numpy()

    def backward(self, params, grad_image):
        import torch
        self._image.backward(torch.from_numpy(np.ascontiguousarray(grad_image, np.float32)))
        return self._p.grad.numpy()
