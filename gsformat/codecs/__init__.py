"""numcodecs codecs for splat payloads, registered under ``gsformat.*`` ids on import.

The contract every codec here keeps (SPEC.md § 5):

- ``encode`` takes float16 splat parameters (any shape whose size is a multiple of 8, read as
  ``[N, 8]`` rows in canonical order) and returns bytes; ``decode`` returns float16 values of the
  same count (lossless codecs bit-exact; lossy ones within the bound their docstring states).
- ``get_config`` is JSON-only; two classes share an id if and only if they are fully compatible.
- Every size read from an encoded header is checked against `gsformat.format.constants` before
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
