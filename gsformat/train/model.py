"""An open_clip CLIP whose visual tower also takes splats: the stem's M tokens go through the
ViT's own class token, positional embedding, ``ln_pre``, transformer, pooling and projection."""
from __future__ import annotations

import contextlib
import json
import logging
import os

import torch
from torch import nn

from .stem import SplatStem

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")
STAGE2_GROUPS = ("stem", "first_blocks", "ln_post", "proj")


def register_model_config(path: str | None = None, config_json: dict | None = None,
                          name: str | None = None) -> None:
    """Make our bundled configs, a user's JSON config file, or a config carried inside a
    checkpoint (``config_json`` registered as ``name``) known to open_clip."""
    import open_clip
    import tempfile
    for entry in sorted(os.listdir(CONFIG_DIR)):
        if entry.endswith(".json"):
            open_clip.add_model_config(os.path.join(CONFIG_DIR, entry))
    if config_json is not None:
        with tempfile.TemporaryDirectory(prefix="gsformat-config-") as tmp:
            target = os.path.join(tmp, f"{name}.json")
            with open(target, "w") as f:
                json.dump(config_json, f)
            open_clip.add_model_config(target)
    elif path:
        if not os.path.exists(path):
            raise ValueError(f"model config {path} not found")
        open_clip.add_model_config(path)


def read_model_config(path: str | None) -> dict | None:
    """A JSON model config's content (stored in checkpoints so they are self-contained)."""
    if not path:
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"model config {path}: {exc}") from None


WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def resolve_weights(model: str, pretrained: str | None, flag: str = "--pretrained") -> str:
    """What ``pretrained`` names, decided before anything is built and without the network:
    ``"none"``, ``"file"`` (a local file) or ``"tag"`` (an open_clip tag of ``model`` whose
    weights are in the local cache). A path that does not exist is a `FileNotFoundError`; a
    tag unknown for the model, or not cached, a `ValueError` saying what to do (open_clip would
    try to download it: a minute of retries offline, then a traceback)."""
    if not pretrained:
        return "none"
    if os.path.isfile(pretrained):
        return "file"
    if os.sep in pretrained or pretrained.startswith((".", "~")) or pretrained.lower().endswith(
            WEIGHT_SUFFIXES):
        raise FileNotFoundError(f"{flag} {pretrained}: not found")
    import open_clip
    weights = open_clip.get_pretrained_cfg(model, pretrained)
    if not weights:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise ValueError(f"{flag} {pretrained!r} is neither a file nor a weights tag of {model} "
                         f"(its tags: {', '.join(tags) if tags else 'none'})")
    if not _cached(weights):
        raise ValueError(
            f"{flag} {pretrained}: the weights of {model} are not in the local cache and nothing "
            f"is downloaded here: fetch them once where there is network (python -c \"import "
            f"open_clip; open_clip.create_model('{model}', pretrained='{pretrained}')\") or give "
            f"a local file")
    return "tag"


def _cached(weights: dict) -> bool:
    """Whether open_clip finds a tag's weights without the network (its own order: the
    Hugging Face hub's cache, .safetensors first, else the URL's file in ~/.cache/clip)."""
    if "file" in weights:
        return os.path.isfile(weights["file"])
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        try_to_load_from_cache = None
    if weights.get("hf_hub") and try_to_load_from_cache is not None:
        repo, name = os.path.split(weights["hf_hub"])
        name = name or "open_clip_pytorch_model.bin"
        names = [name]
        if name == "open_clip_pytorch_model.bin":
            names.insert(0, "open_clip_model.safetensors")
        elif name.endswith((".bin", ".pth")):
            names.insert(0, name[:-4] + ".safetensors")
        return any(isinstance(try_to_load_from_cache(repo, n), str) for n in names)
    url = weights.get("url")
    return bool(url) and os.path.isfile(os.path.join(os.path.expanduser("~/.cache/clip"),
                                                     os.path.basename(url)))


class _NotRandomly(logging.Filter):
    """open_clip's "No pretrained weights loaded … initialized randomly" warning: every stage
    builds its model without weights and then loads them (--init), so it would always show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _offline_and_quiet():
    """The Hugging Face hub offline (its flag is read at each request), open_clip's random-init
    warning dropped."""
    try:
        from huggingface_hub import constants
    except ImportError:
        constants = None
    offline = getattr(constants, "HF_HUB_OFFLINE", None)
    quiet = _NotRandomly()
    logging.getLogger().addFilter(quiet)
    try:
        if constants is not None:
            constants.HF_HUB_OFFLINE = True
        yield
    finally:
        logging.getLogger().removeFilter(quiet)
        if constants is not None:
            constants.HF_HUB_OFFLINE = offline


def create_clip(model: str, pretrained: str | None = None, config: str | None = None,
                config_json: dict | None = None, flag: str = "--pretrained"):
    """open_clip's factory: ``pretrained`` is None (random init), a local checkpoint path, or a
    tag whose weights are in the local cache (`resolve_weights`; nothing is downloaded)."""
    import open_clip
    register_model_config(config, config_json, model)
    if model not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {model!r} (give --model-config FILE.json, "
                         f"or one of open_clip.list_models())")
    resolve_weights(model, pretrained, flag)
    with _offline_and_quiet():
        clip, _, _ = open_clip.create_model_and_transforms(model, pretrained=pretrained)
    return clip


class SplatCLIP(nn.Module):
    """``clip`` (open_clip CLIP) plus a `SplatStem` feeding its visual transformer."""

    def __init__(self, clip, n_latents: int = 196, stem_dim: int = 128, stem_layers: int = 4,
                 n_bands: int = 8, distill_dim: int | None = None):
        super().__init__()
        self.clip = clip
        visual = clip.visual
        if not hasattr(visual, "transformer") or not hasattr(visual, "class_embedding"):
            raise ValueError("the splat stem needs an open_clip VisionTransformer visual tower")
        width = visual.class_embedding.shape[0]
        self.stem = SplatStem(width, n_latents, stem_dim, stem_layers, n_bands=n_bands)
        # M + 1 = the ViT's positions: reuse its positional embedding; else only the CLS one
        self.reuse_positions = visual.positional_embedding.shape[0] == n_latents + 1
        # a teacher of another width: stage 1 maps the splat embedding to its space
        self.distill_head = nn.Linear(visual.output_dim, distill_dim, bias=False) \
            if distill_dim and distill_dim != visual.output_dim else None

    def forward(self, splats=None, mask=None, pixels=None, tokens=None, distill: bool = False):
        """(image-side embedding, text embedding or None, logit scale), all normalised: what a
        training step needs, in the one forward pass DistributedDataParallel wraps. The image
        side is the splat embedding (in the teacher's space with ``distill``), or the RGB
        tower's on ``pixels``."""
        if pixels is not None:
            image = self.encode_image(pixels)
        elif distill and self.distill_head is not None:
            pooled = self.encode_splats(splats, mask, normalize=False)
            image = nn.functional.normalize(self.distill_head(pooled), dim=-1)
        else:
            image = self.encode_splats(splats, mask)
        text = self.encode_text(tokens) if tokens is not None else None
        return image, text, self.clip.logit_scale.exp()

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
        "stem": list(model.stem.parameters()) + (list(model.distill_head.parameters())
                                                   if model.distill_head is not None else []),
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
