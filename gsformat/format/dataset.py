"""Deprecated alias of `gsformat.io.dataset_files` (until gsformat 0.3)."""
from .._moved import alias

alias(__name__, "gsformat.io.dataset_files")
