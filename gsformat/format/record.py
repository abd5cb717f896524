"""Deprecated alias of `gsformat.core.record` (until gsformat 0.3)."""
from .._moved import alias

alias(__name__, "gsformat.core.record")
