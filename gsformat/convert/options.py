"""``gsformat convert``'s options: one frozen `ConvertOptions`, built and checked once from the
command line (`ConvertOptions.from_args`) before anything is written, then handed to units,
worker processes and Ray tasks. Each field carries its own help (``field(metadata=…)``): the
parser is drawn from the fields (`add_convert_arguments`). Defaults: what a user of the paper
would pick. The module loads without the fitter (``fitting.defaults`` holds what it names)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field

from ..fitting.defaults import DEFAULT_ITERS, REFERENCE_PSNR
from ..fitting.images import MIN_SIDE

# names in an output folder (beside each part-NNNNN/ folder's own PART_JSON and REJECTS)
CONVERT_JSON = "convert.json"
PART_JSON = "part.json"
REJECTS = "rejects.jsonl"
FAILURE_JSON = "failure.json"  # in a part folder: why its unit failed (no part.json then)
LOSSY_CODECS = ("gsformat.lattice", "gsformat.lattice-rans")  # --quantize-aware fits through these
LEGACY_CODECS = ("gsformat.quantize", "gsformat.entropy")    # readers decode them; convert refuses
MAX_SIZE = 8192    # --size: a 8192² float32 canvas batch is already ~800 MiB per image in the fit
ZSTD_LEVELS = range(1, 23)  # --compression zstd:N (gsformat's readers decompress zstd only)
DEVICES = {"auto": "auto", "cpu": "numpy", "gpu": "cupy"}  # --device → the fitter's backend


def option(help: str, setting: bool = False, **argparse_kwargs):
    """A field's CLI help and argparse extras; ``setting``: it decides the output (a run with
    another value is not a resume of this one)."""
    return {"help": help, "setting": setting, "argparse": argparse_kwargs}


def _field(default, help: str, setting: bool = False, **argparse_kwargs):
    return field(default=default, metadata=option(help, setting, **argparse_kwargs))


@dataclass(frozen=True)
class ConvertOptions:
    src: tuple = field(metadata=option(
        "image folder, WebDataset tars (several, globs, {a..b} or {a,b} patterns, 'pipe:CMD'), "
        "Parquet files (likewise) or MDS dataset; a local path or any URL (file://, s3://, "
        "http(s)://, gs://, hf://, memory://, ...)", True, nargs="+"))
    out: str = field(metadata=option("output dataset directory or URL"))
    # what is read
    source_format: str = _field("auto", "what SRC is (auto: detected)", True,
                                choices=["auto", "folder", "webdataset", "mds", "parquet"])
    image_column: str | None = _field(None, "MDS and Parquet sources: the image column "
                                            "(Parquet: found by type)")
    caption_column: str | None = _field(None, "Parquet sources: the caption column (default: "
                                              "caption, text, txt, if there)")
    label_column: str | None = _field(None, "Parquet sources: the label column (default: "
                                            "label, labels, cls, if there)")
    key_column: str | None = _field(None, "Parquet sources: the key column (default: key, if "
                                          "there)")
    limit: int | None = _field(None, "convert at most this many images", True)
    chunk_size: int = _field(512, "images per part for folder sources, rows per part for "
                                  "Parquet files of several row groups (the unit of "
                                  "resumption)", True)
    # the fit
    splats: int = _field(1600, "splat budget per image", True)
    iters: int = _field(DEFAULT_ITERS, "fitting iterations (the fitter's own, chosen by "
                                       "benchmarks/fit_bench.py; images still rising at the "
                                       "end get up to 3 cycles of half as many more, each "
                                       "while the last one paid)", True)
    size: int = _field(224, "canvas side after resizing (smaller images are upscaled)", True)
    resize: str = _field("center-crop", "to a square canvas", True,
                         choices=["center-crop", "pad", "keep"])
    init: str = _field("grid", "initial splat placement", True, choices=["grid", "random"])
    prune_threshold: float = _field(0.0, "τ: remove splats whose BT.709 luminance of |colour| "
                                         "is below it", True)
    prune_at: float = _field(0.8, "fraction of iters, then re-fit", True)
    l1_colour: float = _field(0.0, "the paper's L1 colour term", True)
    seed: int = _field(0, "random seed (with each batch's unit and first key)", True)
    batch: int = _field(8, "images fitted together")
    device: str = _field("auto", "where the fit runs", choices=list(DEVICES))
    # what is written
    codec: str = _field("gsformat.planar", "codec id, 'raw', or a numcodecs JSON config list")
    quantize_aware: bool = _field(False, "with a lossy codec: after the fit, quantise the "
                                         "geometry, solve the colours by least squares for it "
                                         "and round them with error feedback", True)
    matched_steps: float | None = _field(
        None, "with --quantize-aware: the codec's steps are for a fit of DB dB (30 if no value "
              "is given); each image's steps are scaled by its own fit's error over that one's: "
              "finer for images fitted closely, coarser for the rest (fewer bytes at the same "
              "mean PSNR; rd_bench.py)", nargs="?", const=REFERENCE_PSNR, metavar="DB")
    compression: str = _field("zstd", "shard compression ('none' for none)", True)
    keep_image: bool = _field(False, "also store the resized source image as a JPEG column "
                                     "(stage 1 needs it)", True)
    # how the run goes
    overwrite: bool = _field(False, "start over instead of resuming")
    strict: bool = _field(False, "merge no dataset unless every unit converted (default: a unit "
                                 "that fails is recorded in summary.json, the others are "
                                 "merged, exit 1)")
    rank: int | None = _field(None, "this process's rank (or RANK, SLURM_PROCID)")
    world_size: int | None = _field(None, "number of ranks (or WORLD_SIZE, SLURM_NTASKS)", True)
    workers: int = _field(1, "processes on this node, each converting whole source units (the "
                             "fitter's threads are shared out between them)")
    distributor: str = _field("local", "local: this process (or --workers processes); ray: "
                                       "every unit a Ray task, on the cluster at RAY_ADDRESS or "
                                       "a local Ray with --workers CPUs (GPU tasks with --device "
                                       "gpu); OUT must be reachable from every node",
                              choices=["local", "ray"])
    no_progress: bool = _field(False, "no progress bar")

    @classmethod
    def from_args(cls, args) -> "ConvertOptions":
        """From an argparse namespace (or anything with the fields as attributes): ranks
        resolved from the environment, every value checked (`check`). ValueError (one line)."""
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
        values["src"] = tuple([values["src"]] if isinstance(values["src"], str)
                              else values["src"])
        values["rank"], values["world_size"] = resolve_rank(values["rank"],
                                                            values["world_size"])
        options = cls(**values)
        options.check()
        return options

    # derived values: one place each
    @property
    def codecs(self) -> list[dict]:
        """The codec pipeline's configs (``--codec`` parsed)."""
        return parse_codecs(self.codec)

    @property
    def lossy_codec(self) -> dict | None:
        """The lossy codec the fit quantises through (``--quantize-aware``), else None."""
        if not self.quantize_aware:
            return None
        return next((c for c in self.codecs if c.get("id") in LOSSY_CODECS), None)

    @property
    def backend(self) -> str:
        return DEVICES[self.device]

    @property
    def shard_compression(self) -> str | None:
        return None if self.compression in ("none", "") else self.compression

    @property
    def parquet_columns(self) -> dict:
        """The Parquet column options given (for `open_source`, and the settings: only those
        given, so that earlier outputs keep resuming)."""
        names = ("caption_column", "label_column", "key_column")
        return {name: getattr(self, name) for name in names if getattr(self, name)}

    def settings(self) -> dict:
        """Everything that decides the output (the fields marked ``setting``); resuming
        requires the same settings (their hash names the parts)."""
        settings = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                    if f.metadata.get("setting")}
        settings["src"] = self.src[0] if len(self.src) == 1 else list(self.src)
        settings["codecs"] = self.codecs
        settings.update(self.parquet_columns)  # (absent unless given: earlier outputs resume)
        if self.quantize_aware:  # (written since 0.1 with its one value: outputs resume)
            settings["quantize_method"] = "solve"
        if self.matched_steps is not None:
            settings["matched_steps"] = self.matched_steps
        return settings

    def check(self) -> None:
        """Every option checked before anything is written or fitted (ValueError, one line)."""
        _check_numbers(self)
        _check_codecs(self)
        if (self.workers > 1 or self.distributor != "local") and self.limit is not None:
            raise ValueError("--limit needs one local worker (it counts images in source order)")
        if self.distributor == "ray":
            try:
                import ray  # noqa: F401
            except ImportError:
                raise ValueError("--distributor ray needs Ray (pip install 'gsformat[ray]')") \
                    from None
        if self.device == "gpu":
            from ..fitting.backend import cupy_available
            if not cupy_available():
                raise ValueError("--device gpu needs CuPy and a CUDA GPU (pip install "
                                 "'gsformat[gpu]'); none is available here (use --device cpu)")
        from ..io import storage
        if not storage.is_remote(self.out) and os.path.exists(self.out) \
                and not os.path.isdir(self.out):
            raise ValueError(f"OUT {self.out} is a file, not a directory")


