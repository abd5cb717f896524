"""fit_images end to end on real photographs: quality, reproducibility, pruning, bad input."""
import numpy as np
import pytest

from gsformat import SplatSet
from gsformat.fitting import fit_images, fit_memory_bytes, render_splatsets
from gsformat.fitting.reference import _render_dense
from gsformat.fitting.fit import FitOptions, geometry
from gsformat.core.render_math import to_pixels
from conftest import photo


@pytest.fixture(scope="module")
def photos():
    return np.stack([photo("astronaut", 48), photo("chelsea", 48)])


def test_fit_quality_and_output(photos):
    result = fit_images(photos, 300, 300, backend="numpy", history=True)
    # further cycles (150 iterations each) make the history longer, NaN for images without them
    assert len(result.splats) == 2 and result.history.shape[0] in (300, 450, 600, 750)
    assert np.isfinite(result.history[:300]).all()
    for splats, score in zip(result.splats, result.psnr):
        assert isinstance(splats, SplatSet) and splats.n_splats == 300
        assert splats.canvas_hw == (48, 48) and splats.params.dtype == np.float16
        assert not splats.problems()
        assert splats.meta["psnr"] == pytest.approx(score, abs=1e-3)
    assert (result.psnr > 26).all(), result.psnr  # 300 splats on 48² reach ~30 dB
    assert (result.history[299] < result.history[0] / 5).all()  # the loss went down


def test_reported_psnr_is_of_stored_fp16_splats_rendered_exactly(photos):
    result = fit_images(photos[:1], 100, 60, backend="numpy")
    splats = result.splats[0]
    dense = _render_dense(to_pixels(splats.params.astype(np.float32), 48, 48), 48, 48)
    mse = ((np.clip(dense, 0, 1) - photos[0] / 255.0) ** 2).mean()
    assert 10 * np.log10(1 / mse) == pytest.approx(result.psnr[0], abs=0.02)


def test_reproducible_for_a_seed(photos):
    a = fit_images(photos[:1], 64, 30, seed=3, init="random", backend="numpy").splats[0]
    b = fit_images(photos[:1], 64, 30, seed=3, init="random", backend="numpy").splats[0]
    c = fit_images(photos[:1], 64, 30, seed=4, init="random", backend="numpy").splats[0]
    assert a == b and a != c


def test_batching_does_not_change_results(photos):
    together = fit_images(photos, 64, 20, backend="numpy")
    apart = fit_images(photos, 64, 20, backend="numpy", batch_size=1)
    for x, y in zip(together.splats, apart.splats):
        np.testing.assert_allclose(x.params.astype(float), y.params.astype(float), atol=2e-3)


def test_grid_init_beats_random_init(photos):
    grid = fit_images(photos[:1], 200, 100, init="grid", backend="numpy").psnr
    rand = fit_images(photos[:1], 200, 100, init="random", backend="numpy").psnr
    assert grid[0] > rand[0] + 1.0


def test_luminance_pruning_removes_dark_splats(photos):
    result = fit_images(photos[:1], 300, 100, prune_threshold=0.08, prune_at=0.5,
                        l1_colour=1e-4, backend="numpy")
    splats = result.splats[0]
    assert result.n_pruned[0] > 0 and splats.n_splats == 300 - result.n_pruned[0]
    luminance = np.abs(splats.colours.astype(np.float32)) @ np.array([0.2126, 0.7152, 0.0722])
    # survivors were above τ at pruning time; the re-fit may move them a little
    assert np.median(luminance) > 0.08
    assert result.psnr[0] > 20


def test_any_canvas_size_and_channel_kinds():
    rgba = np.dstack([photo("rocket", 40)[:30], np.full((30, 40), 128, np.uint8)])
    grey16 = (photo("rocket", 40)[:30, :, 0].astype(np.uint16) * 257)
    a = fit_images(rgba[None], 50, 20, backend="numpy")
    b = fit_images(grey16[None], 50, 20, backend="numpy")
    assert a.splats[0].canvas_hw == b.splats[0].canvas_hw == (30, 40)
    g = b.splats[0].colours.astype(float)
    assert np.allclose(g[:, 0], g[:, 1]) and np.allclose(g[:, 1], g[:, 2])


