"""Rate–distortion study: splat records against JPEG and WebP on the same photographs.

For 400, 900, 1,600 and 3,136 splats on 224² crops of the bundled scikit-image photographs:
bytes per image and PSNR for raw FP16, the lossless codec, and each lattice / lattice-rans
setting post hoc and with the re-fit after quantisation ("+solve": the geometry quantised, the
colours solved by least squares and rounded with feedback); JPEG and WebP (Pillow) at qualities
10–95; a BD-rate style summary (average byte change against JPEG at equal PSNR over 25–32 dB);
decode cost (records/s per codec vs raw FP16 and vs Pillow's JPEG decode of the same images);
the L1 colour term's effect at 1,600 splats.
Prints JSON; ``--plot`` writes the curves as PNG.

    python benchmarks/rd_bench.py --plot benchmarks/results/rd_curves.png   (~45 min, 2 cores)
    python benchmarks/rd_bench.py --quick
    python benchmarks/rd_bench.py --decode-only   (decode cost alone, 1,600 splats: ~4 min)
    python benchmarks/rd_bench.py --report-set --plot benchmarks/results/rd_report.png
        (the held-out report set: lattice-rans with fixed (+solve) and matched steps (+matched),
        and raw, vs JPEG and WebP, ~65 min on 2 cores; --tuning-set: the same on the tuning set)
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time

import numpy as np

from gsformat import SplatSet, decode_record, encode_record
from gsformat.fitting import fit_images
from gsformat.fitting.engine import evaluate_psnr
from gsformat.fitting.solve import REFERENCE_PSNR, record_codecs
from gsformat.core.render_math import psnr
from gsformat.testing.codec_settings import LATTICE, RANS_ID, lattice_pipeline
from gsformat.testing.photos import REPORT, SKIMAGE_PHOTOS, TUNING, load_photo

QUALITIES = (10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
L1_WEIGHTS = (1e-3, 1e-2)  # the paper's L1 colour term, measured at 1,600 splats with l-mid


def lossy_pipelines():
    """name → pipeline for every lossy setting: lattice ('l-…') and lattice-rans ('r-…': the same
    values as 'l-…', a different entropy stage). (The legacy quantize and entropy codecs, and a
    straight-through re-fit, are in the runs of benchmarks/RESULTS.md before 2026-12-02.)"""
    out = {}
    out.update({name: lattice_pipeline(steps) for name, steps in LATTICE.items()})
    out.update({"r" + name[1:]: lattice_pipeline(steps, RANS_ID) for name, steps in LATTICE.items()})
    return out


def pillow_curve(images, fmt: str) -> list[dict]:
    from PIL import Image
    points = []
    for q in QUALITIES:
        sizes, scores = [], []
        for image in images:
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format=fmt, quality=q)
            decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
            sizes.append(buf.tell())
            scores.append(psnr(decoded[None] / 255.0, image[None] / 255.0)[0])
        points.append({"quality": q, "bytes": float(np.mean(sizes)),
                       "psnr": float(np.mean(scores))})
    return points


def bd_rate(curve: list[dict], anchor: list[dict], lo: float = 25.0, hi: float = 32.0):
    """Mean log-byte difference at equal PSNR over the overlap of [lo, hi] (in %, <0 = smaller)."""
    def interp(points):
        pts = sorted(points, key=lambda p: p["psnr"])
        return np.array([p["psnr"] for p in pts]), np.log([p["bytes"] for p in pts])
    x1, y1 = interp(curve)
    x2, y2 = interp(anchor)
    a, b = max(lo, x1.min(), x2.min()), min(hi, x1.max(), x2.max())
    if b <= a:
        return None
    grid = np.linspace(a, b, 50)
    diff = np.interp(grid, x1, y1) - np.interp(grid, x2, y2)
    return {"percent": round(float(np.expm1(diff.mean()) * 100), 1),
            "psnr_range": [round(a, 2), round(b, 2)]}


def main(quick: bool = False, plot: str | None = None) -> dict:
    names = list(SKIMAGE_PHOTOS[:2] if quick else SKIMAGE_PHOTOS)
    size, iters = (96, 150) if quick else (224, 2000)
    budgets = (100, 400) if quick else (400, 900, 1600, 3136)
    images = np.stack([load_photo(n, size) for n in names])
    targets = images / 255.0
    curves: dict[str, list[dict]] = {}
    fitted = {}
    for n in budgets:
        result = fit_images(images, n, iters, batch_size=1)
        fitted[n] = result.splats
        settings = {"raw-fp16": [], "planar": [{"id": "gsformat.planar", "level": 19}]}
        settings.update(lossy_pipelines())
        for name, pipeline in settings.items():
            records = [encode_record(SplatSet(s.params, s.height, s.width), pipeline)
                       for s in result.splats]
            decoded = [decode_record(r) for r in records]
            score = evaluate_psnr(decoded, targets, 16) if pipeline else result.psnr
            curves.setdefault(name, []).append({"splats": n, "bytes": float(np.mean(
                [len(r) for r in records])), "psnr": float(np.mean(score))})
        for name, steps in LATTICE.items():  # + colours solved and rounded with feedback
            refit = fit_images(images, n, 0, init_splats=result.splats,
                               quantize=lattice_pipeline(steps)[0], batch_size=1)
            add_point(curves, name + "+solve", n, refit, lattice_pipeline(steps))
            add_point(curves, "r" + name[1:] + "+solve", n, refit, lattice_pipeline(steps, RANS_ID))
        print(f"{n} splats done", file=sys.stderr)
    curves["jpeg"] = pillow_curve(images, "JPEG")
    curves["webp"] = pillow_curve(images, "WEBP")
    out = {"images": names, "size": size, "iters": iters,
           "curves": curves,
           "bd_rate_vs_jpeg_25_32db": {k: bd_rate(v, curves["jpeg"]) for k, v in curves.items()
                                       if k != "jpeg"}}
    # ---- at 1,600 splats: the best lossy setting within 0.3 dB of the unquantised fit -------
    n_ref = 1600 if 1600 in budgets else budgets[-1]
    raw = next(p for p in curves["raw-fp16"] if p["splats"] == n_ref)
    candidates = [(k, p) for k, v in curves.items() if k not in ("raw-fp16", "planar", "jpeg",
                                                                  "webp")
                  for p in v if p["splats"] == n_ref and raw["psnr"] - p["psnr"] <= 0.3]
    if candidates:
        name, point = min(candidates, key=lambda kp: kp[1]["bytes"])
        out["within_0.3db_at_%d" % n_ref] = {
            "setting": name, "bytes": point["bytes"], "psnr_loss_db": round(raw["psnr"] -
                                                                           point["psnr"], 3),
            "smaller_than_raw_fp16": round(raw["bytes"] / point["bytes"], 2)}
    out["l1_colour_at_%d" % n_ref] = l1_study(images, n_ref, iters)
    out["decode_cost"] = decode_cost(fitted[n_ref], images)
    if plot:
        write_plot(curves, plot)
    return out


MATCHED_REFERENCE_PSNR = REFERENCE_PSNR  # "+matched": the steps above are for a fit of 30 dB


def report_set(quick: bool = False, tuning: bool = False) -> dict:
    """The recommended lossy codec (lattice-rans, colours solved for the quantised geometry),
    with fixed steps and with matched steps (each image's steps scaled by its fit's error,
    `gsformat.fitting.solve`), and raw FP16 against JPEG and WebP on `fit_bench.py`'s held-out
    report set (`gsformat.testing.photos.REPORT`: photographs no default was tuned on;
    ``tuning``: its tuning set instead): the curves and BD-rates over 25–32 dB."""
    chosen = TUNING if tuning else REPORT
    names = list(chosen[:2] if quick else chosen)
    size, iters = (96, 150) if quick else (224, 2000)
    budgets = (100, 400) if quick else (400, 900, 1600, 3136)
    images = np.stack([load_photo(n, size) for n in names])
    curves: dict[str, list[dict]] = {}
    for n in budgets:
        result = fit_images(images, n, iters, batch_size=1)
        add_point(curves, "raw-fp16", n, result, [])
        for name, steps in LATTICE.items():
            pipeline = lattice_pipeline(steps, RANS_ID)
            for suffix, reference in (("+solve", None), ("+matched", MATCHED_REFERENCE_PSNR)):
                refit = fit_images(images, n, 0, init_splats=result.splats, quantize=pipeline[0],
                                   matched_steps=reference, batch_size=1)
                add_point(curves, "r" + name[1:] + suffix, n, refit, pipeline)
        print(f"{'tuning' if tuning else 'report'} set: {n} splats done", file=sys.stderr,
              flush=True)
    curves["jpeg"] = pillow_curve(images, "JPEG")
    curves["webp"] = pillow_curve(images, "WEBP")
    splat_curves = [k for k in curves if k not in ("jpeg", "webp")]
    out = {"images": names, "set": ("tuning" if tuning else "report")
           + " (benchmarks/fit_bench.py " + ("TUNING)" if tuning else "REPORT)"), "size": size,
           "iters": iters, "matched_reference_psnr": MATCHED_REFERENCE_PSNR, "curves": curves,
           "bd_rate_vs_jpeg_25_32db": {k: bd_rate(curves[k], curves["jpeg"])
                                       for k in splat_curves + ["webp"]},
           "bd_rate_vs_webp_25_32db": {k: bd_rate(curves[k], curves["webp"])
                                       for k in splat_curves},
           "bd_rate_matched_vs_fixed": {k: bd_rate(curves[k], curves[k.replace("+matched",
                                                                               "+solve")])
                                        for k in splat_curves if k.endswith("+matched")}}
    for kind in ("+solve", "+matched"):
        scored = {k: v["percent"] for k, v in out["bd_rate_vs_jpeg_25_32db"].items()
                  if v is not None and k.startswith("r-") and k.endswith(kind)}
        if scored:
            best = min(scored, key=scored.get)
            out["best_lattice_rans_vs_jpeg" + ("_matched" if kind == "+matched" else "")] = {
                "setting": best, **out["bd_rate_vs_jpeg_25_32db"][best]}
    return out


def mean_bytes(splats, pipeline) -> float:
    """Mean record size of ``splats`` stored with ``pipeline`` (its steps scaled per record
    where the fit chose matched steps, as `convert` writes them)."""
    return float(np.mean([len(encode_record(s, record_codecs(pipeline, s))) for s in splats]))


def add_point(curves, label, n, result, pipeline) -> None:
    """Record the mean bytes and PSNR of ``result``'s splats stored with ``pipeline`` (their
    values are what the records decode to)."""
    curves.setdefault(label, []).append({"splats": n, "bytes": mean_bytes(result.splats, pipeline),
                                         "psnr": float(np.mean(result.psnr))})


def l1_study(images, n: int, iters: int) -> list[dict]:
    """The paper's L1 colour term: its effect on PSNR and on l-mid bytes (+solve)."""
    pipeline, rows = lattice_pipeline(LATTICE["l-mid"]), []
    for weight in (0.0,) + L1_WEIGHTS:  # 0: the baseline through the same path
        result = fit_images(images, n, iters, batch_size=1, l1_colour=weight,
                            quantize=pipeline[0])
        rows.append({"l1_colour": weight, "psnr": round(float(np.mean(result.psnr)), 3),
                     "bytes": round(mean_bytes(result.splats, pipeline), 1)})
    return rows


