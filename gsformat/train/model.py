"""An open_clip CLIP whose visual tower also takes splats: the stem's M tokens go through the
ViT's own class token, positional embedding, ``ln_pre``, transformer, pooling and projection."""
from __future__ import annotations

import json
import os

import torch
from torch import nn

from .stem import SplatStem

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")
STAGE2_GROUPS = ("stem", "first_blocks", "ln_post", "proj")


def register_model_config(path: str | None = None) -> None:
    """Make our bundled configs (and a user's JSON config) known to open_clip."""
    import open_clip
    for name in sorted(os.listdir(CONFIG_DIR)):
        if name.endswith(".json"):
            open_clip.add_model_config(os.path.join(CONFIG_DIR, name))
    if path:
        open_clip.add_model_config(path)


def create_clip(model: str, pretrained: str | None = None, config: str | None = None):
    """open_clip's factory: ``pretrained`` is None (random init), a local checkpoint path, or a
    tag whose weights the user has cached (open_clip decides; nothing here downloads)."""
    import open_clip
    register_model_config(config)
    if pretrained and not os.path.exists(pretrained) and os.environ.get("HF_HUB_OFFLINE") is None:
        os.environ["HF_HUB_OFFLINE"] = "1"  # tags resolve from the local cache only
    clip, _, _ = open_clip.create_model_and_transforms(model, pretrained=pretrained)
    return clip


class SplatCLIP(nn.Module):
    """``clip`` (open_clip CLIP) plus a `SplatStem` feeding its visual transformer."""

    def __init__(self, clip, n_latents: int = 196, stem_dim: int = 128, stem_layers: int = 4,
                 n_bands: int = 8):
        super().__init__()
        self.clip = clip
        visual = clip.visual
        if not hasattr(visual, "transformer") or not hasattr(visual, "class_embedding"):
            raise ValueError("the splat stem needs an open_clip VisionTransformer visual tower")
        width = visual.class_embedding.shape[0]
        self.stem = SplatStem(width, n_latents, stem_dim, stem_layers, n_bands=n_bands)
        # M + 1 = the ViT's positions: reuse its positional embedding; else only the CLS one
        self.reuse_positions = visual.positional_embedding.shape[0] == n_latents + 1

    def encode_splats(self, splats, mask=None, normalize: bool = True):
        visual = self.clip.visual
        tokens = self.stem(splats, mask)  # [B, M, width]
        cls = visual.class_embedding.to(tokens.dtype).expand(len(tokens), 1, -1)
        x = torch.cat([cls, tokens], dim=1)
        pos = visual.positional_embedding.to(x.dtype)
        x = x + (pos if self.reuse_positions else torch.cat(
            [pos[:1], pos.new_zeros(tokens.shape[1], pos.shape[1])]))
        x = visual.ln_pre(visual.patch_dropout(x))
        x = visual.transformer(x)
        pooled, _ = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return nn.functional.normalize(pooled, dim=-1) if normalize else pooled

    def encode_image(self, pixels, normalize: bool = True):
        return self.clip.encode_image(pixels, normalize=normalize)

    def encode_text(self, tokens, normalize: bool = True):
        return self.clip.encode_text(tokens, normalize=normalize)


def parameter_groups(model: SplatCLIP) -> dict[str, list[nn.Parameter]]:
    """Named groups the stages (un)freeze."""
    visual = model.clip.visual
    blocks = visual.transformer.resblocks
    groups = {
        "stem": list(model.stem.parameters()),
        "first_blocks": [p for b in blocks[:2] for p in b.parameters()],
        "ln_post": list(visual.ln_post.parameters()),
        "proj": [visual.proj] if visual.proj is not None else [],
        "logit_scale": [model.clip.logit_scale],
    }
    return groups


def set_trainable(model: SplatCLIP, groups) -> list[nn.Parameter]:
    """Freeze everything, then unfreeze ``groups``; returns the trainable parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    named = parameter_groups(model)
    unknown = set(groups) - set(named)
    if unknown:
        raise ValueError(f"unknown parameter groups {sorted(unknown)}; known: {sorted(named)}")
    trainable = [p for g in groups for p in named[g]]
    for p in trainable:
        p.requires_grad_(True)
    return trainable


def describe(model_name: str, n_latents: int = 196, config: str | None = None) -> dict:
    """Total and trainable parameters per stage (random init, no download)."""
    model = SplatCLIP(create_clip(model_name, None, config), n_latents=n_latents)
    total = sum(p.numel() for p in model.parameters())
    out = {"model": model_name, "n_latents": n_latents, "total_params": total,
           "stem_params": sum(p.numel() for p in model.stem.parameters())}
    for stage, groups in (("distill", ("stem",)), ("clip", STAGE2_GROUPS)):
        trainable = sum(p.numel() for p in set_trainable(model, groups))
        out[stage] = {"groups": list(groups), "trainable_params": trainable,
                      "trainable_fraction": round(trainable / total, 4)}
    return out
