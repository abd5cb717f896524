"""Splat records: one msgpack map per image (SPEC.md § 4).

Byte layout of a record (msgpack map, keys in this order when written)::

    {"version": [1, 0], "n_splats": N, "height": H, "width": W, "layout": "gs2d.mu2.chol3.rgb3",
     "codecs": [<numcodecs config>, ...], "payload": <bin>, "fit": {"psnr": 31.2, ...}}

Decoding the payload: apply the codecs' ``decode`` in reverse order; the result is exactly
``N * 16`` bytes, read as little-endian float16 ``[N, 8]``. Every size a header claims is checked
against `constants` before anything is allocated.
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterable

import msgpack
import numcodecs
import numpy as np
from numcodecs.abc import Codec

from . import constants as C
from .errors import FormatError, UnknownCodecError
from .splatset import SplatSet
from .zstd_frame import decompress_bounded

# Codec ids a v1 reader accepts in a pipeline: ours (registered by gsformat.codecs) and numcodecs'
# zstd, whose frame header states its decoded size so the reader can check it before allocating.
ZSTD_ID = "zstd"
# What a pipeline stage other than the innermost may decode to (SPEC.md § 7): a fixed multiple of
# the record's decoded size, so that no stage can make a reader allocate more than that.
STAGE_SLACK_BYTES = 1 << 16


def stage_limit(n_splats: int) -> int:
    """The most bytes an intermediate pipeline stage of an N-splat record may decode to."""
    return 2 * n_splats * C.BYTES_PER_SPLAT + STAGE_SLACK_BYTES


def codec_config(codec: Codec | dict) -> dict:
    """A codec (or config) as the JSON config a record stores; FormatError if it is not one."""
    config = codec.get_config() if isinstance(codec, Codec) else dict(codec)
    if not isinstance(config.get("id"), str):
        raise FormatError(f"codec config needs a string 'id', got {config!r}")
    try:
        json.dumps(config, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"codec config {config!r} is not JSON: {exc}") from None
    return config


def get_codec(config: Codec | dict) -> Codec:
    """The codec for a JSON config, as a writer asks for it (numcodecs' registry; the codec's own
    checks). Readers use `decoder_for`, which applies the spec's parameter rules."""
    if isinstance(config, Codec):
        return config
    config = codec_config(config)
    _check_allowed(config["id"])
    try:
        return numcodecs.get_codec(dict(config))
    except (TypeError, ValueError, OverflowError) as exc:
        if config["id"] not in numcodecs.registry.codec_registry:
            raise UnknownCodecError(f"unknown codec id {config['id']!r}") from None
        raise FormatError(f"bad codec config {config!r}: {exc}") from None


def _check_allowed(codec_id) -> None:
    if codec_id != ZSTD_ID and not str(codec_id).startswith("gsformat."):
        raise UnknownCodecError(f"codec id {codec_id!r} is not allowed in a v1 pipeline "
                                f"(allowed: 'gsformat.*', {ZSTD_ID!r})")


_DECODERS: dict = {}


def decoder_for(config) -> Codec | None:
    """The decoder of one pipeline stage (None for ``zstd``, which `decode_payload` undoes
    itself), after SPEC.md § 5's parameter rules: every parameter the decoder needs present,
    of its type and in its range; parameters it does not need ignored. Cached per config."""
    if type(config) is not dict:
        raise FormatError(f"codec config must be a map, got {type(config).__name__}")
    try:  # a record's map keeps its key order: hits without a sort. Types are part of the
        # key: 8, 8.0 and True are equal (and hash alike) in Python, not in SPEC.md § 5
        key = tuple((name, type(value), value) for name, value in config.items())
        cached = _DECODERS.get(key, False)
    except TypeError:  # unhashable values (a list in a config): not cached
        key, cached = None, False
    if cached is not False:
        return cached
    codec_id = config.get("id")
    if type(codec_id) is not str:
        raise FormatError(f"codec config needs a string 'id', got {config!r}")
    _check_allowed(codec_id)
    if codec_id == ZSTD_ID:
        decoder = None
    else:
        cls = numcodecs.registry.codec_registry.get(codec_id)
        if cls is None or not hasattr(cls, "DECODE_PARAMS"):
            raise UnknownCodecError(f"unknown codec id {codec_id!r}")
        kwargs = {}
        for name, (kind, low, high) in cls.DECODE_PARAMS.items():
            kwargs[name] = _param(codec_id, config, name, kind, low, high)
        decoder = cls(**kwargs)
    if key is not None and len(_DECODERS) < 256:
        _DECODERS[key] = decoder
    return decoder