def without_native(decode):
    """``decode`` with gsformat.lattice's C decoder switched off (its NumPy decoder instead)."""
    from gsformat.codecs import lattice

    def run(item):
        saved, lattice._NATIVE = lattice._NATIVE, None
        try:
            return decode(item)
        finally:
            lattice._NATIVE = saved
    return run


def decode_cost(splats, images, rounds: int = 7, repeat: int = 10) -> dict:
    """Records per second per codec (one process) vs Pillow decoding the same images as JPEG.
    "l-mid" uses the C decoder where it is built ("l-mid-numpy": the NumPy one, same values).

    The machine is noisy, so the decoders take turns: each round times every decoder (and the
    JPEG decode) over the same images ``repeat`` times, and each rate is the median over rounds
    (the ratios come from the same rounds)."""
    from PIL import Image
    pipelines = {"raw-fp16": [], "planar": [{"id": "gsformat.planar", "level": 19}],
                 "l-mid": lattice_pipeline(LATTICE["l-mid"]),
                 "r-mid": lattice_pipeline(LATTICE["l-mid"], RANS_ID)}
    work = {name: (decode_record, [encode_record(s, p) for s in splats])
            for name, p in pipelines.items()}
    work["l-mid-numpy"] = (without_native(decode_record), work["l-mid"][1])
    work["r-mid-numpy"] = (without_native(decode_record), work["r-mid"][1])
    jpegs = []
    for image in images:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=90)
        jpegs.append(buf.getvalue())
    work["jpeg_q90_pillow"] = (lambda j: np.asarray(Image.open(io.BytesIO(j)).convert("RGB")),
                               jpegs)
    seconds: dict[str, list[float]] = {name: [] for name in work}
    for _ in range(rounds):
        for name, (decode, items) in work.items():
            decode(items[0])  # warm
            start = time.perf_counter()
            for _ in range(repeat):
                for item in items:
                    decode(item)
            seconds[name].append((time.perf_counter() - start) / (repeat * len(items)))
    per_record = {name: float(np.median(v)) for name, v in seconds.items()}
    ratios = {name: float(np.median(np.array(v) / np.array(seconds["jpeg_q90_pillow"])))
              for name, v in seconds.items() if name != "jpeg_q90_pillow"}
    out = {f"{k}_records_per_s": round(1 / v, 1) for k, v in per_record.items()}
    out.update({f"{k}_decode_cost_vs_jpeg": round(v, 3) for k, v in ratios.items()})
    return out