def _check_numbers(o: ConvertOptions) -> None:
    for name, value, low, high in (("--splats", o.splats, 1, None), ("--iters", o.iters, 0, None),
                                   ("--size", o.size, MIN_SIDE, MAX_SIZE),
                                   ("--batch", o.batch, 1, None),
                                   ("--chunk-size", o.chunk_size, 1, None),
                                   ("--workers", o.workers, 1, None),
                                   ("--limit", o.limit, 0, None)):
        if value is not None and (value < low or (high is not None and value > high)):
            span = f"≥ {low}" if high is None else f"in [{low}, {high}]"
            raise ValueError(f"{name} must be {span}, got {value}")
    if not 0 <= o.prune_at <= 1 or not math.isfinite(o.prune_threshold):
        raise ValueError("--prune-at must be in [0, 1] and --prune-threshold finite")
    if not (math.isfinite(o.l1_colour) and o.l1_colour >= 0):
        raise ValueError(f"--l1-colour must be finite and ≥ 0, got {o.l1_colour}")
    if o.resize != "keep" and o.size * o.size < o.splats:
        raise ValueError(f"--splats {o.splats} needs a canvas of at least "
                         f"{math.isqrt(o.splats - 1) + 1}² pixels (--size {o.size} gives "
                         f"{o.size * o.size}): every image would be rejected")
    level = o.compression.partition(":")[2]
    if not (o.compression in ("none", "", "zstd") or (
            o.compression.startswith("zstd:") and level.isdigit()
            and int(level) in ZSTD_LEVELS)):
        raise ValueError(f"--compression must be none, zstd or zstd:LEVEL (LEVEL 1–22; "
                         f"gsformat's readers decompress zstd only), got {o.compression!r}")


