import msgpack
import numpy as np
import pytest
from hypothesis import given, settings

from gsformat import FormatError, SplatSet, UnknownCodecError, decode_record, encode_record
from gsformat.core import constants as C
from spec_reader import spec_decode
from strategies import valid_params

PIPELINES = [[], [{"id": "zstd", "level": 5}], [{"id": "gsformat.planar", "level": 9}],
             [{"id": "gsformat.quantize", "position_bits": 12, "covariance_bits": 10,
               "colour_bits": 8}],
             [{"id": "gsformat.quantize"}, {"id": "zstd", "level": 3}],
             [{"id": "gsformat.entropy", "position_bits": 11, "covariance_bits": 9,
               "colour_bits": 7, "level": 3}]]


@given(params=valid_params(max_splats=64))
@settings(max_examples=40, deadline=None)
def test_round_trip_any_valid_splats(params):
    splats = SplatSet(params, 31, 17, {"psnr": 27.5, "iters": 10})
    for pipeline in PIPELINES[:3]:  # lossless pipelines: bit-exact
        decoded = decode_record(encode_record(splats, pipeline))
        assert decoded == splats and decoded.meta == {"psnr": 27.5, "iters": 10}


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_independent_spec_reader_agrees(fitted_splats, pipeline):
    splats = fitted_splats[0]
    record = encode_record(splats, pipeline)
    params, height, width = spec_decode(record)
    assert (height, width) == splats.canvas_hw
    assert np.array_equal(params.view(np.uint16), decode_record(record).params.view(np.uint16))


def test_raw_record_size_is_16_bytes_a_splat_plus_small_envelope():
    splats = SplatSet(np.ones((1600, 8), np.float16), 224, 224, {"psnr": 31.0, "iters": 2000})
    record = encode_record(splats)
    assert 1600 * 16 < len(record) <= 1600 * 16 + 128


def _record(**overrides):
    rec = {"version": [1, 0], "n_splats": 2, "height": 8, "width": 8,
           "layout": C.LAYOUT_ID, "codecs": [], "payload": np.ones(16, "<f2").tobytes()}
    rec.update(overrides)
    return msgpack.packb({k: v for k, v in rec.items() if v is not None}, use_bin_type=True)


@pytest.mark.parametrize("record, message", [
    (_record(version=[2, 0]), "unknown major version 2"),
    (_record(n_splats=2**31), "splat count 2147483648 outside"),
    (_record(height=0), "canvas height 0"),
    (_record(width=2**17), "canvas width 131072"),
    (_record(layout="other"), "unknown parameter layout"),
    (_record(payload=None), "missing required keys"),
    (_record(n_splats=3), "expected 48"),
    (_record(codecs=[{"id": "zlib"}]), "not allowed"),
    (_record(codecs=[{"id": "gsformat.nope"}]), "unknown codec id"),
    (_record(version="1.0"), "version must be"),
    (b"\x93\x01\x02\x03", "must be a msgpack map"),
    (b"\xc1garbage", "not a msgpack record"),
    (b"", "not a msgpack record"),
])
def test_bad_records_are_format_errors(record, message):
    with pytest.raises(FormatError, match=message):
        decode_record(record, where="shard.00000.mds, sample 3")
    with pytest.raises(FormatError, match="shard.00000.mds, sample 3"):
        decode_record(record, where="shard.00000.mds, sample 3")


def test_unknown_codec_error_is_a_value_error():
    with pytest.raises(ValueError):
        decode_record(_record(codecs=[{"id": "gsformat.nope"}]))
    assert issubclass(UnknownCodecError, FormatError)


def test_huge_zstd_claim_fails_before_allocating():
    # a zstd frame header claiming 2^40 decoded bytes: refused from the header alone
    frame = b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + (1 << 40).to_bytes(8, "little") + b"\x00" * 8
    with pytest.raises(FormatError, match="claims"):
        decode_record(_record(codecs=[{"id": "zstd"}], payload=frame))


def test_unknown_optional_keys_are_ignored_and_minor_versions_accepted():
    rec = msgpack.unpackb(_record(version=[1, 7]))
    rec["future_key"] = {"anything": [1, 2]}
    splats = decode_record(msgpack.packb(rec, use_bin_type=True))
    assert splats.n_splats == 2


def test_check_rejects_invalid_parameters():
    params = np.ones((4, 8), np.float16)
    params[1, 4] = -1
    params[2, 0] = np.nan
    record = _record(n_splats=4, payload=params.astype("<f2").tobytes())  # no writer writes it
    # SPEC.md § 2 (1.4): every reader rejects them, not only the validator
    with pytest.raises(FormatError, match="non-finite.*l22 <= 0"):
        decode_record(record)


@pytest.mark.parametrize("pipeline", PIPELINES[:3], ids=["raw", "zstd", "planar"])
@pytest.mark.parametrize("col, value, message", [
    (0, np.nan, "non-finite"), (6, np.inf, "non-finite"), (7, -np.inf, "non-finite"),
    (2, 0.0, "l11 <= 0"), (4, -0.0, "l22 <= 0"), (4, -1.0, "l22 <= 0"),
    (2, np.nan, "l11 <= 0")])
def test_writers_refuse_invalid_splats_with_every_pipeline(pipeline, col, value, message):
    """Issue 25, item 16: SPEC.md § 2 / § 8 forbid a writer to write them; the lossless
    pipelines used to store them as they were (the lossy encoders already refused)."""
    params = np.ones((4, 8), np.float16)
    params[2, col] = value
    with pytest.raises(FormatError, match=f"refusing to write invalid splats.*{message}"
                                          f".*splat 2"):
        encode_record(SplatSet(params, 8, 8), pipeline)


@pytest.mark.parametrize("version", [[1, -1], [-1, 0], [1, 2.0], [True, 0], [1], [1, 0, 0]])
def test_version_is_two_unsigned_integers(version):
    """Issue 25, item 17: § 4 says an array of two uints; [1, −1] was accepted."""
    with pytest.raises(FormatError, match="version must be"):
        decode_record(_record(version=version))


def test_splatset_shape_and_limits():
    with pytest.raises(FormatError, match=r"shape \[N, 8\]"):
        SplatSet(np.ones((3, 7)), 8, 8)
    with pytest.raises(FormatError, match="canvas height 0"):
        SplatSet(np.ones((3, 8)), 0, 8)


def test_decode_record_check_is_deprecated_and_always_checks():
    import warnings
    from gsformat import SplatSet
    record = encode_record(SplatSet(np.tile(np.array([[0.5, 0.5, 0.1, 0, 0.1, 1, 1, 1]],
                                                     np.float16), (3, 1)), 8, 8), [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert decode_record(record, check=False).n_splats == 3
    assert any("check" in str(w.message) for w in caught)
