"""numcodecs codecs for splat payloads, registered under ``gsformat.*`` ids on import.

The contract every codec here keeps (SPEC.md § 5):

- ``encode`` codes a buffer's bytes in their memory order and ``decode`` gives them back in
  that order, as every numcodecs codec does (a Zarr ``order='F'`` chunk reads back exactly).
  `gsformat.planar` (lossless) takes any buffer of whole splats, bit-exact. The lossy codecs read
  rows of 8 float16 parameters (SPEC.md § 2) and reorder splats, so they take float16 rows in C
  order (or their bytes) and refuse, with a ValueError, what they would misread: a Fortran-
  ordered array, a last axis other than 8, another dtype; they decode within the bound their
  docstring states. Object arrays, to encode or as ``out``, are a TypeError.
- ``numcodecs.get_codec(config)`` ignores parameters a codec does not know (SPEC.md § 5: readers
  MUST ignore them); the constructors themselves refuse them (a writer's typo).
- ``get_config`` is JSON-only; two classes share an id if and only if they are fully compatible.
- Every size read from an encoded header is checked against `gsformat.core.constants` before
  anything is allocated; a malformed buffer raises `gsformat.FormatError`.
"""
from numcodecs import register_codec

from .lattice import Lattice
from .lattice_rans import LatticeRans
from .legacy import Entropy, Quantize  # read-only legacy: decoded, not offered to writers
from .planar import Planar

for _codec in (Planar, Quantize, Entropy, Lattice, LatticeRans):
    register_codec(_codec)

__all__ = ["Planar", "Quantize", "Entropy", "Lattice", "LatticeRans"]
