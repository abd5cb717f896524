"""Smoke runs of the long studies in benchmarks/ (their figures come from full runs, README)."""
from __future__ import annotations

import json
import os

import pytest

from conftest import load_script


def test_rd_bench_report_set_quick():
    rd_bench = load_script("benchmarks/rd_bench.py")
    out = rd_bench.report_set(quick=True)
    json.dumps(out)  # what the script prints
    curves = out["curves"]
    assert {"raw-fp16", "r-mid+solve", "jpeg", "webp"} <= set(curves)
    # lossy records are smaller than raw ones, and cost PSNR, at every budget
    for raw, lossy in zip(curves["raw-fp16"], curves["r-mid+solve"]):
        assert lossy["bytes"] < 0.75 * raw["bytes"] and lossy["psnr"] <= raw["psnr"] + 0.05
    assert out["best_lattice_rans_vs_jpeg"]["setting"].startswith("r-")
    assert "r-mid+matched" in curves and out["bd_rate_matched_vs_fixed"]["r-mid+matched"]


@pytest.mark.slow
def test_rd_bench_quick(tmp_path):
    rd_bench = load_script("benchmarks/rd_bench.py")
    out = rd_bench.main(quick=True, plot=str(tmp_path / "rd.png"))
    assert os.path.getsize(tmp_path / "rd.png") > 10_000
    assert not any(name.startswith(("q", "e")) for name in out["curves"])  # no legacy codecs
    costs = out["decode_cost"]
    assert costs["r-mid_decode_cost_vs_jpeg"] > 0 and costs["raw-fp16_records_per_s"] > 0


def test_fit_bench_cost_to_quality(tmp_path):
    fit_bench = load_script("benchmarks/fit_bench.py")
    from gsformat.testing.photos import load_photo
    photos = {"astronaut": load_photo("astronaut", 40), "china": load_photo("china", 40)}
    out = fit_bench.cost_to_quality(photos, 40, previous_iters=30, default_iters=20,
                                    ladder=(0.5, 1.0, 3.0))
    json.dumps(out)
    assert [p["iters"] for p in out["new"]["ladder"]] == [10, 20, 60]
    assert set(out["new_default"]["psnr_minus_previous_per_image"]) == set(photos)
    assert out["previous"]["curve_seconds_step_training_psnr"]
    reach = out["seconds_to_reach_previous_psnr"]
    assert reach is None or reach > 0
    assert set(fit_bench.TUNING).isdisjoint(fit_bench.REPORT)  # held-out by construction
    fit_bench.plot({"report": [out]}, str(tmp_path / "cost.png"))
    assert os.path.getsize(tmp_path / "cost.png") > 10_000
    points = [{"seconds_per_image": 1.0, "psnr_mean": 20.0},
              {"seconds_per_image": 3.0, "psnr_mean": 24.0}]
    assert fit_bench.seconds_to_reach(points, 22.0) == 2.0
    assert fit_bench.seconds_to_reach(points, 25.0) is None


def test_downstream_bench_quick(tmp_path):
    """The compression → accuracy study end to end on a small digits slice (20 steps a stage)."""
    downstream_bench = load_script("benchmarks/downstream_bench.py")
    out = downstream_bench.main(str(tmp_path / "ds"), quick=True, budgets=(16,),
                                plot=str(tmp_path / "ds.png"))
    json.dumps(out)
    settings = {(r["model"], r["setting"]) for r in out["rows"]}
    assert {("student-16", "fp16"), ("student-16", "r-coarse+solve"),
            ("student-16", "prune-tau0.2"), ("student-16-trained-r-coarse", "r-coarse+solve"),
            ("student-16", "planar"), ("teacher_rgb", "jpeg-rgb-q10"),
            ("teacher_rgb", "jpeg-l-q10")} <= settings
    rows = {(r["model"], r["setting"]): r for r in out["rows"]}
    fp16, planar = rows["student-16", "fp16"], rows["student-16", "planar"]
    # lossless: the same values (top-1, PSNR) in fewer bytes
    assert planar["bytes"] < fp16["bytes"] and planar["top1"] == fp16["top1"]
    assert rows["student-16", "prune-tau0.2"]["bytes"] < fp16["bytes"]
    coarse = downstream_bench.record_bytes(str(tmp_path / "ds" / "test-16-r-coarse"))
    assert coarse == rows["student-16", "r-coarse+solve"]["bytes"]
    assert all(0 <= r["top1"] <= 1 for r in out["rows"])
    assert out["summary"]["16"]["smallest_within_1pt"] in {r["setting"] for r in out["rows"]}
    assert os.path.getsize(tmp_path / "ds.png") > 10_000


def test_fit_tune_measures_the_tuning_set():
    fit_tune = load_script("benchmarks/fit_tune.py")
    options = fit_tune.parse_options(["lr_position=0.3", "relocate_every=5", "engine=tiles"])
    assert options == {"lr_position": 0.3, "relocate_every": 5, "engine": "tiles"}
    out = fit_tune.measure(30, 10, options, names=("astronaut", "coffee"), size=32)
    assert set(out["psnr_per_image"]) == {"astronaut", "coffee"} and out["psnr_mean"] > 10


def test_engine_bench_times_a_build_against_itself(tmp_path, monkeypatch, capsys):
    """The engine benchmark's smoke run: the installed build as its own baseline."""
    import glob
    import sys
    from gsformat.fitting import tiles
    if tiles.native() is None:
        pytest.skip("the C tile engine is not built here")
    engine_bench = load_script("benchmarks/engine_bench.py")
    build = glob.glob(tiles.native().__file__)[0]
    monkeypatch.setattr(sys, "argv", [
        "engine_bench.py", "--splats", "64", "--iters", "5", "--size", "48", "--images",
        "astronaut", "--repeats", "1", "--calls", "2", "--baseline", build, "--cache",
        str(tmp_path)])
    engine_bench.main()
    out = json.loads(capsys.readouterr().out)
    assert out["splats"] == 64 and out["chunks_per_call"] > 0 and out["speedup"] > 0
