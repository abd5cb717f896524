"""Deprecated alias of `gsformat.core.errors` (until gsformat 0.3)."""
from .._moved import alias

alias(__name__, "gsformat.core.errors")
