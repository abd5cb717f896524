"""GPU fitter benchmark: the tile engine's CUDA kernels beside the fused window kernels, full fits.

One prepared run within a time budget; prints one JSON object (progress on stderr) and, with
``--out``, rewrites it after every measurement, so a run cut short keeps what it measured.
Needs CuPy and a CUDA GPU (without one it says so in one line and exits 1); ``--dry-run`` runs
the same steps on the CPU at toy sizes (the C tile engine and the NumPy window engine in place
of the two GPU engines) to check the script anywhere.

    python benchmarks/gpu_bench.py --out benchmarks/results/gpu_bench.json   # ≤ --budget-s
    python benchmarks/gpu_bench.py --dry-run                                # ~30 s, 2 cores

Everything on scikit-image's bundled photographs at 224², `FitOptions` defaults (the new
default quality: `fit.DEFAULT_ITERS` iterations), engines ``tiles`` (new: `cuda_tiles`) and
``window`` (old: `cuda_kernel`) in the same run:

1. kernels: the CUDA tile engine against the C engine on four photographs' fitted-like splats
   (render, loss, gradient differences), a check before anything is timed;
2. quality: the seven photographs at 1,600 splats fitted on the GPU by both engines and on this
   machine's CPU cores by the C tile engine: PSNR per image, GPU − CPU;
3. speed: full fits timed end to end (initialisation, every iteration, relocation, the final
   FP16 scoring: nothing extrapolated) for batches of 64 … 4,096 images at 400 and 1,600
   splats, both engines, GPU utilisation and memory sampled (nvidia-smi) during each; a
   configuration whose time, estimated from the smaller ones, would overrun the budget is
   skipped and listed as skipped; one that runs out of GPU memory is recorded as such;
4. convert: ``gsformat convert --device gpu`` on 2,048 distinct images (crops and flips of the
   bundled photographs, JPEG files in class folders), images per second, utilisation, PSNR;
5. phases: milliseconds per loss-and-gradient call and per Adam step of both engines at 1,600
   splats (device-synchronised), where the time of an iteration goes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from gsformat.fitting import cupy_available, fit_images
from gsformat.fitting.fit import DEFAULT_ITERS, FitOptions, _BatchFit
from gsformat.testing.photos import SKIMAGE_PHOTOS, load_photo, load_raw

NEW, OLD = "tiles", "window"
BATCHES = (64, 256, 1024, 4096)
BUDGETS = (400, 1600)
CONVERT_IMAGES = 2048


def log(*args):
    print(*args, file=sys.stderr, flush=True)


class Budget:
    """Seconds left of ``seconds`` from now; `fits(estimate)` whether that much still fits."""

    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def fits(self, estimate: float, keep: float = 0.0) -> bool:
        return estimate <= self.left() - keep


class GpuSampler:
    """GPU utilisation (%) and memory used (MiB) every 200 ms by ``nvidia-smi`` while in a
    ``with`` block; `summary()` → mean / median utilisation, peak memory (None without it)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self.samples: list[tuple[float, float]] = []

    def __enter__(self):
        if self.enabled:
            self.process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--id=0",
                 "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self.reader = threading.Thread(target=self._read, daemon=True)
            self.reader.start()
        return self

    def _read(self):
        for line in self.process.stdout:
            try:
                util, memory = (float(v) for v in line.split(","))
                self.samples.append((util, memory))
            except ValueError:
                pass

    def __exit__(self, *exc):
        if self.enabled:
            self.process.terminate()
            self.process.wait()
            self.reader.join(timeout=2)

    def summary(self) -> dict | None:
        if not self.samples:
            return None
        util = np.array([s[0] for s in self.samples])
        return {"samples": len(util), "utilisation_mean_pct": round(float(util.mean()), 1),
                "utilisation_median_pct": round(float(np.median(util)), 1),
                "memory_peak_mib": max(s[1] for s in self.samples)}


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "OutOfMemory" in type(exc).__name__ or \
        "out of memory" in str(exc).lower()


def sync(xp):
    if xp.__name__ == "cupy":
        xp.cuda.Device().synchronize()


def free_gpu_memory(xp):
    if xp.__name__ == "cupy":
        xp.get_default_memory_pool().free_all_blocks()


