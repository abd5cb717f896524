"""A small, real reproduction of the two-stage recipe on the CPU: handwritten digits.

scikit-learn's 1,797 real 8×8 digits (no download) are upsampled to 32×32 RGB and split into
train / held-out. An RGB CLIP teacher (our tiny open_clip config ``gs-tiny``) is trained on pixels
with template captions; the images are converted to splat shards with ``gsformat convert``; stage
1 distils the teacher into the splat stem, stage 2 aligns with captions; zero-shot accuracy on the
held-out split is reported for the teacher (RGB), the student (splats) and the ablation (stage 2
without stage 1). Everything goes through the public CLI.

    python examples/digits/run.py --out runs/digits            # ~15 min on 2 cores
    python examples/digits/run.py --out /tmp/d --quick         # the test's small slice
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = ["a photo of the digit {}.", "a handwritten {}.", "the number {}."]


def build_folders(root: str, limit: int | None, size: int = 32, seed: int = 0) -> dict:
    """train/ and test/ image folders: class sub-folders, a caption beside every image."""
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.images))[:limit]
    n_test = max(len(order) // 5, 20)
    counts = {}
    for split, ids in (("test", order[:n_test]), ("train", order[n_test:])):
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


def main(out: str = "runs/digits", quick: bool = False, limit: int | None = None,
         steps: int | None = None, iters: int | None = None, batch: int | None = None,
         ablation: bool = True) -> dict:
    q_limit, q_steps, q_iters, q_batch = (400, 60, 60, 32) if quick else (None, 600, 300, 64)
    limit, steps = limit or q_limit, steps or q_steps
    iters, batch = iters or q_iters, batch or q_batch
    counts = build_folders(os.path.join(out, "images"), limit)
    templates = os.path.join(out, "templates.txt")
    with open(templates, "w") as f:
        f.write("\n".join(TEMPLATES) + "\n")
    for split in ("train", "test"):
        run(["convert", os.path.join(out, "images", split), os.path.join(out, f"{split}-splats"),
             "--splats", "64", "--iters", str(iters), "--size", "32", "--keep-image",
             "--batch", "64", "--no-progress"])
    common = ["--model", "gs-tiny", "--n-latents", "64", "--batch-size", str(batch),
              "--steps", str(steps), "--warmup", str(steps // 10), "--ckpt-every",
              str(steps), "--data", os.path.join(out, "train-splats")]
    run(["train", "clip", "--input", "rgb", "--lr", "1e-3", "--out",
         os.path.join(out, "teacher"), *common])
    teacher = os.path.join(out, "teacher", "final.pt")
    run(["train", "distill", "--init", teacher, "--lr", "2e-3", "--out",
         os.path.join(out, "stage1"), *common])
    run(["train", "clip", "--init", os.path.join(out, "stage1", "final.pt"), "--lr", "5e-4",
         "--out", os.path.join(out, "stage2"), *common])
    evaluations = [("teacher_rgb", teacher, "rgb"),
                   ("student_gs", os.path.join(out, "stage2", "final.pt"), "splats"),
                   ("stage1_only_gs", os.path.join(out, "stage1", "final.pt"), "splats")]
    if ablation:  # stage 2 with open_clip's ClipLoss (each image's own caption the only
        # positive: the other copies of "a photo of the number 3" in a batch are negatives)
        run(["train", "clip", "--init", os.path.join(out, "stage1", "final.pt"), "--lr", "5e-4",
             "--clip-loss", "pairs", "--out", os.path.join(out, "stage2-pairs"), *common])
        evaluations.append(("student_gs_pairs_loss",
                            os.path.join(out, "stage2-pairs", "final.pt"), "splats"))
    if ablation:  # the paper's ablation: stage 2 straight from the teacher, no stage 1
        run(["train", "clip", "--init", teacher, "--lr", "5e-4", "--out",
             os.path.join(out, "stage2-only"), *common])
        evaluations.append(("ablation_no_stage1_gs",
                            os.path.join(out, "stage2-only", "final.pt"), "splats"))
    results = {}
    test = os.path.join(out, "test-splats")
    for name, ckpt, kind in evaluations:
        path = os.path.join(out, f"zeroshot-{name}.json")
        run(["train", "zeroshot", "--data", test, "--init", ckpt, "--input", kind,
             "--templates", templates, "--output", path])
        with open(path) as f:
            results[name] = json.load(f)["classification"]["top1"]
    results["student_relative_to_teacher"] = results["student_gs"] / results["teacher_rgb"]
    results["samples"] = counts
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/digits")
    parser.add_argument("--quick", action="store_true")
    main(**vars(parser.parse_args()))
