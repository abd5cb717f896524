"""Re-fit after quantisation (gsformat.fitting.solve): the fast rounding against its twin, the
least-squares colours against a dense solve, and the whole step on a real photograph."""
import numpy as np
import pytest

from gsformat import SplatSet, decode_record, encode_record
from gsformat.codecs import Lattice
from gsformat.fitting import fit_images
from gsformat.fitting.engine import evaluate_psnr
from gsformat.core.render_math import to_pixels
from gsformat.fitting.solve import (_round_with_feedback_reference, colour_system, requantize,
                                    round_with_feedback, solve_colours)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_feedback_rounding_matches_reference_twin(seed):
    rng = np.random.default_rng(seed)
    design = rng.random((200, 30)) * (rng.random((200, 30)) < 0.2)  # sparse-ish overlaps
    hessian = design.T @ design
    colours = rng.normal(0, 0.5, (30, 3))
    fast = round_with_feedback(colours, hessian, 0.05)
    slow = _round_with_feedback_reference(colours, hessian, 0.05)
    assert np.allclose(fast, slow, atol=1e-9)
    assert np.allclose(fast / 0.05, np.rint(fast / 0.05))  # on the lattice


def test_feedback_rounding_beats_plain_rounding():
    rng = np.random.default_rng(3)
    design = rng.random((300, 40)) * (rng.random((300, 40)) < 0.3)
    hessian = design.T @ design
    colours = rng.normal(0, 0.5, (40, 3))

    def error(c):
        d = c - colours
        return float(np.einsum("nc,nm,mc->", d, hessian, d))
    assert error(round_with_feedback(colours, hessian, 0.1)) < \
        error(np.rint(colours / 0.1) * 0.1)


def test_least_squares_colours_match_a_dense_solve(fitted_splats):
    splats = fitted_splats[0]
    height, width = splats.canvas_hw
    rng = np.random.default_rng(0)
    target = rng.random((height, width, 3))
    hessian, rhs = colour_system(to_pixels(splats.params.astype(np.float32), height, width),
                                 target, 16)
    dense = hessian.toarray() + 1e-6 * np.eye(hessian.shape[0])
    assert np.allclose(solve_colours(hessian, rhs), np.linalg.solve(dense, rhs), atol=1e-6)


def test_requantize_recovers_psnr_and_is_what_the_record_holds(fitted_splats):
    from conftest import photo
    image = photo("astronaut", 64) / 255.0
    codec = Lattice(2.0 ** -9, 0.1, 0.1, 0.06)  # coarse, so that there is much to recover
    splats = fitted_splats[0]
    plain = SplatSet(codec.quantize_rows(splats.params), *splats.canvas_hw)
    solved = requantize(splats, image, codec, 16)
    stored = decode_record(encode_record(solved, [codec.get_config()]))
    plain_db, solved_db, stored_db = evaluate_psnr([plain, solved, stored],
                                                   image[None].repeat(3, 0), 8)
    assert solved_db > plain_db + 0.1
    assert stored_db == pytest.approx(solved_db, abs=1e-4)


def test_fit_images_solves_through_the_lattice_codec():
    from conftest import photo
    image = photo("coffee", 40)[None]
    codec = {"id": "gsformat.lattice", "position_step": 2.0 ** -9, "scale_step": 0.08,
             "shear_step": 0.1, "colour_step": 0.05}
    result = fit_images(image, 120, 40, backend="numpy", quantize=codec)
    stored = decode_record(encode_record(result.splats[0], [codec]))
    assert evaluate_psnr([stored], image / 255.0, 8)[0] == pytest.approx(result.psnr[0],
                                                                          abs=0.01)


def test_matched_step_scale_is_the_rmse_ratio_within_its_range():
    from gsformat.fitting.solve import STEP_SCALE_RANGE, matched_step_scale, scale_steps
    assert matched_step_scale(30.0, 30.0) == 1.0
    assert matched_step_scale(40.0, 30.0) == pytest.approx(10 ** -0.5, rel=5e-3)  # 10 dB finer
    assert matched_step_scale(24.0, 30.0) == pytest.approx(10 ** 0.3, rel=5e-3)
    assert matched_step_scale(90.0, 30.0) == STEP_SCALE_RANGE[0]
    assert matched_step_scale(0.0, 30.0) == STEP_SCALE_RANGE[1]
    assert matched_step_scale(float("inf"), 30.0) == 1.0  # an exact fit: the steps as given
    config = scale_steps({"id": "gsformat.lattice-rans", "colour_step": 0.02}, 0.5)
    assert config["colour_step"] == 0.01 and config["scale_step"] == 0.025  # defaults filled
    assert scale_steps({"id": "gsformat.lattice", "position_step": 0.5}, 4)["position_step"] == 1
    assert scale_steps({"id": "gsformat.lattice"}, 0.3)["position_step"] == 2.0 ** -13


def test_matched_steps_refine_the_closely_fitted_image_and_records_say_so():
    """Two images in one batch: a smooth one (fitted closely) gets finer steps than a detailed
    one; each record carries its own steps and decodes to exactly what the fit returned."""
    from conftest import photo
    from gsformat.fitting.solve import record_codecs
    yy, xx = np.mgrid[0:40, 0:40] / 40.0
    smooth = (np.stack([xx, yy, 0.5 + 0 * xx], -1) * 200).astype(np.uint8)
    images = np.stack([smooth, photo("coffee", 40)])
    codec = {"id": "gsformat.lattice-rans", "position_step": 2.0 ** -9, "scale_step": 0.08,
             "shear_step": 0.1, "colour_step": 0.05}
    fixed = fit_images(images, 120, 60, backend="numpy", quantize=codec)
    matched = fit_images(images, 120, 60, backend="numpy", quantize=codec,
                         matched_steps=30.0)
    scales = [s.meta["step_scale"] for s in matched.splats]
    assert scales[0] < scales[1]
    assert matched.splats[0].meta["fit_psnr"] > matched.splats[1].meta["fit_psnr"]
    assert matched.psnr[0] > fixed.psnr[0] + 1  # the smooth image keeps its fit
    for splats, image in zip(matched.splats, images):
        pipeline = record_codecs([codec], splats)
        assert pipeline[0]["colour_step"] == pytest.approx(0.05 * splats.meta["step_scale"])
        stored = decode_record(encode_record(splats, pipeline))
        assert stored.meta["step_scale"] == splats.meta["step_scale"]
        order = lambda p: p[np.lexsort(p.T.astype(np.float64)[::-1])]  # noqa: E731 (raster)
        assert np.array_equal(order(stored.params), order(splats.params))  # exactly the fit's
    assert record_codecs([codec], fixed.splats[0]) == [codec]  # no step_scale: as given
    with pytest.raises(ValueError, match="matched steps"):
        fit_images(images, 120, 1, matched_steps=30.0)  # no codec to scale
