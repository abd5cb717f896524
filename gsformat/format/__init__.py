"""The gsformat format: constants, `SplatSet`, splat records, datasets and their validator."""
from . import constants
from .errors import FormatError, UnknownCodecError
from .record import decode_record, encode_record, read_header
from .splatset import SplatSet

__all__ = ["constants", "FormatError", "UnknownCodecError", "SplatSet", "encode_record",
           "decode_record", "read_header"]