def _param(codec_id: str, config: dict, name: str, kind: type, low, high):
    """One decoder parameter: present, an int (``kind`` int) or a number (``kind`` float; ints
    allowed, bools never), finite, within [low, high] (a float's low bound is exclusive)."""
    if name not in config:
        raise FormatError(f"codec {codec_id!r}: missing parameter {name!r}")
    value = config[name]
    allowed = (int,) if kind is int else (int, float)
    if type(value) not in allowed:
        raise FormatError(f"codec {codec_id!r}: parameter {name!r} must be "
                          f"{'an integer' if kind is int else 'a number'}, got {value!r}")
    inside = low <= value <= high if kind is int else (math.isfinite(value)
                                                      and low < value <= high)
    if not inside:
        span = f"[{low}, {high}]" if kind is int else f"({low}, {high}]"
        raise FormatError(f"codec {codec_id!r}: parameter {name!r} = {value!r} outside {span}")
    return value


def encode_payload(params: np.ndarray, codecs: Iterable[Codec | dict] = ()) -> tuple[bytes, list]:
    """FP16 ``[N, 8]`` → (payload bytes, pipeline configs)."""
    buf: Any = np.ascontiguousarray(params, dtype=C.STORAGE_DTYPE)
    configs = []
    for codec in codecs:
        codec = get_codec(codec)
        configs.append(codec_config(codec))  # the full config, defaults included
        buf = codec.encode(buf)
    return _as_uint8(buf).tobytes(), configs


def _as_uint8(buf) -> np.ndarray:
    """Any buffer a codec returns (bytes, ndarray of any dtype) as flat uint8, without a copy."""
    if isinstance(buf, (bytes, bytearray, memoryview)):
        return np.frombuffer(buf, dtype=np.uint8)
    return np.ascontiguousarray(buf).reshape(-1).view(np.uint8)


def decode_payload(payload: bytes, configs: list, n_splats: int) -> np.ndarray:
    """Payload → float16 ``[n_splats, 8]`` (SPEC.md § 4.1): every stage's config checked first
    (even for an empty record), then each stage's claimed size checked against what it may
    produce — exactly 16·N for the innermost stage, `stage_limit` for the others — before it is
    decoded."""
    if type(configs) is not list:
        raise FormatError("codecs must be a list of codec configs")
    if len(configs) > C.MAX_CODECS:
        raise FormatError(f"codec pipeline has {len(configs)} stages, limit {C.MAX_CODECS}")
    decoders = [decoder_for(config) for config in configs]
    expected = n_splats * C.BYTES_PER_SPLAT
    if n_splats == 0 and not payload:
        return np.empty((0, C.PARAMS_PER_SPLAT), np.float16)
    buf: Any = payload
    for stage in range(len(decoders) - 1, -1, -1):
        decoder = decoders[stage]
        low, high = (expected, expected) if stage == 0 else (0, stage_limit(n_splats))
        where = f"stage {stage}" if stage else "the record's splat count"
        if decoder is None:  # zstd: one frame, its claim checked before decompressing
            buf = decompress_bounded(buf, low, high, where)
            continue
        claimed = decoder.decoded_nbytes(buf)
        if not low <= claimed <= high:
            raise FormatError(f"codec {decoder.codec_id!r} claims {claimed} decoded bytes, "
                              f"{where} allows {low if low == high else f'at most {high}'}")
        try:
            buf = decoder.decode(buf)
        except FormatError:
            raise
        except Exception as exc:  # a codec library's own error: say which stage failed
            raise FormatError(f"codec {decoder.codec_id!r} failed to decode: {exc}") from None
    if isinstance(buf, np.ndarray) and buf.dtype == np.float16 and buf.flags.c_contiguous \
            and buf.flags.writeable and buf.size == n_splats * C.PARAMS_PER_SPLAT:
        return buf.reshape(n_splats, C.PARAMS_PER_SPLAT)  # a codec's fresh rows, as they are
    raw = _as_uint8(buf)
    if raw.nbytes != expected:
        raise FormatError(f"decoded payload has {raw.nbytes} bytes, expected {expected} "
                          f"for {n_splats} splats")
    return raw.view(C.STORAGE_DTYPE).reshape(n_splats, C.PARAMS_PER_SPLAT).astype(np.float16)


