"""GPU fitter benchmark: quality and images per second of the CuPy path, against the NumPy path
measured on the same machine in the same run.

Prints one JSON object (and progress on stderr). Needs CuPy and a CUDA GPU; ``--dry-run`` runs
the same steps on the NumPy backend at toy sizes, to check the script itself anywhere.

    python benchmarks/gpu_bench.py                  # ~3–4 min on one H100/H200
    python benchmarks/gpu_bench.py --dry-run        # ~1 min on 2 CPU cores

What it measures, all on scikit-image's bundled photographs at 224², the default FitOptions:
1. quality: the seven photographs fitted together on the GPU (1,600 splats, 2,000 iterations);
   per-image PSNR next to the CPU figures in benchmarks/results/fit_bench.json (same init and
   optimiser, so they should agree to float32 summation order);
2. speed: steady-state milliseconds per iteration, (t(long) − t(short)) / (long − short), for
   batches of 64 to 4,096 images at 400 and 1,600 splats (fused CUDA kernels), turned into
   images per second for a 2,000-iteration fit; the array-code twin (cuSPARSE) at one size for
   comparison; one full 2,000-iteration batch timed end to end to check the estimate;
3. the baseline: the NumPy path on this machine's CPU cores, same formula;
4. where the GPU time goes: forward and backward of one batch, timed with device syncs, for
   both kernels.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

from gsformat.fitting import fit_images
from gsformat.fitting.engine import window_kernel
from gsformat.fitting.fit import FitOptions, geometry
from gsformat.fitting.init import init_params
from gsformat.fitting.kernel import WindowKernel
from samples import SKIMAGE_PHOTOS, load_photo

ITERS = 2000


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def sync(xp):
    if xp.__name__ == "cupy":
        xp.cuda.Device().synchronize()


def timed_fit(images, n, iters, backend, batch, engine="window"):
    start = time.perf_counter()
    fit_images(images, n, iters, backend=backend, batch_size=batch, engine=engine)  # ends on
    return time.perf_counter() - start                                            # host arrays


def ms_per_iter(images, n, backend, batch, short, long, engine="window"):
    t_short = min(timed_fit(images, n, short, backend, batch, engine) for _ in range(2))
    t_long = min(timed_fit(images, n, long, backend, batch, engine) for _ in range(2))
    return 1000 * (t_long - t_short) / (long - short), t_short


def phases(xp, images, n, engine="window", repeats=5):
    """Forward and backward milliseconds of one batch (device-synchronised)."""
    batch, height, width, _ = images.shape
    _, radius, sigma = geometry(n, height, width, FitOptions())
    kernel = window_kernel(xp, batch, n, height, width, radius) if engine == "window" else \
        WindowKernel(xp, batch, n, height, width, radius)
    params = xp.asarray(init_params("grid", batch, n, height, width, sigma,
                                    np.random.default_rng(0)))
    params[..., 5:8] = 0.5
    target = xp.asarray(images.astype(np.float32) / 255)
    fwd, bwd = [], []
    for _ in range(repeats):
        sync(xp)
        t0 = time.perf_counter()
        render = kernel.forward(params)
        sync(xp)
        t1 = time.perf_counter()
        kernel.backward(params, render - target)
        sync(xp)
        fwd.append(t1 - t0)
        bwd.append(time.perf_counter() - t1)
    return {"forward_ms": round(1000 * min(fwd), 2), "backward_ms": round(1000 * min(bwd), 2)}


def main(dry_run: bool = False, out_path: str | None = None, budget_s: float = 330) -> dict:
    backend = "numpy" if dry_run else "cupy"
    if dry_run:
        xp = np
    else:
        import cupy as xp
    size = 64 if dry_run else 224
    iters = 40 if dry_run else ITERS
    short, long = (5, 15) if dry_run else (20, 120)
    names = list(SKIMAGE_PHOTOS)
    photos = np.stack([load_photo(name, size) for name in names])
    out = {"dry_run": dry_run, "size": size, "iters": iters,
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "numpy": np.__version__}}
    if not dry_run:
        props = xp.cuda.runtime.getDeviceProperties(0)
        out["machine"].update(gpu=props["name"].decode(), cupy=xp.__version__,
                              gpu_memory_gib=round(props["totalGlobalMem"] / 2**30, 1))
    log(out["machine"])
    started = time.perf_counter()

    def save():  # after every section: a run cut short still leaves its figures
        if out_path:
            with open(out_path, "w") as f:
                json.dump(out, f, indent=2)

    # warm-up: CuPy compiles its kernels on first use
    fit_images(photos[:2], 100, 5, backend=backend)

    # 1. quality on the GPU against the CPU run's figures
    n_quality = 1600 if not dry_run else 256
    result = fit_images(photos, n_quality, iters, backend=backend, batch_size=len(names))
    quality = {"splats": n_quality, "iters": iters, "seconds": round(result.seconds, 2),
               "psnr": dict(zip(names, [round(float(p), 2) for p in result.psnr])),
               "psnr_mean": round(float(np.mean(result.psnr)), 2)}
    reference = os.path.join(os.path.dirname(__file__), "results", "fit_bench.json")
    if not dry_run and os.path.exists(reference):
        with open(reference) as f:
            cpu = json.load(f)["cpu"][str(n_quality)]
        quality["cpu_psnr_from_fit_bench"] = cpu["psnr_per_image"]
        quality["cpu_psnr_mean_from_fit_bench"] = cpu["psnr_mean"]
    out["quality"] = quality
    log("quality", quality)
    save()

    # 2. GPU speed (fused kernels; the array-code twin on cuSPARSE for comparison); 3. the CPU
    # baseline on this machine
    budgets = (400, 1600) if not dry_run else (100,)
    batches = (64, 256, 1024, 4096) if not dry_run else (2, 4)
    twin_batch = 256 if not dry_run else 2
    images = photos[np.arange(twin_batch) % len(names)]
    twin_ms, _ = ms_per_iter(images, budgets[-1], backend, twin_batch, short, long, "window-xp")
    out["array_twin_ms_per_iter"] = {f"{budgets[-1]}_splats_batch_{twin_batch}":
                                     round(twin_ms, 2)}
    log("array twin", out["array_twin_ms_per_iter"])
    speed = {}
    for n in budgets:
        for batch in batches:
            if time.perf_counter() - started > budget_s * 0.6:
                log("time budget: skipping", n, batch)
                continue
            images = photos[np.arange(batch) % len(names)]
            ms, t_short = ms_per_iter(images, n, backend, batch, short, long)
            fixed = max(t_short - short * ms / 1000, 0.0)  # init + final render + transfers
            seconds = fixed + ITERS * ms / 1000
            speed[f"{n}_splats_batch_{batch}"] = {
                "ms_per_iter": round(ms, 2), "fixed_seconds": round(fixed, 2),
                "images_per_second": round(batch / seconds, 1)}
            log(n, batch, speed[f"{n}_splats_batch_{batch}"])
            out["gpu" if not dry_run else "numpy_as_gpu"] = speed
            save()
    key = f"{budgets[-1]}_splats_batch_{twin_batch}"
    out["fused_over_array_twin"] = round(twin_ms / speed[key]["ms_per_iter"], 1)
    best = max(speed, key=lambda k: speed[k]["images_per_second"])
    n_best, batch_best = int(best.split("_")[0]), int(best.split("_")[-1])
    images = photos[np.arange(batch_best) % len(names)]
    seconds = timed_fit(images, n_best, iters, backend, batch_best)
    out["end_to_end_check"] = {"config": best, "iters": iters, "seconds": round(seconds, 2),
                               "images_per_second": round(batch_best / seconds, 1)}
    log("end to end", out["end_to_end_check"])
    save()

    cpu = {}
    for n in budgets:
        ms, t_short = ms_per_iter(photos[:1], n, "numpy", 1, 3 if dry_run else 10,
                                  8 if dry_run else 30)
        fixed = max(t_short - (3 if dry_run else 10) * ms / 1000, 0.0)
        cpu[f"{n}_splats_batch_1"] = {"ms_per_iter": round(ms, 2),
                                      "images_per_second": round(1 / (fixed + ITERS * ms / 1000),
                                                                 3)}
    out["cpu_baseline_same_machine"] = cpu
    for n in budgets:
        gpu_best = max(v["images_per_second"] for k, v in speed.items()
                       if k.startswith(f"{n}_"))
        out.setdefault("gpu_over_cpu", {})[str(n)] = round(
            gpu_best / cpu[f"{n}_splats_batch_1"]["images_per_second"], 1)
    log("cpu", cpu)

    # 4. where the time goes
    for engine in ("window", "window-xp"):
        out[f"phases_{engine}_{key}"] = phases(
            xp, photos[np.arange(twin_batch) % len(names)], budgets[-1], engine)
    out["seconds"] = round(time.perf_counter() - started, 1)
    save()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true",
                        help="NumPy backend, toy sizes: checks the script without a GPU")
    parser.add_argument("--out", dest="out_path", default=None,
                        help="also write the JSON here after every section")
    parser.add_argument("--budget-s", type=float, default=330,
                        help="skip the larger speed configurations past 60%% of this")
    print(json.dumps(main(**vars(parser.parse_args())), indent=2))
