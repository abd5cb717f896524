"""Read the decoded size a zstd frame header claims, so a reader can refuse it before allocating.

Frame header (RFC 8878 § 3.1.1)::

    [magic: 4 = 28 B5 2F FD] [descriptor: 1] [window: 0|1] [dict id: 0|1|2|4] [content size: 0|1|2|4|8]

descriptor bits 7-6: content-size flag, bit 5: single segment, bits 1-0: dictionary-id flag.
"""
from __future__ import annotations

import zstd

from .errors import FormatError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def zstd_content_size(buf) -> int:
    """Decoded size claimed by the first zstd frame in ``buf``; FormatError when absent."""
    head = bytes(memoryview(buf).cast("B")[:18])
    if head[:4] != ZSTD_MAGIC:
        raise FormatError("zstd stage: data is not a zstd frame")
    if len(head) < 5:
        raise FormatError("zstd stage: truncated frame header")
    descriptor = head[4]
    fcs_flag, single_segment, dict_flag = descriptor >> 6, (descriptor >> 5) & 1, descriptor & 3
    pos = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
    size_len = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    if size_len == 0:
        raise FormatError("zstd stage: frame does not state its decoded size")
    if len(head) < pos + size_len:
        raise FormatError("zstd stage: truncated frame header")
    size = int.from_bytes(head[pos:pos + size_len], "little")
    return size + 256 if size_len == 2 else size


def decompress_exact(frame, expected_nbytes: int, source: str = "header") -> bytes:
    """Decompress one zstd frame whose header must claim exactly ``expected_nbytes`` (what
    ``source`` — a codec header, an MDS index — says); checked before anything is allocated."""
    claimed = zstd_content_size(frame)
    if claimed != expected_nbytes:
        raise FormatError(f"zstd frame claims {claimed} bytes, {source} says {expected_nbytes}")
    try:
        try:
            raw = zstd.decompress(frame)
        except TypeError:  # a buffer it does not take (a memoryview): as bytes
            raw = zstd.decompress(bytes(frame))
    except Exception as exc:
        raise FormatError(f"corrupt zstd data: {exc}") from None
    if len(raw) != expected_nbytes:
        raise FormatError(f"zstd frame decoded to {len(raw)} bytes, {source} says "
                          f"{expected_nbytes}")
    return raw

