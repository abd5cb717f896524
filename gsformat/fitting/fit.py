"""`fit_images`: a batch of images → one `SplatSet` each, by Adam on the windowed sum renderer.

Per iteration: forward render (kernel), residual, hand-derived backward, Adam, clamps. The
covariance is clamped so that 3σ_max ≤ R (the window half-size), see `kernel.py` for the truncation
this allows; the final PSNR is measured on the stored FP16 splats with a 2R window (6σ, where
the truncation is below float32 precision).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..format.splatset import SplatSet
from .backend import get_xp, to_numpy
from .cuda_kernel import MAX_WINDOW, CudaWindowKernel
from .images import as_float_rgb
from .init import colour_from_pixels, init_params
from . import placement
from . import kernel as kernel_mod
from .kernel import RangeKernel, WindowKernel, window_entries
from .solve import requantize

BT709 = (0.2126, 0.7152, 0.0722)
MIN_SIGMA = 0.3  # pixels: narrower splats alias and stop receiving useful gradients
DEFAULT_MEMORY_LIMIT = 2 << 30


@dataclass
class FitOptions:
    """Everything `fit_images` accepts besides the images (defaults tuned on the tuning set of
    `benchmarks/fit_bench.py`; `FIXED_WINDOW` is the fitter before per-splat extents)."""
    n_splats: int = 1600
    iters: int = 2000
    lr_position: float = 0.03      # pixels per step (Adam)
    lr_covariance: float = 0.015   # pixels per step
    lr_colour: float = 0.008       # colour units per step
    lr_final: float = 1.0          # cosine decay to this fraction of each rate (1: constant
                                   # rates; the fixed-window fitter was tuned with 0.05)
    init: str = "grid"             # "grid" | "random"
    init_scale: float = 0.5        # initial σ as a fraction of the grid spacing
    relocate_every: int = 250      # move the weakest splats to the error every this many
                                   # iterations (0: never; placement.relocate)
    relocate_fraction: float = 0.05  # share of the budget moved each time
    relocate_until: float = 0.7    # no relocation after this fraction of iters
    relocate_tolerance: float = 0.05  # a move that raises the loss by more (relative) is undone
    window_scale: float = 1.5      # window half-size R = max(ceil(window_scale · spacing),
    min_radius: int = 8            #   min_radius) pixels; 3σ_max ≤ R (see kernel.py)
    large_fraction: float = 0.1    # per-splat extents: this share of the budget in a class of
    large_scale: float = 2.5       #   large windows, R_large = ceil(large_scale · R), where
                                   #   3σ_max ≤ R_large; splats move between the classes as they
                                   #   grow or shrink (`rebin`)
    prune_threshold: float = 0.0   # τ: BT.709 luminance of |colour| below it removes a splat
    prune_at: float = 0.8          # fraction of iters after which pruning happens (then re-fit)
    l1_colour: float = 0.0         # weight of the paper's L1 colour term (mean |colour|)
    seed: int = 0
    backend: str = "auto"          # "auto" | "numpy" | "cupy"
    engine: str = "window"         # "window" (fast path: threaded NumPy on a CPU, fused CUDA
                                   # kernels on a GPU) | "window-xp" (the array-code twin, either
                                   # backend) | "dense-torch" (reference baseline)
    quantize: dict | None = None   # a lossy codec config (gsformat.quantize): fit through it
    quantize_method: str = "solve"  # "solve": after the fit, quantise the geometry, solve the
                                   # colours by least squares, round them with error feedback
                                   # (solve.py); "ste": fit through the quantiser (straight-through)
    quantize_at: float = 0.9       # "ste": fraction of iters after which the straight-through
                                   # phase starts (0: from the first iteration, a warm re-fit)
    batch_size: int | None = None  # images per fitting batch (None: as many as memory allows;
                                   # the array code: at most what int32 window indices allow)
    threads: int | None = None     # NumPy: threads over splat ranges (None: $GSFORMAT_THREADS,
                                   # else the usable cores)
    memory_limit: int = DEFAULT_MEMORY_LIMIT


# The fitter before per-splat extents and relocation (one window size, a cosine schedule tuned
# for it): a named configuration, so that benchmarks compare both in one run.
FIXED_WINDOW = {"large_fraction": 0.0, "relocate_every": 0, "lr_final": 0.05}


@dataclass
class FitResult:
    splats: list[SplatSet]
    psnr: np.ndarray                 # [B] dB of the stored FP16 splats, rendered exactly
    n_pruned: np.ndarray             # [B]
    seconds: float
    history: np.ndarray | None = None  # [iters, B] training loss (MSE) per image
    options: FitOptions = field(default_factory=FitOptions)


def geometry(n_splats: int, height: int, width: int, opts: FitOptions) -> tuple[float, int, float]:
    """(grid spacing, window half-size R, initial σ) in pixels."""
    spacing = math.sqrt(height * width / n_splats)
    # the floor lets dense budgets still cover smooth regions (σ up to 8/3 px): at 3,136 splats
    # on 224² it is worth +3.7 dB (35.0 vs 31.3, two photographs, 2,000 iterations)
    radius = max(2, math.ceil(opts.window_scale * spacing), opts.min_radius)
    radius = min(radius, max(height, width))
    sigma = min(opts.init_scale * spacing, radius / 3.0)
    return spacing, radius, max(sigma, MIN_SIGMA)


def size_classes(n_splats: int, radius: int, opts: FitOptions) -> list[tuple[int, int]]:
    """``[(count, window half-size), …]`` in splat order: the small class first."""
    n_large = int(round(opts.large_fraction * n_splats))
    if n_large <= 0 or n_large >= n_splats:
        return [(n_splats, radius)]
    return [(n_splats - n_large, radius), (n_large, math.ceil(opts.large_scale * radius))]


def fit_memory_bytes(batch: int, n_splats: int, height: int, width: int,
                     window_scale: float = FitOptions.window_scale,
                     min_radius: int = FitOptions.min_radius,
                     large_fraction: float = 0.0, large_scale: float = 2.5) -> int:
    """Bytes one fitting batch holds (buffers of the kernel and the optimiser)."""
    opts = FitOptions(window_scale=window_scale, min_radius=min_radius,
                      large_fraction=large_fraction, large_scale=large_scale)
    _, radius, _ = geometry(n_splats, height, width, opts)
    return sum(WindowKernel.bytes_needed(batch, count, height, width, r)
               for count, r in size_classes(n_splats, radius, opts))


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _fused(xp, height: int, width: int, radius: int) -> bool:
    """Whether `window_kernel` gives the fused CUDA kernels (CuPy, windows they handle)."""
    return xp.__name__ == "cupy" and window_entries(1, height, width, radius) < MAX_WINDOW


def window_kernel(xp, batch: int, n: int, height: int, width: int, radius: int):
    """The windowed renderer for ``xp``: fused CUDA kernels on CuPy, the array code on NumPy."""
    if _fused(xp, height, width, radius):
        return CudaWindowKernel(xp, batch, n, height, width, radius)
    return WindowKernel(xp, batch, n, height, width, radius)


def _engine(opts: FitOptions, xp, batch: int, n: int, height: int, width: int, radius: int,
            classes=None):
    classes = classes or [(n, radius)]
    if opts.engine == "window":
        threads = opts.threads or int(os.environ.get("GSFORMAT_THREADS", 0)) or \
            min(usable_cores(), 8)
        if xp is np:
            return RangeKernel(xp, batch, height, width, classes,
                               threads if n >= 64 * threads else 1)
        if len(classes) == 1:
            return window_kernel(xp, batch, n, height, width, radius)
        return RangeKernel(xp, batch, height, width, classes,
                           make=lambda *a: window_kernel(xp, *a))
    if opts.engine == "window-xp":
        return RangeKernel(xp, batch, height, width, classes)
    if len(classes) > 1:
        raise ValueError("engine 'dense-torch' has no size classes (large_fraction=0)")
    if opts.engine == "dense-torch":
        from .reference import DenseTorchEngine
        return DenseTorchEngine(xp, batch, n, height, width, radius)
    raise ValueError(f"engine must be 'window', 'window-xp' or 'dense-torch', "
                     f"got {opts.engine!r}")


def clamp_covariance(xp, params, radius) -> None:
    """l11, l22 ≥ MIN_SIGMA and 3·sqrt(λ_max(Σ)) ≤ R, in place (pixel units); ``radius``: one R,
    or one per splat ``[N]`` (size classes)."""
    xp.maximum(params[..., 2], MIN_SIGMA, out=params[..., 2])
    xp.maximum(params[..., 4], MIN_SIGMA, out=params[..., 4])
    scale = xp.minimum(1.0, radius / (3.0 * sigma_max(xp, params)))
    params[..., 2:5] *= scale[..., None]


def sigma_max(xp, params):
    """√λ_max(Σ) per splat (pixel units): the longest axis of its covariance."""
    l11, l21, l22 = params[..., 2], params[..., 3], params[..., 4]
    a, b, c = l11 * l11, l11 * l21, l21 * l21 + l22 * l22  # Σ = [[a, b], [b, c]]
    return xp.sqrt(0.5 * (a + c) + xp.sqrt(0.25 * (a - c) ** 2 + b * b))


def rebin(xp, params, moments, classes) -> None:
    """Size classes follow the splats, in place: small-class splats at their window's bound
    (3σ ≥ 0.95·R_small) swap places — parameters and Adam moments — with the large-class splats
    that fit a small window (3σ < 0.9·R_small), the largest with the smallest, per image. The
    class sizes, and so the cost per iteration, stay fixed."""
    (n_small, r_small), _ = classes
    sig = to_numpy(sigma_max(xp, params))  # [B, N]
    for b in range(len(sig)):
        small, large = sig[b, :n_small], sig[b, n_small:]
        up = np.flatnonzero(3 * small >= 0.95 * r_small)
        down = np.flatnonzero(3 * large < 0.9 * r_small) + n_small
        k = min(len(up), len(down))
        if k == 0:
            continue
        up = up[np.argsort(-small[up], kind="stable")[:k]]
        down = down[np.argsort(sig[b, down], kind="stable")[:k]]
        for array in (params, *moments):
            rows = array[b, up].copy()
            array[b, up] = array[b, down]
            array[b, down] = rows


def psnr(render, target) -> np.ndarray:
    """PSNR per image of ``render`` clamped to [0, 1] against ``target`` (both [B, H, W, 3])."""
    xp = get_xp("cupy") if hasattr(render, "get") else np
    mse = ((xp.clip(render, 0, 1) - target) ** 2).reshape(len(target), -1).mean(axis=1)
    return to_numpy(10 * xp.log10(1.0 / xp.maximum(mse, 1e-12)))


def to_normalised(params: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel-unit ``[..., 8]`` → spec units: mean ÷ (W, H), L ← diag(1/W, 1/H)·L."""
    out = np.array(params, np.float32)
    out[..., 0] /= width
    out[..., 1] /= height
    out[..., 2] /= width
    out[..., 3] /= height
    out[..., 4] /= height
    return out


