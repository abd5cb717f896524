"""`FitOptions`: everything `fit_images` accepts besides the images, grouped by concern.

    FitOptions(n_splats, iters, seed,
               optimiser    = Optimiser(lr_position, lr_covariance, lr_colour, lr_final,
                                          lr_decay_from, l1_colour, cycle_length, rising_gain,
                                          max_cycles),
               placement    = Placement(init, init_scale, relocate_*, prune_threshold, prune_at),
               extents      = Extents(k_sigma, window_scale, min_radius, large_fraction, large_scale),
               quantisation = Quantisation(codec, matched_steps),
               execution    = Execution(backend, engine, batch_size, threads, memory_limit))

Every group field also goes by its flat name, as `fit_images(**kwargs)` takes them:
``FitOptions(lr_position=0.1, engine="window")`` and ``fit_images(images, quantize=codec)``
fill the groups (`FLAT` lists the names; ``quantize`` is `Quantisation.codec`). Defaults were
tuned on the tuning set of `benchmarks/fit_bench.py`; `PREVIOUS` is the fitter before the tile
engine, as flat names.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

from .defaults import DEFAULT_ITERS
from .tiles import K_SIGMA

DEFAULT_MEMORY_LIMIT = 2 << 30


@dataclass(frozen=True)
class Optimiser:
    """Adam on every parameter (rates per step; benchmarks/RESULTS.md, "fewer iterations")."""
    lr_position: float = 0.3       # pixels per step (10× the rates `PREVIOUS` was tuned with)
    lr_covariance: float = 0.15    # pixels per step, on the Cholesky factor
    lr_colour: float = 0.016       # colour units per step
    lr_final: float = 0.5          # a cosine decay to this fraction of each rate (1: constant)
    lr_decay_from: float = 0.7     #   over the iterations after this fraction of them (smooth
                                   #   images settle: +0.8 dB at 1,600 splats on the tuning
                                   #   set, its cell +2.2, colour wheel +5.2; RESULTS.md)
    l1_colour: float = 0.0         # weight of the paper's L1 colour term (mean |colour|)
    cycle_length: float = 0.5      # images still rising at the end get a further cycle (hold,
                                   #   decay) this long, as a fraction of iters, warm from their
                                   #   splats (fit.still_rising)
    rising_gain: float = 0.5       # dB the training loss must have fallen from the last tenth
                                   #   of the iterations before the decay to the end, or over a
                                   #   whole further cycle, for one (another) to follow (tuning
                                   #   set: RESULTS.md, "cycles while they pay")
    max_cycles: int = 3            # at most this many cycles after the first (0: none)


@dataclass(frozen=True)
class Placement:
    """Where splats start, move to and are removed (placement.py)."""
    init: str = "grid"             # "grid" | "random"
    init_scale: float = 0.5        # initial σ as a fraction of the grid spacing
    relocate_every: int = 125      # move the weakest splats to the error every this many
                                   # iterations (0: never; placement.relocate)
    relocate_fraction: float = 0.02  # share of the budget moved each time
    relocate_until: float = 0.7    # no relocation after this fraction of iters
    relocate_tolerance: float = 0.05  # a move that raises the loss by more (relative) is undone
    prune_threshold: float = 0.0   # τ: BT.709 luminance of |colour| below it removes a splat
    prune_at: float = 0.8          # fraction of iters after which pruning happens (then re-fit)


@dataclass(frozen=True)
class Extents:
    """How far a splat reaches: the tile engine's footprint, the window engines' windows."""
    k_sigma: float = K_SIGMA       # "tiles": a splat covers its ellipse at k_sigma·σ (tiles.py)
    window_scale: float = 1.5      # window half-size R = max(ceil(window_scale · spacing),
    min_radius: int = 8            #   min_radius) pixels; 3σ_max ≤ R (see kernel.py)
    large_fraction: float = 0.1    # per-splat extents: this share of the budget in a class of
    large_scale: float = 2.5       #   large windows, R_large = ceil(large_scale · R), where
                                   #   3σ_max ≤ R_large; splats move between the classes as they
                                   #   grow or shrink (`fit.rebin`)


@dataclass(frozen=True)
class Quantisation:
    """What records will store (solve.py): the fit ends on the codec's lattice."""
    codec: dict | None = None      # a lossy codec config (e.g. gsformat.lattice-rans): after the
                                   # fit, quantise the geometry, solve the colours for it by least
                                   # squares and round them with error feedback
    matched_steps: float | None = None  # the codec's steps are for a fit of this PSNR (dB);
                                   # each image's are scaled by its own fit's RMSE over that
                                   # one's (solve.matched_step_scale; the record's fit map keeps
                                   # step_scale and fit_psnr); None: as given


