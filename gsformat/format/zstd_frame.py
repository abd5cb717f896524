"""Deprecated alias of `gsformat.core.zstd_frame` (until gsformat 0.3)."""
from .._moved import alias

alias(__name__, "gsformat.core.zstd_frame")
