"""gsformat — images as 2D Gaussian splats: format, codecs, fitter and streaming loader.

Heavy parts (torch, streaming, cupy) are imported lazily, so ``import gsformat`` is cheap.
"""
from __future__ import annotations

from . import codecs  # noqa: F401  (registers the gsformat.* numcodecs ids)
from .format import FormatError, SplatSet, UnknownCodecError, decode_record, encode_record

__version__ = "0.1.0"

__all__ = ["FormatError", "UnknownCodecError", "SplatSet", "encode_record", "decode_record",
           "render_splats", "__version__"]


def __getattr__(name):
    if name == "render_splats":  # torch is imported only when asked for
        from .render import render_splats
        return render_splats
    raise AttributeError(f"module 'gsformat' has no attribute {name!r}")