def test_render_splatsets_matches_dense(photos):
    splats = fit_images(photos[:1], 80, 30, backend="numpy").splats[0]
    image = render_splatsets([splats])[0]
    dense = _render_dense(to_pixels(splats.params.astype(np.float32), 48, 48), 48, 48)
    np.testing.assert_allclose(image, dense, atol=1e-4)


def test_batches_split_below_the_int32_window_limit(photos, monkeypatch):
    """cuSPARSE indexes the window matrix with int32 (a 1,024 × 1,600-splat render at 224² failed
    on an H200): fits and renders split their batches below the limit, with the same results."""
    from gsformat.fitting import kernel
    whole = fit_images(photos[:2], 64, 20, backend="numpy")
    image = render_splatsets(whole.splats, radius=geometry(64, 48, 48, FitOptions())[1])
    # room for one image's windows only: the fit runs as two batches, the render as two chunks
    _, radius, _ = geometry(64, 48, 48, FitOptions())
    monkeypatch.setattr(kernel, "MAX_WINDOW_ENTRIES", kernel.window_entries(64, 48, 48, radius))
    batches = []

    class Counted(kernel.WindowKernel):
        def __init__(self, xp, batch, *args):
            batches.append(batch)
            super().__init__(xp, batch, *args)
    monkeypatch.setattr("gsformat.fitting.engine.WindowKernel", Counted)
    split = fit_images(photos[:2], 64, 20, backend="numpy")
    assert set(batches) == {1}
    np.testing.assert_array_equal(split.psnr, whole.psnr)
    batches.clear()
    np.testing.assert_array_equal(render_splatsets(whole.splats, radius=radius), image)
    assert batches == [1, 1]


def test_memory_estimate_is_bounded():
    small = fit_memory_bytes(1, 1600, 224, 224)
    assert 5e6 < small < 5e7
    assert fit_memory_bytes(8, 1600, 224, 224) == 8 * small


@pytest.mark.parametrize("images, n, message", [
    (np.zeros((0, 16, 16, 3), np.uint8), 10, "empty batch"),
    ([], 10, "empty batch"),
    (np.zeros((1, 1, 1, 3), np.uint8), 1, "too small"),
    (np.zeros((1, 8, 8, 3), np.uint8), 65, "n_splats must be in"),
    (np.full((1, 8, 8, 3), np.nan, np.float32), 4, "NaN or infinite"),
    (np.full((2, 8, 8, 3), np.inf, np.float32), 4, "image 0 of the batch"),
    (np.zeros((8, 8, 3, 2, 1), np.uint8), 4, "must be"),
    (np.zeros((1, 8, 8, 5), np.uint8), 4, "C in 1..4"),
    ([np.zeros((8, 8, 3)), np.zeros((9, 8, 3))], 4, "share a size"),
])
def test_bad_input_is_a_clear_error(images, n, message):
    with pytest.raises(ValueError, match=message):
        fit_images(images, n, 5, backend="numpy")


def test_cupy_backend_is_refused_without_gpu():
    from gsformat.fitting import cupy_available
    if cupy_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="CuPy"):
        fit_images(np.zeros((1, 8, 8, 3)), 4, 1, backend="cupy")


def test_convert_default_iterations_are_the_fitters():
    """convert's parser loads without the fitter (and scipy): it keeps the literal, checked here."""
    import argparse
    from gsformat.convert.options import add_convert_arguments
    from gsformat.fitting.fit import DEFAULT_ITERS
    parser = argparse.ArgumentParser()
    add_convert_arguments(parser)
    assert parser.parse_args(["s", "o"]).iters == DEFAULT_ITERS


