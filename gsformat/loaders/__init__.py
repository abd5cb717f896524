"""Streaming splat shards into PyTorch: `SplatDataset`, `collate_splats`, augmentations.

A sample's keys (``splats``, ``height``, ``width``, ``rendered``, ``image`` — the stored
image —, the stored columns) are in one table: `gsformat.loaders.dataset`'s docstring.
"""
from .augment import SplatAugment, hflip, keep_strongest, splat_strength
from .collate import Sample, collate_splats


def __getattr__(name):
    if name == "SplatDataset":  # imports streaming only when used
        from .dataset import SplatDataset
        return SplatDataset
    if name == "ShardwiseIteration":
        from .iteration import ShardwiseIteration
        return ShardwiseIteration
    raise AttributeError(name)


__all__ = ["SplatDataset", "ShardwiseIteration", "Sample", "collate_splats", "SplatAugment",
           "hflip", "keep_strongest", "splat_strength"]
