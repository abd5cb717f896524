"""A short PyTorch loop on splat shards streamed from a URL: once on splats, once on pixels.

    python examples/train_loop.py --data demo-out/splats          # after `make demo`
    python examples/train_loop.py --data s3://bucket/splats       # S3_ENDPOINT_URL etc. apply

Part 1 trains a tiny set-encoder on the splats themselves (padded batch + mask). Part 2 asks the
loader to rasterise (`render=(H, W)`) so an unchanged pixel model trains from the same shards.
The target is a toy one (the image's mean colour) so the loop runs on any dataset.
"""
from __future__ import annotations

import argparse
import tempfile

import torch
from torch import nn
from torch.utils.data import DataLoader, default_collate

from gsformat.loaders import SplatAugment, SplatDataset, collate_splats


class SplatSetEncoder(nn.Module):
    """Per-splat MLP, masked mean pool, linear head."""

    def __init__(self, out_dim: int = 3):
        super().__init__()
        self.point = nn.Sequential(nn.Linear(8, 64), nn.GELU(), nn.Linear(64, 64))
        self.head = nn.Linear(64, out_dim)

    def forward(self, splats, mask):  # [B, N, 8], [B, N]
        features = self.point(splats) * mask[..., None]
        pooled = features.sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        return self.head(pooled)


def main(data: str = "demo-out/splats", steps: int = 5, batch_size: int = 4, size: int = 64):
    cache = tempfile.mkdtemp(prefix="gsformat-example-")
    torch.manual_seed(0)

    # ---- part 1: splats in ------------------------------------------------------------------
    dataset = SplatDataset(remote=data, local=f"{cache}/splats", shuffle=True,
                           batch_size=batch_size, augment=SplatAugment(hflip=0.5))
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_splats)
    model = SplatSetEncoder()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step = 0
    while step < steps:
        for batch in loader:
            # toy target: the mean colour of the image, computed from its own splats
            target = (batch["splats"][..., 5:8] * batch["mask"][..., None]).sum(1) / \
                batch["mask"].sum(1, keepdim=True)
            loss = nn.functional.mse_loss(model(batch["splats"], batch["mask"]), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            print(f"splats  step {step}: loss {loss.item():.4f} "
                  f"(batch {tuple(batch['splats'].shape)})")
            if step == steps:
                break

    # ---- part 2: pixels in (rendered by the loader) -------------------------------------------
    dataset = SplatDataset(remote=data, local=f"{cache}/pixels", shuffle=True,
                           batch_size=batch_size, render=(size, size))
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=default_collate)
    cnn = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.GELU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(16, 3))
    optimizer = torch.optim.AdamW(cnn.parameters(), lr=1e-3)
    step = 0
    while step < steps:
        for batch in loader:
            target = batch["rendered"].mean(dim=(2, 3))
            loss = nn.functional.mse_loss(cnn(batch["rendered"]), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            print(f"pixels  step {step}: loss {loss.item():.4f} "
                  f"(batch {tuple(batch['image'].shape)})")
            if step == steps:
                break


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="demo-out/splats")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    main(**vars(parser.parse_args()))
