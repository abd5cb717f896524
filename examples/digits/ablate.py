"""The recipe's settings chosen on a validation split, never on the test digits.

The training digits of ``run.py`` (the test 20 % is not even written here) are split again: 20 %
of them become val/, the rest train/. The teacher and the old stage 1 are trained on train/;
every variant below (a stage-2 setting, or stage-1 arguments with or without a stage 2) is
scored by zero-shot top-1 on val/, beside stage 1 alone and the teacher. The winner became
``STAGE1`` / ``STAGE2`` (`gsformat.testing.digits`, what ``run.py`` runs); ``run.py`` reports
on the test digits. Finished runs are reused, so ``--variants`` adds variants to an earlier
study's ablation.json.

    python examples/digits/ablate.py --out runs/digits-val      # ~4–5 min per variant, 2 cores
    python examples/digits/ablate.py --out /tmp/a --quick       # a small slice, 2 variants
"""
from __future__ import annotations

import argparse
import json
import os

from gsformat.testing.digits import (AUGMENT, common_args, convert, prepare, report, stage1,
                                     stage2, train_teacher, zeroshot)

OLD_STAGE1 = ["--lr", "2e-3"]  # the recipe before this study (its stage 2: "lr5e-4")
# name → (stage-1 arguments beyond OLD_STAGE1, stage-2 arguments or None: stage 1 alone).
# Variants that share stage-1 arguments share the stage-1 run.
VARIANTS = {
    "lr5e-4": ([], ["--lr", "5e-4"]),
    "lr1e-4": ([], ["--lr", "1e-4"]),
    "lr2e-5": ([], ["--lr", "2e-5"]),
    "lr1e-4-no-blocks": ([], ["--lr", "1e-4", "--unfreeze", "stem", "ln_post", "proj"]),
    "lr1e-4-stem-only": ([], ["--lr", "1e-4", "--unfreeze", "stem"]),
    "lr1e-4-pairs": ([], ["--lr", "1e-4", "--clip-loss", "pairs"]),
    "lr1e-4-labels": ([], ["--lr", "1e-4", "--clip-loss", "labels"]),
    "lr5e-4-labels": ([], ["--lr", "5e-4", "--clip-loss", "labels"]),
    "augment-stage1-alone": (AUGMENT, None),
    "augment-lr1e-4-labels": (AUGMENT, ["--lr", "1e-4", "--clip-loss", "labels", *AUGMENT]),
    "augment-lr5e-4-labels": (AUGMENT, ["--lr", "5e-4", "--clip-loss", "labels", *AUGMENT]),
}


def main(out: str, quick: bool = False, variants: list[str] | None = None) -> dict:
    limit, steps, iters, batch = (400, 60, 60, 32) if quick else (None, 600, 300, 64)
    names = variants or (list(VARIANTS)[:2] if quick else list(VARIANTS))
    counts = prepare(out, limit, val_fraction=0.2)
    train, val = (convert(out, split, f"{split}-splats", iters=iters)
                  for split in ("train", "val"))
    common = common_args(train, steps, batch)
    teacher = train_teacher(out, common)
    first = stage1(out, "stage1", teacher, common, OLD_STAGE1)
    top1 = {"teacher_rgb": zeroshot(out, "teacher", teacher, "rgb", val),
            "stage1_only_gs": zeroshot(out, "stage1", first, "splats", val)}
    for name in names:
        first_args, second_args = VARIANTS[name]
        start = first if not first_args else stage1(
            out, "stage1-augment", teacher, common, [*OLD_STAGE1, *first_args])
        ckpt = start if second_args is None else stage2(out, f"stage2-{name}", start, common,
                                                        second_args)
        top1[f"stage2_{name}" if second_args else name] = zeroshot(
            out, f"variant-{name}", ckpt, "splats", val)
        print(json.dumps(top1), flush=True)  # a line per variant, as each finishes
    path = os.path.join(out, "ablation.json")
    results = {"val_top1": {}, "variants": {}}
    if os.path.exists(path):  # an earlier invocation's variants are kept
        with open(path) as f:
            results = json.load(f)
    results.update({"split": "val (20 % of the training digits; the test digits unused)",
                    "samples": counts, "steps_per_stage": steps})
    results["val_top1"].update(top1)
    results["variants"].update({n: VARIANTS[n] for n in names})
    return report(path, results)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/digits-val")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS))
    main(**vars(parser.parse_args()))
