"""A small, real reproduction of the two-stage recipe on the CPU: handwritten digits.

scikit-learn's 1,797 real 8×8 digits (no download) are upsampled to 32×32 RGB and split into
train / held-out. An RGB CLIP teacher (our tiny open_clip config ``gs-tiny``) is trained on pixels
with template captions; the images are converted to splat shards with ``gsformat convert``; stage
1 distils the teacher into the splat stem, stage 2 aligns with captions (same-label positives);
both perturb the splats while training. Zero-shot accuracy on the held-out split is reported for
the teacher (RGB), the student (splats), stage 1 alone and the ablation (stage 2 without stage
1). Everything goes through the public CLI; finished stages are reused when re-run with the
same command. The settings were chosen on a validation split (``ablate.py``). The steps and
the settings are `gsformat.testing.digits`'s (a benchmark and the tests run them too).

    python examples/digits/run.py --out runs/digits            # ~25 min on 2 cores
    python examples/digits/run.py --out /tmp/d --quick         # the test's small slice
"""
from __future__ import annotations

import argparse
import os

from gsformat.testing.digits import (STAGE1, STAGE2, common_args, convert, prepare, report,
                                     stage1, stage2, train_teacher, zeroshot)


def main(out: str = "runs/digits", quick: bool = False, limit: int | None = None,
         steps: int | None = None, iters: int | None = None, batch: int | None = None,
         ablation: bool = True) -> dict:
    q_limit, q_steps, q_iters, q_batch = (400, 60, 60, 32) if quick else (None, 600, 300, 64)
    limit, steps = limit or q_limit, steps or q_steps
    iters, batch = iters or q_iters, batch or q_batch
    counts = prepare(out, limit)
    train, test = (convert(out, split, f"{split}-splats", iters=iters)
                   for split in ("train", "test"))
    common = common_args(train, steps, batch)
    teacher = train_teacher(out, common)
    first = stage1(out, "stage1", teacher, common, STAGE1)
    evaluations = [("teacher_rgb", teacher, "rgb"),
                   ("student_gs", stage2(out, "stage2", first, common, STAGE2), "splats"),
                   ("stage1_only_gs", first, "splats")]
    if ablation:  # the paper's ablation: stage 2 straight from the teacher, no stage 1
        evaluations.append(("ablation_no_stage1_gs",
                            stage2(out, "stage2-only", teacher, common, STAGE2), "splats"))
    results = {name: zeroshot(out, name, ckpt, kind, test) for name, ckpt, kind in evaluations}
    results["student_relative_to_teacher"] = results["student_gs"] / results["teacher_rgb"]
    results["samples"] = counts
    results["stage1_args"], results["stage2_args"] = STAGE1, STAGE2
    return report(os.path.join(out, "results.json"), results)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/digits")
    parser.add_argument("--quick", action="store_true")
    main(**vars(parser.parse_args()))
