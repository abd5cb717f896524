"""One zstd frame, checked before it is decompressed: header, block walk, bounded output.

Frame (RFC 8878 § 3.1.1)::

    [magic: 4 = 28 B5 2F FD] [descriptor: 1] [window: 0|1] [dict id: 0|1|2|4]
    [content size: 0|1|2|4|8] [blocks ...] [checksum: 0|4]

descriptor bits 7-6: content-size flag, bit 5: single segment, bit 3: reserved (0), bit 2:
checksum flag, bits 1-0: dictionary-id flag. Each block starts with a 3-byte little-endian
header: bit 0 last block, bits 1-2 type (0 raw: ``size`` bytes follow; 1 RLE: one byte follows,
repeated ``size`` times; 2 compressed: ``size`` bytes follow; 3 reserved), bits 3-23 ``size``.

SPEC.md § 5.1 allows exactly one frame per stage, stating its content size. `frame_extent` walks
the block headers (at most one step per 3 bytes: linear in the input) to find where the frame
ends, so trailing data or a second frame is refused before anything is decompressed, and the
decompressor is asked for the claimed size only after that size has been checked against what
the caller expects. Every decoder of gsformat (the NumPy ones here and the C lattice decoder)
decompresses through the same library, python-zstd, so they agree on every frame.
"""
from __future__ import annotations

import zstd

from .errors import FormatError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAX_BLOCK = 128 << 10  # RFC 8878: Block_Maximum_Size


def _header(buf: memoryview) -> tuple[int, int, bool]:
    """(content size, header length, checksum flag) of the frame at the start of ``buf``."""
    head = bytes(buf[:18])
    if head[:4] != ZSTD_MAGIC:
        raise FormatError("zstd stage: data is not a zstd frame")
    if len(head) < 5:
        raise FormatError("zstd stage: truncated frame header")
    descriptor = head[4]
    fcs_flag, single_segment, dict_flag = descriptor >> 6, (descriptor >> 5) & 1, descriptor & 3
    if descriptor & 0x08:
        raise FormatError("zstd stage: reserved bit set in the frame header")
    if dict_flag:
        raise FormatError("zstd stage: frame needs a dictionary (not allowed)")
    pos = 5 + (0 if single_segment else 1)
    size_len = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    if size_len == 0:
        raise FormatError("zstd stage: frame does not state its decoded size")
    if len(head) < pos + size_len:
        raise FormatError("zstd stage: truncated frame header")
    size = int.from_bytes(head[pos:pos + size_len], "little")
    return (size + 256 if size_len == 2 else size), pos + size_len, bool(descriptor & 0x04)


def zstd_content_size(buf) -> int:
    """Decoded size claimed by the zstd frame at the start of ``buf``; FormatError when absent."""
    return _header(memoryview(buf).cast("B"))[0]


def frame_extent(buf) -> tuple[int, int]:
    """(claimed content size, length in bytes) of the frame at the start of ``buf``, found by
    walking its block headers; FormatError if the frame is malformed or runs past ``buf``."""
    data = memoryview(buf).cast("B")
    size, pos, checksum = _header(data)
    end, raw_total = len(data), 0
    while True:
        if pos + 3 > end:
            raise FormatError("zstd stage: frame is truncated (block header)")
        word = data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16
        kind, block = (word >> 1) & 3, word >> 3
        if kind == 3 or block > MAX_BLOCK:
            raise FormatError("zstd stage: reserved block type or oversized block")
        raw_total += block if kind < 2 else 0  # raw and RLE blocks state what they produce
        if raw_total > size:
            raise FormatError(f"zstd stage: blocks produce more than the {size} bytes claimed")
        pos += 3 + (1 if kind == 1 else block)
        if word & 1:
            break
    pos += 4 if checksum else 0
    if pos > end:
        raise FormatError("zstd stage: frame is truncated")
    return size, pos


def decompress_exact(frame, expected_nbytes: int, source: str = "header") -> bytes:
    """Decompress a buffer that MUST be exactly one zstd frame claiming ``expected_nbytes``
    (what ``source`` — a codec header, an MDS index — says); checked before anything is
    allocated."""
    return decompress_bounded(frame, expected_nbytes, expected_nbytes, source)


def decompress_bounded(frame, low: int, high: int, source: str = "header") -> bytes:
    """`decompress_exact` for a claim anywhere in [low, high]."""
    claimed = zstd_content_size(frame)  # the claim first: refused from the header alone
    if not low <= claimed <= high:
        raise FormatError(f"zstd frame claims {claimed} bytes, {source} says {low}" if low == high
                          else f"zstd frame claims {claimed} bytes, more than {source} allows "
                               f"({high})")
    length = frame_extent(frame)[1]
    if length != len(memoryview(frame).cast("B")):
        raise FormatError(f"zstd stage: {len(memoryview(frame).cast('B')) - length} bytes after "
                          f"the frame (one frame, nothing else, is allowed)")
    try:
        try:
            raw = zstd.decompress(frame)
        except TypeError:  # a buffer it does not take (a memoryview): as bytes
            raw = zstd.decompress(bytes(frame))
    except Exception as exc:
        raise FormatError(f"corrupt zstd data: {exc}") from None
    if len(raw) != claimed:
        raise FormatError(f"zstd frame decoded to {len(raw)} bytes, it claims {claimed}")
    return raw
