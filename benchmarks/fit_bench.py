"""Fitter benchmark: quality and speed of the CPU path against the naive dense autograd fitter.

Prints one JSON object. Every figure is measured in this run, on real photographs (the bundled
scikit-image images, centre-cropped and resized to 224²). Ratios, not absolute times, are what
transfer between machines.

    python benchmarks/fit_bench.py            # full run (~30 min on 2 cores)
    python benchmarks/fit_bench.py --quick    # smoke run (~2 min)
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
from gsformat.samples import SKIMAGE_PHOTOS, load_photo


def best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def ms_per_iter(images, n_splats, engine="window", short=10, long=60, repeats=3):
    """Steady-state ms per iteration: (t(long) − t(short)) / (long − short), best of repeats
    (init and the final exact render cancel out)."""
    t_long = best_of(lambda: fit_images(images, n_splats, long, engine=engine), repeats)
    t_short = best_of(lambda: fit_images(images, n_splats, short, engine=engine), repeats)
    return 1000 * (t_long - t_short) / (long - short)


def main(quick: bool = False) -> dict:
    names = list(SKIMAGE_PHOTOS[:2] if quick else SKIMAGE_PHOTOS)
    size, iters = (96, 200) if quick else (224, 2000)
    photos = {n: load_photo(n, size) for n in names}
    out = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "processor": platform.processor() or platform.machine()},
           "images": names, "size": size, "iters": iters, "quick": quick}

    # 1. quality and speed of the CPU path at the paper's budgets
    budgets = (100, 400) if quick else (400, 1600, 3136)
    out["cpu"] = {}
    for n in budgets:
        psnr, seconds = [], []
        for name in names:
            result = fit_images(photos[name][None], n, iters)
            psnr.append(float(result.psnr[0]))
            seconds.append(result.seconds)
        one = photos[names[0]][None]
        out["cpu"][str(n)] = {
            "psnr_per_image": dict(zip(names, [round(p, 2) for p in psnr])),
            "psnr_mean": round(float(np.mean(psnr)), 2),
            "seconds_per_image": round(float(np.mean(seconds)), 2),
            "ms_per_iter": round(ms_per_iter(one, n), 2)}
        print(f"cpu {n} splats: {out['cpu'][str(n)]}", file=sys.stderr)

    # 2. the naive dense autograd fitter (every splat over every pixel), same init and optimiser
    n_dense = 100 if quick else 1600
    one = photos[names[0]][None]
    dense_ms = ms_per_iter(one, n_dense, engine="dense-torch", short=1, long=3, repeats=1)
    fast_ms = ms_per_iter(one, n_dense)
    out["dense_vs_window"] = {
        "splats": n_dense, "size": size, "dense_torch_ms_per_iter": round(dense_ms, 1),
        "window_ms_per_iter": round(fast_ms, 2), "speedup": round(dense_ms / fast_ms, 1)}
    crop = load_photo(names[0], 64)[None]
    equal = {}
    for engine in ("window", "dense-torch"):
        equal[engine] = float(fit_images(crop, 256, 300, engine=engine).psnr[0])
    out["dense_vs_window"]["psnr_64px_256splats_300iters"] = {
        k: round(v, 3) for k, v in equal.items()}
    out["dense_vs_window"]["psnr_gap_db"] = round(equal["dense-torch"] - equal["window"], 3)
    print(f"dense vs window: {out['dense_vs_window']}", file=sys.stderr)

    # 3. init ablation (paper: 35.25 dB grid vs 28.24 dB random, 4900 splats, 3000 iterations)
    n_abl, it_abl = (400, 200) if quick else (4900, 3000)
    ablation_images = names[:2]
    ablation = {}
    for init in ("grid", "random"):
        scores = [float(fit_images(photos[n][None], n_abl, it_abl, init=init).psnr[0])
                  for n in ablation_images]
        ablation[init] = round(float(np.mean(scores)), 2)
    out["init_ablation"] = {"splats": n_abl, "iters": it_abl, "images": ablation_images,
                            "psnr_mean": ablation}
    print(f"init ablation: {out['init_ablation']}", file=sys.stderr)

    # 4. GPU throughput (only where CuPy sees a GPU)
    if cupy_available():
        gpu = {}
        for n in (400, 1600):
            for batch in (64, 256, 1024, 4096):
                images = np.stack([photos[names[i % len(names)]] for i in range(batch)])
                start = time.perf_counter()
                fit_images(images, n, iters, backend="cupy", batch_size=batch)
                gpu[f"{n}_splats_batch_{batch}"] = round(batch / (time.perf_counter() - start),
                                                         1)
        out["gpu_images_per_second"] = gpu
    else:
        out["gpu_images_per_second"] = "no GPU available in this run"
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    print(json.dumps(main(**vars(parser.parse_args())), indent=2))
