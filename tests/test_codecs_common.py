"""The suite every codec id passes (numcodecs' tests/common.py pattern): round trip, config,
repr, golden fixtures, decoded size, fuzzed payloads, fast decoder against its reference twin,
legacy warnings. Codec-specific properties (error bounds, layouts) live in test_codecs_<id>.py."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from codec_harness import (buffer_kinds, check_backwards_compatibility, check_config,
                           check_repr, write_fixture_once)
from gsformat import FormatError
from gsformat.codecs import Entropy, Lattice, LatticeRans, Planar, Quantize
from gsformat.core.errors import LegacyCodecWarning
from strategies import valid_params

# id → (a codec with non-default parameters, constructor arguments it must refuse, lossless,
#       the golden fixtures: name → codec)
CODECS = {
    "gsformat.planar": (Planar(level=5), [{"level": 0}, {"level": 23}, {"level": 2.5}], True,
                        {"astronaut64-256": Planar(level=9)}),
    "gsformat.lattice": (Lattice(1 / 1024, 0.04, 0.06, 0.03, level=5),
                         [{"position_step": 0}, {"colour_step": math.nan}, {"level": 23},
                          {"scale_step": 2.0}], False,
                         {"astronaut64-256-default": Lattice(),
                          "astronaut64-256-fine": Lattice(2.0 ** -12, 0.02, 0.02, 0.01)}),
    "gsformat.lattice-rans": (LatticeRans(1 / 1024, 0.04, 0.06, 0.03),
                              [{"position_step": -1.0}, {"shear_step": math.inf}], False,
                              {"astronaut64-256-default": LatticeRans(),
                               "astronaut64-256-fine": LatticeRans(2.0 ** -12, 0.02, 0.02,
                                                                   0.01)}),
    "gsformat.quantize": (Quantize(14, 9, 7), [{"position_bits": 17}, {"colour_bits": 0}], False,
                          {"astronaut64-256-12-10-8": Quantize(12, 10, 8)}),
    "gsformat.entropy": (Entropy(13, 9, 7, level=5), [{"level": 0}, {"covariance_bits": 17}],
                         False, {"astronaut64-256-12-10-8": Entropy(12, 10, 8)}),
}
LEGACY = {"gsformat.quantize", "gsformat.entropy"}
IDS = sorted(CODECS)


def encode(codec, params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LegacyCodecWarning)
        return codec.encode(params)


@pytest.mark.parametrize("codec_id", IDS)
def test_round_trip_on_real_splats(codec_id, fitted_splats):
    codec, _, lossless, _ = CODECS[codec_id]
    params = fitted_splats[0].params
    payload = encode(codec, params)
    decoded = np.asarray(codec.decode(payload)).reshape(-1, 8)
    assert decoded.shape == params.shape and np.isfinite(decoded).all()
    if lossless:
        assert np.array_equal(decoded.view(np.uint16), params.view(np.uint16))
    else:  # close to the input (each codec's test file checks its stated bound)
        assert np.abs(np.sort(decoded[:, 5:], 0) - np.sort(params[:, 5:], 0)).max() < 0.1
    out = np.empty(params.size, np.float16)
    codec.decode(payload, out=out)
    assert np.array_equal(out.view(np.uint16), decoded.reshape(-1).view(np.uint16))
    for kind in buffer_kinds(payload):  # bytes, bytearray, memoryview, unaligned view
        assert np.array_equal(np.asarray(codec.decode(kind)).view(np.uint16),
                              decoded.reshape(-1).view(np.uint16))
    assert codec.decoded_nbytes(payload) == params.nbytes


@pytest.mark.parametrize("codec_id", IDS)
@given(params=valid_params(max_splats=120))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip_any_valid_splats(codec_id, params):
    codec, _, lossless, _ = CODECS[codec_id]
    try:
        payload = encode(codec, params)
    except ValueError:  # an encoder limit (codes beyond its range): stated, never silent
        return
    decoded = np.asarray(codec.decode(payload)).reshape(-1, 8)
    assert len(decoded) == len(params)
    if lossless:
        assert np.array_equal(decoded.view(np.uint16), params.view(np.uint16))
    else:  # the stated bounds are each codec's own test; here: valid splats come back valid
        assert np.isfinite(decoded).all() and (decoded[:, [2, 4]] > 0).all()
    if hasattr(codec, "_decode_reference"):  # the fast decoder and its obvious twin
        assert np.array_equal(np.asarray(codec._decode_reference(payload)).view(np.uint16),
                              decoded.reshape(-1).view(np.uint16))


@pytest.mark.parametrize("codec_id", IDS)
def test_empty_record(codec_id):
    codec = CODECS[codec_id][0]
    payload = encode(codec, np.empty((0, 8), np.float16))
    assert np.asarray(codec.decode(payload)).size == 0 and codec.decoded_nbytes(payload) == 0


@pytest.mark.parametrize("codec_id", IDS)
def test_config_and_repr(codec_id):
    codec, refused, _, _ = CODECS[codec_id]
    assert codec.codec_id == codec_id
    check_config(codec)  # JSON only, numcodecs.get_codec round trip
    check_repr(codec)
    config = codec.get_config()
    assert set(type(codec).DECODE_PARAMS) <= set(config)  # what readers need is stored
    for kwargs in refused:
        with pytest.raises(ValueError):
            type(codec)(**kwargs)


@pytest.mark.parametrize("codec_id", IDS)
def test_golden_fixtures(codec_id, fitted_splats):
    """Fixtures are written once and never regenerated; every one still decodes to its bits."""
    fixtures = CODECS[codec_id][3]
    for name, codec in fixtures.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LegacyCodecWarning)
            write_fixture_once(codec, name, fitted_splats[0].params)
    assert check_backwards_compatibility(codec_id) >= len(fixtures)


@pytest.mark.parametrize("codec_id", IDS)
@given(data=st.data())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
def test_fuzzed_payloads_decode_or_raise_format_error(codec_id, fitted_splats, data):
    """Edited, cut and extended payloads: a FormatError, or exactly the size the header states;
    never another exception."""
    codec = CODECS[codec_id][0]
    payload = bytearray(encode(codec, fitted_splats[0].params[:64]))
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["byte", "byte", "cut", "grow"]))
        if kind == "byte" and payload:
            payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            payload = payload[:data.draw(st.integers(0, len(payload)))]
        else:
            payload += data.draw(st.binary(max_size=8))
    try:
        claimed = codec.decoded_nbytes(bytes(payload))
        with np.errstate(all="ignore"):
            decoded = np.asarray(codec.decode(bytes(payload)))
    except FormatError:
        return
    assert decoded.dtype == np.float16 and decoded.nbytes == claimed


@pytest.mark.parametrize("codec_id", IDS)
def test_legacy_codecs_warn_on_encode_only(codec_id, fitted_splats):
    codec = CODECS[codec_id][0]
    params = fitted_splats[0].params[:16]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        payload = codec.encode(params)
        codec.decode(payload)
    legacy = [w for w in caught if issubclass(w.category, LegacyCodecWarning)]
    assert len(legacy) == (1 if codec_id in LEGACY else 0)
    if legacy:
        assert codec_id in str(legacy[0].message) and "lattice-rans" in str(legacy[0].message)
