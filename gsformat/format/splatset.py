"""Deprecated alias of `gsformat.core.splatset` (until gsformat 0.3)."""
from .._moved import alias

alias(__name__, "gsformat.core.splatset")
