"""The two-stage recipe on a small slice of real handwritten digits (CPU, a few minutes)."""
import pytest

from conftest import load_script


@pytest.mark.slow
def test_digits_student_far_above_chance(tmp_path):
    main = load_script("examples/digits/run.py").main
    results = main(str(tmp_path / "digits"), limit=600, steps=200, iters=100, batch=48,
                   ablation=False)
    assert results["teacher_rgb"] > 0.6
    assert results["student_gs"] > 0.5  # chance is 0.1 on ten classes
