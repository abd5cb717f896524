"""The training loop for both stages, in the order it runs: `train` → `check_config` (before
anything heavy) → `set_up` (processes, --out and the checkpoint to resume, teacher, student,
optimiser, loader) → `train_steps` (each step: `distill_loss` or `clip_loss` → backward →
optimiser and LR → `log_step` → a checkpoint every ``ckpt_every``) → final.pt.

Stage 1 (distill): only the stem trains; loss = ‖ŝ − t̂‖² between the L2-normalised embeddings
of the splat path (ŝ) and of a frozen RGB teacher on the stored image (t̂); cosine reported.
The teacher is ``--teacher MODEL --teacher-pretrained W`` (another open_clip model; a linear head
maps to its width when it differs), else the student's own tower with the weights of
``--pretrained`` or ``--init`` (``--teacher random``: random weights, for tests only).
Stage 2 (clip): a contrastive loss on (splat embedding, caption embedding) — equal captions, or
equal labels, as positives (`losses`), or open_clip's ClipLoss; trainable = the groups in
``config.unfreeze`` (stem, first two blocks, final norm, projection by default).
``input="rgb"`` trains the plain RGB CLIP on stored images (the teacher) instead.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process takes its share of each global batch
(streaming partitions the samples), DistributedDataParallel averages the gradients and ClipLoss
gathers the features of every rank, so a step is the step of one process on the global batch;
rank 0 logs the all-reduced loss and writes the checkpoints.
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass

import torch

from ..loaders import SplatAugment
from .config import TrainConfig
from .data import check_dataset, image_size_of, make_loader, pixels_for
from .losses import grouped_clip_loss, positive_keys
from .model import SplatCLIP, create_clip, read_model_config, resolve_weights, set_trainable

RUN_FILES = ("metrics.jsonl", "curves.png", "final.pt")


def train(cfg: TrainConfig) -> dict:
    """One run, top to bottom: check → set up (models, optimiser, loader) → steps → the final
    checkpoint. Returns ``{"checkpoint": final.pt, "steps", "last_loss"}``."""
    check_config(cfg)
    run = set_up(cfg)
    record = train_steps(run)
    final = os.path.join(cfg.out, "final.pt")
    save_checkpoint(final, cfg, run.model, run.optimizer, run.scheduler, run.loader, run.step,
                    run.rank, run.world)
    if run.log is not None:
        run.log.close()
        from .plot import plot_metrics
        plot_metrics(os.path.join(cfg.out, "metrics.jsonl"), os.path.join(cfg.out, "curves.png"))
    return {"checkpoint": final, "steps": run.step, "last_loss": record["loss"]}


def distills(cfg: TrainConfig) -> bool:
    """Stage 1 on splats: the splat path learns a frozen RGB teacher's embedding."""
    return cfg.stage == "distill" and cfg.input != "rgb"


def check_config(cfg: TrainConfig) -> None:
    """Everything that can be said before anything heavy: the settings, the weights (a missing
    file or an uncached tag: said now, not after a build) and the dataset's columns."""
    if cfg.stage not in ("distill", "clip"):
        raise ValueError(f"stage must be distill or clip, got {cfg.stage!r}")
    if cfg.clip_loss not in ("captions", "labels", "pairs"):
        raise ValueError(f"clip_loss must be captions, labels or pairs, got {cfg.clip_loss!r}")
    resolve_weights(cfg.model, cfg.pretrained, "--pretrained")
    if distills(cfg) and cfg.teacher not in (None, "random"):
        resolve_weights(cfg.teacher, cfg.teacher_pretrained, "--teacher-pretrained")
    need = ("caption",) if cfg.stage == "clip" else ()
    need += ("label",) if cfg.stage == "clip" and cfg.clip_loss == "labels" else ()
    need += ("image",) if cfg.input == "rgb" else ()
    check_dataset(cfg.data, need, f"stage {cfg.stage} ({cfg.input})")


