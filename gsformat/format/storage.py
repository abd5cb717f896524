"""Deprecated alias of `gsformat.io.storage` (until gsformat 0.3)."""
from .._moved import alias

alias(__name__, "gsformat.io.storage")
