"""Slow, obvious reference twins of the fast windowed path in `kernel.py`.

- `_render_dense`: the spec's equation over every pixel (`render_math.dense_render`), float64
  NumPy (values).
- `_loss_torch`: the same dense render under PyTorch autograd, MSE against a target (gradients).
- `DenseTorchEngine`: dense autograd forward/backward (every splat over every pixel), which the
  fitter's loop can run instead of the kernel: the naive baseline of `benchmarks/fit_bench.py`.
All take pixel-unit parameters ``[N, 8]`` or ``[B, N, 8]`` like the kernel.
"""
from __future__ import annotations

import numpy as np

from ..core.render_math import dense_render


def _render_dense(params, height: int, width: int) -> np.ndarray:
    """Twin of `WindowKernel.forward`: ``[N, 8]`` pixel-unit params → ``[H, W, 3]`` float64."""
    return dense_render(np, np.asarray(params, np.float64)[None], height, width)[0]


def _loss_torch(params, target):
    """Twin of the fitter's loss and `WindowKernel.backward`: (loss, ∂loss/∂params).

    loss = Σ_images mean((render − target)²), params ``[B, N, 8]``, target ``[B, H, W, 3]``.
    """
    import torch
    p = torch.tensor(np.asarray(params), dtype=torch.float64, requires_grad=True)
    t = torch.tensor(np.asarray(target), dtype=torch.float64)
    image = dense_render(torch, p, t.shape[1], t.shape[2])
    loss = ((image - t) ** 2).mean(dim=(1, 2, 3)).sum()
    loss.backward()
    return float(loss.detach()), p.grad.numpy()


class DenseTorchEngine:
    """Twin of `WindowKernel` with the same ``forward``/``backward`` interface, by dense
    PyTorch autograd: every splat over every pixel. `fit_images(engine="dense-torch")` runs the
    fitter's own init, Adam and clamps on it — the naive baseline of `benchmarks/fit_bench.py`."""

    def __init__(self, height: int, width: int):
        self.H, self.W = height, width

    def forward(self, params):
        import torch
        self._p = torch.tensor(np.asarray(params, np.float32), requires_grad=True)
        self._image = dense_render(torch, self._p, self.H, self.W)
        return self._image.detach().numpy()

    def backward(self, params, grad_image):
        import torch
        self._image.backward(torch.from_numpy(np.ascontiguousarray(grad_image, np.float32)))
        return self._p.grad.numpy()