def check_params(params: np.ndarray) -> None:
    """SPEC.md § 2: every value finite, l11 > 0, l22 > 0; FormatError naming the first fault.
    (One C pass where the extension is built, ~1 µs for 1,600 splats; NumPy's float16
    reductions cost ~15 µs. The slow description only for a bad record.)"""
    valid = _rows_valid()
    if not (valid(params) if valid else _rows_valid_numpy(params)):
        raise FormatError("; ".join(SplatSet._checked(params, 1, 1, {}).problems()))


def _rows_valid_numpy(params: np.ndarray) -> bool:
    """Twin of the C extension's ``rows_valid``."""
    return bool(np.isfinite(params).all() and (params[:, 2] > 0).all()
                and (params[:, 4] > 0).all())


_ROWS_VALID: list = []


def _rows_valid():
    """The C row check, or None (looked up once, at first use: the codecs package imports
    this module)."""
    if not _ROWS_VALID:
        import os
        try:
            from ..codecs import _lattice_native
            found = None if os.environ.get("GSFORMAT_NO_NATIVE") else _lattice_native.rows_valid
        except ImportError:
            found = None
        _ROWS_VALID.append(found)
    return _ROWS_VALID[0]


def encode_record(splats: SplatSet, codecs: Iterable[Codec | dict] = (),
                  fit: dict | None = None) -> bytes:
    """Encode a `SplatSet` as a splat record (bytes). ``fit`` defaults to ``splats.meta``.

    Raises `FormatError` for parameters SPEC.md § 2 forbids a writer to write (non-finite
    values, l11 or l22 not > 0, −0 included), whatever the pipeline: lossless ones would store
    them as they are."""
    try:
        check_params(splats.params)
    except FormatError as exc:
        raise FormatError(f"refusing to write invalid splats (SPEC.md § 2, § 8): "
                          f"{exc.reason}") from None
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


_SCALARS = frozenset((int, float, str, bytes, bool, type(None)))
_FIT_SCALARS = frozenset((int, float, str, bool, type(None)))  # § 4: a `fit` value (1.5)