@dataclass(frozen=True)
class Execution:
    """Where and how the fit runs; results do not depend on it (but for the backend's float
    arithmetic)."""
    backend: str = "auto"          # "auto" | "numpy" | "cupy"
    engine: str = "auto"           # "auto" = "tiles": the C tile engine on a CPU ("window" where
                                   # it is not built), its CUDA kernels on a GPU | "window"
                                   # (threaded NumPy windows on a CPU, fused CUDA window kernels
                                   # on a GPU) | "window-xp" (the array-code twin, either
                                   # backend) | "dense-torch" (reference baseline)
    batch_size: int | None = None  # images per fitting batch (None: as many as memory allows;
                                   # the array code: at most what int32 window indices allow)
    threads: int | None = None     # CPU threads (None: $GSFORMAT_THREADS, else usable cores)
    memory_limit: int = DEFAULT_MEMORY_LIMIT


GROUPS = {"optimiser": Optimiser, "placement": Placement, "extents": Extents,
          "quantisation": Quantisation, "execution": Execution}
# flat name → (group, field): every group field by its own name, and `fit_images`' names
FLAT = {f.name: (group, f.name) for group, cls in GROUPS.items()
        for f in dataclasses.fields(cls)}
FLAT["quantize"] = ("quantisation", "codec")
# earlier names (a DeprecationWarning): 0.1's, and the cycles' before there could be several
RENAMED = {"quantize_reference_psnr": "matched_steps", "second_cycle": "cycle_length"}
RENAMED_NOTES = {"second_cycle": " (cycles now follow while they pay: max_cycles=1 for at most "
                                 "one)"}


@dataclass(init=False)
class FitOptions:
    n_splats: int = 1600
    iters: int = DEFAULT_ITERS
    seed: int = 0
    optimiser: Optimiser = field(default_factory=Optimiser)
    placement: Placement = field(default_factory=Placement)
    extents: Extents = field(default_factory=Extents)
    quantisation: Quantisation = field(default_factory=Quantisation)
    execution: Execution = field(default_factory=Execution)

    def __init__(self, n_splats: int = 1600, iters: int = DEFAULT_ITERS, seed: int = 0, *,
                 optimiser: Optimiser | None = None, placement: Placement | None = None,
                 extents: Extents | None = None, quantisation: Quantisation | None = None,
                 execution: Execution | None = None, **flat):
        self.n_splats, self.iters, self.seed = n_splats, iters, seed
        groups = {"optimiser": optimiser, "placement": placement, "extents": extents,
                  "quantisation": quantisation, "execution": execution}
        changes: dict[str, dict] = {name: {} for name in GROUPS}
        for name, value in flat.items():
            if name in RENAMED:
                warnings.warn(f"{name} is now {RENAMED[name]}{RENAMED_NOTES.get(name, '')}",
                              DeprecationWarning, stacklevel=3)
                name = RENAMED[name]
            if name not in FLAT:
                raise TypeError(f"unexpected fitting option {name!r} (known: "
                                f"{', '.join(sorted(FLAT))})")
            group, key = FLAT[name]
            changes[group][key] = value
        for name, cls in GROUPS.items():
            base = groups[name] if groups[name] is not None else cls()
            setattr(self, name, dataclasses.replace(base, **changes[name]))

    def flat(self) -> dict:
        """Every option by its flat name (what `fit_images` takes; benchmarks print it)."""
        out = {"n_splats": self.n_splats, "iters": self.iters, "seed": self.seed}
        for group in GROUPS:
            out.update(dataclasses.asdict(getattr(self, group)))
        out["quantize"] = out.pop("codec")
        return out


# The fitter before the tile engine (the NumPy window engine, the learning rates it was tuned
# with, 2,000 iterations): a named configuration, so that benchmarks compare both in one run.
PREVIOUS = {"engine": "window", "lr_position": 0.03, "lr_covariance": 0.015, "lr_colour": 0.008,
            "lr_final": 1.0, "max_cycles": 0, "relocate_every": 250,
            "relocate_fraction": 0.05}
