"""One round-trip harness for every gsformat codec (numcodecs' tests/common.py pattern)."""
from __future__ import annotations

import json
import os

import numcodecs
import numpy as np

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "codecs")


def check_encode_decode(codec, params: np.ndarray, atol=None) -> bytes:
    """Encode, decode (also into ``out=``); exact unless per-column ``atol`` is given."""
    encoded = codec.encode(params)
    decoded = np.asarray(codec.decode(encoded)).reshape(params.shape)
    out = np.empty(params.size, np.float16)
    codec.decode(encoded, out=out)
    assert np.array_equal(out.view(np.uint16), decoded.reshape(-1).view(np.uint16))
    if atol is None:
        assert np.array_equal(decoded.view(np.uint16), params.view(np.uint16))
    else:
        err = np.abs(decoded.astype(np.float64) - params.astype(np.float64))
        assert (err <= atol).all(), f"max error {err.max(axis=0)} over bound {atol}"
    return encoded


def check_reference_twin(codec, params: np.ndarray) -> None:
    """The fast decoder and its ``_decode_reference`` twin give the same bits."""
    encoded = codec.encode(params)
    assert np.array_equal(np.asarray(codec.decode(encoded)).view(np.uint16),
                          np.asarray(codec._decode_reference(encoded)).view(np.uint16))


def check_config(codec) -> None:
    config = codec.get_config()
    assert json.loads(json.dumps(config)) == config  # JSON-only
    assert config["id"] == codec.codec_id and codec.codec_id.startswith("gsformat.")
    assert numcodecs.get_codec(dict(config)) == codec


def check_repr(codec) -> None:
    assert eval(repr(codec), {type(codec).__name__: type(codec)}) == codec


def check_backwards_compatibility(codec_id: str) -> int:
    """Decode every golden fixture under fixtures/codecs/<codec_id>/; never rewrite them."""
    folder = os.path.join(FIXTURES, codec_id)
    names = sorted(n[:-len(".config.json")] for n in os.listdir(folder)
                   if n.endswith(".config.json"))
    assert names, f"no fixtures for {codec_id}"
    for name in names:
        with open(os.path.join(folder, name + ".config.json")) as f:
            codec = numcodecs.get_codec(json.load(f))
        with open(os.path.join(folder, name + ".enc"), "rb") as f:
            encoded = f.read()
        expected = np.load(os.path.join(folder, name + ".decoded.npy"), allow_pickle=False)
        decoded = np.asarray(codec.decode(encoded)).reshape(expected.shape)
        assert np.array_equal(decoded.view(np.uint16), expected.view(np.uint16)), name
    return len(names)


def write_fixture_once(codec, name: str, params: np.ndarray) -> None:
    """Create a fixture if absent. Existing fixtures are never regenerated."""
    folder = os.path.join(FIXTURES, codec.codec_id)
    if os.path.exists(os.path.join(folder, name + ".enc")):
        return
    os.makedirs(folder, exist_ok=True)
    encoded = codec.encode(params)
    with open(os.path.join(folder, name + ".config.json"), "w") as f:
        json.dump(codec.get_config(), f)
    with open(os.path.join(folder, name + ".enc"), "wb") as f:
        f.write(encoded)
    decoded = np.asarray(codec.decode(encoded)).reshape(params.shape)
    np.save(os.path.join(folder, name + ".decoded.npy"), decoded)


def buffer_kinds(payload: bytes) -> tuple:
    """The same payload as bytes, bytearray, memoryview and an unaligned NumPy view."""
    return (payload, bytearray(payload), memoryview(payload),
            np.frombuffer(b"\0" + payload, np.uint8)[1:])


def check_native_no_laxer(codec, payload: bytes, data, edits: int = 4) -> None:
    """Random byte edits, truncations and extensions of ``payload`` (drawn from hypothesis's
    ``data``): where the codec's checked NumPy decoder raises, its C decoder declines; where
    both decode, the bits agree."""
    from hypothesis import strategies as st
    from gsformat import FormatError
    payload = bytearray(payload)
    for _ in range(data.draw(st.integers(1, edits))):
        kind = data.draw(st.sampled_from(["byte", "byte", "cut", "grow"]))
        if kind == "byte" and payload:
            at = data.draw(st.integers(0, len(payload) - 1))
            payload[at] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            payload = payload[:data.draw(st.integers(0, len(payload)))]
        else:
            payload += bytes(data.draw(st.binary(max_size=8)))
    payload = bytes(payload)
    fast = codec._decode_native(payload)
    try:
        with np.errstate(all="ignore"):
            slow = codec._decode_numpy(payload)
    except FormatError:
        assert fast is None
        return
    if fast is not None:
        assert np.array_equal(np.asarray(fast).view(np.uint16), np.asarray(slow).view(np.uint16))