@dataclass
class Run:
    """What the steps need, built once by `set_up`."""
    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    teacher: torch.nn.Module | None  # stage 1's frozen RGB teacher (None: the student's tower)
    model: SplatCLIP
    step_model: torch.nn.Module      # the model, or its DistributedDataParallel wrapper
    params: list                     # the trainable parameters
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    loader: object                   # a StreamingDataLoader (its state is the data position)
    tokenizer: object
    pairs_loss: torch.nn.Module      # open_clip's ClipLoss (--clip-loss pairs)
    log: object | None               # metrics.jsonl (rank 0)
    step: int = 0


def set_up(cfg: TrainConfig) -> Run:
    """Processes, --out (and the checkpoint to resume), teacher, student, optimiser, loader;
    a resumed run gets its model, optimiser, scheduler, data position and RNG back."""
    from open_clip import ClipLoss, get_tokenizer
    rank, world, device = setup_distributed(cfg)
    state = resume_state(cfg, rank)
    teacher = build_teacher(cfg, device) if distills(cfg) else None
    torch.manual_seed(cfg.seed)
    os.makedirs(cfg.out, exist_ok=True)
    width = teacher.visual.output_dim if teacher is not None else None
    model = build_model(cfg, distill_dim=width).to(device)
    params = trainable_params(cfg, model)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    loader = make_train_loader(cfg)
    step = 0
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng"])
        step = state["step"]
    step_model = model
    if world > 1:
        step_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return Run(
        cfg=cfg, rank=rank, world=world, device=device, teacher=teacher, model=model,
        step_model=step_model, params=params, optimizer=optimizer, scheduler=scheduler,
        loader=loader, tokenizer=get_tokenizer(cfg.model),
        pairs_loss=ClipLoss(local_loss=False, gather_with_grad=True, rank=rank, world_size=world),
        log=open_log(os.path.join(cfg.out, "metrics.jsonl"), step) if rank == 0 else None,
        step=step)


def setup_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, device); one process group under torchrun (gloo on the CPU)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = pick_device(cfg.device, local)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return int(os.environ.get("RANK", 0)), world, device


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resume_state(cfg: TrainConfig, rank: int) -> dict | None:
    """The checkpoint this run continues (`prepare_out`: --resume or --overwrite), if any."""
    resume = prepare_out(cfg, rank)
    state = load_checkpoint(resume) if resume else None
    if state and state["config"]["model"] != cfg.model:
        raise ValueError(f"{resume} was trained with model {state['config']['model']!r}, "
                         f"not {cfg.model!r}")
    return state


def prepare_out(cfg: TrainConfig, rank: int) -> str | None:
    """open_clip_train's rules for --out: a folder holding a run needs --resume (a checkpoint,
    or "latest") or --overwrite. Returns the checkpoint to resume from, if any."""
    held = [f for f in RUN_FILES if os.path.exists(os.path.join(cfg.out, f))]
    held += [os.path.basename(p) for _, p in checkpoints_in(cfg.out)]
    if cfg.resume == "latest":
        found = checkpoints_in(cfg.out)
        final = os.path.join(cfg.out, "final.pt")
        if os.path.exists(final):
            found.append((load_checkpoint(final)["step"], final))
        return max(found)[1] if found else None
    if cfg.resume:
        return cfg.resume
    if held and not cfg.overwrite:
        raise ValueError(f"{cfg.out} holds a run ({', '.join(sorted(held)[:4])}…): pass "
                         f"--resume latest to continue it or --overwrite to start over")
    if held and rank == 0:
        for name in held:
            os.remove(os.path.join(cfg.out, name))
    return None


