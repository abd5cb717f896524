"""Command-line options of ``gsformat convert`` (defaults: what a user of the paper would pick)."""
from __future__ import annotations

import json
import os

# names in an output folder (beside each part-NNNNN/ folder's own PART_JSON and REJECTS)
CONVERT_JSON = "convert.json"
PART_JSON = "part.json"
REJECTS = "rejects.jsonl"
FAILURE_JSON = "failure.json"  # in a part folder: why its unit failed (no part.json then)
LOSSY_CODECS = ("gsformat.lattice", "gsformat.lattice-rans")  # --quantize-aware fits through these
LEGACY_CODECS = ("gsformat.quantize", "gsformat.entropy")    # readers decode them; convert refuses


def add_convert_arguments(p) -> None:
    p.add_argument("src", nargs="+",
                   help="image folder, WebDataset tars (several, globs, {a..b} or {a,b} "
                        "patterns, 'pipe:CMD'), Parquet files (likewise) or MDS dataset; a "
                        "local path or any URL "
                        "(file://, s3://, http(s)://, gs://, hf://, memory://, ...)")
    p.add_argument("out", help="output dataset directory or URL")
    p.add_argument("--source-format", choices=["auto", "folder", "webdataset", "mds",
                                                "parquet"], default="auto")
    p.add_argument("--image-column", default=None,
                   help="MDS and Parquet sources: the image column (Parquet: found by type)")
    for name, found in (("caption", "caption, text, txt"), ("label", "label, labels, cls"),
                        ("key", "key")):
        p.add_argument(f"--{name}-column", default=None,
                       help=f"Parquet sources: the {name} column (default: {found}, if there)")
    p.add_argument("--splats", type=int, default=1600, help="splat budget per image")
    p.add_argument("--iters", type=int, default=1000,
                   help="fitting iterations (fitting.fit.DEFAULT_ITERS, chosen from PSNR per "
                        "second in benchmarks/fit_bench.py)")
    p.add_argument("--size", type=int, default=224, help="canvas side after resizing")
    p.add_argument("--resize", choices=["center-crop", "pad", "keep"], default="center-crop")
    p.add_argument("--init", choices=["grid", "random"], default="grid")
    p.add_argument("--prune-threshold", type=float, default=0.0,
                   help="τ: remove splats whose BT.709 luminance of |colour| is below it")
    p.add_argument("--prune-at", type=float, default=0.8, help="fraction of iters, then re-fit")
    p.add_argument("--l1-colour", type=float, default=0.0, help="the paper's L1 colour term")
    p.add_argument("--codec", default="gsformat.planar",
                   help="codec id, 'raw', or a numcodecs JSON config list")
    p.add_argument("--quantize-aware", action="store_true",
                   help="with a lossy codec: after the fit, quantise the geometry, solve the "
                        "colours by least squares for it and round them with error feedback")
    # const: gsformat.fitting.solve.REFERENCE_PSNR, not imported (this parser loads without scipy)
    p.add_argument("--matched-steps", type=float, nargs="?", const=30.0, default=None,
                   metavar="DB", help="with --quantize-aware: the codec's steps are for a fit "
                   "of DB dB (30 if no value is given); each image's steps are scaled by its own "
                   "fit's error over that one's: finer for images fitted closely, coarser for "
                   "the rest (fewer bytes at the same mean PSNR; rd_bench.py)")
    p.add_argument("--compression", default="zstd", help="shard compression ('none' for none)")
    p.add_argument("--batch", type=int, default=8, help="images fitted together")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    p.add_argument("--keep-image", action="store_true",
                   help="also store the resized source image as a JPEG column (stage 1 needs it)")
    p.add_argument("--limit", type=int, default=None, help="convert at most this many images")
    p.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    p.add_argument("--strict", action="store_true",
                   help="merge no dataset unless every unit converted (default: a unit that "
                        "fails is recorded in summary.json, the others are merged, exit 1)")
    p.add_argument("--chunk-size", type=int, default=512,
                   help="images per part for folder sources, rows per part for Parquet "
                        "files of several row groups (the unit of resumption)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rank", type=int, default=None, help="this process's rank (or RANK, "
                                                          "SLURM_PROCID)")
    p.add_argument("--world-size", type=int, default=None, help="number of ranks (or WORLD_SIZE,"
                                                                " SLURM_NTASKS)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes on this node, each converting whole source units (default "
                        "1; the fitter's threads are shared out between them)")
    p.add_argument("--distributor", choices=["local", "ray"], default="local",
                   help="local: this process (or --workers processes); ray: every unit a Ray "
                        "task, on the cluster at RAY_ADDRESS or a local Ray with --workers CPUs "
                        "(GPU tasks with --device gpu); OUT must be reachable from every node")
    p.add_argument("--no-progress", action="store_true")


def parse_codecs(text: str) -> list[dict]:
    """'raw' | 'none' → []; a codec id → [{'id': id}]; JSON → a config or a list of them."""
    text = text.strip()
    if text in ("raw", "none", ""):
        return []
    if text.startswith(("[", "{")):
        value = json.loads(text)
        return value if isinstance(value, list) else [value]
    return [{"id": text}]


def column_options(args) -> dict:
    """The Parquet column options given (``--caption-column`` …): for `open_source`, and for
    the settings (only those given: earlier outputs keep resuming)."""
    names = ("caption_column", "label_column", "key_column")
    return {name: getattr(args, name) for name in names if getattr(args, name, None)}


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """--rank/--world-size, else RANK/WORLD_SIZE, else SLURM_PROCID/SLURM_NTASKS, else (0, 1)."""
    env = os.environ
    if rank is None:
        rank = int(env.get("RANK", env.get("SLURM_PROCID", 0)))
    if world_size is None:
        world_size = int(env.get("WORLD_SIZE", env.get("SLURM_NTASKS", 1)))
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return rank, world_size