# ---- 1. the CUDA tile engine against the C engine -------------------------------------------
def kernel_check(xp, photos, size: int, n: int) -> dict:
    """Splats after a short CPU fit of four photographs; CudaTileEngine vs the C engine."""
    from gsformat.fitting import tiles
    from gsformat.core.render_math import to_pixels
    images = photos[:4]
    fitted = fit_images(images, n, 30, backend="numpy", engine="tiles")
    params = np.stack([to_pixels(s.params.astype(np.float32), size, size)
                       for s in fitted.splats])
    target = images.astype(np.float32) / 255
    scale = 2.0 / (size * size * 3)
    c_render, c_mse, c_grad = tiles.TileEngine(len(images), n, size, size, threads=os.cpu_count()
                                               ).loss_grad(params, target, scale)
    if xp is np:  # dry run: the C engine against itself
        render, mse, grad = c_render, c_mse, c_grad
    else:
        from gsformat.fitting.cuda_tiles import CudaTileEngine
        engine = CudaTileEngine(len(images), n, size, size)
        render, mse, grad = (xp.asnumpy(a) for a in engine.loss_grad(
            xp.asarray(params), xp.asarray(target), scale))
    kind_scale = np.abs(c_grad).max(axis=(0, 1))
    return {"images": len(images), "splats": n,
            "render_max_abs_diff": float(np.abs(render - c_render).max()),
            "mse_max_rel_diff": float(np.abs(mse / c_mse - 1).max()),
            "grad_max_diff_over_kind_max": [float(v) for v in
                                            np.abs(grad - c_grad).max(axis=(0, 1)) / kind_scale]}


# ---- 2. quality: GPU engines against the CPU engine ------------------------------------------
def quality(photos, names, n: int, iters: int, backend: str) -> dict:
    out = {"splats": n, "iters": iters}
    cpu = fit_images(photos, n, iters, backend="numpy", engine="tiles")
    out["cpu_tiles"] = {"seconds": round(cpu.seconds, 2),
                        "psnr": dict(zip(names, np.round(cpu.psnr, 2).tolist()))}
    for engine in (NEW, OLD):
        gpu = fit_images(photos, n, iters, backend=backend, engine=engine,
                         batch_size=len(photos))
        out[f"gpu_{engine}"] = {
            "seconds": round(gpu.seconds, 2), "psnr": dict(zip(names, np.round(gpu.psnr, 2)
                                                              .tolist())),
            "psnr_mean": round(float(gpu.psnr.mean()), 3),
            "minus_cpu_mean_db": round(float((gpu.psnr - cpu.psnr).mean()), 3),
            "minus_cpu_max_abs_db": round(float(np.abs(gpu.psnr - cpu.psnr).max()), 3)}
    out["cpu_tiles"]["psnr_mean"] = round(float(cpu.psnr.mean()), 3)
    return out


# ---- 3. speed: full fits ---------------------------------------------------------------------
def full_fit(photos, n: int, iters: int, backend: str, batch: int, engine: str,
             sample: bool) -> dict:
    images = photos[np.arange(batch) % len(photos)]
    with GpuSampler(sample) as sampler:
        start = time.perf_counter()
        result = fit_images(images, n, iters, backend=backend, engine=engine, batch_size=batch)
        seconds = time.perf_counter() - start  # ends on host arrays: nothing left queued
    return {"seconds": round(seconds, 2), "images_per_second": round(batch / seconds, 2),
            "psnr_mean": round(float(result.psnr.mean()), 3), "gpu": sampler.summary()}


def speed(xp, photos, budgets, batches, iters: int, backend: str, budget: Budget,
          keep: float, record) -> dict:
    """Every (batch, splats, engine), smallest batches first; skips what would overrun."""
    table, per_image = {}, {}  # per_image[(n, engine)]: seconds per image of the last batch
    for batch in batches:
        for n in budgets:
            for engine in (NEW, OLD):
                key = f"{engine}/{n}_splats/batch_{batch}"
                estimate = batch * per_image.get((n, engine), 0.0)
                if not budget.fits(estimate, keep):
                    table[key] = {"skipped": f"estimated {estimate:.0f} s, "
                                             f"{budget.left() - keep:.0f} s left"}
                    log("skip", key, table[key]["skipped"])
                    continue
                try:
                    table[key] = full_fit(photos, n, iters, backend, batch, engine,
                                          backend == "cupy")
                    per_image[(n, engine)] = table[key]["seconds"] / batch
                except Exception as exc:  # noqa: BLE001 — recorded, the run goes on
                    if not is_out_of_memory(exc):
                        raise
                    table[key] = {"out_of_memory": str(exc).splitlines()[0][:200]}
                    per_image[(n, engine)] = float("inf")
                free_gpu_memory(xp)
                log(key, table[key])
                record(table)
    return table


