"""Old module paths kept as aliases of their new homes for one minor version (0.1 → 0.2)."""
from __future__ import annotations

import importlib
import sys
import warnings


def alias(old: str, new: str) -> None:
    """Make module ``old`` the module ``new`` (same object: every name, private ones too),
    with a DeprecationWarning naming the new path."""
    warnings.warn(f"{old} moved to {new} (the old path goes in gsformat 0.3)",
                  DeprecationWarning, stacklevel=3)
    sys.modules[old] = importlib.import_module(new)
