import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gsformat import FormatError
from gsformat.codecs import Quantize
from gsformat.codecs.legacy.quantize import LOG_COLS, steps_of
from strategies import valid_params

FP16_HALF_ULP = 2.0 ** -11  # relative


def check_bound(codec, params):
    """The docstring's bound: step/2 in the coding domain, plus FP16 rounding of the result."""
    encoded = codec.encode(params)
    decoded = np.asarray(codec.decode(encoded)).reshape(params.shape).astype(np.float64)
    if not len(params):
        return
    domain = params.astype(np.float64)
    domain[:, LOG_COLS] = np.log(domain[:, LOG_COLS])
    step = steps_of(codec.bits, domain.min(0), domain.max(0))
    for col in range(8):
        if col in LOG_COLS:
            err = np.abs(np.log(decoded[:, col]) - domain[:, col])
            assert (err <= step[col] / 2 * (1 + 1e-9) + 2 * FP16_HALF_ULP).all()
        else:
            err = np.abs(decoded[:, col] - domain[:, col])
            bound = step[col] / 2 * (1 + 1e-9) + np.abs(decoded[:, col]) * FP16_HALF_ULP + 2**-25
            assert (err <= bound).all(), (col, err.max(), step[col])


@given(params=valid_params(), bits=st.tuples(st.integers(1, 16), st.integers(1, 16),
                                            st.integers(1, 16)))
@settings(max_examples=80, deadline=None)
def test_error_within_stated_bound(params, bits):
    check_bound(Quantize(*bits), params)


def test_size_and_error_on_real_splats(fitted_splats):
    params = fitted_splats[0].params
    codec = Quantize(12, 10, 8)
    encoded = codec.encode(params)
    # 12·2 + 10·3 + 8·3 = 78 bits a splat plus a 132-byte header
    assert len(encoded) == 132 + sum((len(params) * b + 7) // 8 for b in codec.bits)
    check_bound(codec, params)


def test_refuses_invalid_splats():
    params = np.ones((3, 8), np.float16)
    params[1, 2] = 0
    with pytest.raises(ValueError, match="l11 > 0"):
        Quantize().encode(params)
    params[1, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        Quantize().encode(params)


@pytest.mark.parametrize("mutate", [
    lambda b: b[:10],
    lambda b: (2**31).to_bytes(4, "little") + b[4:],
    lambda b: b + b"\x00",
    lambda b: b[:4] + np.full(8, np.nan).tobytes() + b[68:],
])
def test_corrupt_input_is_a_format_error(fitted_splats, mutate):
    encoded = Quantize().encode(fitted_splats[0].params)
    with pytest.raises(FormatError):
        Quantize().decode(mutate(encoded))


@given(bits=st.integers(1, 16), n=st.integers(0, 300), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=100, deadline=None)
def test_fast_unpack_matches_reference(bits, n, seed):
    from gsformat.codecs.legacy.quantize import _unpack_codes_reference, pack_codes, unpack_codes
    codes = np.random.default_rng(seed).integers(0, 1 << bits, n).astype(np.uint32)
    data = np.frombuffer(pack_codes(codes, bits), np.uint8)
    np.testing.assert_array_equal(unpack_codes(data, n, bits), codes)
    np.testing.assert_array_equal(_unpack_codes_reference(data, n, bits), codes)


def test_grouped_unpack_matches_per_stream():
    from gsformat.codecs.legacy.quantize import pack_codes, unpack_streams
    rng = np.random.default_rng(1)
    for bits in (1, 5, 8, 11, 16):
        codes = rng.integers(0, 1 << bits, (3, 77)).astype(np.uint32)
        streams = [pack_codes(c, bits) for c in codes]
        data = np.frombuffer(b"xx" + b"".join(streams), np.uint8)
        starts = 2 + np.arange(3) * len(streams[0])
        np.testing.assert_array_equal(unpack_streams(data, starts, 77, bits), codes)
