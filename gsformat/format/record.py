"""Splat records: one msgpack map per image (SPEC.md § 4).

Byte layout of a record (msgpack map, keys in this order when written)::

    {"version": [1, 0], "n_splats": N, "height": H, "width": W, "layout": "gs2d.mu2.chol3.rgb3",
     "codecs": [<numcodecs config>, ...], "payload": <bin>, "fit": {"psnr": 31.2, ...}}

Decoding the payload: apply the codecs' ``decode`` in reverse order; the result is exactly
``N * 16`` bytes, read as little-endian float16 ``[N, 8]``. Every size a header claims is checked
against `constants` before anything is allocated.
"""
from __future__ import annotations

import functools
import json
from typing import Any, Iterable

import msgpack
import numcodecs
import numpy as np
from numcodecs.abc import Codec

from . import constants as C
from .errors import FormatError, UnknownCodecError
from .splatset import SplatSet
from .zstd_frame import zstd_content_size

# Codec ids a v1 reader accepts in a pipeline: ours (registered by gsformat.codecs) and numcodecs'
# zstd, whose frame header states its decoded size so the reader can check it before allocating.
ZSTD_ID = "zstd"


def _codec_config(codec: Codec | dict) -> dict:
    config = codec.get_config() if isinstance(codec, Codec) else dict(codec)
    if not isinstance(config.get("id"), str):
        raise FormatError(f"codec config needs a string 'id', got {config!r}")
    try:
        json.dumps(config)
    except TypeError as exc:
        raise FormatError(f"codec config {config!r} is not JSON: {exc}") from None
    return config


@functools.lru_cache(maxsize=256)
def _codec_from_json(config_json: str) -> Codec:
    config = json.loads(config_json)
    codec_id = config.get("id")
    if codec_id != ZSTD_ID and not str(codec_id).startswith("gsformat."):
        raise UnknownCodecError(f"codec id {codec_id!r} is not allowed in a v1 pipeline "
                                f"(allowed: 'gsformat.*', {ZSTD_ID!r})")
    import gsformat.codecs  # noqa: F401  (registers gsformat.* ids)
    try:
        return numcodecs.get_codec(dict(config))
    except ValueError as exc:
        raise UnknownCodecError(f"unknown codec id {codec_id!r}") from exc
    except TypeError as exc:
        raise FormatError(f"bad codec config {config!r}: {exc}") from None


_CODECS: dict = {}


def get_codec(config: Codec | dict) -> Codec:
    """The codec for a JSON config (cached; configs are immutable values)."""
    if isinstance(config, Codec):
        return config
    try:
        key = tuple(config.items())  # a record's map keeps its key order: hits without a sort
        codec = _CODECS.get(key)
    except TypeError:  # unhashable values (a list in a config): not cached
        key = codec = None
    if codec is not None:
        return codec
    codec = _codec_from_json(json.dumps(_codec_config(config), sort_keys=True))
    if key is not None and len(_CODECS) < 256:
        _CODECS[key] = codec
    return codec


def encode_payload(params: np.ndarray, codecs: Iterable[Codec | dict] = ()) -> tuple[bytes, list]:
    """FP16 ``[N, 8]`` → (payload bytes, pipeline configs)."""
    buf: Any = np.ascontiguousarray(params, dtype=C.STORAGE_DTYPE)
    configs = []
    for codec in codecs:
        codec = get_codec(codec)
        configs.append(_codec_config(codec))  # the full config, defaults included
        buf = codec.encode(buf)
    return _as_uint8(buf).tobytes(), configs


def _as_uint8(buf) -> np.ndarray:
    """Any buffer a codec returns (bytes, ndarray of any dtype) as flat uint8, without a copy."""
    if isinstance(buf, (bytes, bytearray, memoryview)):
        return np.frombuffer(buf, dtype=np.uint8)
    return np.ascontiguousarray(buf).reshape(-1).view(np.uint8)


def decode_payload(payload: bytes, configs: list, n_splats: int) -> np.ndarray:
    """Payload → float16 ``[n_splats, 8]``, checking each stage's claimed size first."""
    if n_splats == 0 and not payload:
        return np.empty((0, C.PARAMS_PER_SPLAT), np.float16)
    if len(configs) > C.MAX_CODECS:
        raise FormatError(f"codec pipeline has {len(configs)} stages, limit {C.MAX_CODECS}")
    buf: Any = payload
    for config in reversed(configs):
        if not isinstance(config, dict):
            raise FormatError(f"codec config must be a map, got {type(config).__name__}")
        codec = get_codec(config)
        if codec.codec_id == ZSTD_ID:
            claimed = zstd_content_size(buf)
            if claimed > C.MAX_DECODED_BYTES:
                raise FormatError(f"zstd stage claims {claimed} decoded bytes, "
                                  f"limit {C.MAX_DECODED_BYTES}")
        try:
            buf = codec.decode(buf)
        except FormatError:
            raise
        except Exception as exc:  # a codec library's own error: say which stage failed
            raise FormatError(f"codec {config.get('id')!r} failed to decode: {exc}") from None
    if isinstance(buf, np.ndarray) and buf.dtype == np.float16 and buf.flags.c_contiguous \
            and buf.flags.writeable and buf.size == n_splats * C.PARAMS_PER_SPLAT:
        return buf.reshape(n_splats, C.PARAMS_PER_SPLAT)  # a codec's fresh rows, as they are
    raw = _as_uint8(buf)
    expected = n_splats * C.BYTES_PER_SPLAT
    if raw.nbytes != expected:
        raise FormatError(f"decoded payload has {raw.nbytes} bytes, expected {expected} "
                          f"for {n_splats} splats")
    return raw.view(C.STORAGE_DTYPE).reshape(n_splats, C.PARAMS_PER_SPLAT).astype(np.float16)


