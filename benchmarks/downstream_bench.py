"""How far can splats be compressed before zero-shot accuracy falls? (the paper's open question 3)

On scikit-learn's real handwritten digits, with ``examples/digits``'s split (the same held-out test
digits), templates, tiny CLIP and recipe:

- the RGB teacher is trained once on pixels;
- for every splat budget N the digits are converted at N splats (FP16 records, ``--codec raw``)
  and the recipe (stage 1, then stage 2) trains a student on them;
- that student's zero-shot top-1 is measured on the test digits as every codec setting stores
  them: FP16; ``gsformat.lattice-rans`` at fine → coarse steps with the colours solved for the
  quantised geometry (what ``convert --quantize-aware`` stores, applied to the FP16 fit);
  ``gsformat.planar`` (lossless: the FP16 values in fewer bytes); and
  luminance pruning at several τ (``convert --prune-threshold``, FP16 records of the splats left);
- one student is trained on quantised splats (``--quantized-budget``, the coarsest setting) and
  evaluated on test splats stored the same way;
- beside them the RGB teacher on JPEG (Pillow, RGB and greyscale, qualities 5–95) of the same
  test images.

Bytes per image: the whole stored record (its header included) for splats; the JPEG file for
JPEG. Prints JSON (``--output`` writes it too), ``--plot`` draws bytes per image → top-1.

    python benchmarks/downstream_bench.py --output benchmarks/results/downstream_bench.json \\
        --plot benchmarks/results/downstream.png                       # ~50 min on 2 cores
    python benchmarks/downstream_bench.py --quick --out /tmp/ds         # smoke test, ~2 min
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys

import numpy as np

from gsformat.testing import digits  # the recipe's steps (examples/digits/run.py runs them)
from gsformat.testing.codec_settings import LATTICE, RANS_ID, lattice_pipeline

BUDGETS = (16, 32, 64, 128)
TAUS = (0.1, 0.2)    # ~33 / 65 % of 64 fitted digit splats have luminances below these
JPEG_QUALITIES = (5, 10, 20, 40, 70, 95)
# r-fine … r-coarse: lattice-rans at rd_bench's steps (its l-… names: the same lattices)
SETTINGS = {"r" + name[1:]: steps for name, steps in LATTICE.items()}


def codec_config(setting: str) -> dict:
    return lattice_pipeline(SETTINGS[setting], RANS_ID)[0]


def source_pixels(out: str, split: str, keys: list[str]) -> np.ndarray:
    """The original (PNG) images of ``keys``, uint8 ``[B, 32, 32, 3]``: what the splats fit."""
    from PIL import Image
    root = os.path.join(out, "images", split)
    return np.stack([np.asarray(Image.open(os.path.join(root, key + ".png")).convert("RGB"))
                     for key in keys])


def samples_of(data: str) -> list[dict]:
    from gsformat.io.dataset_files import iter_dataset
    return list(iter_dataset(data, decode=False))


def write_like(data: str, dst: str, samples: list[dict], records: list[bytes] | None = None,
               images: list[bytes] | None = None) -> str:
    """A copy of dataset ``data`` with other records and/or other stored images."""
    from gsformat.io.dataset_files import SplatWriter, read_manifest
    manifest = read_manifest(data)
    columns = [c for c in manifest["columns"] if c not in ("key", "splats")]
    with SplatWriter(dst, columns=columns, manifest={"class_names": manifest["class_names"]},
                     exist_ok=True) as writer:
        for i, sample in enumerate(samples):
            values = {c: sample[c] for c in columns}
            if images is not None:
                values["image"] = images[i]
            writer.write(sample["key"], records[i] if records else sample["splats"], **values)
    return dst


def stored_copy(out: str, data: str, split: str, setting: str, n_splats: int) -> tuple:
    """``data``'s FP16 fits stored another way: ``planar`` (lossless, the same values) or a
    lattice-rans setting with the colours solved for the quantised geometry against the original
    pixels; (dataset, mean record bytes, mean PSNR)."""
    from gsformat import decode_record, encode_record
    from gsformat.fitting import fit_images
    samples = samples_of(data)
    fits = [decode_record(s["splats"]) for s in samples]
    if setting == "planar":
        records = [encode_record(fit, [{"id": "gsformat.planar", "level": 19}]) for fit in fits]
        psnr = fit_psnr(data)
    else:
        config = codec_config(setting)
        pixels = source_pixels(out, split, [s["key"] for s in samples])
        solved = fit_images(pixels, n_splats, 0, init_splats=fits, quantize=config,
                            batch_size=64)
        records = [encode_record(fit, [config]) for fit in solved.splats]
        psnr = float(np.mean(solved.psnr))
    dst = write_like(data, os.path.join(out, f"{os.path.basename(data)}-{setting}"), samples,
                     records=records)
    return dst, float(np.mean([len(r) for r in records])), psnr


def record_bytes(data: str) -> float:
    return float(np.mean([len(s["splats"]) for s in samples_of(data)]))


def fit_psnr(data: str) -> float:
    from gsformat.io.dataset_files import read_manifest
    return float(read_manifest(data)["stats"]["psnr_mean"])


def jpeg_rows(out: str, test: str, teacher: str, qualities) -> list[dict]:
    """The RGB teacher's top-1 on the test images stored as JPEG at each quality."""
    from PIL import Image
    samples = samples_of(test)
    pixels = source_pixels(out, "test", [s["key"] for s in samples])
    rows = []
    for mode in ("RGB", "L"):
        for quality in qualities:
            encoded = []
            for image in pixels:
                buffer = io.BytesIO()
                Image.fromarray(image).convert(mode).save(buffer, format="JPEG",
                                                          quality=quality)
                encoded.append(buffer.getvalue())
            name = f"jpeg-{mode.lower()}-q{quality}"
            data = write_like(test, os.path.join(out, f"test-{name}"), samples, images=encoded)
            rows.append({"setting": name, "model": "teacher_rgb", "bytes": float(np.mean(
                [len(e) for e in encoded])), "top1": digits.zeroshot(out, name, teacher, "rgb",
                                                                      data)})
    return rows


