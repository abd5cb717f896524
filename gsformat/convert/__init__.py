"""``gsformat convert`` / ``merge``: image datasets → validated splat shards."""
from .run import run_convert

__all__ = ["run_convert"]