def checkpoints_in(out: str) -> list[tuple[int, str]]:
    """(step, path) of the run's checkpoints, oldest first."""
    found = []
    for path in glob.glob(os.path.join(out, "*.pt")):
        match = re.fullmatch(r"step(\d+)\.pt", os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def load_checkpoint(path: str) -> dict:
    """Checkpoints hold tensors and plain values only: loaded with weights_only=True."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} not found") from None
    except Exception as exc:
        raise ValueError(f"{path}: not a gsformat checkpoint ({exc})") from None


def build_teacher(cfg: TrainConfig, device):
    """Stage 1's frozen RGB teacher as (open_clip model, or None for the student's own tower)."""
    if cfg.teacher is None and not (cfg.pretrained or cfg.init):
        raise ValueError("stage 1 distils an RGB teacher and this run has none with weights: "
                         "give --teacher MODEL --teacher-pretrained WEIGHTS, or --pretrained / "
                         "--init for the student's own tower (--teacher random: random "
                         "weights, for tests only)")
    if cfg.teacher in (None, "random"):
        return None
    if not cfg.teacher_pretrained:
        raise ValueError(f"--teacher {cfg.teacher} needs --teacher-pretrained (a local file or "
                         f"a locally cached open_clip tag)")
    teacher = create_clip(cfg.teacher, cfg.teacher_pretrained, cfg.teacher_config,
                          flag="--teacher-pretrained").to(device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def build_model(cfg: TrainConfig, distill_dim: int | None = None) -> SplatCLIP:
    """The student; its model config from ``cfg.model_config``, else the one the ``--init``
    checkpoint carries (kept as ``model.model_config_json`` for the checkpoints it writes);
    weights from ``--init``."""
    init_state = load_checkpoint(cfg.init) if cfg.init else None
    if cfg.model_config and os.path.exists(cfg.model_config):
        config_json = read_model_config(cfg.model_config)
    else:
        config_json = (init_state or {}).get("model_config_json")
    if init_state and "distill_head.weight" in init_state["model"]:
        distill_dim = init_state["model"]["distill_head.weight"].shape[0]
    model = SplatCLIP(create_clip(cfg.model, cfg.pretrained, None if config_json else
                                  cfg.model_config, config_json),
                      cfg.n_latents, cfg.stem_dim, cfg.stem_layers, cfg.fourier_bands,
                      distill_dim=distill_dim)
    model.model_config_json = config_json
    if init_state:
        other = init_state.get("config", {})
        if other.get("model") != cfg.model or other.get("n_latents") != cfg.n_latents:
            raise ValueError(f"{cfg.init} is a checkpoint of model {other.get('model')!r} with "
                             f"{other.get('n_latents')} latents; this run uses {cfg.model!r} with "
                             f"{cfg.n_latents}")
        try:
            model.load_state_dict(init_state["model"])
        except RuntimeError as exc:
            raise ValueError(f"{cfg.init} does not fit {cfg.model}: {exc}") from None
    return model


def trainable_params(cfg: TrainConfig, model: SplatCLIP) -> list:
    """Stage 1: the stem; stage 2: the groups of ``cfg.unfreeze``; ``input="rgb"`` (the RGB
    teacher): the whole open_clip model."""
    if cfg.input != "rgb":
        return set_trainable(model, ["stem"] if cfg.stage == "distill" else list(cfg.unfreeze))
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for p in model.clip.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def make_train_loader(cfg: TrainConfig):
    """The shuffled training loader; stored images are decoded where a model sees them (the
    teacher in stage 1, the RGB model with ``input="rgb"``). Augmentation regularises the splat
    path only: no flips, since the teacher's image is not flipped with them."""
    augment = None
    if cfg.splat_dropout or cfg.position_jitter:
        augment = SplatAugment(hflip=0.0, position_jitter=cfg.position_jitter,
                               dropout=cfg.splat_dropout)
    return make_loader(cfg.data, cfg.cache or os.path.join(cfg.out, "cache"), cfg.batch_size,
                       shuffle=True, workers=cfg.workers, max_splats=cfg.max_splats,
                       seed=cfg.seed, load_image=cfg.stage == "distill" or cfg.input == "rgb",
                       augment=augment)


def distill_loss(run: Run, batch: dict) -> tuple[torch.Tensor, dict]:
    """Stage 1: ‖ŝ − t̂‖² between the splat path's normalised embedding and the frozen
    teacher's on the stored image; the cosine reported."""
    splats, mask = batch["splats"].to(run.device), batch["mask"].to(run.device)
    teacher = run.teacher or run.model.clip
    with torch.no_grad():
        pixels = pixels_for(batch, image_size_of(teacher), run.device)
        target = teacher.encode_image(pixels, normalize=True)
    student, _, _ = run.step_model(splats, mask, distill=True)
    loss = (student.float() - target.float()).pow(2).sum(-1).mean()
    return loss, {"cos": float((student * target).sum(-1).mean().detach())}


