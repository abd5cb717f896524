"""Re-fit after quantisation: solve the colours for the quantised geometry, then round them onto
the codec's colour lattice with error feedback.

The render is linear in the colours: with the geometry fixed, I = G·c where G ``[H·W, N]`` holds
each splat's Gaussian factor at every pixel. So once a lossy codec has quantised positions and
covariances, the best colours are a least-squares solve of ``(GᵀG) c = Gᵀ I`` — exact, no
iterations — which recovers most of what the geometry's quantisation lost. The solved colours
are then rounded one splat at a time, each rounding error fed back into the colours not yet
rounded through the inverse of H = GᵀG (the OBQ/GPTQ rule: the remaining colours move to the
least-squares optimum given the ones already fixed).

*Matched steps* (`matched_step_scale`, `Quantisation.matched_steps`, ``fit_images(matched_steps=…)``): a codec's steps
are given for a fit of a reference PSNR, and each image's steps are scaled by its own fit's RMSE
over that reference's. Why: a dataset's figure of merit is the mean PSNR over its images for
their mean bytes; refining image i's steps by one bit per value gains ≈ 6 dB of its quantisation
noise, which is worth −10·log10(1 − q_i / (f_i + q_i)) dB of its PSNR (f_i the fit's MSE, q_i the
quantisation's), so the bytes are best spent where q_i / (f_i + q_i) is largest, and at the
optimum that share is the same for every image: q_i ∝ f_i, steps ∝ the fit's RMSE. One fixed
step wastes bits on images the fit cannot render closely anyway and starves the ones it renders
at 40+ dB, where the colour lattice alone can cost 4 dB. The record stores the steps it used
(its codec config), so readers need nothing new.

`round_with_feedback` is the fast form (one Cholesky factor of H⁻¹, GPTQ's update);
`_round_with_feedback_reference` re-solves the remaining colours explicitly after every
rounding — slow, obvious, and equal to it (the tests compare them).
"""
from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from ..core import constants as C
from ..core.render_math import to_pixels
from ..core.splatset import SplatSet
from .defaults import REFERENCE_PSNR  # noqa: F401 (solve's callers name it here)
from .kernel import WindowKernel

DAMP = 1e-4           # H + DAMP·mean(diag H)·I: keeps the factorisation well conditioned
RIDGE = 1e-6          # least-squares ridge (splats that cover no pixel get colour 0)
MAX_FEEDBACK_SPLATS = 4096  # dense N×N inverse above this: round without feedback instead
STEP_FIELDS = ("position_step", "scale_step", "shear_step", "colour_step")
STEP_SCALE_RANGE = (1 / 8, 4.0)  # matched steps: at most 8× finer or 4× coarser than given
# (finer, FP16's own rounding of colours up to 4 would approach half a colour step of the
# default lattice, and re-encoding decoded splats would no longer give the same values)


def colour_system(params_px: np.ndarray, target: np.ndarray, radius: int):
    """Normal equations of the colours for fixed geometry.

    params_px ``[N, 8]`` float32 pixel units, target ``[H, W, 3]`` float in [0, 1].
    Returns (H ``[N, N]`` scipy CSC float64, b ``[N, 3]`` float64).
    """
    height, width, _ = target.shape
    kernel = WindowKernel(np, 1, len(params_px), height, width, radius)
    kernel.forward(np.asarray(params_px, np.float32)[None])
    design = kernel.matrix.astype(np.float64).tocsc()  # [H·W, N]
    return (design.T @ design).tocsc(), design.T @ target.reshape(-1, 3).astype(np.float64)


