"""Record fuzzing: the mutator, SPEC.md § 7's decoding budget, the seeds and the fuzzing run
behind `benchmarks/fuzz_bench.py` (its docstring: what is counted); `tests/test_hostile_records.py`
drives the same mutator and budget, and a small run.

Seeds: the golden records of a source checkout (`spec/vectors/records/`, every codec and
pipeline: a develop install, ``pip install -e``), the same splats tiled to 1,600 per record in
every codec, and crafted 2²⁰-splat records a few hundred bytes long. Each record is mutated
(bit flips, byte overwrites, truncation, insertion, payload words, msgpack-level values) and
decoded in a worker process: with the C decoders (timed, then again under tracemalloc for the
peak), then with the NumPy decoders; the two must give the same bits or both raise
`FormatError`.
"""
from __future__ import annotations

import glob
import os
import time
import tracemalloc
from concurrent.futures import ProcessPoolExecutor, TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

import msgpack
import numpy as np

# the golden records of the source tree this package is installed from (develop mode)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VECTORS = sorted(glob.glob(os.path.join(ROOT, "spec", "vectors", "records", "*.msgpack")))
MIB = 1 << 20
HUGE_N = 1 << 20
BATCH = 200  # records per task
DEADLINE_S = 120  # a batch past this is a hang


# ---- the mutator (tests/test_hostile_records.py drives it too) --------------------------------
def mutate(rng: np.random.Generator, buf: bytes) -> bytes:
    """One random edit: bit flips, byte overwrites, truncation, insertion, a payload word, or a
    msgpack-level value (a count, a side, the pipeline, the fit map, the version)."""
    kind = rng.choice(["flip", "set", "cut", "insert", "payload", "payload", "value"])
    out = bytearray(buf)
    if kind in ("flip", "set"):
        for _ in range(int(rng.integers(1, 5))):
            at = int(rng.integers(len(out)))
            out[at] = out[at] ^ (1 << int(rng.integers(8))) if kind == "flip" else \
                int(rng.integers(256))
        return bytes(out)
    if kind == "cut":
        return bytes(out[:int(rng.integers(len(out)))])
    if kind == "insert":
        at = int(rng.integers(len(out) + 1))
        return bytes(out[:at] + rng.bytes(int(rng.integers(1, 17))) + out[at:])
    rec = msgpack.unpackb(buf, raw=False)
    if kind == "payload" and rec["payload"]:
        payload = bytearray(rec["payload"])
        width = int(rng.choice([1, 2, 4, 8]))
        at = int(rng.integers(len(payload)))
        payload[at:at + width] = rng.bytes(width)
        rec["payload"] = bytes(payload)
    else:
        key = str(rng.choice(["n_splats", "height", "width", "codecs", "fit", "version",
                              "payload"]))
        choices = [int(rng.integers(-2, 2 ** 33)), float(rng.normal() * 1e3), None, b"",
                   [{"id": "zstd"}], [1, 3], {"psnr": float("inf")}, [{"id": 7}],
                   [dict(c, **{str(rng.choice(list(c))): float(rng.normal())})
                    for c in rec["codecs"]] or [{}]]
        rec[key] = choices[int(rng.integers(len(choices)))]
    return msgpack.packb(rec, use_bin_type=True)


# ---- seeds ------------------------------------------------------------------------------------
def seeds() -> dict[str, list[bytes]]:
    """name → records: golden vectors, 1,600-splat tilings in every pipeline, huge crafted."""
    from gsformat import SplatSet, decode_record, encode_record
    if not VECTORS:
        raise FileNotFoundError(f"no golden records in {ROOT}/spec/vectors/records: the seeds "
                                "need a source checkout (pip install -e)")
    golden = {os.path.basename(p)[:-8]: open(p, "rb").read() for p in VECTORS}
    out = {"golden": list(golden.values())}
    base = decode_record(golden["lattice-rans-fine-fitted48"])
    rng = np.random.default_rng(0)
    tiled = np.tile(base.params.astype(np.float32), (34, 1))[:1600]
    tiled[:, :2] += rng.normal(0, 0.01, (1600, 2))
    tiled = SplatSet(tiled.astype(np.float16), 224, 224)
    pipelines = [[], [{"id": "zstd", "level": 3}], [{"id": "gsformat.planar"}],
                 [{"id": "gsformat.quantize"}], [{"id": "gsformat.quantize"}, {"id": "zstd"}],
                 [{"id": "gsformat.entropy"}], [{"id": "gsformat.lattice"}],
                 [{"id": "gsformat.lattice-rans"}]]
    out["n1600"] = [encode_record(tiled, p) for p in pipelines]
    params = np.zeros((HUGE_N, 8), np.float16)
    params[:, :2], params[:, 2], params[:, 4], params[:, 5] = 0.5, 0.01, 0.01, 0.5
    huge = SplatSet(params, 224, 224)
    out["huge"] = [encode_record(huge, p) for p in pipelines[1:]
                   if p[0]["id"] != "gsformat.quantize" or len(p) > 1]
    return out


def codec_of(buf: bytes) -> str:
    codecs = msgpack.unpackb(buf, raw=False)["codecs"]
    return "+".join(c["id"] for c in codecs) or "raw"


def declared_splats(buf: bytes) -> int:
    """The N a record's header declares (0 where there is none): SPEC.md § 7's budget is in
    the declared N, rejected records included."""
    try:
        n = msgpack.unpackb(buf, raw=False).get("n_splats")
    except Exception:
        return 0
    return n if type(n) is int and 0 <= n <= HUGE_N else 0


def budget(buf: bytes) -> int:
    """SPEC.md § 7: 3 × 16·N + 2 × the record's bytes + 8 MiB."""
    return 3 * 16 * declared_splats(buf) + 2 * len(buf) + 8 * MIB