def _check_tree(record: dict) -> None:
    """SPEC.md § 4: no extension type anywhere (msgpack turns type −1, Timestamp, into an object
    without asking `ext_hook`), only str map keys, and *(1.5)* nesting at most
    `C.MAX_NESTING` deep (the record's map is depth 1). Iterative: nesting cannot exhaust the
    stack; the payload is one bytes value, so this costs a few steps per record."""
    stack = [(record, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > C.MAX_NESTING:
            raise FormatError(f"record nests containers {depth} deep, limit {C.MAX_NESTING}")
        kind = type(value)
        if kind is dict:
            for key, item in value.items():
                if type(key) is not str:
                    raise FormatError(f"map key {key!r} is not a str (records use str keys)")
                if type(item) not in _SCALARS:
                    stack.append((item, depth + 1))
        elif kind is list:
            stack.extend((item, depth + 1) for item in value if type(item) not in _SCALARS)
        elif kind not in _SCALARS:
            raise FormatError(f"msgpack extension type ({kind.__name__}) is not allowed in a "
                              f"record")


def _unique_map(pairs: list) -> dict:
    """A msgpack map's (key, value) pairs → dict, refusing a key given twice (SPEC.md § 4, 1.5:
    which value a reader keeps would be its parser's choice)."""
    mapping = dict(pairs)
    if len(mapping) != len(pairs):
        seen: set = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise FormatError(f"map key {twice!r} appears twice in one map")
    return mapping


def read_header(buf: bytes | memoryview) -> dict:
    """Parse and check a record's map without decoding the payload."""
    if len(buf) > C.MAX_RECORD_BYTES:
        raise FormatError(f"record of {len(buf)} bytes exceeds limit {C.MAX_RECORD_BYTES}")
    try:
        record = msgpack.unpackb(
            buf, raw=False, use_list=True, strict_map_key=True, ext_hook=_refuse_ext,
            object_pairs_hook=_unique_map, max_bin_len=C.MAX_RECORD_BYTES, max_str_len=1 << 20, max_array_len=1 << 16,
            max_map_len=1 << 12)
    except FormatError:
        raise
    except Exception as exc:
        raise FormatError(f"not a msgpack record: {exc}") from None
    if not isinstance(record, dict):
        raise FormatError(f"record must be a msgpack map, got {type(record).__name__}")
    _check_tree(record)
    if not record.keys() >= C.REQUIRED_KEY_SET:
        missing = [k for k in C.REQUIRED_KEYS if k not in record]
        raise FormatError(f"record is missing required keys {missing}")
    version = record[C.KEY_VERSION]
    # `type(v) is int` rather than isinstance: bools are ints to isinstance (and this runs per
    # sample in the loader, so no generator)
    if type(version) is not list or len(version) != 2 or not (
            type(version[0]) is int and type(version[1]) is int
            and version[0] >= 0 and version[1] >= 0):  # § 4: an array of two uints
        raise FormatError(f"version must be [major, minor], two unsigned integers, got "
                          f"{version!r}")
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
    elif not all(type(value) in _FIT_SCALARS for value in fit.values()):
        record[C.KEY_FIT] = {key: value for key, value in fit.items()  # (1.5) and an entry
                             if type(value) in _FIT_SCALARS}           # that is not a scalar
    return record


def decode_params(buf: bytes | memoryview, where: str | None = None) -> tuple[dict, np.ndarray]:
    """(header, float16 ``[N, 8]``) of a record, every rule of SPEC.md § 4.1 and § 2 checked:
    the one decoding path of every reader here (`decode_record`, the loader, the validator)."""
    try:
        header = read_header(buf)
        params = decode_payload(header[C.KEY_PAYLOAD], header[C.KEY_CODECS],
                                header[C.KEY_N_SPLATS])
        check_params(params)
        return header, params
    except FormatError as exc:
        raise exc.at(where) if where else exc


def decode_record(buf: bytes | memoryview, check: bool | None = None,
                  where: str | None = None) -> SplatSet:
    """Decode a splat record into a `SplatSet`.

    Raises `FormatError` (naming ``where`` when given) for anything SPEC.md forbids, non-finite
    parameters and l11 ≤ 0 or l22 ≤ 0 included (§ 2). The check always runs: ``check`` is
    deprecated (0.1's callers passed it; it goes in 0.3).
    """
    if check is not None:
        import warnings
        warnings.warn("decode_record(check=…) is deprecated: records are always checked",
                      DeprecationWarning, stacklevel=2)
    header, params = decode_params(buf, where)
    # read_header checked the sides, decode_payload the rows: no second check
    return SplatSet._checked(params, header[C.KEY_HEIGHT], header[C.KEY_WIDTH],
                             dict(header.get(C.KEY_FIT, {})))
