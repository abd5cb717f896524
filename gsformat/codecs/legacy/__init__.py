"""Read-only legacy codecs (SPEC.md § 5.3, § 5.4): every reader decodes them, writers should
not write them (encoding warns with `gsformat.core.errors.LegacyCodecWarning`); their golden
vectors stay. `gsformat.lattice` / `gsformat.lattice-rans` replace both."""
from .entropy import Entropy
from .quantize import Quantize

__all__ = ["Entropy", "Quantize"]