def write_plot(curves: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name, points in curves.items():
        pts = sorted(points, key=lambda p: p["bytes"])
        if name in ("raw-fp16",) or (name[:2] in ("l-", "r-") and "+" not in name) \
                or name in ("l-fine+solve", "l-lean+solve"):
            continue  # the plot shows the lattice curves and the best earlier one; JSON has all
        style = "k-o" if name == "jpeg" else "k--s" if name == "webp" else (
            "-D" if "+matched" in name else "-v" if name.startswith("r-") else "-^" if "+" in name
            else ":.")
        ax.plot([p["bytes"] / 1024 for p in pts], [p["psnr"] for p in pts], style, label=name,
                markersize=4)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("KiB per 224² image")
    ax.set_ylabel("PSNR (dB)")
    ax.axhspan(25, 32, color="0.92", zorder=0)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("gsformat splat records vs JPEG / WebP (Pillow), same photographs")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--plot", default=None)
    parser.add_argument("--replot", metavar="JSON", default=None,
                        help="only draw --plot from the curves of an earlier run's JSON")
    parser.add_argument("--decode-only", action="store_true",
                        help="only the decode cost, on the photographs fitted with 1,600 splats")
    parser.add_argument("--report-set", action="store_true",
                        help="lattice-rans (+solve) and raw against JPEG / WebP on the held-out "
                             "report set of fit_bench.py, fixed and matched steps")
    parser.add_argument("--tuning-set", action="store_true",
                        help="the same study on fit_bench.py's tuning set")
    args = parser.parse_args()
    if args.report_set or args.tuning_set:
        result = report_set(quick=args.quick, tuning=args.tuning_set)
        if args.plot:
            write_plot(result["curves"], args.plot)
        print(json.dumps(result, indent=2))
    elif args.decode_only:
        photos = np.stack([load_photo(n, 224) for n in SKIMAGE_PHOTOS])
        fitted = fit_images(photos, 1600, 2000, batch_size=1).splats
        print(json.dumps({"images": list(SKIMAGE_PHOTOS), "splats": 1600,
                          "decode_cost": decode_cost(fitted, photos, rounds=15)}, indent=2))
    elif args.replot:
        with open(args.replot) as f:
            write_plot(json.load(f)["curves"], args.plot or "rd_curves.png")
    else:
        print(json.dumps(main(quick=args.quick, plot=args.plot), indent=2))