# ---- one batch, in a worker -------------------------------------------------------------------
_SEEDS: dict = {}


def _outcome(buf: bytes):
    from gsformat import FormatError, decode_record
    try:
        return decode_record(buf).params.tobytes()
    except FormatError:
        return "FormatError"


def _with_numpy(buf: bytes):
    """The same decode with the C extension switched off (lattice decoders, row check)."""
    from gsformat.codecs import lattice
    from gsformat.core import record
    saved = lattice._NATIVE, list(record._ROWS_VALID)
    lattice._NATIVE, record._ROWS_VALID[:] = None, [None]
    try:
        return _outcome(buf)
    finally:
        lattice._NATIVE, record._ROWS_VALID[:] = saved[0], saved[1]


def run_batch(group: str, seed: int, count: int) -> dict:
    """Mutate and decode ``count`` records of one seed group; a summary of what happened."""
    from gsformat import FormatError, decode_record
    if not _SEEDS:
        _SEEDS.update(seeds())
    rng = np.random.default_rng([seed, len(group)])
    stats = {"n": 0, "decoded": 0, "rejected": 0, "other": [], "disagree": [], "over_64mib": 0,
             "over_1s": 0, "over_budget": 0, "max_peak": 0, "max_seconds": 0.0, "codecs": {}}
    for _ in range(count):
        seed_record = _SEEDS[group][int(rng.integers(len(_SEEDS[group])))]
        buf = mutate(rng, seed_record)
        stats["n"] += 1
        start = time.perf_counter()
        try:
            decode_record(buf)
            stats["decoded"] += 1
        except FormatError:
            stats["rejected"] += 1
        except Exception as exc:  # the finding this counts
            stats["other"].append(f"{type(exc).__name__}: {exc}"[:200])
            continue
        seconds = time.perf_counter() - start
        tracemalloc.start()
        _outcome(buf)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        key = codec_of(seed_record)
        stats["codecs"][key] = stats["codecs"].get(key, 0) + 1
        stats["max_peak"] = max(stats["max_peak"], peak)
        stats["max_seconds"] = max(stats["max_seconds"], seconds)
        stats["over_64mib"] += peak > 64 * MIB
        stats["over_1s"] += seconds > 1
        stats["over_budget"] += peak > budget(buf)
        if group != "huge" or "lattice-rans" not in key:  # (its NumPy loop: ~25 s at 2²⁰)
            if _outcome(buf) != _with_numpy(buf):
                stats["disagree"].append(buf.hex()[:400])
    return stats


def baseline() -> dict:
    """Each seed's own decode: seconds and peak, per group (the same machine, the same run)."""
    from gsformat import decode_record
    out = {}
    for group, records in seeds().items():
        times, peaks = [], []
        for buf in records:
            start = time.perf_counter()
            decode_record(buf)
            times.append(time.perf_counter() - start)
            tracemalloc.start()
            decode_record(buf)
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        out[group] = {"max_seconds": max(times), "max_peak_mib": max(peaks) / MIB}
    return out


def run(records: int = 100_000, workers: int = 2, huge_share: float = 0.02) -> dict:
    """Mutate and decode ``records`` records in ``workers`` processes (``huge_share`` of them
    from the crafted 2²⁰-splat seeds, a quarter of the rest from the 1,600-splat tilings, the
    others from the golden records); the counts (module docstring) and each seed's baseline."""
    n_huge = int(records * huge_share)
    plan = [("huge", n_huge), ("n1600", (records - n_huge) // 4),
            ("golden", records - n_huge - (records - n_huge) // 4)]
    tasks = [(group, seed, min(BATCH, total - start)) for group, total in plan
             for seed, start in enumerate(range(0, total, BATCH))]
    totals = {"records": 0, "decoded": 0, "rejected": 0, "crashes": 0, "hangs": 0,
              "other_exceptions": 0, "disagreements": 0, "over_64mib": 0, "over_1s": 0,
              "over_budget": 0, "max_peak_mib": 0.0, "max_seconds": 0.0, "codecs": {},
              "examples": {"other": [], "disagree": [], "crash": []}}
    start = time.perf_counter()
    pending = list(tasks)
    while pending:
        pool = ProcessPoolExecutor(max_workers=workers)
        futures = {pool.submit(run_batch, *task): task for task in pending}
        pending = []
        for future, task in futures.items():
            try:
                stats = future.result(timeout=DEADLINE_S * 4)
            except FutureTimeout:
                totals["hangs"] += 1
                continue
            except BrokenProcessPool:  # a worker died: count the batch, rerun the rest
                totals["crashes"] += 1
                totals["examples"]["crash"].append(list(task))
                pending = [t for f, t in futures.items() if not f.done() and t != task]
                break
            totals["records"] += stats["n"]
            for name in ("decoded", "rejected", "over_64mib", "over_1s", "over_budget"):
                totals[name] += stats[name]
            totals["other_exceptions"] += len(stats["other"])
            totals["disagreements"] += len(stats["disagree"])
            totals["examples"]["other"] += stats["other"][:3]
            totals["examples"]["disagree"] += stats["disagree"][:3]
            totals["max_peak_mib"] = max(totals["max_peak_mib"], stats["max_peak"] / MIB)
            totals["max_seconds"] = max(totals["max_seconds"], stats["max_seconds"])
            for key, value in stats["codecs"].items():
                totals["codecs"][key] = totals["codecs"].get(key, 0) + value
        pool.shutdown(wait=False, cancel_futures=True)
    totals["seconds"] = time.perf_counter() - start
    totals["baseline_seeds"] = baseline()
    totals["seeds"] = {group: len(records) for group, records in seeds().items()}
    return totals
