"""Deprecated alias of `gsformat.core.render_math` (until gsformat 0.3)."""
from .._moved import alias

alias(__name__, "gsformat.core.render_math")
