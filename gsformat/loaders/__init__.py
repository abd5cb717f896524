"""Streaming splat shards into PyTorch: `SplatDataset`, `collate_splats`, augmentations."""
from .augment import SplatAugment, hflip, keep_strongest, splat_strength
from .collate import collate_splats


def __getattr__(name):
    if name == "SplatDataset":  # imports streaming only when used
        from .dataset import SplatDataset
        return SplatDataset
    if name == "ShardwiseIteration":
        from .iteration import ShardwiseIteration
        return ShardwiseIteration
    raise AttributeError(name)


__all__ = ["SplatDataset", "ShardwiseIteration", "collate_splats", "SplatAugment", "hflip",
           "keep_strongest", "splat_strength"]
