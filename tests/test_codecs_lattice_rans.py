"""gsformat.lattice-rans: gsformat.lattice's values through a rANS entropy stage (SPEC.md § 5.6).

The C decoder (`_lattice_native`, coder 1) is checked bit for bit against the NumPy twin
(`rans.decode` + the lattice arithmetic) and the spec reader's symbol-by-symbol decoder; it must
decline wherever the NumPy decoder raises."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from codec_harness import buffer_kinds, check_native_no_laxer
from gsformat import FormatError, SplatSet, encode_record
from gsformat.codecs import Lattice, LatticeRans, lattice, rans
from spec_reader import spec_decode
from strategies import valid_params
from test_codecs_lattice import steps

NATIVE = lattice._NATIVE
needs_native = pytest.mark.skipif(NATIVE is None, reason="C decoder not built")


def bits(array):
    return np.asarray(array).view(np.uint16)


@st.composite
def byte_planes(draw):
    """1–6 planes of N bytes: constant, skewed, uniform or sparse, as lattice planes are."""
    n = draw(st.integers(1, 300))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    planes = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["constant", "skewed", "uniform", "sparse"]))
        if kind == "constant":
            plane = np.full(n, rng.integers(0, 256))
        elif kind == "skewed":
            plane = np.minimum(rng.geometric(rng.uniform(0.05, 0.9), n) - 1, 255)
        elif kind == "uniform":
            plane = rng.integers(0, 256, n)
        else:
            plane = rng.choice(rng.integers(0, 256, 5), n)
        planes.append(plane.astype(np.uint8))
    return planes


@given(planes=byte_planes())
@settings(max_examples=120, deadline=None)
def test_rans_round_trip(planes):
    encoded = rans.encode(planes)
    assert np.array_equal(rans.decode(encoded, planes[0].size, len(planes)), np.stack(planes))


@given(params=valid_params(max_splats=120), step=steps)
@settings(max_examples=60, deadline=None)
def test_same_values_as_gsformat_lattice(params, step):
    """Same lattices, same order: the decoded bits equal gsformat.lattice's, on every decoder."""
    expected = bits(Lattice(*step, level=1)._decode_reference(Lattice(*step, level=1).encode(
        params)))
    codec = LatticeRans(*step)
    payload = codec.encode(params)
    assert np.array_equal(bits(codec.decode(payload)), expected)
    assert np.array_equal(bits(codec._decode_numpy(payload)), expected)
    assert np.array_equal(bits(codec._decode_reference(payload)), expected)
    if NATIVE is not None and len(params) and max(payload[42:48]) <= 2:
        assert np.array_equal(bits(codec._decode_native(payload)), expected)


def test_spec_reader_agrees_on_real_splats(fitted_splats):
    """The spec's own words, decoded one symbol at a time, give the same record."""
    splats = SplatSet(fitted_splats[0].params[:150], 64, 64)
    record = encode_record(splats, [LatticeRans()])
    params, _, _ = spec_decode(record)
    codec = LatticeRans()
    assert np.array_equal(bits(params).reshape(-1),
                          bits(codec.decode(codec.encode(splats.params))))


def test_smaller_than_gsformat_lattice_on_real_splats(fitted_splats):
    for splats in fitted_splats:
        assert len(LatticeRans().encode(splats.params)) < len(Lattice().encode(splats.params))


@needs_native
def test_native_both_simd_settings_and_buffer_kinds(fitted_splats):
    codec = LatticeRans(2.0 ** -12, 0.03, 0.03, 0.015)
    payload = codec.encode(fitted_splats[0].params)
    reference = bits(codec._decode_numpy(payload))
    for buf in buffer_kinds(payload):
        assert np.array_equal(bits(codec._decode_native(buf)), reference)
    previous = NATIVE.use_simd(False)  # the scalar rANS loop, portable FP16
    try:
        assert np.array_equal(bits(codec._decode_native(payload)), reference)
        odd = codec.encode(fitted_splats[0].params[:45])  # planes not a multiple of 32 lanes
        assert np.array_equal(bits(codec._decode_native(odd)), bits(codec._decode_numpy(odd)))
    finally:
        NATIVE.use_simd(previous)
    odd = codec.encode(fitted_splats[0].params[:45])
    assert np.array_equal(bits(codec._decode_native(odd)), bits(codec._decode_numpy(odd)))


@needs_native
@given(data=st.data())
@settings(max_examples=250, deadline=None)
def test_native_never_accepts_what_python_refuses(fitted_splats, data):
    """Random byte edits, truncations and extensions: where the NumPy decoder raises, the C one
    declines; where both decode, the bits agree."""
    check_native_no_laxer(LatticeRans(), LatticeRans().encode(fitted_splats[1].params[:70]),
                          data, edits=3)


def _payload(fitted_splats):
    return LatticeRans().encode(fitted_splats[0].params[:100])


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p[:60], "truncated"),
    (lambda p: p[:48] + bytes([0x40]) + p[49:], "bad mode"),
    (lambda p: p[:-1], "do not fit|do not end"),
    (lambda p: p[:-2], "do not end|ends early"),
    (lambda p: p + b"\0\0", "do not end"),
])
def test_malformed_payloads_name_the_fault(fitted_splats, mutate, message):
    with pytest.raises(FormatError, match=message):
        LatticeRans()._decode_numpy(mutate(_payload(fitted_splats)))
    if NATIVE is not None:
        assert LatticeRans()._decode_native(mutate(_payload(fitted_splats))) is None


def test_a_lane_state_below_its_range_is_refused(fitted_splats):
    payload = bytearray(_payload(fitted_splats))
    tables, pos = rans._parse_tables(np.frombuffer(bytes(payload[48:]), np.uint8), 100,
                                     sum(payload[40:48]))
    payload[48 + pos:48 + pos + 4] = (5).to_bytes(4, "little")
    with pytest.raises(FormatError, match="below 2\\^16"):
        LatticeRans().decode(bytes(payload))


def test_empty_record_and_raw_planes():
    codec = LatticeRans()
    encoded = codec.encode(np.empty((0, 8), np.float16))
    assert len(encoded) == 48 and codec.decode(encoded).size == 0
    noise = np.random.default_rng(0).integers(0, 256, 200).astype(np.uint8)
    encoded = rans.encode([noise])  # incompressible: stored raw
    assert encoded[0] == rans.RAW_MODE
    assert np.array_equal(rans.decode(encoded, 200, 1)[0], noise)
