"""gsformat.train: stem, model wrapper, stages, resumption, zero-shot, errors, digits slice."""
import json
import os

import numpy as np
import pytest
import torch

from gsformat.train.config import TrainConfig
from gsformat.train.stem import SplatStem


def test_stem_variable_counts_to_m_tokens_and_respects_padding():
    torch.manual_seed(0)
    stem = SplatStem(out_width=48, n_latents=7, dim=32, n_layers=2, n_heads=4, n_bands=4).eval()
    splats = torch.rand(2, 30, 8) * 0.5 + 0.05
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, 20:] = False
    out = stem(splats, mask)
    assert out.shape == (2, 7, 48)
    # padding is ignored: replacing padded splats with garbage changes nothing
    garbage = splats.clone()
    garbage[1, 20:] = 9.0
    torch.testing.assert_close(stem(garbage, mask), out)
    # and the second image equals itself encoded without padding
    torch.testing.assert_close(stem(splats[1:, :20], None), out[1:], atol=1e-5, rtol=1e-4)


@pytest.mark.slow  # builds the 150 M-parameter ViT-B-16 (a few seconds, ~600 MB)
def test_describe_vit_b16_stage2_fraction():
    from gsformat.train.model import describe
    info = describe("ViT-B-16")
    assert 0.097 <= info["clip"]["trainable_fraction"] <= 0.138
    assert info["distill"]["trainable_params"] == info["stem_params"]


@pytest.fixture(scope="module")
def digits_dataset(tmp_path_factory):
    """A small converted digits slice with stored images, captions and labels."""
    from gsformat.testing.digits import build_folders
    from gsformat.cli import main
    root = tmp_path_factory.mktemp("digits")
    build_folders(str(root / "images"), limit=120)
    assert main(["convert", str(root / "images" / "train"), str(root / "splats"), "--splats",
                 "32", "--iters", "20", "--size", "32", "--keep-image", "--no-progress",
                 "--batch", "64"]) == 0
    return str(root)


def tiny(tmp_path, digits_dataset, **kw):
    values = dict(model="gs-tiny", teacher="random", n_latents=64, stem_dim=32, stem_layers=1,
                  batch_size=16,
                  steps=6, warmup=1, ckpt_every=3, data=os.path.join(digits_dataset, "splats"),
                  out=str(tmp_path / "run"), log_every=1)
    values.update(kw)
    return TrainConfig(**values)


def test_resume_continues_the_loss_curve(tmp_path, digits_dataset):
    from gsformat.train.loop import train
    full = tiny(tmp_path, digits_dataset, stage="distill", out=str(tmp_path / "full"))
    train(full)
    losses = [json.loads(l)["loss"] for l in open(tmp_path / "full" / "metrics.jsonl")]
    resumed = tiny(tmp_path, digits_dataset, stage="distill", out=str(tmp_path / "resumed"),
                   resume=str(tmp_path / "full" / "step000003.pt"))
    train(resumed)
    rest = [json.loads(l) for l in open(tmp_path / "resumed" / "metrics.jsonl")]
    assert [r["step"] for r in rest] == [4, 5, 6]  # continues, does not restart at 1
    np.testing.assert_allclose([r["loss"] for r in rest], losses[3:], rtol=1e-4)
    assert os.path.exists(tmp_path / "full" / "curves.png")


def test_stage2_trains_only_the_chosen_groups(tmp_path, digits_dataset):
    from gsformat.train.loop import build_model, load_checkpoint, train
    cfg = tiny(tmp_path, digits_dataset, stage="clip", steps=2)
    torch.manual_seed(cfg.seed)  # as train() does before building the model
    before = {k: v.clone() for k, v in build_model(cfg).state_dict().items()}
    train(cfg)
    after = load_checkpoint(str(tmp_path / "run" / "final.pt"))["model"]
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert any(k.startswith("stem.") for k in changed)
    assert any("resblocks.0." in k for k in changed) and any("resblocks.1." in k for k in changed)
    assert not any("resblocks.2." in k or "resblocks.3." in k for k in changed)
    assert not any(k.startswith("clip.transformer.") for k in changed)  # text tower frozen


def test_errors_before_training(tmp_path, digits_dataset, fitted_splats):
    from gsformat.io.dataset_files import SplatWriter
    from gsformat.train.loop import train
    from gsformat.train.zeroshot import evaluate
    bare = str(tmp_path / "bare")
    with SplatWriter(bare) as writer:
        writer.write("a", fitted_splats[0])
    with pytest.raises(ValueError, match="needs column.*caption"):
        train(tiny(tmp_path, digits_dataset, stage="clip", data=bare))
    with pytest.raises(ValueError, match="class names"):
        evaluate(bare, model="gs-tiny", n_latents=64)
    other = tiny(tmp_path, digits_dataset, stage="distill", steps=1, n_latents=16,
                 out=str(tmp_path / "other"))
    train(other)
    with pytest.raises(ValueError, match="checkpoint of model"):
        train(tiny(tmp_path, digits_dataset, stage="clip", init=str(tmp_path / "other" /
                                                                      "final.pt")))


