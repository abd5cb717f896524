"""scikit-learn's real handwritten digits as image folders, and the steps of the two-stage
recipe (teacher, stage 1, stage 2, zero-shot), each through the public CLI: what
`examples/digits/run.py` and `ablate.py`, `benchmarks/downstream_bench.py` and the training tests
share. ``build_folders`` needs scikit-learn and Pillow; the training steps the ``train`` extra.
Finished training runs are reused when re-run with the same command (`train_once`).
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = ["a photo of the digit {}.", "a handwritten {}.", "the number {}."]


def build_folders(root: str, limit: int | None, size: int = 32, seed: int = 0,
                  val_fraction: float = 0.0) -> dict:
    """train/ and test/ image folders (test: the first 20 % of a seeded permutation), and
    with ``val_fraction`` a val/ folder carved from the training digits (test/ is then not
    written: tuning never sees it); class sub-folders, a caption beside every image."""
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.images))[:limit]
    n_test = max(len(order) // 5, 20)
    n_val = int(round((len(order) - n_test) * val_fraction))
    splits = (("test", order[:n_test]), ("train", order[n_test:])) if not n_val else \
        (("val", order[n_test:n_test + n_val]), ("train", order[n_test + n_val:]))
    counts = {}
    for split, ids in splits:
        for i in ids:
            name = NAMES[digits.target[i]]
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            pixels = (digits.images[i] / 16.0 * 255).astype(np.uint8)
            image = Image.fromarray(pixels).resize((size, size), Image.BILINEAR).convert("RGB")
            image.save(os.path.join(folder, f"{i:04d}.png"))
            with open(os.path.join(folder, f"{i:04d}.txt"), "w") as f:
                f.write(TEMPLATES[i % len(TEMPLATES)].format(name))
        counts[split] = len(ids)
    return counts


def run(argv: list[str]) -> None:
    from gsformat.cli import main as gsformat
    print("$ gsformat " + " ".join(argv), file=sys.stderr)
    if gsformat(argv) != 0:
        raise SystemExit(f"failed: gsformat {' '.join(argv)}")


# The recipe, chosen on a validation split carved from the training digits (examples/digits/
# ablate.py, benchmarks/RESULTS.md): the stem overfits 1,150 images (train top-1 0.995, val 0.78)
# unless its splats are perturbed, and stage 2 needs same-label positives (templates differ in
# words the image cannot show).
TEACHER_LR = 1e-3
AUGMENT = ["--splat-dropout", "0.1", "--position-jitter", "0.01"]
STAGE1 = ["--lr", "2e-3", *AUGMENT]
STAGE2 = ["--lr", "5e-4", "--clip-loss", "labels", *AUGMENT]


def prepare(out: str, limit: int | None, val_fraction: float = 0.0) -> dict:
    """The image folders under <out>/images and the templates file; the split sizes."""
    counts = build_folders(os.path.join(out, "images"), limit, val_fraction=val_fraction)
    with open(os.path.join(out, "templates.txt"), "w") as f:
        f.write("\n".join(TEMPLATES) + "\n")
    return counts


def convert(out: str, split: str, name: str, splats: int = 64, iters: int = 300,
            extra: tuple = ()) -> str:
    """<out>/images/<split> → the splat dataset <out>/<name> (source images kept)."""
    dataset = os.path.join(out, name)
    run(["convert", os.path.join(out, "images", split), dataset, "--splats", str(splats),
         "--iters", str(iters), "--size", "32", "--keep-image", "--batch", "64",
         "--no-progress", *extra])
    return dataset


def common_args(data: str, steps: int, batch: int) -> list[str]:
    return ["--model", "gs-tiny", "--n-latents", "64", "--batch-size", str(batch),
            "--steps", str(steps), "--warmup", str(steps // 10), "--ckpt-every", str(steps),
            "--data", data]


def train_once(run_dir: str, argv: list[str]) -> str:
    """``gsformat train …`` into ``run_dir``, unless it already finished with the same command
    (re-running a study reuses its finished stages); the final checkpoint."""
    final, stamp = os.path.join(run_dir, "final.pt"), os.path.join(run_dir, "command.json")
    command = [*argv, "--out", run_dir]
    if os.path.exists(final) and os.path.exists(stamp):
        with open(stamp) as f:
            if json.load(f) == command:
                print(f"reusing {final}", file=sys.stderr)
                return final
    run([*command, "--overwrite"])
    with open(stamp, "w") as f:
        json.dump(command, f)
    return final


def train_teacher(out: str, common: list[str]) -> str:
    """The RGB CLIP teacher, trained on the stored source images; its final checkpoint."""
    return train_once(os.path.join(out, "teacher"), ["train", "clip", "--input", "rgb", "--lr",
                                                     str(TEACHER_LR), *common])


def stage1(out: str, name: str, teacher: str, common: list[str], extra: list[str]) -> str:
    return train_once(os.path.join(out, name), ["train", "distill", "--init", teacher, *extra,
                                                *common])


def stage2(out: str, name: str, init: str, common: list[str], extra: list[str]) -> str:
    return train_once(os.path.join(out, name), ["train", "clip", "--init", init, *extra,
                                                *common])


def report(path: str, results: dict) -> dict:
    """Write a study's results as JSON and print them."""
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))
    return results


def zeroshot(out: str, name: str, ckpt: str, kind: str, data: str) -> float:
    """Zero-shot top-1 of a checkpoint on a dataset (``kind``: splats or rgb)."""
    path = os.path.join(out, f"zeroshot-{name}.json")
    run(["train", "zeroshot", "--data", data, "--init", ckpt, "--input", kind,
         "--templates", os.path.join(out, "templates.txt"), "--output", path])
    with open(path) as f:
        return json.load(f)["classification"]["top1"]
