"""The C decoder of gsformat.lattice (`_lattice_native`) against its NumPy and reference twins.

It must give the same bits where it decodes, and decline (return False) wherever the checked
Python decoder raises: it is never less strict."""
import ctypes.util
import shutil
import sysconfig

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gsformat.codecs import Lattice
from gsformat.codecs import lattice
from gsformat.core import constants as C
from strategies import valid_params
from codec_harness import buffer_kinds, check_native_no_laxer
from test_codecs_lattice import steps

NATIVE = lattice._NATIVE


def test_native_decoder_is_built_where_it_can_be():
    """`make` builds it wherever a C compiler and libzstd exist (so CI runs the tests below)."""
    can_build = (shutil.which(sysconfig.get_config_var("CC").split()[0] or "cc")
                 and ctypes.util.find_library("zstd"))
    if not can_build:
        pytest.skip("no C compiler or libzstd here: the NumPy decoder is used")
    assert NATIVE is not None, "gsformat.codecs._lattice_native was not built (see setup.py)"


needs_native = pytest.mark.skipif(NATIVE is None, reason="C decoder not built")


def bits(array):
    return np.asarray(array).view(np.uint16)


def native(codec, payload):
    return codec._decode_native(payload)


@needs_native
@given(params=valid_params(max_splats=300), step=steps)
@settings(max_examples=80, deadline=None)
def test_native_matches_numpy_and_reference(params, step):
    codec = Lattice(*step, level=1)
    payload = codec.encode(params)
    reference = bits(codec._decode_reference(payload))
    assert np.array_equal(bits(codec._decode_numpy(payload)), reference)
    fast = native(codec, payload)
    if len(params) and max(payload[42:48]) <= 2:  # else it may decline (its int32 limit)
        assert fast is not None
    if fast is not None:
        assert np.array_equal(bits(fast), reference)
    assert np.array_equal(bits(codec.decode(payload)), reference)


@needs_native
def test_native_on_real_splats_and_every_buffer_kind(fitted_splats):
    codec = Lattice(2.0 ** -12, 0.03, 0.03, 0.015)
    payload = codec.encode(fitted_splats[0].params)
    reference = bits(codec._decode_reference(payload))
    for buf in buffer_kinds(payload):
        assert np.array_equal(bits(native(codec, buf)), reference)
    out = np.empty(reference.size, np.float16)
    assert codec.decode(payload, out=out) is out and np.array_equal(bits(out), reference)
    previous = NATIVE.use_simd(False)  # the portable FP16 rounding and SSE2 transpose
    try:
        assert np.array_equal(bits(native(codec, payload)), reference)
        odd = codec.encode(fitted_splats[0].params[:13])  # a tail beyond the 8-splat blocks
        assert np.array_equal(bits(native(codec, odd)), bits(codec._decode_reference(odd)))
    finally:
        NATIVE.use_simd(previous)
    odd = codec.encode(fitted_splats[0].params[:13])
    assert np.array_equal(bits(native(codec, odd)), bits(codec._decode_reference(odd)))
    strided = np.frombuffer(payload + payload, np.uint8).reshape(2, -1)[:, :len(payload)][0]
    assert np.array_equal(bits(codec.decode(strided)), reference)


@needs_native
def test_native_declines_what_it_does_not_decode(fitted_splats):
    """Empty records, slots beyond its int32 limit and FP16 overflow go to the NumPy decoder,
    which gives the same values the layout defines."""
    empty = Lattice().encode(np.zeros((0, 8), np.float16))
    assert native(Lattice(), empty) is None
    # colour codes spanning three planes (a fine step over a wide range)
    wide = fitted_splats[0].params.copy()
    wide[:3, 5] = [-60, 0, 60]
    codec = Lattice(colour_step=2.0 ** -12)
    payload = codec.encode(wide)
    assert payload[45] == 3 and native(codec, payload) is None
    assert np.array_equal(bits(codec.decode(payload)), bits(codec._decode_reference(payload)))
    # a scale that overflows FP16 when the header is edited: inf through the NumPy path
    payload = bytearray(Lattice().encode(fitted_splats[0].params))
    payload[16:20] = (200000).to_bytes(4, "little", signed=True)  # code_min of ln l11
    with np.errstate(over="ignore"):
        assert native(Lattice(), bytes(payload)) is None
        decoded = Lattice().decode(bytes(payload))
    assert np.isinf(np.asarray(decoded, np.float32)).any()


@needs_native
@given(data=st.data())
@settings(max_examples=200, deadline=None)
def test_native_never_accepts_what_python_refuses(fitted_splats, data):
    """Random byte edits, truncations and extensions of a real payload: where the checked
    decoder raises, the C one declines; where both decode, the bits agree."""
    check_native_no_laxer(Lattice(), Lattice().encode(fitted_splats[1].params[:40]), data)


@needs_native
def test_native_refuses_oversized_claims_before_allocating():
    header = (2 ** 20 + 1).to_bytes(4, "little") + bytes(44)
    out = np.empty(8, np.float16)
    assert not NATIVE.decode(header, out, 1.0, 1.0, 1.0, 1.0, C.MAX_SPLATS)
    with pytest.raises(TypeError):
        NATIVE.decode(header, b"read-only", 1.0, 1.0, 1.0, 1.0, C.MAX_SPLATS)


@needs_native
def test_float16_conversion_matches_numpy():
    """The portable C conversion rounds like NumPy (F16C is checked through the decoder above):
    a sweep of float32 bit patterns covering FP16's normals, subnormals, ties, the overflow edge
    and beyond."""
    rng = np.random.default_rng(1)
    patterns = np.concatenate([
        np.arange(0x33000000 - 4096, 0x477ff000 + 4096, 4099, dtype=np.uint64),
        rng.integers(0, 2 ** 32, 200_000, dtype=np.uint64),
        np.array([0x38800000, 0x387fe000, 0x33800000, 0x33000000, 0x33000001, 0x477fefff,
                  0x477ff000, 0x7f800000, 0xff800000], np.uint64)]).astype(np.uint32)
    values = patterns.view(np.float32)
    values = values[~np.isnan(values)]
    out = np.empty(values.size, np.uint16)
    NATIVE.f32_to_f16(values, out)
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16).view(np.uint16)
    assert np.array_equal(out, expected)
