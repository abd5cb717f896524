"""The training loop for both stages, top to bottom: set LR → step → log → checkpoint → stop.

Stage 1 (distill): only the stem trains; loss = ‖ŝ − t̂‖² between the L2-normalised embeddings
of the splat path (ŝ) and of the frozen RGB teacher on the source image (t̂); cosine reported.
Stage 2 (clip): open_clip's ClipLoss on (splat embedding, caption embedding); trainable = the
groups in ``config.unfreeze`` (stem, first two blocks, final norm, projection by default).
``input="rgb"`` trains the plain RGB CLIP on stored images (the teacher) instead.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

import torch

from .config import TrainConfig
from .data import check_dataset, image_size_of, make_loader, pixels_for
from .model import SplatCLIP, create_clip, set_trainable


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_checkpoint(path: str) -> dict:
    """Checkpoints hold tensors and plain values only: loaded with weights_only=True."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: not a gsformat checkpoint ({exc})") from None


def build_model(cfg: TrainConfig) -> SplatCLIP:
    model = SplatCLIP(create_clip(cfg.model, cfg.pretrained, cfg.model_config), cfg.n_latents,
                      cfg.stem_dim, cfg.stem_layers, cfg.fourier_bands)
    if cfg.init:
        state = load_checkpoint(cfg.init)
        other = state.get("config", {})
        if other.get("model") != cfg.model or other.get("n_latents") != cfg.n_latents:
            raise ValueError(f"{cfg.init} is a checkpoint of model {other.get('model')!r} with "
                             f"{other.get('n_latents')} latents; this run uses {cfg.model!r} with "
                             f"{cfg.n_latents}")
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise ValueError(f"{cfg.init} does not fit {cfg.model}: {exc}") from None
    return model


def lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train(cfg: TrainConfig) -> dict:
    from open_clip import ClipLoss, get_tokenizer
    # ---- checks before anything heavy -------------------------------------------------------
    if cfg.stage not in ("distill", "clip"):
        raise ValueError(f"stage must be distill or clip, got {cfg.stage!r}")
    need = ("caption",) if cfg.stage == "clip" else ()
    need += ("image",) if cfg.input == "rgb" else ()
    check_dataset(cfg.data, need, f"stage {cfg.stage} ({cfg.input})")
    state = load_checkpoint(cfg.resume) if cfg.resume else None
    if state and state["config"]["model"] != cfg.model:
        raise ValueError(f"{cfg.resume} was trained with model {state['config']['model']!r}, "
                         f"not {cfg.model!r}")

    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    os.makedirs(cfg.out, exist_ok=True)
    model = build_model(cfg).to(device)
    groups = ["stem"] if cfg.stage == "distill" else list(cfg.unfreeze)
    if cfg.input == "rgb":  # the RGB teacher: the whole open_clip model trains
        for p in model.parameters():
            p.requires_grad_(False)
        params = [p for p in model.clip.parameters()]
        for p in params:
            p.requires_grad_(True)
    else:
        params = set_trainable(model, groups)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    loader = make_loader(cfg.data, cfg.cache or os.path.join(cfg.out, "cache"), cfg.batch_size,
                         shuffle=True, workers=cfg.workers, max_splats=cfg.max_splats,
                         seed=cfg.seed, load_images=cfg.stage == "distill" or cfg.input == "rgb")
    step = 0
    if state:  # resume: model, optimiser, scheduler, data position, RNG
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng"])
        step = state["step"]
    tokenizer = get_tokenizer(cfg.model)
    clip_loss = ClipLoss()
    image_size = image_size_of(model.clip)
    use_amp = cfg.amp and device.type == "cuda"
    log_path = os.path.join(cfg.out, "metrics.jsonl")
    log = open(log_path, "a")
    from tqdm import tqdm
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.stage}", file=sys.stderr,
               disable=os.environ.get("TQDM_DISABLE") == "1")
    start = time.time()
    record = {"loss": float("nan")}
    model.train()
    while step < cfg.steps:
        for batch in loader:
            # ---- one step ---------------------------------------------------------------------
            splats, mask = batch["splats"].to(device), batch["mask"].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                if cfg.stage == "distill":
                    with torch.no_grad():
                        teacher = model.encode_image(pixels_for(batch, image_size, device))
                    student = model.encode_splats(splats, mask)
                    loss = (student.float() - teacher.float()).pow(2).sum(-1).mean()
                    extra = {"cos": float((student * teacher).sum(-1).mean().detach())}
                else:
                    if cfg.input == "rgb":
                        images = model.encode_image(pixels_for(batch, image_size, device))
                    else:
                        images = model.encode_splats(splats, mask)
                    texts = model.encode_text(tokenizer(batch["caption"]).to(device))
                    loss = clip_loss(images, texts, model.clip.logit_scale.exp())
                    extra = {"logit_scale": float(model.clip.logit_scale.exp().detach())}
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            # ---- log ----------------------------------------------------------------------------
            record = {"step": step, "loss": float(loss.detach()), "lr": scheduler.get_last_lr()[0],
                      "seconds": round(time.time() - start, 2), **extra}
            log.write(json.dumps(record) + "\n")
            bar.update(1)
            if step % cfg.log_every == 0:
                log.flush()
                bar.set_postfix(loss=f"{record['loss']:.4f}")
            # ---- checkpoint -----------------------------------------------------------------
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                save_checkpoint(os.path.join(cfg.out, f"step{step:06d}.pt"), cfg, model,
                                optimizer, scheduler, loader, step)
            if step >= cfg.steps:
                break
    bar.close()
    log.close()
    final = os.path.join(cfg.out, "final.pt")
    save_checkpoint(final, cfg, model, optimizer, scheduler, loader, step)
    from .plot import plot_metrics
    plot_metrics(log_path, os.path.join(cfg.out, "curves.png"))
    return {"checkpoint": final, "steps": step, "last_loss": record["loss"]}


def save_checkpoint(path, cfg, model, optimizer, scheduler, loader, step) -> None:
    state = {"config": cfg.to_dict(), "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "loader": loader.state_dict(), "step": step, "rng": torch.get_rng_state()}
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)
