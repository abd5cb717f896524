"""Hostile records: every finding of the hostile-input review as a regression test, and a
hypothesis fuzzer that holds each decode to a memory and time budget and the C decoders to the
NumPy ones (SPEC.md § 7: decoding budget)."""
import glob
import math
import os
import time
import tracemalloc

import msgpack
import numpy as np
import pytest
import zstd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gsformat import FormatError, SplatSet, UnknownCodecError, decode_record, encode_record
from gsformat.codecs import lattice
from gsformat.core import record as record_module
from gsformat.testing.fuzz import budget, mutate, run as fuzz_main  # fuzz_bench.py's, one mutator

VECTORS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "spec", "vectors",
                                        "records", "*.msgpack")))
MIB = 1 << 20
N_MAX = 1 << 20


def record_with(base: bytes | None = None, **changes) -> bytes:
    """A record (the 2-splat golden vector by default) with map entries replaced."""
    base = base or open([v for v in VECTORS if "raw-2splats" in v][0], "rb").read()
    rec = msgpack.unpackb(base, raw=False)
    rec.update(changes)
    return msgpack.packb(rec, use_bin_type=True)


def vector(name: str) -> bytes:
    return open([v for v in VECTORS if os.path.basename(v).startswith(name)][0], "rb").read()


def decode_measured(buf: bytes):
    """(SplatSet or FormatError, seconds, peak traced bytes). Any other exception fails."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        result = decode_record(buf)
    except FormatError as exc:
        result = exc
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak


def uniform_splats(n: int) -> SplatSet:
    params = np.zeros((n, 8), np.float16)
    params[:, 0] = params[:, 1] = 0.5
    params[:, 2] = params[:, 4] = 0.01
    params[:, 5] = 0.5
    return SplatSet(params, 224, 224)


# ---- § 4: msgpack --------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["unknown key", "fit value", "codec parameter"])
def test_msgpack_timestamp_is_rejected(where):
    stamp = msgpack.Timestamp(1, 0)
    if where == "unknown key":
        buf = record_with(future=stamp)
    elif where == "fit value":
        buf = record_with(fit={"psnr": stamp})
    else:
        buf = record_with(vector("zstd-fitted48"), codecs=[{"id": "zstd", "when": stamp}])
    with pytest.raises(FormatError, match="extension type"):
        decode_record(buf)


@pytest.mark.parametrize("mapping", [{"fit": {1: 2.0}}, {"fit": {b"psnr": 2.0}},
                                     {"future": {3: "x"}}])
def test_non_str_map_keys_are_rejected(mapping):
    buf = record_with(**mapping)
    with pytest.raises(FormatError, match="key|map"):
        decode_record(buf)


# ---- § 5: codec configs --------------------------------------------------------------------
def test_unknown_codec_parameters_are_ignored():
    base = vector("zstd-fitted48")
    codecs = msgpack.unpackb(base)["codecs"]
    plain = decode_record(base)
    assert decode_record(record_with(base, codecs=[dict(codecs[0], foo=1)])) == plain
    lat = vector("lattice-rans-default")
    config = msgpack.unpackb(lat)["codecs"][0]
    assert decode_record(record_with(lat, codecs=[dict(config, future=[1, 2])])) \
        == decode_record(lat)


@pytest.mark.parametrize("name, param, value, message", [
    ("quantize-12", "position_bits", 17, r"'position_bits' = 17 outside \[1, 16\]"),
    ("quantize-12", "position_bits", 8.0, "must be an integer"),
    ("quantize-12", "colour_bits", True, "must be an integer"),
    ("quantize-12", "covariance_bits", math.inf, "must be an integer"),
    ("entropy-12", "colour_bits", 0, "outside"),
    ("lattice-default", "scale_step", 0.0, "outside"),
    ("lattice-default", "shear_step", True, "must be a number"),
    ("lattice-rans-default", "position_step", math.inf, "outside"),
    ("lattice-rans-default", "colour_step", math.nan, "outside"),
    ("lattice-rans-default", "colour_step", 2.0, "outside"),
])
def test_bad_codec_parameters_name_the_parameter(name, param, value, message):
    base = vector(name)
    config = msgpack.unpackb(base)["codecs"][0]
    with pytest.raises(FormatError, match=message) as info:
        decode_record(record_with(base, codecs=[dict(config, **{param: value})]))
    assert "unknown codec" not in str(info.value)


@pytest.mark.parametrize("name, param, good, bad", [
    ("quantize-12", "colour_bits", 8, 8.0), ("quantize-12", "position_bits", 12, 12.0),
    ("quantize-12", "covariance_bits", 1, True), ("lattice-default", "position_step", 1, True),
    ("lattice-rans-default", "colour_step", 1, True)])
def test_parameter_types_do_not_depend_on_history(name, param, good, bad):
    """Issue 25, item 18: decoders were cached by equal Python values (8 == 8.0 == ...; True
    == 1), so a wrong type was accepted right after a record with the right one."""
    config = dict(msgpack.unpackb(vector(name))["codecs"][0])
    assert record_module.decoder_for(dict(config, **{param: good})) is not None
    with pytest.raises(FormatError, match="must be an? (integer|number)"):
        record_module.decoder_for(dict(config, **{param: bad}))
    if name == "quantize-12" and param == "colour_bits":  # the same through whole records
        base = vector(name)
        decode_record(base)
        with pytest.raises(FormatError, match="must be an integer, got 8.0"):
            decode_record(record_with(base, codecs=[dict(config, colour_bits=8.0)]))


@pytest.mark.parametrize("name, param", [("lattice-default", "position_step"),
                                         ("quantize-12", "colour_bits")])
def test_missing_decoder_parameters_are_rejected(name, param):
    base = vector(name)
    config = dict(msgpack.unpackb(base)["codecs"][0])
    del config[param]
    with pytest.raises(FormatError, match=f"missing parameter '{param}'"):
        decode_record(record_with(base, codecs=[config]))


def test_encoder_only_parameters_are_not_needed():
    base = vector("lattice-default")
    config = dict(msgpack.unpackb(base)["codecs"][0])
    config.pop("level")
    assert decode_record(record_with(base, codecs=[config])) == decode_record(base)
    config["level"] = math.inf  # not needed, so not checked
    assert decode_record(record_with(base, codecs=[config])) == decode_record(base)


# ---- § 5.1: one zstd frame, bounded before decompressing -----------------------------------
def test_zstd_second_frame_is_refused_before_decompressing():
    base = vector("zstd-fitted48")
    payload = msgpack.unpackb(base)["payload"]
    bomb = zstd.compress(bytes(200 * MIB), 19)  # ~6 KB holding 200 MiB
    assert len(bomb) < 64 << 10
    buf = record_with(base, payload=payload + bomb)
    result, seconds, peak = decode_measured(buf)
    assert isinstance(result, FormatError) and "after the frame" in str(result)
    assert peak < 4 * MIB and seconds < 1


def test_zstd_frame_claiming_more_than_the_record_allows():
    buf = record_with(vector("zstd-fitted48"), payload=zstd.compress(bytes(64 * 1024 * 8)))
    with pytest.raises(FormatError, match="claims"):
        decode_record(buf)


def test_planar_count_is_checked_before_allocating():
    # 1 splat claiming 2^24 values: refused from its header, nothing allocated
    payload = (1 << 24).to_bytes(4, "little") + zstd.compress(bytes(1 << 25))
    buf = msgpack.packb({"version": [1, 3], "n_splats": 1, "height": 8, "width": 8,
                         "layout": "gs2d.mu2.chol3.rgb3", "codecs": [{"id": "gsformat.planar"}],
                         "payload": payload}, use_bin_type=True)
    result, seconds, peak = decode_measured(buf)
    assert isinstance(result, FormatError) and "claims" in str(result)
    assert peak < 2 * MIB


# ---- § 2: values ---------------------------------------------------------------------------
@pytest.mark.parametrize("col, value", [(0, np.nan), (6, np.inf), (2, 0.0), (4, -1.0)])
def test_raw_records_with_invalid_values_are_rejected(col, value):
    params = uniform_splats(4).params.copy()
    params[1, col] = value
    payload = params.astype("<f2").tobytes()  # raw: encode_record refuses to write it
    with pytest.raises(FormatError, match="non-finite|<= 0"):
        decode_record(record_with(n_splats=4, payload=payload))


# ---- N = 0 (SPEC.md 1.4 decisions) ----------------------------------------------------------
def test_empty_record_rules():
    empty = dict(version=[1, 3], n_splats=0, height=4, width=4, layout="gs2d.mu2.chol3.rgb3")
    pack = lambda **kw: msgpack.packb(dict(empty, **kw), use_bin_type=True)  # noqa: E731
    assert decode_record(pack(codecs=[], payload=b"")).n_splats == 0
    assert decode_record(pack(codecs=[{"id": "gsformat.planar"}], payload=b"")).n_splats == 0
    assert decode_record(pack(codecs=[{"id": "zstd"}], payload=zstd.compress(b""))).n_splats == 0
    with pytest.raises(UnknownCodecError):  # § 3 first: an unknown codec fails, even at N = 0
        decode_record(pack(codecs=[{"id": "gsformat.future"}], payload=b""))
    with pytest.raises(FormatError, match="after its header"):  # a frame where none belongs
        decode_record(pack(codecs=[{"id": "gsformat.planar"}],
                           payload=bytes(4) + zstd.compress(b"")))


# ---- work and memory bounded by the budget (crafted records) ---------------------------------
PIPELINES = {
    "zstd": [{"id": "zstd", "level": 3}], "planar": [{"id": "gsformat.planar"}],
    "quantize+zstd": [{"id": "gsformat.quantize"}, {"id": "zstd", "level": 3}],
    "entropy": [{"id": "gsformat.entropy", "level": 3}],
    "lattice": [{"id": "gsformat.lattice", "level": 3}],
    "lattice-rans": [{"id": "gsformat.lattice-rans"}],
}


@pytest.fixture(scope="module")
def huge_records():
    """2^20 identical splats in a few hundred bytes, per codec: spec-valid records."""
    splats = uniform_splats(N_MAX)
    return {name: encode_record(splats, pipeline) for name, pipeline in PIPELINES.items()}


@pytest.mark.parametrize("name", list(PIPELINES))
def test_huge_claims_in_small_records_stay_in_budget(huge_records, name):
    buf = huge_records[name]
    assert len(buf) < 2048
    result, seconds, peak = decode_measured(buf)
    assert isinstance(result, SplatSet) and result.n_splats == N_MAX
    assert peak <= budget(buf), f"{peak / MIB:.1f} MiB"
    assert peak <= 64 * MIB and seconds < 2


@pytest.fixture
def numpy_decoders():
    """The NumPy decoders, as ``GSFORMAT_NO_NATIVE=1`` chooses them."""
    saved = lattice._NATIVE, list(record_module._ROWS_VALID)
    lattice._NATIVE = None
    record_module._ROWS_VALID[:] = [None]
    yield
    lattice._NATIVE = saved[0]
    record_module._ROWS_VALID[:] = saved[1]


def planes_28_record() -> bytes:
    """2^20 splats declaring 4 byte planes in each of the 7 slots (28), every plane one rANS
    symbol of frequency M: 469 bytes (a plane's table does not depend on N, so 64-symbol planes
    give the stage's bytes)."""
    from gsformat.codecs import LatticeRans, rans
    header = (np.array([N_MAX, 1], "<u4").tobytes()
              + np.array([1000, 1000, -40, 0, -40, 10, 0, 0], "<i4").tobytes()
              + bytes([4, 0, 4, 4, 4, 4, 4, 4]))
    payload = header + rans.encode([np.zeros(64, np.uint8)] * 28)
    return msgpack.packb({"version": [1, 4], "n_splats": N_MAX, "height": 8, "width": 8,
                          "layout": "gs2d.mu2.chol3.rgb3", "codecs": [LatticeRans().get_config()],
                          "payload": payload}, use_bin_type=True)


def test_numpy_decoders_keep_the_budget(numpy_decoders, huge_records):
    """Issue 25, item 20: § 7's budget holds without the C decoders too. The NumPy rANS stage
    kept a second [P, N] array of symbols beside its planes: 57.1 MiB for 28 planes at 2^20
    splats, against 56.0 MiB."""
    for buf in [planes_28_record()] + list(huge_records.values()):
        result, seconds, peak = decode_measured(buf)
        assert isinstance(result, SplatSet) and result.n_splats == N_MAX
        assert peak <= budget(buf), f"{len(buf)} bytes: {peak / MIB:.1f} MiB"
    assert len(planes_28_record()) == 469


def _payload_edit(buf: bytes, edit) -> bytes:
    rec = msgpack.unpackb(buf, raw=False)
    payload = bytearray(rec["payload"])
    edit(payload)
    rec["payload"] = bytes(payload)
    return msgpack.packb(rec, use_bin_type=True)


def test_lattice_rans_code_minimum_beyond_the_fast_path(huge_records):
    # code_min of slot 5 set to 2^29: the C decoder declines its arithmetic, the planes still
    # come from its rANS stage (no NumPy loop); the values overflow FP16 and are refused
    def edit(p):
        p[28:32] = (1 << 29).to_bytes(4, "little")
    result, seconds, peak = decode_measured(_payload_edit(huge_records["lattice-rans"], edit))
    assert isinstance(result, FormatError) and "non-finite" in str(result)
    assert seconds < 2 and peak <= 64 * MIB


def test_lattice_rans_bad_final_state_fails_fast(huge_records):
    def edit(p):  # the last lane state word, beyond the tables: streams no longer end right
        p[-1] ^= 0x01
    result, seconds, peak = decode_measured(_payload_edit(huge_records["lattice-rans"], edit))
    assert isinstance(result, FormatError)
    assert seconds < 2 and peak <= 64 * MIB


# ---- the fuzzer: FormatError or a valid decode, within budget, C = NumPy ---------------------
def _decode_both(buf: bytes):
    """Outcome with the C decoders and with the NumPy ones: bytes of the params, or the
    FormatError class."""
    outcomes = []
    for native in (lattice._NATIVE, None):
        saved = lattice._NATIVE, list(record_module._ROWS_VALID)
        lattice._NATIVE = native
        record_module._ROWS_VALID[:] = [] if native is not None else [None]
        try:
            outcomes.append(decode_record(buf).params.tobytes())
        except FormatError:
            outcomes.append(FormatError)
        finally:
            lattice._NATIVE = saved[0]
            record_module._ROWS_VALID[:] = saved[1]
    return outcomes


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), path=st.sampled_from(VECTORS))
def test_fuzzed_records(seed, path):
    buf = mutate(np.random.default_rng(seed), open(path, "rb").read())
    result, seconds, peak = decode_measured(buf)  # any other exception fails the test
    assert peak <= budget(buf) and seconds < 1
    native, numpy = _decode_both(buf)
    assert native == numpy


def test_fuzz_bench_smoke():
    result = fuzz_main(records=400, workers=2, huge_share=0.05)
    assert result["records"] == 400 and result["decoded"] > 0 and result["rejected"] > 0
    for name in ("crashes", "hangs", "other_exceptions", "disagreements", "over_64mib",
                 "over_1s", "over_budget"):
        assert result[name] == 0, (name, result["examples"])
