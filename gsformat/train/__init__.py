"""The reference two-stage recipe on open_clip: splat stem + frozen ViT, distillation, CLIP
alignment, zero-shot evaluation. Imports open_clip lazily (the ``train`` extra)."""
from .config import TrainConfig

__all__ = ["TrainConfig"]
