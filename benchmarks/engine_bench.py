"""The C tile engine's cost per call on the splats the default fitter produces.

Fits photographs of the tuning set (`gsformat.testing.photos.TUNING`, 224²) for ``--iters`` iterations with
`FitOptions()` defaults at ``--splats`` splats (cached under ``--cache``), then times
`TileEngine.loss_grad` on the fitted splats, the images as one batch: best of ``--repeats``
rounds of ``--calls`` calls, ``--threads`` threads. Prints one JSON line: ms per call, the
(tile, splat) entries and 8-lane chunks per call, ns per chunk. The chunks are those of a
fixed definition (per entry and row, the 8-lane halves of a tile row its span reaches: what
the engine once evaluated), a measure of the work that does not change with the engine.

``--baseline PATH`` also times another build of `_tiles` (a copied ``_tiles*.so``) in the same
process, rounds interleaved with this build's, so that a noisy machine affects both alike:

    python setup.py build_ext --inplace && cp gsformat/fitting/_tiles*.so /tmp/base/
    python benchmarks/engine_bench.py --splats 1600 --baseline /tmp/base/_tiles*.so
"""
from __future__ import annotations

import argparse
import glob
import importlib.machinery
import importlib.util
import json
import os
import time

import numpy as np

from gsformat.core.render_math import to_pixels
from gsformat.fitting import tiles


def fitted(names, n_splats: int, iters: int, size: int, cache: str):
    """(params ``[B, N, 8]`` pixel units, targets ``[B, H, W, 3]`` float32) of a default fit."""
    from gsformat.testing.photos import load_photo
    from gsformat.fitting import fit_images
    from gsformat.fitting.images import as_float_rgb
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, f"{'-'.join(names)}_{n_splats}_{iters}_{size}.npz")
    images = np.stack([load_photo(n, size) for n in names])
    if not os.path.exists(path):
        result = fit_images(images, n_splats, iters)
        params = np.zeros((len(names), n_splats, 8), np.float32)
        params[..., 2] = params[..., 4] = 1.0  # pruned splats: colour 0, one pixel (ignored)
        for i, s in enumerate(result.splats):
            params[i, :s.n_splats] = to_pixels(s.params.astype(np.float32), size, size)
        np.savez(path, params=params)
    return np.load(path)["params"], np.ascontiguousarray(as_float_rgb(images), np.float32)


def load_build(path: str):
    """A `_tiles` extension module from a given shared-library file."""
    loader = importlib.machinery.ExtensionFileLoader("_tiles", path)
    spec = importlib.util.spec_from_file_location("_tiles", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def work(params, height: int, width: int, k_sigma: float):
    """(entries, chunks) one call evaluates: per entry, per row, the 8-lane chunks its span
    reaches (the C engine's `row_spans`, in float64 — a close count, not the exact one)."""
    boxes = tiles.footprint(params, height, width, k_sigma)
    t, entries, chunks = tiles.TILE, 0, 0
    for p, box in zip(params.reshape(-1, 8), boxes.reshape(-1, 4)):
        x0, x1, y0, y1 = (int(v) for v in box)
        if x1 <= x0:
            continue
        l11, l21, l22 = float(p[2]), float(p[3]), float(p[4])
        a = l21 * l21 + l22 * l22
        rows = np.arange(y0, y1) + 0.5 - p[1]
        disc = k_sigma * k_sigma * a - rows * rows
        root = abs(l22) * np.sqrt(np.maximum(disc, 0))
        u0, u1 = l11 / a * (rows * l21 - root), l11 / a * (rows * l21 + root)
        lo = np.maximum(np.ceil(p[0] + np.minimum(u0, u1) - 0.51), x0)
        hi = np.minimum(np.floor(p[0] + np.maximum(u0, u1) - 0.49), x1 - 1)
        for ty in range(y0 // t, (y1 - 1) // t + 1):
            for tx in range(x0 // t, (x1 - 1) // t + 1):
                entries += 1
                sel = slice(max(y0, ty * t) - y0, min(y1, ty * t + t) - y0)
                a_, b_ = np.maximum(lo[sel], tx * t), np.minimum(hi[sel], tx * t + t - 1)
                ok = (b_ >= a_) & (disc[sel] >= 0)
                chunks += int(((b_[ok] - tx * t) // 8 - (a_[ok] - tx * t) // 8 + 1).sum())
    return entries, chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splats", type=int, default=1600)
    parser.add_argument("--iters", type=int, default=500)
    parser.add_argument("--images", default="astronaut,coffee",
                        help="comma-separated names from gsformat.testing.photos.TUNING")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--baseline", default=None, help="another build's _tiles*.so")
    parser.add_argument("--cache", default=os.path.join("/tmp", "gsformat_engine_bench"))
    args = parser.parse_args()
    names = args.images.split(",")
    params, target = fitted(names, args.splats, args.iters, args.size, args.cache)
    batch, n = params.shape[:2]
    builds = {"new": tiles.native()}
    if args.baseline:
        builds["old"] = load_build(glob.glob(args.baseline)[0])
    engine = tiles.TileEngine(batch, n, args.size, args.size, threads=args.threads)
    scale = 2.0 / (args.size * args.size * 3)
    best = {name: float("inf") for name in builds}
    for _ in range(args.repeats):
        for name, module in builds.items():
            engine.module = module
            engine.loss_grad(params, target, scale)  # warm
            start = time.perf_counter()
            for _ in range(args.calls):
                engine.loss_grad(params, target, scale)
            best[name] = min(best[name], (time.perf_counter() - start) / args.calls)
    entries, chunks = work(params, args.size, args.size, tiles.K_SIGMA)
    out = {"splats": n, "images": names, "iters": args.iters, "threads": args.threads,
           "entries_per_call": entries, "chunks_per_call": chunks}
    for name, seconds in best.items():
        out[f"ms_per_call_{name}"] = round(seconds * 1e3, 3)
        out[f"ns_per_chunk_{name}"] = round(seconds * 1e9 / max(chunks, 1), 2)
    if "old" in best:
        out["speedup"] = round(best["old"] / best["new"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
