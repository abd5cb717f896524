"""Training configuration: one dataclass, saved inside every checkpoint."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields


@dataclass
class TrainConfig:
    stage: str = "distill"             # distill | clip
    input: str = "splats"              # splats | rgb (rgb: train/evaluate the plain RGB model)
    model: str = "ViT-B-16"            # any open_clip ViT config name
    model_config: str | None = None    # a JSON open_clip config to register (e.g. a tiny model)
    pretrained: str | None = None      # open_clip weights: None, a local path, or a cached tag
    init: str | None = None            # a gsformat checkpoint to start from (previous stage)
    data: str = ""                     # dataset directory or URL (s3://…)
    cache: str | None = None           # local streaming cache (default: <out>/cache)
    out: str = "runs/gsformat"
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
    unfreeze: list[str] = field(default_factory=lambda: ["stem", "first_blocks", "ln_post",
                                                         "proj"])
    workers: int = 0
    amp: bool = True                   # bf16 autocast on CUDA; plain float32 on the CPU
    device: str = "auto"
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 200
    resume: str | None = None          # a checkpoint to continue (model, optimiser, data position)

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
