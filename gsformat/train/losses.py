"""Stage 2's contrastive loss with groups of positives.

open_clip's ClipLoss takes the i-th caption as the only positive of the i-th image; in a batch of
a captioned classification set ("a photo of the number 3" ×6 in 64) the other copies count as
negatives, and the loss pushes same-class images apart. `grouped_clip_loss` makes every sample
of the same group a positive: the target of image i is uniform over the texts of its group (and
the same for texts). The groups (`positive_keys`) are equal captions (``--clip-loss captions``),
or equal labels where the dataset has them (``labels``, UniCL's image–label–text contrast: "a
handwritten 3." and "the number 3." are then positives of each other, not negatives that differ
in a template the image cannot show). With every group a single sample it is exactly ClipLoss
(the tests check this); under DDP the features (with gradients) and keys of every rank are
gathered first, as ClipLoss(local_loss=False, gather_with_grad=True) does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def positive_keys(captions: list[str], labels=None) -> list[str]:
    """One key per sample; equal keys are positives. With ``labels``, a sample's label (its
    caption where the label is -1, unlabelled)."""
    if labels is None:
        return [f"caption:{c}" for c in captions]
    return [f"label:{int(l)}" if int(l) >= 0 else f"caption:{c}"
            for c, l in zip(captions, labels)]


def _gather(images, texts, keys: list[str], world: int):
    if world <= 1:
        return images, texts, keys
    import torch.distributed as dist
    import torch.distributed.nn
    images = torch.cat(torch.distributed.nn.all_gather(images))
    texts = torch.cat(torch.distributed.nn.all_gather(texts))
    gathered = [None] * world
    dist.all_gather_object(gathered, list(keys))
    return images, texts, [k for part in gathered for k in part]


def grouped_clip_loss(images, texts, logit_scale, keys: list[str], world: int = 1):
    """Symmetric cross-entropy of the scaled similarities against same-key targets."""
    images, texts, keys = _gather(images, texts, keys, world)
    index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    ids = torch.tensor([index[k] for k in keys], device=images.device)
    same = (ids[:, None] == ids[None, :]).float()  # [B, B] positives
    targets = same / same.sum(1, keepdim=True)
    logits = logit_scale * images @ texts.T
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
