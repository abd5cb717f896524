import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from codec_harness import check_reference_twin
from gsformat import FormatError
from gsformat.codecs import Entropy, Lattice, LatticeRans
from gsformat.codecs.lattice import ycocg_r, ycocg_r_inverse
from strategies import valid_params

steps = st.tuples(st.sampled_from([2.0 ** -12, 2.0 ** -11, 1 / 3000, 0.01]),
                  st.sampled_from([0.01, 0.05, 0.2]), st.sampled_from([0.01, 0.05, 0.3]),
                  st.sampled_from([0.004, 0.022, 0.1]))


def rows(decoded):
    """Decoded values as a sorted list of rows (the codec reorders splats)."""
    arr = np.asarray(decoded).reshape(-1, 8).view(np.uint16)
    return sorted(map(tuple, arr.tolist()))


@given(params=valid_params(), step=steps)
@settings(max_examples=80, deadline=None)
def test_decodes_what_quantize_rows_gives(params, step):
    """Every decoded row is `quantize_rows` of an input row, which keeps the stated bound."""
    codec = Lattice(*step, level=3)
    decoded = codec.decode(codec.encode(params))
    quantized = codec.quantize_rows(params)
    assert rows(decoded) == rows(quantized)
    if len(params) == 0:
        return
    p, q = params.astype(np.float64), quantized.astype(np.float64)
    fp16 = 2.0 ** -11 * np.abs(q) + 2.0 ** -24  # the final rounding to FP16
    assert (np.abs(q[:, :2] - p[:, :2]) <= step[0] / 2 + fp16[:, :2]).all()
    for col in (2, 4):
        assert (np.abs(np.log(q[:, col]) - np.log(p[:, col])) <= step[1] / 2 + 2.0 ** -10).all()
    assert (np.abs(q[:, 5:] - p[:, 5:]) <= step[3] / 2 + fp16[:, 5:]).all()


@given(params=valid_params(), step=steps)
@settings(max_examples=60, deadline=None)
def test_fast_decode_matches_reference_twin(params, step):
    check_reference_twin(Lattice(*step, level=1), params)


@given(st.lists(st.tuples(st.integers(-2 ** 20, 2 ** 20), st.integers(-2 ** 20, 2 ** 20),
                          st.integers(-2 ** 20, 2 ** 20)), max_size=50))
def test_ycocg_r_is_lossless_on_integers(rgb):
    rgb = np.array(rgb, np.int64).reshape(-1, 3).T
    assert np.array_equal(ycocg_r_inverse(ycocg_r(rgb)), rgb)


def test_requantising_is_idempotent(fitted_splats):
    codec = Lattice()
    once = codec.quantize_rows(fitted_splats[0].params)
    assert np.array_equal(codec.quantize_rows(once).view(np.uint16), once.view(np.uint16))
    assert codec.encode(np.asarray(codec.decode(codec.encode(once)))) == codec.encode(once)


def test_smaller_than_entropy_codec_on_real_splats(fitted_splats):
    params = fitted_splats[0].params
    assert len(Lattice().encode(params)) < len(Entropy(12, 8, 8).encode(params))


def test_encoder_refuses_what_it_cannot_code():
    good = np.array([[0.5, 0.5, 0.01, 0.0, 0.01, 0.2, 0.3, 0.4]], np.float16)
    Lattice().encode(good)
    for col, value in ((0, np.inf), (2, 0.0), (4, -0.01)):
        bad = good.copy()
        bad[0, col] = value
        with pytest.raises(ValueError):
            Lattice().encode(bad)
    wide = np.repeat(good, 2, axis=0)
    wide[1, 5] = 60000.0  # colour codes beyond ±2^30 at this step
    with pytest.raises(ValueError, match="larger step"):
        Lattice(colour_step=2.0 ** -20).encode(wide)


def _set_u32(b: bytes, offset: int, value: int) -> bytes:
    return b[:offset] + int(value).to_bytes(4, "little") + b[offset + 4:]


@pytest.mark.parametrize("mutate", [
    lambda b: b[:30],                                   # truncated header
    lambda b: b[:60],                                   # truncated frame table
    lambda b: b[:-1],                                   # frames shorter than the table says
    lambda b: _set_u32(b, 0, 2 ** 31),                  # splat count over the limit
    lambda b: _set_u32(b, 0, 7),                        # frames decode to another size
    lambda b: _set_u32(b, 4, 0),                        # key width 0
    lambda b: b[:40] + bytes([5]) + b[41:],             # 5 planes of key gaps
    lambda b: b[:42] + bytes([0]) + b[43:],             # no plane for ln l11
    lambda b: b[:41] + bytes([1]) + b[42:],             # a plane for slot 1
    lambda b: b[:48] + b"\xff" * 4 + b[52:],            # frame size beyond the buffer
    lambda b: b[:len(b) // 2] + bytes(len(b) - len(b) // 2),  # zeroed frames
])
def test_corrupt_input_is_a_format_error(fitted_splats, mutate):
    encoded = Lattice().encode(fitted_splats[0].params)
    with pytest.raises(FormatError):
        Lattice().decode(mutate(encoded))
    with pytest.raises(FormatError):
        Lattice()._decode_reference(mutate(encoded))


def test_empty_record_with_trailing_bytes_is_refused():
    with pytest.raises(FormatError):
        Lattice().decode(bytes(48) + b"x")


@pytest.mark.parametrize("codec", [Lattice(), LatticeRans()], ids=lambda c: c.codec_id)
@pytest.mark.parametrize("col, value, other", [(2, 65504.0, None), (4, 65504.0, None),
                                               (3, 65504.0, (4, 0.98))])
def test_encoder_refuses_codes_that_decode_beyond_fp16(codec, col, value, other):
    """Issue 25, item 15: l = 65,504 was written as exp(222 · 0.05) ≈ 66,171, which decodes to
    inf (a record every reader rejects); l21 likewise through a rounded-up l22."""
    params = np.array([[0.5, 0.5, 0.01, 0.0, 0.01, 0.2, 0.3, 0.4]] * 2, np.float16)
    params[1, col] = value
    if other:
        params[1, other[0]] = other[1]
    with pytest.raises(ValueError, match=r"splat 1's l\d\d = 65504.0 would decode beyond FP16"):
        codec.encode(params)


@given(params=valid_params(max_splats=40), big=st.floats(57344, 65504, width=16),
       col=st.sampled_from([2, 3, 4, 5]), step=steps)
@settings(max_examples=100, deadline=None)
def test_what_the_encoder_writes_decodes_to_finite_fp16(params, big, col, step):
    if len(params) == 0:
        return
    params = params.copy()
    params[0, col] = big
    codec = Lattice(*step, level=1)
    try:
        payload = codec.encode(params)
    except ValueError:  # refused, naming the value: never a record readers reject
        return
    decoded = np.asarray(codec.decode(payload))
    assert np.isfinite(decoded).all()