# ---- 4. gsformat convert --device gpu --------------------------------------------------------
def write_images(folder: str, count: int, size: int, rng) -> None:
    """``count`` distinct JPEGs: random square crops (at least half the short side), flips and
    rotations of the bundled photographs, in one class folder per photograph."""
    from PIL import Image
    raws = {name: load_raw(name) for name in SKIMAGE_PHOTOS}
    for i in range(count):
        name = SKIMAGE_PHOTOS[i % len(SKIMAGE_PHOTOS)]
        raw = raws[name]
        h, w = raw.shape[:2]
        side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = np.rot90(raw[top:top + side, left:left + side], int(rng.integers(4)))
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.LANCZOS).save(
            os.path.join(folder, name, f"{i:05d}.jpg"), quality=92)


def convert(count: int, size: int, splats: int, batch: int, device: str, sample: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="gpu_bench_") as tmp:
        source, out = os.path.join(tmp, "images"), os.path.join(tmp, "splats")
        write_images(source, count, size, np.random.default_rng(0))
        command = [sys.executable, "-m", "gsformat.cli", "convert", source, out, "--device",
                   device, "--splats", str(splats), "--size", str(size), "--batch", str(batch),
                   "--chunk-size", str(batch), "--no-progress"]
        with GpuSampler(sample) as sampler:
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            seconds = time.perf_counter() - start
        if done.returncode != 0:
            return {"command": " ".join(command[2:]), "failed": done.stderr.strip()[-2000:]}
        with open(os.path.join(out, "summary.json")) as f:
            summary = json.load(f)
        written = summary["images_converted"]
        return {"command": "gsformat " + " ".join(command[4:]).replace(tmp, "TMP"),
                "images": written, "seconds": round(seconds, 2),
                "images_per_second": round(written / seconds, 2),
                "fit_seconds": round(summary["fit_seconds"], 2),
                "psnr_mean": round(summary["psnr"]["mean"], 3), "gpu": sampler.summary()}


# ---- 5. phases ---------------------------------------------------------------------------------
def phases(xp, photos, n: int, batch: int, repeats: int = 5) -> dict:
    """Milliseconds (best of ``repeats``, device-synchronised) of one loss-and-gradient call of
    each engine and of the Adam step (array code, and the fused kernel on a GPU)."""
    from gsformat.fitting.engine import make_engine
    from gsformat.fitting.fit import geometry, size_classes
    from gsformat.fitting.init import init_params
    images = photos[np.arange(batch) % len(photos)]
    _, height, width, _ = images.shape
    opts = FitOptions(n_splats=n)
    _, radius, sigma = geometry(n, height, width, opts)
    classes = size_classes(n, radius, opts)
    params = xp.asarray(init_params("grid", batch, n, height, width, sigma,
                                    np.random.default_rng(0)))
    params[..., 5:8] = 0.5
    target = xp.asarray(images.astype(np.float32) / 255)
    scale = 2.0 / (height * width * 3)

    def best(call):
        times = []
        for _ in range(repeats + 1):  # the first compiles and warms up
            sync(xp)
            start = time.perf_counter()
            call()
            sync(xp)
            times.append(time.perf_counter() - start)
        return round(1000 * min(times[1:]), 3)

    out = {"splats": n, "batch": batch}
    for engine in (NEW, OLD):
        kernel = make_engine(engine, None, xp, batch, height, width, classes)
        out[f"loss_grad_ms_{engine}"] = best(lambda: kernel.loss_grad(params, target, scale))
        if engine == NEW and hasattr(kernel, "pairs"):
            out["tile_pairs"] = int(kernel.pairs)
    fit = object.__new__(_BatchFit)  # only what adam_step reads
    fit.xp, fit.opts, fit.height, fit.width = xp, opts, height, width
    fit.params, fit.m, fit.v = params.copy(), xp.zeros_like(params), xp.zeros_like(params)
    rates = opts.optimiser
    fit.lr_base = xp.asarray([rates.lr_position] * 2 + [rates.lr_covariance] * 3
                             + [rates.lr_colour] * 3, dtype=xp.float32)
    fit.radii = xp.full(n, classes[-1][1], xp.float32)
    grad = xp.asarray(np.random.default_rng(1).normal(0, 1e-4, params.shape).astype(np.float32))
    out["adam_ms_array_code"] = best(lambda: fit.adam_step(10, grad))
    if xp is not np:
        from gsformat.fitting.cuda_tiles import CudaTileEngine
        engine = CudaTileEngine(batch, n, height, width)
        out["adam_ms_fused_kernel"] = best(lambda: engine.adam_step(
            fit.params, grad, fit.m, fit.v, fit.lr_base, 0.01, fit.radii))
    return out