def encode_record(splats: SplatSet, codecs: Iterable[Codec | dict] = (),
                  fit: dict | None = None) -> bytes:
    """Encode a `SplatSet` as a splat record (bytes). ``fit`` defaults to ``splats.meta``."""
    # an empty record has no payload to code (zstd cannot round-trip an empty frame)
    payload, configs = encode_payload(splats.params, codecs if splats.n_splats else ())
    record = {
        C.KEY_VERSION: list(C.FORMAT_VERSION),
        C.KEY_N_SPLATS: splats.n_splats,
        C.KEY_HEIGHT: splats.height,
        C.KEY_WIDTH: splats.width,
        C.KEY_LAYOUT: C.LAYOUT_ID,
        C.KEY_CODECS: configs,
        C.KEY_PAYLOAD: payload,
    }
    fit = splats.meta if fit is None else fit
    if fit:
        record[C.KEY_FIT] = {str(k): _plain(v) for k, v in fit.items()}
    out = msgpack.packb(record, use_bin_type=True)
    if len(out) > C.MAX_RECORD_BYTES:
        raise FormatError(f"record of {len(out)} bytes exceeds limit {C.MAX_RECORD_BYTES}")
    return out


def _plain(value):
    """numpy scalars → Python scalars, so msgpack writes them."""
    return value.item() if isinstance(value, np.generic) else value


def _refuse_ext(code, data):
    raise FormatError(f"msgpack extension type {code} is not allowed in a record")


def read_header(buf: bytes | memoryview) -> dict:
    """Parse and check a record's map without decoding the payload."""
    if len(buf) > C.MAX_RECORD_BYTES:
        raise FormatError(f"record of {len(buf)} bytes exceeds limit {C.MAX_RECORD_BYTES}")
    try:
        record = msgpack.unpackb(
            buf, raw=False, use_list=True, strict_map_key=True, ext_hook=_refuse_ext,
            max_bin_len=C.MAX_RECORD_BYTES, max_str_len=1 << 20, max_array_len=1 << 16,
            max_map_len=1 << 12)
    except FormatError:
        raise
    except Exception as exc:
        raise FormatError(f"not a msgpack record: {exc}") from None
    if not isinstance(record, dict):
        raise FormatError(f"record must be a msgpack map, got {type(record).__name__}")
    if not record.keys() >= C.REQUIRED_KEY_SET:
        missing = [k for k in C.REQUIRED_KEYS if k not in record]
        raise FormatError(f"record is missing required keys {missing}")
    version = record[C.KEY_VERSION]
    # `type(v) is int` rather than isinstance: bools are ints to isinstance (and this runs per
    # sample in the loader, so no generator)
    if type(version) is not list or len(version) != 2 or not (
            type(version[0]) is int and type(version[1]) is int):
        raise FormatError(f"version must be [major, minor], got {version!r}")
    if version[0] != C.FORMAT_MAJOR:
        raise FormatError(f"unknown major version {version[0]} (this reader understands "
                          f"{C.FORMAT_MAJOR}.x)")
    n, height, width = record[C.KEY_N_SPLATS], record[C.KEY_HEIGHT], record[C.KEY_WIDTH]
    if not (type(n) is int and type(height) is int and type(width) is int
            and 0 <= n <= C.MAX_SPLATS and 1 <= height <= C.MAX_CANVAS_SIDE
            and 1 <= width <= C.MAX_CANVAS_SIDE):  # the common case in one test; else say which
        for key, low, high in ((C.KEY_N_SPLATS, 0, C.MAX_SPLATS),
                               (C.KEY_HEIGHT, 1, C.MAX_CANVAS_SIDE),
                               (C.KEY_WIDTH, 1, C.MAX_CANVAS_SIDE)):
            value = record[key]
            if type(value) is not int:
                raise FormatError(f"{key} must be an integer, got {type(value).__name__}")
            if not low <= value <= high:
                what = "splat count" if key == C.KEY_N_SPLATS else f"canvas {key}"
                raise FormatError(f"{what} {value} outside [{low}, {high}]")
    if record[C.KEY_LAYOUT] != C.LAYOUT_ID:
        raise FormatError(f"unknown parameter layout {record[C.KEY_LAYOUT]!r} "
                          f"(expected {C.LAYOUT_ID!r})")
    if type(record[C.KEY_CODECS]) is not list:
        raise FormatError("codecs must be a list of codec configs")
    if type(record[C.KEY_PAYLOAD]) is not bytes:
        raise FormatError("payload must be msgpack bin")
    fit = record.get(C.KEY_FIT, {})
    if not isinstance(fit, dict) or len(fit) > C.MAX_FIT_KEYS:
        record[C.KEY_FIT] = {}  # optional and ignorable: a malformed fit map is dropped
    return record


def decode_record(buf: bytes | memoryview, check: bool = False,
                  where: str | None = None) -> SplatSet:
    """Decode a splat record into a `SplatSet`.

    Raises `FormatError` (naming ``where`` when given) for anything SPEC.md forbids. With
    ``check=True`` the parameters are also validated (finite, l11 > 0, l22 > 0).
    """
    try:
        record = read_header(buf)
        params = decode_payload(record[C.KEY_PAYLOAD], record[C.KEY_CODECS],
                                record[C.KEY_N_SPLATS])
        # read_header checked the sides, decode_payload the rows: no second check
        splats = SplatSet._checked(params, record[C.KEY_HEIGHT], record[C.KEY_WIDTH],
                                   dict(record.get(C.KEY_FIT, {})))
        return splats.check() if check else splats
    except FormatError as exc:
        raise exc.at(where) if where else exc
