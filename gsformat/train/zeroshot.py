"""Zero-shot evaluation: classification (top-1, top-5, mean per-class recall) from class names
and templates, and image–text retrieval (recall@1/5/10) on captioned sets; splats or RGB."""
from __future__ import annotations

import os

import torch

from ..io.dataset_files import read_manifest
from .data import image_size_of, make_loader, pixels_for
from .loop import build_model, load_checkpoint, pick_device
from .config import TrainConfig

DEFAULT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.")


def read_lines(path: str) -> list[str]:
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


@torch.no_grad()
def evaluate(data: str, init: str | None = None, input: str = "splats",
             templates: list[str] | None = None, class_names: list[str] | None = None,
             batch_size: int = 64, device: str = "auto", cache: str | None = None,
             **model_overrides) -> dict:
    manifest = read_manifest(data)
    columns = manifest.get("columns", {})
    class_names = class_names or manifest.get("class_names")
    templates = templates or manifest.get("templates") or list(DEFAULT_TEMPLATES)
    has_labels = "label" in columns and bool(class_names)
    has_captions = "caption" in columns
    if not has_labels and not has_captions:
        raise ValueError(f"{data}: zero-shot needs labels with class names (manifest "
                         f"class_names or --classnames) or captions; found columns "
                         f"{sorted(columns)}")
    if input == "rgb" and "image" not in columns:
        raise ValueError(f"{data}: RGB evaluation needs stored source images (convert "
                         f"--keep-image)")
    cfg_values = load_checkpoint(init)["config"] if init else {}
    cfg_values.update({k: v for k, v in model_overrides.items() if v is not None})
    cfg = TrainConfig.from_dict({**cfg_values, "init": init, "resume": None})
    dev = pick_device(device)
    model = build_model(cfg).to(dev).eval()
    from open_clip import get_tokenizer
    tokenizer = get_tokenizer(cfg.model)
    loader = make_loader(data, cache or os.path.join(cfg.out, "eval-cache"), batch_size,
                         shuffle=False, load_image=input == "rgb")
    size = image_size_of(model.clip)
    feats, labels, captions = [], [], []
    for batch in loader:
        if input == "rgb":
            feats.append(model.encode_image(pixels_for(batch, size, dev)).float().cpu())
        else:
            feats.append(model.encode_splats(batch["splats"].to(dev),
                                             batch["mask"].to(dev)).float().cpu())
        if "label" in batch:
            labels.append(batch["label"])
        captions += batch.get("caption", [])
    images = torch.cat(feats)
    out = {"data": data, "input": input, "n_samples": len(images), "model": cfg.model,
           "checkpoint": init}

    def encode_texts(texts):
        chunks = [model.encode_text(tokenizer(texts[i:i + 256]).to(dev)).float().cpu()
                  for i in range(0, len(texts), 256)]
        return torch.cat(chunks)

    if has_labels:
        labels = torch.cat(labels)
        keep = labels >= 0
        if not bool(keep.any()):
            if not (has_captions and captions):
                raise ValueError(f"{data}: no sample has a label (every label is -1): "
                                 f"zero-shot classification needs labelled samples")
            has_labels = False
            out["classification"] = None  # captions only: retrieval below
    if has_labels:
        weights = torch.stack([
            torch.nn.functional.normalize(encode_texts([t.format(c) for t in templates]).mean(0),
                                          dim=-1) for c in class_names])
        logits = images[keep] @ weights.T
        y = labels[keep]
        top5 = logits.topk(min(5, len(class_names)), dim=1).indices
        pred = top5[:, 0]
        recalls = [float((pred[y == c] == c).float().mean()) for c in range(len(class_names))
                   if (y == c).any()]
        out["classification"] = {
            "top1": float((pred == y).float().mean()),
            "top5": float((top5 == y[:, None]).any(1).float().mean()),
            "mean_per_class_recall": float(sum(recalls) / len(recalls)),
            "n_classes": len(class_names), "chance": 1 / len(class_names)}
    if has_captions and captions:
        texts = encode_texts(captions)
        sim = images @ texts.T
        same = torch.tensor([[a == b for b in captions] for a in captions])  # equal captions
        out["retrieval"] = {}                                                # count as hits
        for k in (1, 5, 10):
            k_eff = min(k, len(captions))
            i2t = same.gather(1, sim.topk(k_eff, dim=1).indices).any(1).float().mean()
            t2i = same.T.gather(1, sim.T.topk(k_eff, dim=1).indices).any(1).float().mean()
            out["retrieval"][f"image_to_text_R@{k}"] = float(i2t)
            out["retrieval"][f"text_to_image_R@{k}"] = float(t2i)
    return out