def to_pixels(params: np.ndarray, height: int, width: int) -> np.ndarray:
    out = np.array(params, np.float32)
    out[..., 0] *= width
    out[..., 1] *= height
    out[..., 2] *= width
    out[..., 3] *= height
    out[..., 4] *= height
    return out


def fit_images(images, n_splats: int = 1600, iters: int = 2000, *,
               progress: Callable[[int, int, float], None] | None = None,
               history: bool = False, init_splats: list[SplatSet] | None = None,
               **options) -> FitResult:
    """Fit ``n_splats`` Gaussians to each image of a batch.

    images: ``[B, H, W(, C)]`` (uint8, uint16, bool or float; see `gsformat.fitting.images`).
    options: any field of `FitOptions` (learning rates, init, pruning τ, L1 colour term, seed,
    backend, …). ``progress(step, iters, mean_loss)`` is called every few iterations.
    init_splats: one `SplatSet` per image to start from (a warm re-fit) instead of ``init``.
    quantize: a lossy codec config; what is stored and decoded is then what was optimised, and
    the returned splats and PSNR are the decoded ones. ``quantize_method="solve"`` (default):
    after the fit, the geometry is quantised, the colours solved by least squares for it and
    rounded onto the codec's lattice with error feedback (`gsformat.fitting.solve`).
    ``"ste"``: from ``quantize_at·iters`` on, the forward pass sees the quantised parameters and
    the gradient passes straight through to the float ones.
    Returns a `FitResult` with one `SplatSet` per image (splats in spec units, FP16).
    """
    opts = FitOptions(n_splats=n_splats, iters=iters, **options)
    target_all = as_float_rgb(images)  # [B, H, W, 3]
    b_total, height, width, _ = target_all.shape
    if not 1 <= n_splats <= height * width:
        raise ValueError(f"n_splats must be in [1, {height * width}] (the pixel count of a "
                         f"{height}×{width} image), got {n_splats}")
    if iters < 0:
        raise ValueError(f"iters must be ≥ 0, got {iters}")
    per_image = fit_memory_bytes(1, n_splats, height, width, opts.window_scale,
                                 opts.min_radius, opts.large_fraction, opts.large_scale)
    batch = opts.batch_size or max(1, opts.memory_limit // per_image)
    _, radius, _ = geometry(n_splats, height, width, opts)
    # the array code's window matrix must fit cuSPARSE's int32 indices (the final PSNR render
    # uses a 2R window and splits itself, see render_splatsets)
    if not (opts.engine == "window" and _fused(get_xp(opts.backend), height, width, radius)):
        entries = max(window_entries(count, height, width, r)
                      for count, r in size_classes(n_splats, radius, opts))
        batch = min(batch, max(1, kernel_mod.MAX_WINDOW_ENTRIES // entries))
    start = time.perf_counter()
    parts = []
    if init_splats is not None and len(init_splats) != b_total:
        raise ValueError(f"init_splats has {len(init_splats)} entries for {b_total} images")
    for first in range(0, b_total, batch):
        warm = init_splats[first:first + batch] if init_splats is not None else None
        parts.append(_fit_batch(target_all[first:first + batch], opts, progress, history,
                                seed_offset=first, init_splats=warm))
    splats = [s for part in parts for s in part[0]]
    hist = np.concatenate([p[3] for p in parts], axis=1) if history else None
    return FitResult(splats, np.concatenate([p[1] for p in parts]),
                     np.concatenate([p[2] for p in parts]), time.perf_counter() - start, hist,
                     opts)


def quantizer(codec):
    """float16 rows ``[N, 8]`` → what a record with ``codec`` decodes them to, in the same order.

    Codecs that reorder splats say so with a ``quantize_rows`` method (or, for
    `gsformat.entropy`, an order-keeping twin); for the others it is decode(encode(·))."""
    if hasattr(codec, "quantize_rows"):
        return codec.quantize_rows
    twin = getattr(codec, "_quantize", codec)
    return lambda rows: np.asarray(twin.decode(twin.encode(rows))).reshape(rows.shape)


def _quantized(params_px, quantize_rows, height: int, width: int, xp):
    """The codec's quantisation per image, back in pixel units (the straight-through forward)."""
    host = to_numpy(params_px)
    out = np.empty_like(host)
    for i in range(len(host)):
        fp16 = to_normalised(host[i], height, width).astype(np.float16)
        out[i] = to_pixels(quantize_rows(fp16).astype(np.float32), height, width)
    return xp.asarray(out)


def _warm_params(splats: list[SplatSet], n: int, height: int, width: int) -> np.ndarray:
    params = np.zeros((len(splats), n, 8), np.float32)
    params[..., 2] = params[..., 4] = 1.0
    for i, s in enumerate(splats):
        if s.canvas_hw != (height, width) or s.n_splats > n:
            raise ValueError(f"init_splats[{i}] ({s.n_splats} splats on {s.canvas_hw}) does not "
                             f"fit {n} splats on {(height, width)}")
        params[i, :s.n_splats] = to_pixels(s.params.astype(np.float32), height, width)
    return params


class PerImageRandom:
    """Random draws ``[B, …]`` with one generator per image (seeded by the image's index in
    the whole call), so that how images are batched does not change any image's fit."""

    def __init__(self, seed: int, first: int, batch: int):
        self.rngs = [np.random.default_rng([seed, first + i]) for i in range(batch)]

    def random(self, shape):
        return np.stack([rng.random(shape[1:]) for rng in self.rngs])

    def uniform(self, low, high, shape):
        return np.stack([rng.uniform(low, high, shape[1:]) for rng in self.rngs])


def _fit_batch(target_np, opts: FitOptions, progress, keep_history, seed_offset=0,
               init_splats=None):
    xp = get_xp(opts.backend) if opts.engine in ("window", "window-xp") else np
    batch, height, width, _ = target_np.shape
    n = opts.n_splats
    _, radius, sigma = geometry(n, height, width, opts)
    classes = size_classes(n, radius, opts)
    radii = xp.concatenate([xp.full(count, r, xp.float32) for count, r in classes])  # [N]
    r_max = classes[-1][1]
    rng = PerImageRandom(opts.seed, seed_offset, batch)
    target = xp.asarray(target_np)
    kernel = _engine(opts, xp, batch, n, height, width, radius, classes)
    if init_splats is not None:
        params = xp.asarray(_warm_params(init_splats, n, height, width))
        clamp_covariance(xp, params, radii)
    else:  # each class on its own grid, σ from its own spacing (within its window)
        params = xp.asarray(np.concatenate([init_params(
            opts.init, batch, count, height, width,
            geometry(count, height, width, opts)[2] if r == radius else min(
                opts.init_scale * math.sqrt(height * width / count), r / 3.0), rng)
            for count, r in classes], axis=1))
        if opts.init == "grid":
            colour_from_pixels(window_kernel(xp, batch, n, height, width, r_max), params,
                               target)
    codec = ste_codec = None
    if opts.quantize:
        from ..format.record import get_codec
        codec = get_codec(opts.quantize)
        ste_codec = quantizer(codec)
    if opts.quantize_method not in ("solve", "ste"):
        raise ValueError(f"quantize_method must be 'solve' or 'ste', got {opts.quantize_method!r}")
    ste = codec is not None and opts.quantize_method == "ste"
    quantize_step = int(opts.quantize_at * opts.iters) if ste else opts.iters + 1

    lr_base = xp.asarray([opts.lr_position] * 2 + [opts.lr_covariance] * 3
                         + [opts.lr_colour] * 3, dtype=xp.float32)
    m = xp.zeros_like(params)
    v = xp.zeros_like(params)
    alive = xp.ones((batch, n), dtype=bool)
    n_pruned = np.zeros(batch, np.int64)
    prune_step = int(opts.prune_at * opts.iters) if opts.prune_threshold > 0 else -1
    losses = np.zeros((opts.iters, batch), np.float32) if keep_history else None
    pixel_scale = 2.0 / (height * width * 3)
    beta1, beta2, eps = 0.9, 0.999, 1e-15
    moves = placement.relocation_steps(opts.iters, opts.relocate_every, opts.relocate_until)
    n_move = max(1, int(opts.relocate_fraction * n))
    undo = None  # (indices, params, m, v) of the last move, until its loss is seen
    last_mse = residual = grad = None
    rebin_due = False
    for step in range(opts.iters):
        if rebin_due:  # before this step's forward: the kernels' ranges are the classes
            rebin(xp, params, (m, v), classes)
            rebin_due = False
        if step in moves and last_mse is not None:
            rows = xp.arange(batch)[:, None]
            before = residual / pixel_scale  # the previous step's render − target
            cost = placement.removal_cost(xp, params, grad, height * width * 3)
            chosen = placement.weakest(xp, cost, n_move, alive)
            undo = (chosen, params[rows, chosen].copy(), m[rows, chosen].copy(),
                    v[rows, chosen].copy())
            placement.relocate(xp, params, (m, v), before, chosen, sigma, radius, rng)
        if step == prune_step:
            colours = xp.abs(params[..., 5:8])
            luminance = colours @ xp.asarray(BT709, dtype=xp.float32)
            alive &= luminance >= opts.prune_threshold
            params[..., 5:8] *= alive[..., None]
            m *= alive[..., None]
            v *= alive[..., None]
            n_pruned = to_numpy((~alive).sum(axis=1))
        seen = _quantized(params, ste_codec, height, width, xp) if step >= quantize_step \
            else params
        render = kernel.forward(seen)
        residual = render - target  # [B, H, W, 3]
        if undo is not None:  # the loss just after a move: undo it where it rose too much
            mse_now = (residual * residual).reshape(batch, -1).mean(axis=1)
            worse = mse_now > last_mse * (1 + opts.relocate_tolerance)
            if bool(worse.any()):
                chosen, old_p, old_m, old_v = undo
                rows = xp.arange(batch)[:, None]
                keep = worse[:, None, None]
                params[rows, chosen] = xp.where(keep, old_p, params[rows, chosen])
                m[rows, chosen] = xp.where(keep, old_m, m[rows, chosen])
                v[rows, chosen] = xp.where(keep, old_v, v[rows, chosen])
                seen = params
                render = kernel.forward(seen)
                residual = render - target
            undo = None
            rebin_due = len(classes) > 1  # once the move is kept or undone (rows stay put)
        if moves:
            last_mse = (residual * residual).reshape(batch, -1).mean(axis=1)
        if keep_history or (progress and step % 10 == 0):
            mse = (residual * residual).reshape(batch, -1).mean(axis=1)
            if keep_history:
                losses[step] = to_numpy(mse)
            if progress and step % 10 == 0:
                progress(step, opts.iters, float(mse.mean()))
        residual *= pixel_scale  # ∂(mean squared error)/∂render
        grad = kernel.backward(seen, residual)  # straight through: ∂/∂seen applied to params
        if opts.l1_colour:
            grad[..., 5:8] += (opts.l1_colour / n) * xp.sign(params[..., 5:8])
        if prune_step >= 0:
            grad *= alive[..., None]
        # Adam with a cosine-decayed, per-parameter-group learning rate
        m *= beta1
        m += (1 - beta1) * grad
        v *= beta2
        v += (1 - beta2) * grad * grad
        decay = opts.lr_final + (1 - opts.lr_final) * 0.5 * (1 + math.cos(math.pi * step /
                                                                          max(opts.iters, 1)))
        bias1, bias2 = 1 - beta1 ** (step + 1), 1 - beta2 ** (step + 1)
        lr = lr_base * (decay / bias1)
        params -= lr * m / (xp.sqrt(v / bias2) + eps)
        clamp_covariance(xp, params, radii)
        xp.clip(params[..., 0], 0, width, out=params[..., 0])
        xp.clip(params[..., 1], 0, height, out=params[..., 1])
    if progress:
        progress(opts.iters, opts.iters, float("nan"))
    if hasattr(kernel, "close"):
        kernel.close()

    # what is stored is FP16 in spec units: measure PSNR on exactly that
    params_np = to_numpy(params)
    alive_np = to_numpy(alive)
    splats = []
    for i in range(batch):
        normalised = to_normalised(params_np[i][alive_np[i]], height, width).astype(np.float16)
        fitted = SplatSet(normalised, height, width)
        if codec is not None and opts.quantize_method == "solve":
            fitted = requantize(fitted, target_np[i], codec, 2 * r_max)
        elif codec is not None:  # what a record with this codec decodes to
            decoded = np.asarray(codec.decode(codec.encode(normalised))).reshape(-1, 8)
            fitted = SplatSet(decoded.astype(np.float16), height, width)
        splats.append(fitted)
    scores = evaluate_psnr(splats, target_np, r_max, backend=opts.backend)
    for s, score in zip(splats, scores):
        s.meta.update(psnr=round(float(score), 3), iters=opts.iters)
    return splats, scores, n_pruned, losses


def render_splatsets(splats: list[SplatSet], radius: int | None = None,
                     backend: str = "numpy") -> np.ndarray:
    """Render same-canvas `SplatSet`s with the windowed renderer → ``[B, H, W, 3]`` float32.

    ``radius`` defaults to 6σ_max of the splats (exact to float32 precision)."""
    xp = get_xp(backend)
    height, width = splats[0].canvas_hw
    n = max(max(s.n_splats for s in splats), 1)
    params = np.zeros((len(splats), n, 8), np.float32)
    params[..., 2] = params[..., 4] = 1.0  # padding splats: unit size, colour 0
    for i, s in enumerate(splats):
        params[i, :s.n_splats] = to_pixels(s.params.astype(np.float32), height, width)
    if radius is None:
        cov = np.concatenate([s.covariances() for s in splats]) if n else np.zeros((1, 2, 2))
        scale = np.array([width, height], np.float32)
        lam = np.linalg.eigvalsh(cov * np.outer(scale, scale)).max() if len(cov) else 1.0
        radius = max(2, math.ceil(6 * math.sqrt(max(lam, 1e-6))))
    # in chunks of images whose window matrix fits cuSPARSE's int32 indices
    chunk = max(1, kernel_mod.MAX_WINDOW_ENTRIES // window_entries(n, height, width, radius))
    parts = []
    for first in range(0, len(splats), chunk):
        part = params[first:first + chunk]
        kernel = window_kernel(xp, len(part), n, height, width, radius)
        parts.append(to_numpy(kernel.forward(xp.asarray(part))))
    return np.concatenate(parts)


def evaluate_psnr(splats: list[SplatSet], target_np: np.ndarray, radius: int,
                  backend: str = "numpy") -> np.ndarray:
    """PSNR of stored splats, rendered with a 2R window (≥ 6σ for fitted splats)."""
    backend = "numpy" if backend == "auto" else backend
    render = render_splatsets(splats, radius=2 * radius, backend=backend)
    return psnr(render, target_np)