def _check_codecs(o: ConvertOptions) -> None:
    from ..core.record import get_codec
    try:
        codecs = o.codecs
    except ValueError as exc:
        raise ValueError(f"--codec is not a codec id or JSON: {exc}") from None
    for config in codecs:
        if not isinstance(config, dict) or not isinstance(config.get("id"), str):
            raise ValueError(f"--codec: each codec config must be a JSON object with an 'id', "
                             f"got {config!r}")
        if config["id"] in LEGACY_CODECS:
            raise ValueError(f"--codec: {config['id']} is a legacy codec (readers decode it, "
                             f"writers should not write it: SPEC.md § 5); use "
                             f"gsformat.lattice-rans (lossy) or gsformat.planar (lossless)")
        get_codec(config)  # FormatError (one line) for an unknown id or a bad parameter
    lossy = any(c["id"] in LOSSY_CODECS for c in codecs)
    if o.quantize_aware and not lossy:
        raise ValueError(f"--quantize-aware fits through a lossy codec ({', '.join(LOSSY_CODECS)}"
                         f"); --codec {o.codec} is lossless: drop --quantize-aware, or "
                         f"choose --codec gsformat.lattice-rans")
    if o.matched_steps is not None and not (o.quantize_aware and lossy
                                            and math.isfinite(o.matched_steps)):
        raise ValueError("--matched-steps needs --quantize-aware, a lossy codec (--codec "
                         "gsformat.lattice-rans) and a finite PSNR")


def add_convert_arguments(parser) -> None:
    """The command line, drawn from `ConvertOptions`' fields (their help, defaults, choices)."""
    for f in dataclasses.fields(ConvertOptions):
        extra = dict(f.metadata["argparse"])
        if f.name in ("src", "out"):
            parser.add_argument(f.name, help=f.metadata["help"], **extra)
            continue
        kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], None)
        if f.default is False:
            parser.add_argument(_flag(f.name), action="store_true", help=f.metadata["help"])
            continue
        parser.add_argument(_flag(f.name), default=f.default, help=f.metadata["help"],
                            **({"type": kind} if kind else {}), **extra)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_codecs(text: str) -> list[dict]:
    """'raw' | 'none' → []; a codec id → [{'id': id}]; JSON → a config or a list of them."""
    text = text.strip()
    if text in ("raw", "none", ""):
        return []
    if text.startswith(("[", "{")):
        value = json.loads(text)
        return value if isinstance(value, list) else [value]
    return [{"id": text}]


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
