"""Deprecated: ``gsformat.format`` was split into `gsformat.core` (constants, errors, SplatSet,
records, the renderer's maths) and `gsformat.io` (MDS, storage, datasets, validate). The old
module paths still import (with a DeprecationWarning) until gsformat 0.3; the public names are
also at the top: ``gsformat.SplatSet``, ``gsformat.encode_record``, …"""
import warnings

from ..core import constants
from ..core.errors import FormatError, UnknownCodecError
from ..core.record import decode_record, encode_record, read_header
from ..core.splatset import SplatSet

warnings.warn("gsformat.format moved to gsformat.core and gsformat.io (the old path goes in "
              "gsformat 0.3)", DeprecationWarning, stacklevel=2)

__all__ = ["constants", "FormatError", "UnknownCodecError", "SplatSet", "encode_record",
           "decode_record", "read_header"]