def main(out: str, quick: bool = False, budgets=BUDGETS, quantized_budget: int = 64,
         steps: int | None = None, output: str | None = None, plot: str | None = None) -> dict:
    limit, steps_default, iters, batch = (300, 20, 30, 32) if quick else (None, 300, 300, 64)
    steps = steps or steps_default
    settings, taus = (list(SETTINGS)[-1:], TAUS[-1:]) if quick else (list(SETTINGS), TAUS)
    qualities = JPEG_QUALITIES[1:2] if quick else JPEG_QUALITIES
    if quick:
        budgets, quantized_budget = tuple(budgets)[:1], tuple(budgets)[0]
    counts = digits.prepare(out, limit)
    raw = ("--codec", "raw")
    rows = []

    def score(model: str, ckpt: str, data: str, setting: str, n: int, nbytes: float,
              psnr: float) -> None:
        rows.append({"splats": n, "setting": setting, "model": model, "bytes": nbytes,
                     "psnr": psnr, "top1": digits.zeroshot(out, f"{model}-{setting}", ckpt,
                                                           "splats", data)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    teacher = None
    for n in budgets:
        train = digits.convert(out, "train", f"train-{n}", n, iters, raw)
        test = digits.convert(out, "test", f"test-{n}", n, iters, raw)
        common = digits.common_args(train, steps, batch)
        teacher = teacher or digits.train_teacher(out, common)
        first = digits.stage1(out, f"stage1-{n}", teacher, common, digits.STAGE1)
        student = digits.stage2(out, f"stage2-{n}", first, common, digits.STAGE2)
        model = f"student-{n}"
        score(model, student, test, "fp16", n, record_bytes(test), fit_psnr(test))
        for setting in ("planar", *settings):
            data, nbytes, psnr = stored_copy(out, test, "test", setting, n)
            score(model, student, data, setting + ("" if setting == "planar" else "+solve"),
                  n, nbytes, psnr)
        for tau in taus:
            data = digits.convert(out, "test", f"test-{n}-tau{tau}", n, iters,
                                  raw + ("--prune-threshold", str(tau)))
            score(model, student, data, f"prune-tau{tau}", n, record_bytes(data), fit_psnr(data))
    # a student trained on quantised splats (the coarsest setting), evaluated on the same
    n, setting = quantized_budget, settings[-1]
    if n in budgets:
        train_q, _, _ = stored_copy(out, os.path.join(out, f"train-{n}"), "train", setting, n)
        test_q, nbytes, psnr = stored_copy(out, os.path.join(out, f"test-{n}"), "test",
                                           setting, n)
        common = digits.common_args(train_q, steps, batch)
        first = digits.stage1(out, f"stage1-{n}-{setting}", teacher, common,
                             digits.STAGE1)
        student = digits.stage2(out, f"stage2-{n}-{setting}", first, common, digits.STAGE2)
        score(f"student-{n}-trained-{setting}", student, test_q, setting + "+solve", n, nbytes,
              psnr)
    rows += jpeg_rows(out, os.path.join(out, f"test-{budgets[0]}"), teacher, qualities)
    results = {"data": "scikit-learn digits, examples/digits split", "samples": counts,
               "steps_per_stage": steps, "fit_iters": iters, "stage1_args": digits.STAGE1,
               "stage2_args": digits.STAGE2,
               "teacher_rgb_top1_on_stored_images": digits.zeroshot(
                   out, "teacher", teacher, "rgb", os.path.join(out, f"test-{budgets[0]}")),
               "rows": rows, "summary": summarise(rows)}
    text = json.dumps(results, indent=2)
    print(text)
    if output:
        with open(output, "w") as f:
            f.write(text + "\n")
    if plot:
        draw(rows, plot)
    return results


def summarise(rows: list[dict]) -> dict:
    """Per budget: the smallest setting within 1 point of its FP16 top-1, and the JPEG
    (RGB teacher) point closest below and above it in bytes."""
    summary = {}
    jpeg = sorted((r for r in rows if r["setting"].startswith("jpeg")), key=lambda r: r["bytes"])
    for n in sorted({r["splats"] for r in rows if "splats" in r}):
        own = [r for r in rows if r.get("splats") == n and r["model"] == f"student-{n}"]
        fp16 = next(r for r in own if r["setting"] == "fp16")
        within = [r for r in own if r["top1"] >= fp16["top1"] - 0.01]
        best = min(within, key=lambda r: r["bytes"])
        near = [r for r in jpeg if r["bytes"] <= best["bytes"]]
        summary[str(n)] = {"fp16_top1": fp16["top1"], "fp16_bytes": fp16["bytes"],
                           "smallest_within_1pt": best["setting"], "bytes": best["bytes"],
                           "top1": best["top1"],
                           "jpeg_at_or_below_those_bytes": near[-1] if near else None,
                           "smallest_jpeg": jpeg[0] if jpeg else None}
    return summary


def draw(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for n in sorted({r["splats"] for r in rows if "splats" in r}):
        own = sorted((r for r in rows if r.get("splats") == n and r["model"] == f"student-{n}"
                      and "prune" not in r["setting"]), key=lambda r: r["bytes"])
        line, = ax.plot([r["bytes"] for r in own], [r["top1"] for r in own], "o-",
                        label=f"{n} splats (FP16, lattice-rans)")
        pruned = [r for r in rows if r.get("splats") == n and "prune" in r["setting"]]
        ax.plot([r["bytes"] for r in pruned], [r["top1"] for r in pruned], "x",
                color=line.get_color(), label=f"{n} splats, pruned τ")
    trained = [r for r in rows if "trained" in r["model"]]
    ax.plot([r["bytes"] for r in trained], [r["top1"] for r in trained], "*", ms=14,
            color="black", label="student trained on quantised splats")
    for mode, style in (("rgb", "s--"), ("l", "d--")):
        jpeg = sorted((r for r in rows if r["setting"].startswith(f"jpeg-{mode}-")),
                      key=lambda r: r["bytes"])
        ax.plot([r["bytes"] for r in jpeg], [r["top1"] for r in jpeg], style, color="grey",
                label=f"RGB teacher on JPEG ({'colour' if mode == 'rgb' else 'greyscale'})")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per image (stored)")
    ax.set_ylabel("zero-shot top-1, held-out digits")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/downstream")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    parser.add_argument("--quantized-budget", type=int, default=64)
    parser.add_argument("--steps", type=int, default=None, help="steps per stage")
    parser.add_argument("--output", default=None)
    parser.add_argument("--plot", default=None)
    main(**vars(parser.parse_args()))
