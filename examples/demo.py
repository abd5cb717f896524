"""The main job on bundled photographs: convert → validate → stream back → picture + summary.

Runs offline on 2 CPU cores in a few minutes (``make demo``). Every step is the public CLI or
API a user would call on their own data.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

from gsformat.fitting.fit import DEFAULT_ITERS  # convert's default


def build_input_folder(folder: str) -> int:
    """The photographs scikit-image and scikit-learn ship, as an image folder with captions."""
    from PIL import Image
    from gsformat.testing.photos import PHOTOS, load_raw
    os.makedirs(folder, exist_ok=True)
    for name in PHOTOS:
        Image.fromarray(load_raw(name)).save(os.path.join(folder, f"{name}.jpg"), quality=95)
        with open(os.path.join(folder, f"{name}.txt"), "w") as f:
            f.write(f"a photo: {name.replace('_', ' ')}")
    return len(PHOTOS)


def stream_back(out: str, cache: str) -> dict:
    """Read the dataset through the streaming loader and compare renders with stored images."""
    import torch
    from torch.utils.data import DataLoader
    from gsformat import render_splats
    from gsformat.loaders import SplatDataset, collate_splats
    dataset = SplatDataset(local=cache, remote=out, shuffle=False, batch_size=4)
    loader = DataLoader(dataset, batch_size=4, collate_fn=collate_splats)
    psnrs, n_splats = [], []
    for batch in loader:
        renders = render_splats(batch["splats"], batch["mask"], batch["height"][0].item(),
                                batch["width"][0].item())
        mse = ((renders - batch["image"]) ** 2).flatten(1).mean(1)
        psnrs += (10 * torch.log10(1 / mse)).tolist()
        n_splats += batch["n_splats"].tolist()
    return {"samples_streamed": len(psnrs), "psnr_vs_stored_image_mean": float(np.mean(psnrs)),
            "splats_mean": float(np.mean(n_splats))}


def main(out: str = "demo-out", splats: int = 1600, iters: int = DEFAULT_ITERS,
         size: int = 224) -> int:
    from gsformat.cli import main as gsformat
    start = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    folder, dataset = os.path.join(out, "input"), os.path.join(out, "splats")
    print(f"[1/5] {build_input_folder(folder)} bundled photographs → {folder}")
    print(f"[2/5] gsformat convert ({splats} splats, {iters} iterations, {size}²)")
    code = gsformat(["convert", folder, dataset, "--splats", str(splats), "--iters", str(iters),
                     "--size", str(size), "--keep-image", "--batch", "4"])
    if code:
        return code
    print("[3/5] gsformat validate")
    if gsformat(["validate", dataset]):
        return 1
    print("[4/5] streaming back through gsformat.loaders.SplatDataset")
    streamed = stream_back(dataset, os.path.join(out, "cache"))
    picture = os.path.join(out, "reconstruction.png")
    print(f"[5/5] gsformat render → {picture}")
    gsformat(["render", dataset, "--count", "10", "-o", picture])
    with open(os.path.join(dataset, "summary.json")) as f:
        summary = json.load(f)
    summary.update(streamed, demo_seconds=round(time.perf_counter() - start, 1),
                   picture=picture)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    # convert printed its summary above; what the demo adds to it, and where the whole is
    added = dict(streamed, demo_seconds=summary["demo_seconds"], picture=picture,
                 summary=os.path.join(out, "summary.json"))
    print(json.dumps(added, indent=2))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo-out")
    parser.add_argument("--splats", type=int, default=1600)
    parser.add_argument("--iters", type=int, default=DEFAULT_ITERS)
    parser.add_argument("--size", type=int, default=224)
    sys.exit(main(**vars(parser.parse_args())))