def solve_colours(hessian, rhs) -> np.ndarray:
    """``(H + RIDGE·I) c = b`` → colours ``[N, 3]`` (sparse LU: no N×N dense matrix)."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla
    n = hessian.shape[0]
    return np.asarray(spla.splu((hessian + RIDGE * sp.identity(n)).tocsc()).solve(rhs))


def _damped(hessian: np.ndarray) -> np.ndarray:
    h = np.array(hessian, np.float64)
    h[np.diag_indices_from(h)] += DAMP * max(float(np.mean(np.diag(h))), 1e-12)
    return h


def round_with_feedback(colours: np.ndarray, hessian: np.ndarray, step: float) -> np.ndarray:
    """Round ``colours`` ``[N, 3]`` to multiples of ``step``, splat by splat, each error fed back
    into the splats after it (GPTQ). ``hessian``: dense ``[N, N]`` GᵀG."""
    n = len(colours)
    inverse = sla.cho_solve(sla.cho_factor(_damped(hessian)), np.eye(n))
    upper = sla.cholesky(inverse, lower=False)  # H⁻¹ = UᵀU; row i drives the update after i
    work = np.array(colours, np.float64)
    for i in range(n):
        rounded = np.rint(work[i] / step) * step
        error = (work[i] - rounded) / upper[i, i]  # [3]
        work[i] = rounded
        work[i + 1:] -= np.outer(upper[i, i + 1:], error)
    return work


def _round_with_feedback_reference(colours, hessian, step) -> np.ndarray:
    """Reference twin: after fixing splat i at its rounded colour, the free colours F move to the
    minimiser of (c − c*)ᵀ H (c − c*) with the fixed ones X held:
    c_F = c*_F − H_FF⁻¹ H_FX (c_X − c*_X)."""
    h = _damped(hessian)
    target = np.array(colours, np.float64)
    work = target.copy()
    n = len(work)
    for i in range(n):
        work[i] = np.rint(work[i] / step) * step
        fixed, free = np.arange(i + 1), np.arange(i + 1, n)
        if len(free):
            shift = h[np.ix_(free, fixed)] @ (work[fixed] - target[fixed])
            work[free] = target[free] - np.linalg.solve(h[np.ix_(free, free)], shift)
    return work


def quantizer(codec):
    """float16 rows ``[N, 8]`` → what a record with ``codec`` decodes them to, in the same order.

    Codecs that reorder splats say so with a ``quantize_rows`` method (or, for
    `gsformat.entropy`, an order-keeping twin); for the others it is decode(encode(·))."""
    if hasattr(codec, "quantize_rows"):
        return codec.quantize_rows
    twin = getattr(codec, "_quantize", codec)
    return lambda rows: np.asarray(twin.decode(twin.encode(rows))).reshape(rows.shape)


def requantize(splats: SplatSet, image: np.ndarray, codec, radius: int) -> SplatSet:
    """A fitted `SplatSet` → what a record with ``codec`` should store: quantised geometry,
    least-squares colours, rounded with feedback onto the codec's colour lattice (codecs with a
    ``colour_step``; others quantise the solved colours themselves). ``image``: ``[H, W, 3]``
    float in [0, 1]; ``radius``: the window half-size of the renderer the colours are solved for.
    The result's values are exactly what decoding the record gives (in the input order)."""
    quantize_rows = quantizer(codec)
    height, width = splats.canvas_hw
    rows = quantize_rows(np.asarray(splats.params, np.float16))  # geometry as stored
    hessian, rhs = colour_system(to_pixels(rows.astype(np.float32), height, width), image,
                                 radius)
    colours = solve_colours(hessian, rhs)
    step = getattr(codec, "colour_step", None)
    if step is not None and len(rows) <= MAX_FEEDBACK_SPLATS:
        colours = round_with_feedback(colours, hessian.toarray(), step)
    solved = rows.astype(np.float64)
    solved[:, C.COLOUR_COLS] = colours
    if not np.isfinite(solved).all():  # a degenerate system: keep the plain quantisation
        return SplatSet(rows, height, width, dict(splats.meta))
    final = quantize_rows(solved.astype(np.float16))
    return SplatSet(final, height, width, dict(splats.meta))


def has_steps(config: dict) -> bool:
    """Whether a codec config is one with lattice steps (gsformat.lattice, lattice-rans)."""
    from ..core.record import get_codec
    return all(hasattr(get_codec(config), name) for name in STEP_FIELDS)


def matched_step_scale(fit_psnr: float, reference_psnr: float) -> float:
    """The factor on a codec's steps for an image fitted to ``fit_psnr`` dB when the steps are
    given for a fit of ``reference_psnr`` dB: the ratio of the two RMSEs (module docstring),
    within `STEP_SCALE_RANGE`, to 3 significant digits (configs stay readable)."""
    factor = 10.0 ** ((reference_psnr - fit_psnr) / 20.0) if np.isfinite(fit_psnr) else 1.0
    return float(f"{float(np.clip(factor, *STEP_SCALE_RANGE)):.3g}")


def scale_steps(config: dict, factor: float) -> dict:
    """A lattice codec config with every step times ``factor`` (each at most 1, the codec's
    bound), the position step then rounded to a power of two (in log: FP16 positions are
    multiples of powers of two, so those steps keep re-encoding exact, SPEC § 5.5); the codec's
    defaults filled in first."""
    from ..core.record import get_codec
    full = get_codec(config).get_config()
    scaled = {name: min(1.0, float(full[name]) * factor) for name in STEP_FIELDS}
    scaled["position_step"] = 2.0 ** round(np.log2(scaled["position_step"]))
    return full | scaled


def record_codecs(codecs: list[dict], splats: SplatSet) -> list[dict]:
    """The pipeline a record of ``splats`` is written with: ``codecs``, with the lattice codec's
    steps scaled by the ``step_scale`` its fit chose (matched steps), else as given."""
    factor = splats.meta.get("step_scale")
    if factor is None:
        return list(codecs)
    return [scale_steps(c, factor) if has_steps(c) else c for c in codecs]