def test_fit_options_are_grouped_and_keep_their_flat_names():
    import warnings
    from gsformat.fitting.options import FLAT, Execution, Optimiser
    opts = FitOptions(lr_position=0.1, engine="window", quantize={"id": "gsformat.lattice"})
    assert opts.optimiser.lr_position == 0.1 and opts.execution.engine == "window"
    assert opts.quantisation.codec == {"id": "gsformat.lattice"}
    assert opts.optimiser.lr_colour == Optimiser().lr_colour  # the others keep their defaults
    grouped = FitOptions(optimiser=Optimiser(lr_position=0.1), execution=Execution(engine="window"),
                         quantize={"id": "gsformat.lattice"})
    assert grouped == opts
    assert FitOptions(**opts.flat()) == opts  # flat() is what fit_images takes
    assert set(opts.flat()) == set(FLAT) - {"codec"} | {"n_splats", "iters", "seed"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert FitOptions(quantize_reference_psnr=30.0).quantisation.matched_steps == 30.0
        assert FitOptions(second_cycle=0.0).optimiser.cycle_length == 0.0
    assert any("matched_steps" in str(w.message) for w in caught)
    assert any("cycle_length" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match="max_cycles must be ≥ 0"):
        fit_images(np.zeros((1, 8, 8, 3), np.uint8), 4, 2, max_cycles=-1)
    with pytest.raises(TypeError, match="unexpected fitting option 'lr_postion'"):
        FitOptions(lr_postion=0.1)


def test_learning_rates_hold_then_decay_to_lr_final():
    from gsformat.fitting.fit import lr_decay
    factors = [lr_decay(step, 1000, 0.5, 0.7) for step in range(1000)]
    assert factors[:700] == [1.0] * 700  # constant while splats still move far
    assert all(a > b for a, b in zip(factors[699:], factors[700:]))  # then only down
    assert factors[-1] == pytest.approx(0.5)  # to lr_final at the last step
    assert lr_decay(999, 1000, 1.0, 0.7) == 1.0  # lr_final 1: constant rates
    assert lr_decay(0, 1001, 0.2, 0.0) == 1.0 and lr_decay(500, 1001, 0.2, 0.0) == \
        pytest.approx(0.6)  # from the start: the plain cosine, halfway at the middle



def test_still_rising_reads_the_last_stretch_of_the_loss():
    from gsformat.fitting.fit import still_rising
    steps = np.arange(1000.0)[:, None]
    falling = 10 ** (-steps / 2000)      # 0.5 dB per 100 iterations throughout
    settled = np.maximum(falling, 10 ** (-400 / 2000))  # flat from step 400
    decaying = np.where(steps < 700, settled, 10 ** (-(400 + (steps - 700) / 4) / 2000))
    losses = np.hstack([falling, settled, decaying]).astype(np.float32)  # [1000, 3]
    # from steps 580–600 (the last tenth before the decay at 700) to the last 20 steps: 2.0,
    # 0 and 0.37 dB
    assert still_rising(losses, FitOptions()).tolist() == [True, False, False]
    assert still_rising(losses, FitOptions(rising_gain=0.3)).tolist() == [True, False, True]
    assert not still_rising(losses, FitOptions(rising_gain=2.1)).any()
    assert not still_rising(losses, FitOptions(max_cycles=0)).any()
    assert not still_rising(losses[:5], FitOptions()).any()  # too short to read a slope


def test_cycles_for_rising_images_only_and_never_worse(photos):
    ramp = np.stack(np.mgrid[0:48, 0:48], -1).sum(-1, keepdims=True) * [4, 2, 1]  # smooth
    images = np.concatenate([photos, ramp[None].astype(np.uint8)])  # [3, 48, 48, 3]
    with_cycle = fit_images(images, 64, 60, backend="numpy")
    without = fit_images(images, 64, 60, backend="numpy", max_cycles=0)
    steps = [s.meta["iters"] for s in with_cycle.splats]
    assert steps[0] > 90  # astronaut rises at 60 iterations, and its cycles gain: more follow
    assert steps[2] == 60  # the ramp has settled
    assert set(steps) <= {60, 90, 120, 150}  # at most max_cycles (3) of 30 iterations
    for ran, got, base in zip(steps, with_cycle.psnr, without.psnr):
        # a cycle kept lowers the loss; one that does not is undone (the fit as without)
        assert got > base + 0.1 if ran > 60 else got == base
    one = fit_images(images, 64, 60, backend="numpy", max_cycles=1)
    assert [s.meta["iters"] for s in one.splats] == [min(n, 90) for n in steps]
    assert one.psnr[0] < with_cycle.psnr[0]  # the cycles that followed paid
    apart = fit_images(images, 64, 60, backend="numpy", batch_size=1)
    assert [s.meta["iters"] for s in apart.splats] == steps  # each image's own decisions
    for x, y in zip(with_cycle.splats, apart.splats):
        np.testing.assert_allclose(x.params.astype(float), y.params.astype(float), atol=2e-3)
