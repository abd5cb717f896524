"""Stage 2's contrastive loss with equal captions as positives.

open_clip's ClipLoss takes the i-th caption as the only positive of the i-th image; in a batch of
a captioned classification set ("a photo of the number 3" ×6 in 64) the other copies count as
negatives, and the loss pushes same-class images apart. `caption_clip_loss` makes every equal
caption a positive: the target of image i is uniform over the texts equal to its caption (and
the same for texts). With all captions distinct it is exactly ClipLoss (the tests check this);
under DDP the features (with gradients) and captions of every rank are gathered first, as
ClipLoss(local_loss=False, gather_with_grad=True) does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _gather(images, texts, captions: list[str], world: int):
    if world <= 1:
        return images, texts, captions
    import torch.distributed as dist
    import torch.distributed.nn
    images = torch.cat(torch.distributed.nn.all_gather(images))
    texts = torch.cat(torch.distributed.nn.all_gather(texts))
    gathered = [None] * world
    dist.all_gather_object(gathered, list(captions))
    return images, texts, [c for part in gathered for c in part]


def caption_clip_loss(images, texts, logit_scale, captions: list[str], world: int = 1):
    """Symmetric cross-entropy of the scaled similarities against same-caption targets."""
    images, texts, captions = _gather(images, texts, captions, world)
    index = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    ids = torch.tensor([index[c] for c in captions], device=images.device)
    same = (ids[:, None] == ids[None, :]).float()  # [B, B] equal captions
    targets = same / same.sum(1, keepdim=True)
    logits = logit_scale * images @ texts.T
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
