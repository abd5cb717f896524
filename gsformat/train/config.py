"""Training configuration: one dataclass, saved inside every checkpoint; every field's help text
(the CLI's ``--help``) beside it."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields

# The fields that decide the architecture: taken from an --init checkpoint unless given.
ARCHITECTURE = ("model", "model_config", "n_latents", "stem_dim", "stem_layers",
                "fourier_bands")


@dataclass
class TrainConfig:
    stage: str = "distill"             # distill | clip
    input: str = "splats"              # splats | rgb (rgb: train/evaluate the plain RGB model)
    model: str = "ViT-B-16"            # any open_clip ViT config name
    model_config: str | None = None    # a JSON open_clip config to register (e.g. a tiny model)
    pretrained: str | None = None      # open_clip weights: None, a local path, or a cached tag
    teacher: str | None = None         # stage 1's RGB teacher: an open_clip model name, "random"
    teacher_pretrained: str | None = None  # the teacher's weights: a local path or cached tag
    teacher_config: str | None = None  # a JSON open_clip config for the teacher model
    init: str | None = None            # a gsformat checkpoint to start from (previous stage)
    data: str = ""                     # dataset directory or URL (s3://…)
    cache: str | None = None           # local streaming cache (default: <out>/cache)
    out: str = "runs/gsformat"
    resume: str | None = None          # a checkpoint to continue, or "latest" (in --out)
    overwrite: bool = False            # start over in an --out that holds a run
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 50
    n_latents: int = 196               # M tokens out of the stem (196 = 14² patches of ViT-B/16)
    stem_dim: int = 128
    stem_layers: int = 4
    fourier_bands: int = 8
    max_splats: int | None = None
    splat_dropout: float = 0.0         # training augmentation: P(a splat is removed)
    position_jitter: float = 0.0       # training augmentation: std of each centre's shift
    clip_loss: str = "captions"        # captions | labels (equal ones are positives) | pairs
    unfreeze: list[str] = field(default_factory=lambda: ["stem", "first_blocks", "ln_post",
                                                         "proj"])
    workers: int = 0
    amp: bool = True                   # bf16 autocast on CUDA; plain float32 on the CPU
    device: str = "auto"
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 200

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str, **overrides) -> "TrainConfig":
        with open(path) as f:
            values = json.load(f)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)


HELP = {  # the CLI's help per field (defaults are appended from the dataclass)
    "input": "what the model sees: splats, or rgb (the plain RGB CLIP on stored images)",
    "model": "open_clip model name (with --model-config alone: that file's name)",
    "model_config": "a JSON open_clip model config (it is stored in every checkpoint)",
    "pretrained": "the student's open_clip weights: a local file or a locally cached tag",
    "teacher": "stage 1's RGB teacher: an open_clip model name (with --teacher-pretrained), or "
               "'random' (tests only); default: the student's own tower, which --pretrained "
               "or --init must then give weights",
    "teacher_pretrained": "the teacher's weights: a local file or a locally cached tag",
    "teacher_config": "a JSON open_clip config for the teacher model",
    "init": "a gsformat checkpoint to start from; its model settings are used unless given",
    "data": "the splat dataset: a directory or URL (s3://...)",
    "cache": "streaming's local cache (default: OUT/cache)",
    "out": "the run's folder: metrics.jsonl, checkpoints, curves.png",
    "resume": "continue from a checkpoint, or 'latest' (the newest one in --out)",
    "overwrite": "start over in an --out that already holds a run",
    "steps": "optimiser steps", "batch_size": "samples per step and process",
    "lr": "peak learning rate (AdamW)", "weight_decay": "AdamW weight decay",
    "warmup": "linear warm-up steps, then cosine decay",
    "n_latents": "tokens out of the splat stem (196 = ViT-B/16's 14² patches)",
    "stem_dim": "the stem's width", "stem_layers": "the stem's resampler layers",
    "fourier_bands": "Fourier feature bands of the splat positions",
    "max_splats": "keep at most this many splats per image (the strongest)",
    "splat_dropout": "augmentation while training: each splat removed with this probability "
                     "(stage 1's teacher still sees the whole image)",
    "position_jitter": "augmentation while training: std of a Gaussian shift of every splat "
                       "centre, in canvas units (0.01: a hundredth of the side)",
    "clip_loss": "stage 2's loss: 'captions' (every equal caption in the batch a positive), "
                 "'labels' (every sample of the same label a positive; needs a label column) "
                 "or 'pairs' (open_clip's ClipLoss: only the sample's own caption)",
    "unfreeze": "stage 2's trainable groups: stem first_blocks ln_post proj logit_scale",
    "workers": "data loader worker processes", "amp": "bf16 autocast on CUDA",
    "device": "auto, cpu, cuda or cuda:N", "seed": "seed of the init, shuffle and augment",
    "log_every": "steps between flushes of metrics.jsonl",
    "ckpt_every": "steps between checkpoints",
}


def model_name_of(config_path: str) -> str:
    """open_clip registers a JSON config under its file name."""
    return os.path.splitext(os.path.basename(config_path))[0]