def clip_loss(run: Run, batch: dict) -> tuple[torch.Tensor, dict]:
    """Stage 2 (and ``input="rgb"`` in either stage): contrastive, images against captions;
    positives per ``cfg.clip_loss`` (`losses`)."""
    cfg, device = run.cfg, run.device
    splats, mask = batch["splats"].to(device), batch["mask"].to(device)
    pixels = pixels_for(batch, image_size_of(run.model.clip), device) if cfg.input == "rgb" \
        else None
    images, texts, scale = run.step_model(splats, mask, pixels=pixels,
                                          tokens=run.tokenizer(batch["caption"]).to(device))
    if cfg.clip_loss == "pairs":
        loss = run.pairs_loss(images, texts, scale)
    else:
        keys = positive_keys(batch["caption"], batch["label"] if cfg.clip_loss == "labels"
                             else None)
        loss = grouped_clip_loss(images, texts, scale, keys, run.world)
    return loss, {"logit_scale": float(scale.detach())}


def train_steps(run: Run) -> dict:
    """Step until ``cfg.steps``: loss → backward → clip grads → optimiser and LR → log →
    a checkpoint every ``ckpt_every`` steps (the last step's is final.pt, written by `train`).
    Returns the last step's metrics record."""
    from tqdm import tqdm
    cfg = run.cfg
    step_loss = distill_loss if distills(cfg) else clip_loss
    use_amp = cfg.amp and run.device.type == "cuda"
    bar = tqdm(total=cfg.steps, initial=run.step, desc=f"train {cfg.stage}", file=sys.stderr,
               disable=run.rank != 0 or os.environ.get("TQDM_DISABLE") == "1")
    start = time.time()
    record = {"loss": float("nan")}
    run.model.train()
    while run.step < cfg.steps:
        for batch in run.loader:
            with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss, extra = step_loss(run, batch)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(run.params, 1.0)
            run.optimizer.step()
            run.scheduler.step()
            run.step += 1
            record = log_step(run, loss, extra, start)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
            if run.step % cfg.ckpt_every == 0 and run.step < cfg.steps:
                save_checkpoint(os.path.join(cfg.out, f"step{run.step:06d}.pt"), cfg, run.model,
                                run.optimizer, run.scheduler, run.loader, run.step, run.rank,
                                run.world)
            if run.step >= cfg.steps:
                break
    bar.close()
    return record


def log_step(run: Run, loss: torch.Tensor, extra: dict, start: float) -> dict:
    """The step's metrics record (the loss: the mean over ranks), written by rank 0 to
    metrics.jsonl, flushed every ``log_every`` steps."""
    value = loss.detach().float()
    if run.world > 1:
        torch.distributed.all_reduce(value)
        value /= run.world
    record = {"step": run.step, "loss": float(value), "lr": run.scheduler.get_last_lr()[0],
              "seconds": round(time.time() - start, 2), **extra}
    if run.log is not None:
        run.log.write(json.dumps(record) + "\n")
        if run.step % run.cfg.log_every == 0:
            run.log.flush()
    return record


def open_log(path: str, step: int):
    """metrics.jsonl for appending from ``step`` on: records past it (a run resumed from an
    earlier checkpoint) are dropped, so every step appears once."""
    kept = []
    if step and os.path.exists(path):
        with open(path) as f:
            kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    log = open(path, "w")
    log.writelines(kept)
    return log


def save_checkpoint(path, cfg, model, optimizer, scheduler, loader, step, rank: int = 0,
                    world: int = 1) -> None:
    """Self-contained: the config, the model config's JSON, weights, optimiser, scheduler,
    data position and RNG (rank 0 writes; every rank waits for it)."""
    state = loader.state_dict()  # collective under DDP: every rank takes part
    if rank == 0:
        full = {"config": cfg.to_dict(), "model_config_json": model.model_config_json,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "loader": state, "step": step, "rng": torch.get_rng_state()}
        tmp = path + ".tmp"
        torch.save(full, tmp)
        os.replace(tmp, path)
    if world > 1:
        torch.distributed.barrier()
