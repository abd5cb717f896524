"""numcodecs' own contract (``numcodecs/tests/common.py``, shipped in the numcodecs wheel) run
against every gsformat codec: memory order (Zarr ``order='F'``), object buffers, configs with
parameters a codec does not know (issue 25, items 12–14)."""
from __future__ import annotations

import warnings

import numcodecs
import numpy as np
import pytest
from numcodecs.compat import ensure_ndarray
from numcodecs.tests.common import (check_config, check_encode_decode,
                                    check_err_decode_object_buffer,
                                    check_err_encode_object_buffer)

from gsformat.codecs import Entropy, Lattice, LatticeRans, Planar, Quantize
from gsformat.core.errors import LegacyCodecWarning

LOSSY = {"gsformat.lattice": Lattice(), "gsformat.lattice-rans": LatticeRans(),
         "gsformat.quantize": Quantize(), "gsformat.entropy": Entropy(level=3)}
ALL = {"gsformat.planar": Planar(), **LOSSY}


@pytest.fixture(autouse=True)
def _no_legacy_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LegacyCodecWarning)
        yield


def splats(n: int = 1024, seed: int = 0) -> np.ndarray:
    """Valid splat rows ``[n, 8]`` float16, C order."""
    rng = np.random.default_rng(seed)
    params = rng.uniform(-1, 1, (n, 8))
    params[:, :2] = rng.random((n, 2))
    params[:, [2, 4]] = rng.uniform(0.005, 0.1, (n, 2))
    return params.astype(np.float16)


def fixed_point(codec, params: np.ndarray) -> np.ndarray:
    """Splats a lossy codec gives back unchanged (on its grid, in its order): decode(encode)
    twice, no shear (l21 is decoded relative to a rounded l22: not always idempotent)."""
    params = params.copy()
    params[:, 3] = 0
    for _ in range(2):
        params = np.asarray(codec.decode(codec.encode(params))).reshape(-1, 8)
    return np.ascontiguousarray(params)


# ---- item 12: memory order -----------------------------------------------------------------
@pytest.mark.parametrize("order", ["C", "F"])
def test_planar_passes_numcodecs_check_encode_decode(order):
    params = splats()
    check_encode_decode(np.asarray(params, order=order), Planar(level=3))
    check_encode_decode(np.asarray(params.reshape(2, 512, 8), order=order), Planar(level=3))
    bits = np.random.default_rng(1).integers(0, 1 << 16, (64, 8), dtype=np.uint16)
    check_encode_decode(np.asarray(bits.view(np.float16), order=order), Planar(level=3))


def test_zarr_v2_fortran_chunks_read_back_exactly():
    """Zarr v2 with ``order='F'``: a chunk is encoded as the F-ordered array it is, and read back
    as ``ensure_ndarray(decode(cdata)).view(dtype).reshape(chunks, order='F')`` (zarr v2's
    ``Array._decode_chunk``); 8,182 of 8,192 values came back wrong before issue 25."""
    chunk = np.asfortranarray(splats())
    codec = numcodecs.get_codec(Planar().get_config())
    read = ensure_ndarray(codec.decode(codec.encode(chunk))).view(chunk.dtype)
    read = read.reshape(chunk.shape, order="F")
    assert np.array_equal(read.view(np.uint16), chunk.view(np.uint16))
    out = np.empty_like(chunk)  # zarr decodes into the chunk's own buffer when it can
    codec.decode(codec.encode(chunk), out=out)
    assert np.array_equal(out.view(np.uint16), chunk.view(np.uint16))


@pytest.mark.parametrize("codec_id", sorted(LOSSY))
def test_lossy_codecs_pass_check_encode_decode_on_their_grid(codec_id):
    codec = LOSSY[codec_id]
    params = fixed_point(codec, splats(256))
    exact = codec_id.startswith("gsformat.lattice")
    check_encode_decode(params, codec, precision=None if exact else 2)


@pytest.mark.parametrize("codec_id", sorted(LOSSY))
def test_lossy_codecs_refuse_what_they_would_misread(codec_id):
    codec = LOSSY[codec_id]
    params = fixed_point(codec, splats(256))
    with pytest.raises(ValueError, match="Fortran-ordered"):
        codec.encode(np.asfortranarray(params))
    with pytest.raises(ValueError, match=r"expected splat rows \[N, 8\]"):
        codec.encode(params.reshape(-1, 4))
    with pytest.raises(ValueError, match="expected float16"):
        codec.encode(params.astype(np.float32))
    with pytest.raises(ValueError, match="Fortran-ordered"):  # nor decode into F-ordered rows
        codec.decode(codec.encode(params), out=np.empty((256, 8), np.float16, order="F"))
    # what they accept: rows as float16 of either byte order, their bytes, a strided view
    assert codec.encode(params.astype(">f2")) == codec.encode(params)
    wide = np.zeros((256, 16), np.float16)
    wide[:, ::2] = params
    assert codec.encode(wide[:, ::2]) == codec.encode(params)
    assert codec.encode(params.tobytes()) == codec.encode(params)


# ---- item 13: object buffers ---------------------------------------------------------------
@pytest.mark.parametrize("codec_id", sorted(ALL))
def test_object_arrays_are_a_type_error(codec_id):
    codec = ALL[codec_id]
    check_err_encode_object_buffer(codec)
    payload = codec.encode(fixed_point(codec, splats(10)) if codec_id in LOSSY else splats(10))
    with pytest.raises(TypeError):
        codec.decode(payload, out=np.empty(80, dtype=object))


def test_planar_decoding_into_an_object_array_is_numcodecs_type_error():
    check_err_decode_object_buffer(Planar())  # numcodecs' own check: np.arange(10), 80 bytes


# ---- item 14: numcodecs.get_codec ignores parameters a codec does not know ----------------
@pytest.mark.parametrize("codec_id", sorted(ALL))
def test_get_codec_ignores_unknown_parameters(codec_id):
    codec = ALL[codec_id]
    check_config(codec)  # numcodecs' JSON round trip
    config = dict(codec.get_config(), future_param=[1, {"x": 2}], another=None)
    assert numcodecs.get_codec(config) == codec  # SPEC.md § 5: readers MUST ignore them
    payload = codec.encode(splats(32) if codec_id == "gsformat.planar"
                           else fixed_point(codec, splats(32)))
    assert np.array_equal(np.asarray(numcodecs.get_codec(config).decode(payload)).view(np.uint16),
                          np.asarray(codec.decode(payload)).view(np.uint16))
    with pytest.raises(TypeError):  # the constructor stays strict: a writer's typo is an error
        type(codec)(future_param=1)