def test_cli_describe_and_zeroshot(tmp_path, digits_dataset, capsys):
    from gsformat.train.cli import main
    assert main(["describe", "--model", "gs-tiny", "--n-latents", "64"]) == 0
    assert json.loads(capsys.readouterr().out)["clip"]["trainable_params"] > 0
    assert main(["distill", "--model", "gs-tiny", "--teacher", "random", "--n-latents", "64",
                 "--steps", "2", "--batch-size", "16", "--data", os.path.join(digits_dataset, "splats"),
                 "--out", str(tmp_path / "cli")]) == 0
    capsys.readouterr()
    assert main(["zeroshot", "--data", os.path.join(digits_dataset, "splats"), "--init",
                 str(tmp_path / "cli" / "final.pt")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["classification"]["n_classes"] == 10
    from gsformat.io.dataset_files import read_manifest
    n = read_manifest(os.path.join(digits_dataset, "splats"))["n_samples"]
    cls, ret = result["classification"], result["retrieval"]
    assert result["n_samples"] == n  # every sample evaluated once
    assert abs(cls["top1"] * n - round(cls["top1"] * n)) < 1e-6  # a count of hits over n
    assert 0 <= cls["top1"] <= cls["top5"] <= 1 and cls["chance"] == 0.1
    assert ret["image_to_text_R@1"] <= ret["image_to_text_R@5"] <= ret["image_to_text_R@10"]


def test_grouped_loss_is_clip_loss_with_distinct_captions_and_merges_equal_ones():
    from open_clip import ClipLoss
    from gsformat.train.losses import grouped_clip_loss, positive_keys

    def caption_clip_loss(images, texts, scale, captions, labels=None):
        return grouped_clip_loss(images, texts, scale, positive_keys(captions, labels))
    torch.manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(10.0)
    distinct = [f"caption {i}" for i in range(6)]
    torch.testing.assert_close(caption_clip_loss(images, texts, scale, distinct),
                               ClipLoss()(images, texts, scale))
    # two images of one class, each beside its own copy of the caption: a pair that ClipLoss
    # calls a negative is a positive here, so a model that confuses them loses less
    same = ["a 3", "a 3", "a 4", "a 5", "a 6", "a 7"]
    swapped = texts.clone()
    swapped[[0, 1]] = texts[[1, 0]]
    assert caption_clip_loss(images, swapped, scale, same) < ClipLoss()(images, swapped, scale)
    # labels: two templates of one class are positives; unlabelled (-1) samples keep captions
    templates = ["a 3", "the 3", "a 4", "a 5", "a 6", "a 7"]
    labels = torch.tensor([3, 3, 4, 5, -1, -1])
    assert positive_keys(templates, labels)[:2] == ["label:3", "label:3"]
    torch.testing.assert_close(caption_clip_loss(images, swapped, scale, templates, labels),
                               caption_clip_loss(images, swapped, scale, same))
    assert caption_clip_loss(images, swapped, scale, templates) > \
        caption_clip_loss(images, swapped, scale, templates, labels)


def test_loader_cache_is_per_dataset(tmp_path, digits_dataset):
    """One cache root, two datasets with the same shard names (one checkpoint evaluated on
    several): each loader reads its own dataset, not the shards cached for the other."""
    from gsformat.cli import main
    from gsformat.train.data import make_loader
    other = str(tmp_path / "splats16")
    assert main(["convert", os.path.join(digits_dataset, "images", "train"), other, "--splats",
                 "16", "--iters", "5", "--size", "32", "--no-progress", "--batch", "64"]) == 0
    cache = str(tmp_path / "cache")
    for data, n in ((os.path.join(digits_dataset, "splats"), 32), (other, 16)):
        batch = next(iter(make_loader(data, cache, 8, shuffle=False, load_image=False)))
        assert batch["splats"].shape[1] == n, data
    # make_loader(load_images=) is load_image='s old name: it still works, warning, until 0.3
    kept = os.path.join(digits_dataset, "splats")  # converted with --keep-image
    with pytest.warns(DeprecationWarning, match="load_image"):
        loader = make_loader(kept, cache, 8, shuffle=False, load_images=False)
    assert "image" not in next(iter(loader))
    stored = next(iter(make_loader(kept, cache, 8, shuffle=False)))
    assert stored["image"].shape[:2] == (8, 3)  # the stored image, decoded (--keep-image)


def test_training_augmentation_changes_the_splats_not_the_evaluation(tmp_path, digits_dataset):
    """--splat-dropout / --position-jitter reach the training loader (fewer, moved splats);
    a stage trains with them; zero-shot evaluation of its checkpoint sees the stored splats."""
    import math
    from gsformat.loaders import SplatAugment
    from gsformat.train.data import make_loader
    from gsformat.train.loop import load_checkpoint, train
    data = os.path.join(digits_dataset, "splats")
    plain = next(iter(make_loader(data, str(tmp_path / "c"), 16, shuffle=False,
                                  load_image=False)))
    dropped = next(iter(make_loader(data, str(tmp_path / "c"), 16, shuffle=False,
                                    load_image=False,
                                    augment=SplatAugment(hflip=0.0, dropout=0.5))))
    assert (plain["n_splats"] == 32).all() and dropped["n_splats"].float().mean() < 24
    result = train(tiny(tmp_path, digits_dataset, stage="distill", steps=2,
                        splat_dropout=0.3, position_jitter=0.01))
    assert math.isfinite(result["last_loss"])
    assert load_checkpoint(result["checkpoint"])["config"]["splat_dropout"] == 0.3
