"""gsformat.render_splats (torch) agrees with the fitter's renderer and the dense reference."""
import numpy as np
import pytest
import torch

from gsformat import render_splats
from gsformat.fitting import fit_images, render_splatsets
from conftest import photo


@pytest.fixture(scope="module")
def fitted():
    return fit_images(np.stack([photo("astronaut", 40), photo("rocket", 40)]), 120, 60,
                      backend="numpy").splats


def test_agrees_with_fitter_renderer(fitted):
    torch_image = render_splats(fitted, clamp=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(torch_image, render_splatsets(fitted), atol=1e-4)


def test_padding_mask_and_chunking(fitted):
    from gsformat.loaders import collate_splats
    batch = collate_splats([{"splats": torch.from_numpy(s.params), "height": 40, "width": 40}
                            for s in [fitted[0], fitted[1]]], pad_to=200)
    full = render_splats(batch["splats"], batch["mask"], 40, 40)
    chunked = render_splats(batch["splats"], batch["mask"], 40, 40, max_elements=5000)
    torch.testing.assert_close(full, chunked, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full, render_splats(fitted), atol=1e-5, rtol=1e-5)


def test_any_resolution(fitted):
    big = render_splats(fitted[0], height=80, width=120)
    assert big.shape == (1, 3, 80, 120)
    # the same continuous image: downsampling the 2× render approximates the 1× render
    small = render_splats(fitted[0], height=40, width=60)
    pooled = torch.nn.functional.avg_pool2d(big, 2)
    assert (pooled - small).abs().mean() < 0.02


def test_tensor_input_needs_a_size(fitted):
    with pytest.raises(ValueError, match="height and width"):
        render_splats(torch.zeros(3, 8))


def test_windowed_path_matches_dense_twin(fitted):
    from gsformat.render import _prepare, _render_dense_chunks, _to_pixel_units
    params, mask, h, w = _prepare(fitted, None, 96, 80)
    colours = params[..., 5:8] * mask[..., None]
    px = _to_pixel_units(params, h, w)
    dense = _render_dense_chunks(px, colours, h, w, 1 << 16).permute(0, 3, 1, 2)  # chunked
    windowed = render_splats(fitted, height=96, width=80, clamp=False)
    torch.testing.assert_close(windowed, dense, atol=1e-5, rtol=1e-5)
    # a huge splat makes the window cover the canvas: the dense path takes over, same result
    big = fitted[0].params.copy()
    big[0, 2] = big[0, 4] = 0.4
    from gsformat import SplatSet
    one = SplatSet(big, 40, 40)
    p, m, _, _ = _prepare(one, None, 40, 40)
    torch.testing.assert_close(render_splats(one, clamp=False),
                               _render_dense_chunks(_to_pixel_units(p, 40, 40), p[..., 5:8],
                                                    40, 40, 1 << 22).permute(0, 3, 1, 2))
