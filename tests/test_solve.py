"""Re-fit after quantisation (gsformat.fitting.solve): the fast rounding against its twin, the
least-squares colours against a dense solve, and the whole step on a real photograph."""
import numpy as np
import pytest

from gsformat import SplatSet, decode_record, encode_record
from gsformat.codecs import Lattice
from gsformat.fitting import fit_images
from gsformat.fitting.engine import evaluate_psnr
from gsformat.format.render_math import to_pixels
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
