"""Training configuration: one dataclass, saved inside every checkpoint (`TrainConfig.to_dict`).

Every field's help text (the CLI's ``--help`` for its flag ``--field-name``) lives beside it, in
``field(metadata={"help": …})``; `gsformat.train.cli` builds the flags from these fields alone.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields

# The fields that decide the architecture: taken from an --init checkpoint unless given.
ARCHITECTURE = ("model", "model_config", "n_latents", "stem_dim", "stem_layers",
                "fourier_bands")


@dataclass
class TrainConfig:
    # ---- what trains, on what ----------------------------------------------------------------
    stage: str = field(default="distill", metadata={"help":
        "distill or clip: the subcommand (stage 1 or stage 2)"})
    input: str = field(default="splats", metadata={"help":
        "what the model sees: splats, or rgb (the plain RGB CLIP on stored images)"})
    model: str = field(default="ViT-B-16", metadata={"help":
        "open_clip model name (with --model-config alone: that file's name)"})
    model_config: str | None = field(default=None, metadata={"help":
        "a JSON open_clip model config (it is stored in every checkpoint)"})
    pretrained: str | None = field(default=None, metadata={"help":
        "the student's open_clip weights: a local file or a locally cached tag"})
    teacher: str | None = field(default=None, metadata={"help":
        "stage 1's RGB teacher: an open_clip model name (with --teacher-pretrained), or "
        "'random' (tests only); default: the student's own tower, which --pretrained or --init "
        "must then give weights"})
    teacher_pretrained: str | None = field(default=None, metadata={"help":
        "the teacher's weights: a local file or a locally cached tag"})
    teacher_config: str | None = field(default=None, metadata={"help":
        "a JSON open_clip config for the teacher model"})
    init: str | None = field(default=None, metadata={"help":
        "a gsformat checkpoint to start from; its model settings are used unless given"})
    # ---- where -------------------------------------------------------------------------------
    data: str = field(default="", metadata={"help":
        "the splat dataset: a directory or URL (s3://...)"})
    cache: str | None = field(default=None, metadata={"help":
        "streaming's local cache (default: OUT/cache)"})
    out: str = field(default="runs/gsformat", metadata={"help":
        "the run's folder: metrics.jsonl, checkpoints, curves.png"})
    resume: str | None = field(default=None, metadata={"help":
        "continue from a checkpoint, or 'latest' (the newest one in --out)"})
    overwrite: bool = field(default=False, metadata={"help":
        "start over in an --out that already holds a run"})
    # ---- optimisation ------------------------------------------------------------------------
    steps: int = field(default=1000, metadata={"help": "optimiser steps"})
    batch_size: int = field(default=64, metadata={"help": "samples per step and process"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (AdamW)"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay"})
    warmup: int = field(default=50, metadata={"help": "linear warm-up steps, then cosine decay"})
    # ---- the splat stem ----------------------------------------------------------------------
    n_latents: int = field(default=196, metadata={"help":
        "tokens out of the splat stem (196 = ViT-B/16's 14² patches)"})
    stem_dim: int = field(default=128, metadata={"help": "the stem's width"})
    stem_layers: int = field(default=4, metadata={"help": "the stem's resampler layers"})
    fourier_bands: int = field(default=8, metadata={"help":
        "Fourier feature bands of the splat positions"})
    # ---- data and augmentation ---------------------------------------------------------------
    max_splats: int | None = field(default=None, metadata={"help":
        "keep at most this many splats per image (the strongest)"})
    splat_dropout: float = field(default=0.0, metadata={"help":
        "augmentation while training: each splat removed with this probability (stage 1's "
        "teacher still sees the whole image)"})
    position_jitter: float = field(default=0.0, metadata={"help":
        "augmentation while training: std of a Gaussian shift of every splat centre, in "
        "canvas units (0.01: a hundredth of the side)"})
    # ---- stage 2 -----------------------------------------------------------------------------
    clip_loss: str = field(default="captions", metadata={"help":
        "stage 2's loss: 'captions' (every equal caption in the batch a positive), 'labels' "
        "(every sample of the same label a positive; needs a label column) or 'pairs' "
        "(open_clip's ClipLoss: only the sample's own caption)"})
    unfreeze: list[str] = field(
        default_factory=lambda: ["stem", "first_blocks", "ln_post", "proj"], metadata={"help":
            "stage 2's trainable groups: stem first_blocks ln_post proj logit_scale"})
    # ---- the run -----------------------------------------------------------------------------
    workers: int = field(default=0, metadata={"help": "data loader worker processes"})
    amp: bool = field(default=True, metadata={"help": "bf16 autocast on CUDA"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    seed: int = field(default=0, metadata={"help": "seed of the init, shuffle and augment"})
    log_every: int = field(default=10, metadata={"help": "steps between flushes of metrics.jsonl"})
    ckpt_every: int = field(default=200, metadata={"help": "steps between checkpoints"})

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


def model_name_of(config_path: str) -> str:
    """open_clip registers a JSON config under its file name."""
    return os.path.splitext(os.path.basename(config_path))[0]
