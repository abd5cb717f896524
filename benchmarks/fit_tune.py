"""One tuning-set measurement of the fitter: mean PSNR and CPU seconds per image for the options
given (the tool behind the choice of defaults; benchmarks/RESULTS.md lists the runs).

Fits each photograph of the tuning set (`gsformat.testing.photos.TUNING`, fit_bench.py's) at
224², alone, with one thread, and prints one JSON line. CPU seconds (``time.process_time``),
not wall time: the runs behind the defaults shared the machine with other work, and CPU time is
the less disturbed figure.

    python benchmarks/fit_tune.py 1600 500 lr_position=0.3 relocate_every=125
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np

from gsformat.fitting import fit_images
from gsformat.testing.photos import TUNING, load_photo


def parse_options(pairs) -> dict:
    """``name=value`` strings → FitOptions keywords (ints, floats, else strings)."""
    options = {}
    for pair in pairs:
        name, value = pair.split("=", 1)
        for kind in (int, float):
            try:
                value = kind(value)
                break
            except ValueError:
                pass
        options[name] = value
    return options


def measure(n_splats: int, iters: int, options: dict, names=TUNING, size: int = 224) -> dict:
    psnr, seconds, steps = [], [], []
    for name in names:
        image = load_photo(name, size)
        start = time.process_time()
        result = fit_images(image[None], n_splats, iters, threads=1, **options)
        seconds.append(time.process_time() - start)
        psnr.append(float(result.psnr[0]))
        steps.append(result.splats[0].meta["iters"])  # more where further cycles ran
    return {"splats": n_splats, "iters": iters, "options": options,
            "psnr_mean": round(float(np.mean(psnr)), 3),
            "cpu_seconds_per_image": round(float(np.mean(seconds)), 3),
            "iters_mean": round(float(np.mean(steps)), 1),
            "psnr_per_image": dict(zip(names, [round(p, 2) for p in psnr]))}


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]), int(sys.argv[2]), parse_options(sys.argv[3:]))))
