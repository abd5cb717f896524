"""gsformat — images as 2D Gaussian splats: format, codecs, fitter and streaming loader.

Heavy parts (torch, streaming, cupy) are imported lazily, so ``import gsformat`` is cheap.
"""
from __future__ import annotations

from ._version import __version__
# Importing the codecs registers the gsformat.* ids with numcodecs; every gsformat module is
# imported through this package, so records always find them (core/record.py asks numcodecs'
# registry, never the codec modules: the codecs sit below records, see tests/test_layers.py).
from . import codecs  # noqa: F401
from .core.errors import FormatError, UnknownCodecError
from .core.splatset import SplatSet
from .core.record import decode_record, encode_record

__all__ = ["FormatError", "UnknownCodecError", "SplatSet", "encode_record", "decode_record",
           "render_splats", "__version__"]


def __getattr__(name):
    if name == "render_splats":  # torch is imported only when asked for
        from .render import render_splats
        return render_splats
    raise AttributeError(f"module 'gsformat' has no attribute {name!r}")
