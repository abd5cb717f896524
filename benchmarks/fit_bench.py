"""Fitter benchmark: cost to quality of the CPU fitter, on a tuning set and a held-out report set.

Prints one JSON object. Every figure is measured in this run, on real photographs centre-cropped
and resized to 224², one image per fit (what a conversion pays per image). Two fitters, both
measured here:

- ``previous`` — the fitter before the tile engine (`fit.PREVIOUS`: the NumPy window engine,
  its learning rates, no colour solves) at 2,000 iterations, the quality reference;
- ``new`` — today's defaults (the C tile engine, `FitOptions`, further cycles of half the
  iterations for the images still rising at the end of the hold phase, while each gains), at
  a ladder of iteration counts around `fit.DEFAULT_ITERS` (``convert``'s default too); the
  iterations each image ran at the default are reported.

For each budget (400 / 1,600 / 3,136 splats): PSNR against wall seconds per image for both (the
previous fitter's curve from its training loss every 10 iterations, its end point exact; the new
fitter's ladder points exact), the seconds the new fitter needs to reach the previous fitter's
2,000-iteration mean PSNR (interpolated on its ladder) and their ratio, and each image's PSNR at
the new default against its own previous 2,000-iteration result. Then the engines' steady-state
ms per iteration at each budget on the same splats (C tiles, NumPy windows, dense autograd).

Held-out data: defaults are tuned on TUNING only; REPORT holds photographs no default was ever
tuned on, and README reports REPORT. Ratios, not absolute times, are what transfer between
machines.

    python benchmarks/fit_bench.py            # full run (~28 min on a quiet 2-core machine)
    python benchmarks/fit_bench.py --quick    # smoke run (~1 min)
    python benchmarks/fit_bench.py --from results/fit_bench.json --plot results/fit_cost.png
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from gsformat.fitting import cupy_available, fit_images
from gsformat.fitting.fit import DEFAULT_ITERS, PREVIOUS
from gsformat.testing.photos import REPORT, TUNING, load_photo
PREVIOUS_ITERS = 2000
LADDER = (0.25, 0.5, 1.0)  # × DEFAULT_ITERS for the new fitter's curve


def timed_fit(image, n, iters, curve=None, **options):
    """One image's fit → (PSNR, wall seconds, iterations it ran: more where further cycles
    were kept); ``curve`` collects (seconds, step, training PSNR) every 10 iterations."""
    start = time.perf_counter()

    def progress(step, total, mse):
        if curve is not None and np.isfinite(mse):
            curve.append((round(time.perf_counter() - start, 3), step,
                          round(float(10 * np.log10(1 / max(mse, 1e-12))), 3)))
    result = fit_images(image[None], n, iters, progress=progress, **options)
    return float(result.psnr[0]), time.perf_counter() - start, result.splats[0].meta["iters"]


def cost_to_quality(photos: dict, n: int, previous_iters: int, default_iters: int,
                    ladder=LADDER) -> dict:
    """Both fitters on each image in turn (image by image, so that a busy machine slows both
    alike): the previous one at ``previous_iters`` (with its training curve), the new one at
    each ladder point."""
    ladder_iters = sorted({max(10, round(f * default_iters)) for f in ladder})
    old_psnr, old_seconds, curves = {}, [], []
    new_psnr = {iters: {} for iters in ladder_iters}
    new_seconds = {iters: [] for iters in ladder_iters}
    new_steps = {iters: {} for iters in ladder_iters}
    for name, image in photos.items():
        curve = []
        old_psnr[name], seconds, _ = timed_fit(image, n, previous_iters, curve, **PREVIOUS)
        old_seconds.append(seconds)
        curves.append(curve)
        for iters in ladder_iters:
            new_psnr[iters][name], seconds, new_steps[iters][name] = timed_fit(image, n, iters)
            new_seconds[iters].append(seconds)
        print(f"  {n} splats, {name}: previous {old_psnr[name]:.2f} dB in {old_seconds[-1]:.1f} s; "
              f"new {new_psnr[default_iters][name]:.2f} dB in "
              f"{new_seconds[default_iters][-1]:.1f} s", file=sys.stderr, flush=True)
    old = {"iters": previous_iters, "psnr_per_image": _rounded(old_psnr),
           "psnr_mean": round(float(np.mean(list(old_psnr.values()))), 3),
           "seconds_per_image": round(float(np.mean(old_seconds)), 2),
           "curve_seconds_step_training_psnr": _mean_curve(curves)}
    points = [{"iters": iters, "psnr_mean": round(float(np.mean(list(new_psnr[iters].values()))), 3),
               "seconds_per_image": round(float(np.mean(new_seconds[iters])), 3),
               "psnr_per_image": _rounded(new_psnr[iters])} for iters in ladder_iters]
    at_default = next(p for p in points if p["iters"] == default_iters)
    reach = seconds_to_reach(points, old["psnr_mean"])
    deltas = {k: round(at_default["psnr_per_image"][k] - v, 2) for k, v in old_psnr.items()}
    return {"splats": n, "previous": old, "new": {"ladder": points},
            "new_default": {"iters": default_iters, "psnr_mean": at_default["psnr_mean"],
                            "seconds_per_image": at_default["seconds_per_image"],
                            "psnr_minus_previous_per_image": deltas,
                            "iters_per_image": new_steps[default_iters],
                            "worst_image_minus_previous_db": min(deltas.values())},
            "seconds_to_reach_previous_psnr": reach,
            "time_ratio_previous_over_new": None if reach is None else round(
                old["seconds_per_image"] / reach, 2)}


def _rounded(values: dict) -> dict:
    return {k: round(v, 2) for k, v in values.items()}


def _mean_curve(curves) -> list:
    """[seconds, step, training PSNR] means over images, at every 10th logged step all share."""
    steps = sorted(set.intersection(*[{c[1] for c in curve} for curve in curves]))
    tables = [{c[1]: (c[0], c[2]) for c in curve} for curve in curves]
    return [[round(float(np.mean([t[s][0] for t in tables])), 2), s,
             round(float(np.mean([t[s][1] for t in tables])), 2)] for s in steps[::10]]


def seconds_to_reach(points, target: float):
    """Seconds per image at which the ladder's mean PSNR first reaches ``target`` (linear in
    between two points); None if it never does."""
    previous = None
    for point in points:
        if point["psnr_mean"] >= target:
            if previous is None:
                return point["seconds_per_image"]
            (s0, p0), (s1, p1) = previous, (point["seconds_per_image"], point["psnr_mean"])
            return round(s0 + (s1 - s0) * (target - p0) / max(p1 - p0, 1e-9), 3)
        previous = (point["seconds_per_image"], point["psnr_mean"])
    return None


def ms_per_iter(image, n_splats, short=10, long=60, repeats=3, **options):
    """Steady-state ms per iteration: (t(long) − t(short)) / (long − short), best of repeats
    (init and the final exact render cancel out)."""
    def best(iters):
        return min(timed_fit(image, n_splats, iters, **options)[1] for _ in range(repeats))
    return 1000 * (best(long) - best(short)) / (long - short)


def engine_speed(image, budgets, quick: bool) -> dict:
    """ms per iteration of the engines on the same image and schedule (the previous fitter's,
    so both engines fit the same splats)."""
    out = {}
    for n in budgets:
        row = {engine: round(ms_per_iter(image, n, **dict(PREVIOUS, engine=engine)), 2)
               for engine in ("tiles", "window")}
        row["window_over_tiles"] = round(row["window"] / row["tiles"], 2)
        out[str(n)] = row
        print(f"engines {n}: {row}", file=sys.stderr, flush=True)
    n_dense = budgets[0] if quick else 1600
    dense = ms_per_iter(image, n_dense, short=1, long=3, repeats=1,
                        **dict(PREVIOUS, engine="dense-torch", large_fraction=0.0))
    tiles = ms_per_iter(image, n_dense, **dict(PREVIOUS, engine="tiles", large_fraction=0.0))
    out["dense_autograd"] = {"splats": n_dense, "dense_torch_ms": round(dense, 1),
                             "tiles_ms": round(tiles, 2), "dense_over_tiles": round(dense / tiles, 1)}
    return out


def main(quick: bool = False, tuning_set: bool = False) -> dict:
    size = 96 if quick else 224
    budgets = (100, 300) if quick else (400, 1600, 3136)
    previous_iters = 60 if quick else PREVIOUS_ITERS
    default_iters = 40 if quick else DEFAULT_ITERS
    tuning = {n: load_photo(n, size) for n in (TUNING[:2] if quick else TUNING)}
    report = {n: load_photo(n, size) for n in (REPORT[:2] if quick else REPORT)}
    out = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "processor": platform.processor() or platform.machine()},
           "tuning_set": list(tuning), "report_set": list(report), "size": size, "quick": quick,
           "previous_fitter": dict(PREVIOUS, iters=previous_iters),
           "default_iters": default_iters}
    out["report"] = []
    for n in budgets:  # each budget's result also on stderr as it ends (a long run's partial)
        out["report"].append(cost_to_quality(report, n, previous_iters, default_iters))
        print(json.dumps(out["report"][-1]), file=sys.stderr, flush=True)
    if tuning_set:  # the same at the middle budget on the set the defaults were chosen on
        out["tuning"] = [cost_to_quality(tuning, budgets[len(budgets) // 2], previous_iters,
                                         default_iters)]
    out["engines_ms_per_iter"] = engine_speed(next(iter(report.values())), budgets, quick)
    if cupy_available():  # GPU throughput, only where CuPy sees a GPU
        names, gpu = list(report), {}
        for n in (400, 1600):
            for batch in (64, 256, 1024):
                images = np.stack([report[names[i % len(names)]] for i in range(batch)])
                start = time.perf_counter()
                fit_images(images, n, default_iters, backend="cupy", batch_size=batch)
                gpu[f"{n}_splats_batch_{batch}"] = round(
                    batch / (time.perf_counter() - start), 1)
        out["gpu_images_per_second"] = gpu
    else:
        out["gpu_images_per_second"] = "no GPU available in this run"
    return out


def plot(results: dict, path: str) -> None:
    """PSNR against seconds per image, one panel per budget: the previous fitter's training
    curve and end point, the new fitter's ladder (its default marked)."""
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = results["report"]
    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.6), squeeze=False)
    for ax, row in zip(axes[0], rows):
        old, ladder = row["previous"], row["new"]["ladder"]
        curve = np.array(old["curve_seconds_step_training_psnr"]).reshape(-1, 3)
        curve = curve[curve[:, 0] > 0]
        if len(curve):
            ax.plot(curve[:, 0], curve[:, 2], color="tab:grey", lw=1,
                    label="previous, training loss")
        ax.plot([old["seconds_per_image"]], [old["psnr_mean"]], "s", color="tab:grey",
                label=f"previous, {old['iters']} it.")
        ax.plot([p["seconds_per_image"] for p in ladder], [p["psnr_mean"] for p in ladder],
                "o-", color="tab:blue", label="new (C tiles)")
        default = row["new_default"]
        ax.plot([default["seconds_per_image"]], [default["psnr_mean"]], "*", ms=14,
                color="tab:blue", label=f"new default, {default['iters']} it. + cycles")
        ax.axhline(old["psnr_mean"], color="tab:grey", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_title(f"{row['splats']} splats, report set")
        ax.set_xlabel("wall seconds per image (2 cores)")
        ax.set_ylabel("mean PSNR (dB)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tuning-set", action="store_true",
                        help="also the tuning set at 1,600 splats (~15 min more)")
    parser.add_argument("--plot", metavar="PNG", help="draw PSNR against seconds per image")
    parser.add_argument("--from", dest="source", metavar="JSON",
                        help="plot this earlier run's JSON instead of running")
    args = parser.parse_args()
    if args.source:
        with open(args.source) as f:
            out = json.load(f)
    else:
        out = main(args.quick, args.tuning_set)
        print(json.dumps(out, indent=2))
    if args.plot:
        plot(out, args.plot)
