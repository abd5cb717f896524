"""`fit_images`: a batch of images → one `SplatSet` each, by Adam on the windowed sum renderer.

Per iteration: forward render (kernel), residual, hand-derived backward, Adam, clamps. The
covariance is clamped so that 3σ_max ≤ R (the window half-size), see `kernel.py` for the truncation
this allows; the final PSNR is measured on the stored FP16 splats with a 2R window (6σ, where
the truncation is below float32 precision). Rates are held, then decay (`lr_decay`); images
whose loss still falls at the end of the hold run further warm cycles (`still_rising`), as
long as each gains.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..core import constants as C
from ..core.render_math import BT709, sigma_max, to_normalised, to_pixels
from ..core.splatset import SplatSet
from .backend import get_xp, to_numpy
from .engine import evaluate_psnr, fused, make_engine, resolve_engine, window_kernel
from .images import as_float_rgb
from .init import colour_from_pixels, init_params
from . import placement
from . import kernel as kernel_mod
from .kernel import WindowKernel, window_entries
from .tiles import K_SIGMA
from .defaults import DEFAULT_ITERS
from .options import PREVIOUS, FitOptions  # noqa: F401 (PREVIOUS: for the benchmarks)
from .solve import has_steps, matched_step_scale, requantize, scale_steps

MIN_SIGMA = 0.3  # pixels: narrower splats alias and stop receiving useful gradients


@dataclass
class FitResult:
    splats: list[SplatSet]
    psnr: np.ndarray                 # [B] dB of the stored FP16 splats, rendered exactly
    n_pruned: np.ndarray             # [B]
    seconds: float
    history: np.ndarray | None = None  # [steps, B] training loss (MSE) per image; NaN after an
                                       # image's last step (further cycles make it ragged)
    options: FitOptions = field(default_factory=FitOptions)


def geometry(n_splats: int, height: int, width: int, opts: FitOptions) -> tuple[float, int, float]:
    """(grid spacing, window half-size R, initial σ) in pixels."""
    spacing = math.sqrt(height * width / n_splats)
    # the floor lets dense budgets still cover smooth regions (σ up to 8/3 px): at 3,136 splats
    # on 224² it is worth +3.7 dB (35.0 vs 31.3, two photographs, 2,000 iterations)
    radius = max(2, math.ceil(opts.extents.window_scale * spacing), opts.extents.min_radius)
    radius = min(radius, max(height, width))
    sigma = min(opts.placement.init_scale * spacing, radius / 3.0)
    return spacing, radius, max(sigma, MIN_SIGMA)


def size_classes(n_splats: int, radius: int, opts: FitOptions) -> list[tuple[int, int]]:
    """``[(count, window half-size), …]`` in splat order: the small class first."""
    n_large = int(round(opts.extents.large_fraction * n_splats))
    if n_large <= 0 or n_large >= n_splats:
        return [(n_splats, radius)]
    return [(n_splats - n_large, radius), (n_large, math.ceil(opts.extents.large_scale * radius))]


def fit_memory_bytes(batch: int, n_splats: int, height: int, width: int,
                     opts: FitOptions | None = None, **options) -> int:
    """Bytes one fitting batch holds (buffers of the kernel and the optimiser) with ``opts``, or
    `FitOptions` with ``options`` (the window sizes and size classes decide it)."""
    opts = opts or FitOptions(**options)
    _, radius, _ = geometry(n_splats, height, width, opts)
    return sum(WindowKernel.bytes_needed(batch, count, height, width, r)
               for count, r in size_classes(n_splats, radius, opts))


def lr_decay(step: int, iters: int, final: float, start: float) -> float:
    """The learning rates' factor at ``step``: 1 until ``start``·iters, then a cosine down to
    ``final`` at the last step."""
    first, last = start * (iters - 1), iters - 1
    if step <= first:
        return 1.0
    t = min((step - first) / max(last - first, 1), 1.0)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * t))


def still_rising(losses: np.ndarray, opts: FitOptions) -> np.ndarray:
    """``[B]`` bool: the images whose training loss ``losses`` ``[iters, B]`` fell by more than
    ``rising_gain`` dB from the last tenth of the iterations before the decay to the end — the
    last stretch of training still paid, so a further cycle will (tuning set: the images whose
    loss had settled by then gained ≤ 0.07 dB from one; RESULTS.md). The loss is averaged over
    a fiftieth of the iterations at both ends: relocation bumps it."""
    iters, batch = losses.shape
    start = int(opts.optimiser.lr_decay_from * (iters - 1)) - iters // 10
    smooth = max(1, iters // 50)
    rates = opts.optimiser
    if rates.max_cycles <= 0 or rates.cycle_length <= 0 or start - smooth < 0:
        return np.zeros(batch, bool)
    before = losses[start - smooth:start].mean(axis=0)
    after = losses[iters - smooth:].mean(axis=0)
    return 10 * np.log10(before / np.maximum(after, 1e-30)) > rates.rising_gain


def clamp_covariance(xp, params, radius) -> None:
    """l11, l22 ≥ MIN_SIGMA and 3·sqrt(λ_max(Σ)) ≤ R, in place (pixel units); ``radius``: one R,
    or one per splat ``[N]`` (size classes)."""
    xp.maximum(params[..., 2], MIN_SIGMA, out=params[..., 2])
    xp.maximum(params[..., 4], MIN_SIGMA, out=params[..., 4])
    scale = xp.minimum(1.0, radius / (3.0 * sigma_max(xp, params)))
    params[..., 2:5] *= scale[..., None]


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


def fit_images(images, n_splats: int = 1600, iters: int = DEFAULT_ITERS, *,
               progress: Callable[[int, int, float], None] | None = None,
               history: bool = False, init_splats: list[SplatSet] | None = None,
               **options) -> FitResult:
    """Fit ``n_splats`` Gaussians to each image of a batch.

    images: ``[B, H, W(, C)]`` (uint8, uint16, bool or float; see `gsformat.fitting.images`).
    options: `FitOptions`' fields by their flat names (learning rates, init, pruning τ, L1
    colour term, seed, engine, backend, …; `fitting.options.FLAT`) or whole groups
    (``optimiser=Optimiser(…)``). ``progress(step, iters, mean_loss)`` is called every few
    iterations.
    init_splats: one `SplatSet` per image to start from (a warm re-fit) instead of ``init``.
    quantize: a lossy codec config; the returned splats and PSNR are then what a record with it
    decodes to: after the fit the geometry is quantised, the colours solved by least squares for
    it and rounded onto the codec's lattice with error feedback (`gsformat.fitting.solve`).
    matched_steps: with ``quantize``, the PSNR its steps are for; each image's are scaled by its
    own fit's error (`solve.matched_step_scale`).
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
    if opts.optimiser.cycle_length < 0 or opts.optimiser.max_cycles < 0:
        raise ValueError(f"cycle_length and max_cycles must be ≥ 0, got "
                         f"{opts.optimiser.cycle_length} and {opts.optimiser.max_cycles}")
    if opts.quantisation.matched_steps is not None and not (
            opts.quantisation.codec and has_steps(opts.quantisation.codec)
            and math.isfinite(opts.quantisation.matched_steps)):
        raise ValueError("matched steps (matched_steps=) need a finite PSNR and "
                         "quantize= a codec with lattice steps (gsformat.lattice, lattice-rans)")
    per_image = fit_memory_bytes(1, n_splats, height, width, opts=opts)
    batch = opts.execution.batch_size or max(1, opts.execution.memory_limit // per_image)
    _, radius, _ = geometry(n_splats, height, width, opts)
    # the array code's window matrix must fit cuSPARSE's int32 indices (the final PSNR render
    # uses a 2R window and splits itself, see render_splatsets)
    if not (opts.execution.engine in ("auto", "window")
            and fused(get_xp(opts.execution.backend), height, width, radius)):
        entries = max(window_entries(count, height, width, r)
                      for count, r in size_classes(n_splats, radius, opts))
        batch = min(batch, max(1, kernel_mod.MAX_WINDOW_ENTRIES // entries))
    start = time.perf_counter()
    parts = []
    if init_splats is not None and len(init_splats) != b_total:
        raise ValueError(f"init_splats has {len(init_splats)} entries for {b_total} images")
    for first in range(0, b_total, batch):
        warm = init_splats[first:first + batch] if init_splats is not None else None
        parts.append(_fit_batch(target_all[first:first + batch], opts, progress,
                                seed_offset=first, init_splats=warm))
    splats = [s for part in parts for s in part.splats]
    hist = _joined([p.history for p in parts]) if history else None
    return FitResult(splats, np.concatenate([p.psnr for p in parts]),
                     np.concatenate([p.n_pruned for p in parts]), time.perf_counter() - start, hist,
                     opts)


def _joined(histories: list[np.ndarray]) -> np.ndarray:
    """Batches' ``[steps, b]`` losses side by side, NaN-padded to the longest."""
    steps = max(len(h) for h in histories)
    return np.concatenate([np.pad(h, ((0, steps - len(h)), (0, 0)), constant_values=np.nan)
                           for h in histories], axis=1)


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

    def subset(self, rows) -> "PerImageRandom":
        """The generators of images ``rows``, continued (not re-seeded)."""
        part = PerImageRandom(0, 0, 0)
        part.rngs = [self.rngs[i] for i in rows]
        return part

    def random(self, shape):
        return np.stack([rng.random(shape[1:]) for rng in self.rngs])

    def uniform(self, low, high, shape):
        return np.stack([rng.uniform(low, high, shape[1:]) for rng in self.rngs])


class _BatchFit:
    """One fitting batch, step by step: `start` (init), per iteration `relocate` / `prune` /
    `loss_and_grad` / `adam_step`, then `finish` (FP16 splats, quantisation, PSNR)."""

    def __init__(self, target_np, opts: FitOptions, seed_offset: int = 0, rng=None):
        self.opts, self.target_np = opts, target_np
        run = opts.execution
        self.xp = xp = get_xp(run.backend) if run.engine != "dense-torch" else np
        self.batch, self.height, self.width, _ = target_np.shape
        self.n = opts.n_splats
        _, self.radius, self.sigma = geometry(self.n, self.height, self.width, opts)
        self.classes = size_classes(self.n, self.radius, opts)
        self.r_max = self.classes[-1][1]
        self.engine_name = resolve_engine(run.engine, xp)
        # the tile engine has no windows: every splat may grow to the large class's extent
        bounds = [(count, self.r_max if self.engine_name == "tiles" else r)
                  for count, r in self.classes]
        self.radii = xp.concatenate([xp.full(c, r, xp.float32) for c, r in bounds])  # [N]
        self.rebins = self.engine_name != "tiles" and len(self.classes) > 1
        self.rng = rng or PerImageRandom(opts.seed, seed_offset, self.batch)
        self.target = xp.asarray(target_np)  # [B, H, W, 3]
        self.pixel_scale = 2.0 / (self.height * self.width * 3)  # ∂(MSE)/∂render per residual
        self.engine = make_engine(self.engine_name, run.threads, xp, self.batch, self.height,
                                  self.width, self.classes, k_sigma=opts.extents.k_sigma)

    # ---- set-up -----------------------------------------------------------------------------
    def start(self, init_splats=None, params=None, alive=None) -> None:
        """Initial splats: ``params`` ``[B, N, 8]`` pixel units with their ``alive`` mask (a
        further cycle), the `SplatSet`s ``init_splats`` (a warm re-fit), or as placed."""
        xp, opts, batch, n = self.xp, self.opts, self.batch, self.n
        height, width, place, rates = self.height, self.width, opts.placement, opts.optimiser
        if params is not None:
            params = params.copy()
        elif init_splats is not None:
            params = xp.asarray(_warm_params(init_splats, n, height, width))
            clamp_covariance(xp, params, self.radii)
        else:  # each class on its own grid, σ from its own spacing (within its window)
            params = xp.asarray(np.concatenate([init_params(
                place.init, batch, count, height, width,
                geometry(count, height, width, opts)[2] if r == self.radius else min(
                    place.init_scale * math.sqrt(height * width / count), r / 3.0), self.rng)
                for count, r in self.classes], axis=1))
            if place.init == "grid":  # in chunks: the window kernel holds ~42 MB an image
                chunk = max(1, (4 << 30) // (12 * window_entries(n, height, width, self.r_max)))
                for first in range(0, batch, chunk):
                    part = params[first:first + chunk]
                    colour_from_pixels(window_kernel(xp, len(part), n, height, width,
                                                     self.r_max), part,
                                       self.target[first:first + chunk])
        self.params = params                      # [B, N, 8] pixel units
        self.m = xp.zeros_like(params)            # Adam moments
        self.v = xp.zeros_like(params)
        self.alive = xp.ones((batch, n), dtype=bool) if alive is None else alive.copy()
        self.n_pruned = np.zeros(batch, np.int64)
        self.iters_done = np.zeros(batch, np.int64)
        self.lr_base = xp.asarray([rates.lr_position] * 2 + [rates.lr_covariance] * 3
                                  + [rates.lr_colour] * 3, dtype=xp.float32)
        self.moves = placement.relocation_steps(opts.iters, place.relocate_every,
                                                place.relocate_until)
        self.n_move = max(1, int(place.relocate_fraction * n))
        self.prune_step = int(place.prune_at * opts.iters) if place.prune_threshold > 0 else -1
        self.masked = self.prune_step >= 0 or not bool(self.alive.all())  # dead splats stay so
        self.undo = None  # (indices, params, m, v) of the last move, until its loss is seen
        self.last_mse = self.render = self.grad = None
        self.rebin_due = False

    # ---- one iteration ----------------------------------------------------------------------
    def step(self, step: int):
        """Iteration ``step``: returns the MSE ``[B]`` of the render it took the gradient of."""
        if self.rebin_due:  # before this step's forward: the kernels' ranges are the classes
            rebin(self.xp, self.params, (self.m, self.v), self.classes)
            self.rebin_due = False
        if step in self.moves and self.last_mse is not None:
            self.relocate()
        if step == self.prune_step:
            self.prune()
        mse = self.loss_and_grad()
        if self.undo is not None:
            mse = self.undo_worse_moves(mse)
        if self.moves:
            self.last_mse = mse
        grad = self.grad
        if self.opts.optimiser.l1_colour:
            grad[..., C.COLOUR_COLS] += (self.opts.optimiser.l1_colour / self.n) * self.xp.sign(
                self.params[..., C.COLOUR_COLS])
        if self.masked:
            grad *= self.alive[..., None]
        self.adam_step(step, grad)
        self.iters_done += 1
        return mse

    def loss_and_grad(self):
        """Render, per-image MSE ``[B]`` and ∂MSE/∂params into ``self.render`` / ``self.grad``."""
        self.render, mse, self.grad = self.engine.loss_grad(self.params, self.target,
                                                            self.pixel_scale)
        return mse

    def relocate(self) -> None:
        xp, rows = self.xp, self.xp.arange(self.batch)[:, None]
        before = self.render - self.target  # the previous step's residual
        cost = placement.removal_cost(xp, self.params, self.grad, self.height * self.width * 3)
        chosen = placement.weakest(xp, cost, self.n_move, self.alive)
        self.undo = (chosen, self.params[rows, chosen].copy(), self.m[rows, chosen].copy(),
                     self.v[rows, chosen].copy())
        placement.relocate(xp, self.params, (self.m, self.v), before, chosen, self.sigma,
                           self.radius, self.rng)

    def undo_worse_moves(self, mse):
        """The loss just after a move: undo it in the images where it rose too much."""
        xp = self.xp
        worse = mse > self.last_mse * (1 + self.opts.placement.relocate_tolerance)
        if bool(worse.any()):
            chosen, old_p, old_m, old_v = self.undo
            rows = xp.arange(self.batch)[:, None]
            keep = worse[:, None, None]
            for array, old in ((self.params, old_p), (self.m, old_m), (self.v, old_v)):
                array[rows, chosen] = xp.where(keep, old, array[rows, chosen])
            mse = self.loss_and_grad()
        self.undo = None
        self.rebin_due = self.rebins  # once the move is kept or undone (rows stay put)
        return mse

    def prune(self) -> None:
        xp = self.xp
        luminance = xp.abs(self.params[..., C.COLOUR_COLS]) @ xp.asarray(BT709, dtype=xp.float32)
        self.alive &= luminance >= self.opts.placement.prune_threshold
        for array in (self.params[..., C.COLOUR_COLS], self.m, self.v):
            array *= self.alive[..., None]
        self.n_pruned = to_numpy((~self.alive).sum(axis=1))

    def adam_step(self, step: int, grad) -> None:
        """Adam with a cosine-decayed, per-parameter-group learning rate; then the clamps."""
        xp, opts, params, m, v = self.xp, self.opts, self.params, self.m, self.v
        beta1, beta2, eps = 0.9, 0.999, 1e-15
        decay = lr_decay(step, opts.iters, opts.optimiser.lr_final, opts.optimiser.lr_decay_from)
        bias1, bias2 = 1 - beta1 ** (step + 1), 1 - beta2 ** (step + 1)
        if hasattr(self.engine, "adam_step"):  # the CUDA tile engine: one fused kernel
            self.engine.adam_step(params, grad, m, v, self.lr_base * (decay / bias1), bias2,
                                  self.radii, eps=eps, min_sigma=MIN_SIGMA)
            return
        m *= beta1
        m += (1 - beta1) * grad
        v *= beta2
        v += (1 - beta2) * grad * grad
        params -= (self.lr_base * (decay / bias1)) * m / (xp.sqrt(v / bias2) + eps)
        clamp_covariance(xp, params, self.radii)
        xp.clip(params[..., 0], 0, self.width, out=params[..., 0])
        xp.clip(params[..., 1], 0, self.height, out=params[..., 1])

    # ---- further cycles -----------------------------------------------------------------------
    def cycle(self, rows: np.ndarray, iters: int) -> "_BatchFit":
        """A fit of images ``rows`` over ``iters`` more iterations, warm from their splats as
        they are: fresh Adam moments, full rates, relocation and decay on its own clock, each
        image's random stream continued; pruning stays with the first cycle."""
        opts = dataclasses.replace(self.opts, iters=iters, placement=dataclasses.replace(
            self.opts.placement, prune_threshold=0.0))
        cycle = _BatchFit(self.target_np[rows], opts, rng=self.rng.subset(rows))
        picked = self.xp.asarray(rows)
        cycle.start(params=self.params[picked], alive=self.alive[picked])
        return cycle

    def take(self, cycle: "_BatchFit", rows: np.ndarray, mse_before) -> np.ndarray:
        """The images ``rows`` as ``cycle`` (their `cycle`) left them, where that beats their
        loss before it, ``mse_before`` ``[len(rows)]`` (a restart at full rates can shake a fit
        it has too few iterations to settle again). Returns each one's gain ``[len(rows)]`` in
        dB (≤ 0: not taken)."""
        mse_after = to_numpy(cycle.loss_and_grad())  # [len(rows)]
        mse_before = to_numpy(mse_before)
        better = mse_after < mse_before
        if hasattr(cycle.engine, "close"):
            cycle.engine.close()
        xp = self.xp
        self.params[xp.asarray(rows[better])] = cycle.params[xp.asarray(np.flatnonzero(better))]
        self.iters_done[rows[better]] += cycle.iters_done[better]
        return 10 * np.log10(np.maximum(mse_before, 1e-30) / np.maximum(mse_after, 1e-30))

    # ---- result -----------------------------------------------------------------------------
    def finish(self):
        """(splats, PSNR ``[B]``, pruned ``[B]``): FP16 in spec units, quantised where asked,
        PSNR measured on exactly what is stored."""
        if hasattr(self.engine, "close"):
            self.engine.close()
        opts, target_np, height, width = self.opts, self.target_np, self.height, self.width
        params_np, alive_np = to_numpy(self.params), to_numpy(self.alive)
        splats = [SplatSet(to_normalised(params_np[i][alive_np[i]], height, width)
                           .astype(np.float16), height, width) for i in range(self.batch)]
        if opts.quantisation.codec:
            splats = _quantised(splats, target_np, opts, self.r_max)
        scores = evaluate_psnr(splats, target_np, backend=opts.execution.backend)
        for s, score, iters in zip(splats, scores, self.iters_done):
            s.meta.update(psnr=round(float(score), 3), iters=int(iters))
        return splats, scores, self.n_pruned


def _quantised(splats, target_np, opts: FitOptions, r_max: int) -> list[SplatSet]:
    """What records with the quantisation codec store (solve.py), with matched steps if asked."""
    from ..core.record import get_codec
    codec = get_codec(opts.quantisation.codec)
    codecs = [codec] * len(splats)
    if opts.quantisation.matched_steps is not None:  # matched steps (solve.py)
        fit_scores = evaluate_psnr(splats, target_np, backend=opts.execution.backend)
        for i, (fitted, score) in enumerate(zip(splats, fit_scores)):
            factor = matched_step_scale(float(score), opts.quantisation.matched_steps)
            fitted.meta.update(fit_psnr=round(float(score), 3), step_scale=factor)
            codecs[i] = get_codec(scale_steps(opts.quantisation.codec, factor))
    return [requantize(fitted, target_np[i], codecs[i], 2 * r_max)
            for i, fitted in enumerate(splats)]


def _fit_batch(target_np, opts: FitOptions, progress, seed_offset=0,
               init_splats=None) -> FitResult:
    """One batch → its `FitResult` (``seconds`` left 0: `fit_images` times the whole call):
    ``iters`` iterations, then further warm cycles (`_BatchFit.cycle`) for the images
    `still_rising`, each kept where it lowers that image's loss, and followed by another while
    it gained more than ``rising_gain`` dB, up to ``max_cycles``."""
    fit = _BatchFit(target_np, opts, seed_offset)
    fit.start(init_splats)
    first = _run(fit, progress, 0, opts.iters)  # [iters, B]
    rows = np.flatnonzero(still_rising(first, opts))
    extra = round(opts.optimiser.cycle_length * opts.iters)
    cycles = opts.optimiser.max_cycles if extra else 0
    losses = [first]
    for _ in range(cycles):
        if not len(rows):
            break
        done = sum(len(part) for part in losses)
        mse_before = fit.loss_and_grad()[fit.xp.asarray(rows)]  # where the last cycle ended
        cycle = fit.cycle(rows, extra)
        part = np.full((extra, fit.batch), np.nan, np.float32)
        # the bar's total is what has run: how many cycles follow is not known in advance
        part[:, rows] = _run(cycle, progress, done, done + extra)
        losses.append(part)
        gain = fit.take(cycle, rows, mse_before)  # [len(rows)] dB
        rows = rows[gain > opts.optimiser.rising_gain]
    losses = np.concatenate(losses)
    if progress:
        progress(len(losses), len(losses), float("nan"))
    splats, scores, n_pruned = fit.finish()
    return FitResult(splats, scores, n_pruned, 0.0, losses, opts)


def _run(fit: _BatchFit, progress, offset: int, total: int) -> np.ndarray:
    """``fit``'s iterations → its training losses ``[iters, B]``; ``progress`` sees the steps
    as ``offset`` + step of ``total``."""
    xp, iters = fit.xp, fit.opts.iters
    losses = xp.zeros((iters, fit.batch), xp.float32)  # on the device: no sync per step
    for step in range(iters):
        losses[step] = fit.step(step)
        if progress and step % 10 == 0:
            progress(offset + step, total, float(losses[step].mean()))
    return to_numpy(losses)