def main(dry_run: bool = False, out_path: str | None = None, budget_s: float = 480) -> dict:
    if dry_run:
        xp, backend, size = np, "numpy", 48
        budgets, batches, iters, convert_count, convert_batch = (16, 64), (2, 4), 20, 8, 4
    else:
        import cupy as xp
        backend, size = "cupy", 224
        budgets, batches, iters = BUDGETS, BATCHES, DEFAULT_ITERS
        convert_count, convert_batch = CONVERT_IMAGES, 1024
    budget = Budget(budget_s)
    names = list(SKIMAGE_PHOTOS)
    photos = np.stack([load_photo(name, size) for name in names])
    out = {"dry_run": dry_run, "size": size, "iters": iters, "budget_s": budget_s,
           "engines": {"new": f"{NEW} (gsformat.fitting.cuda_tiles on a GPU)",
                       "old": f"{OLD} (gsformat.fitting.cuda_kernel on a GPU)"},
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "numpy": np.__version__}}
    if not dry_run:
        props = xp.cuda.runtime.getDeviceProperties(0)
        out["machine"].update(gpu=props["name"].decode(), cupy=xp.__version__,
                              gpu_memory_gib=round(props["totalGlobalMem"] / 2**30, 1))
    log(out["machine"])

    def save(section=None, value=None):  # after every measurement
        if section is not None:
            out[section] = value
        out["seconds"] = round(budget_s - budget.left(), 1)
        if out_path:
            with open(out_path, "w") as f:
                json.dump(out, f, indent=2)

    fit_images(photos[:2], 100, 5, backend=backend, engine=NEW)  # compiles the kernels
    fit_images(photos[:2], 100, 5, backend=backend, engine=OLD)
    save("kernel_check", kernel_check(xp, photos, size, budgets[-1]))
    log("kernels", out["kernel_check"])
    save("quality", quality(photos, names, budgets[-1], iters, backend))
    log("quality", out["quality"])
    # the largest batches last; keep time for convert (estimated from the speed runs)
    keep = 0.25 * budget.left()
    speed(xp, photos, budgets, batches[:-1], iters, backend, budget, keep,
          lambda table: save("speed", table))
    save("convert", convert(convert_count, size, budgets[-1], convert_batch,
                            "cpu" if dry_run else "gpu", not dry_run))
    log("convert", out["convert"])
    table = dict(out.get("speed", {}))
    last = speed(xp, photos, budgets, batches[-1:], iters, backend, budget, 10.0,
                 lambda part: save("speed", {**table, **part}))
    save("speed", {**table, **last})
    if budget.left() > 20:
        save("phases", phases(xp, photos, budgets[-1], batches[1]))
        log("phases", out["phases"])
    speed_table = out["speed"]
    out["new_over_old_images_per_second"] = {
        key.split("/", 1)[1]: round(value["images_per_second"]
                                    / speed_table[f"{OLD}/" + key.split("/", 1)[1]]
                                    ["images_per_second"], 2)
        for key, value in speed_table.items()
        if key.startswith(NEW) and "images_per_second" in value
        and "images_per_second" in speed_table.get(f"{OLD}/" + key.split("/", 1)[1], {})}
    save()
    return out


def check_gpu() -> None:
    """One line and exit 1 where the benchmark cannot run."""
    if not cupy_available():
        sys.exit("gpu_bench: needs CuPy and a CUDA GPU, and there is none here "
                 "(--dry-run runs the same steps on the CPU at toy sizes)")
    import cupy
    from gsformat.fitting.engine import resolve_engine
    try:
        resolve_engine(NEW, cupy)
    except ValueError:
        sys.exit("gpu_bench: engine 'tiles' does not run on CuPy in this checkout "
                 "(gsformat/fitting/engine.py must hand it to cuda_tiles.CudaTileEngine)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true",
                        help="the CPU engines at toy sizes: checks the script without a GPU")
    parser.add_argument("--out", dest="out_path", default=None,
                        help="also write the JSON here after every measurement")
    parser.add_argument("--budget-s", type=float, default=480,
                        help="seconds for the whole run; configurations that would overrun it "
                             "are skipped (default 480)")
    arguments = parser.parse_args()
    if not arguments.dry_run:
        check_gpu()
    print(json.dumps(main(**vars(arguments)), indent=2))
