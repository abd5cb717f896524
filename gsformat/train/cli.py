"""``gsformat train distill|clip|zeroshot|describe`` (also the ``gsformat-train`` script)."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

from .config import TrainConfig


def _add_config_flags(parser) -> None:
    parser.add_argument("--config", help="a JSON file of TrainConfig fields; flags override it")
    for f in fields(TrainConfig):
        if f.name in ("stage",):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool",) or isinstance(f.default, bool):
            parser.add_argument(flag, dest=f.name, default=None,
                                action=argparse.BooleanOptionalAction)
        elif f.name == "unfreeze":
            parser.add_argument(flag, dest=f.name, default=None, nargs="+")
        else:
            kind = int if isinstance(f.default, int) else float if isinstance(
                f.default, float) else str
            if f.name == "max_splats":
                kind = int
            parser.add_argument(flag, dest=f.name, default=None, type=kind)


def _config(args, stage: str) -> TrainConfig:
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if f.name != "stage" and getattr(args, f.name, None) is not None}
    overrides["stage"] = stage
    if args.config:
        return TrainConfig.from_file(args.config, **overrides)
    return TrainConfig.from_dict(overrides)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gsformat train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for stage, text in (("distill", "stage 1: distil the RGB teacher's embedding into the stem"),
                        ("clip", "stage 2: CLIP alignment with captions")):
        _add_config_flags(sub.add_parser(stage, help=text))
    p = sub.add_parser("zeroshot", help="zero-shot classification and retrieval")
    p.add_argument("--data", required=True)
    p.add_argument("--init", help="a gsformat checkpoint (its config gives the model)")
    p.add_argument("--model", default=None)
    p.add_argument("--model-config", dest="model_config", default=None)
    p.add_argument("--pretrained", default=None)
    p.add_argument("--input", choices=["splats", "rgb"], default="splats")
    p.add_argument("--templates", help="a file of templates, one per line, with {}")
    p.add_argument("--classnames", help="a file of class names, one per line")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--output", help="also write the metrics JSON here")
    p = sub.add_parser("describe", help="parameters per stage as JSON")
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--model-config", dest="model_config", default=None)
    p.add_argument("--n-latents", dest="n_latents", type=int, default=196)
    args = parser.parse_args(argv)
    try:
        if args.command in ("distill", "clip"):
            from .loop import train
            print(json.dumps(train(_config(args, args.command)), indent=2))
        elif args.command == "zeroshot":
            from .zeroshot import evaluate, read_lines
            result = evaluate(
                args.data, args.init, args.input,
                read_lines(args.templates) if args.templates else None,
                read_lines(args.classnames) if args.classnames else None,
                args.batch_size, args.device, model=args.model,
                model_config=args.model_config, pretrained=args.pretrained)
            text = json.dumps(result, indent=2)
            print(text)
            if args.output:
                with open(args.output, "w") as f:
                    f.write(text)
        else:
            from .model import describe
            print(json.dumps(describe(args.model, args.n_latents, args.model_config), indent=2))
    except (ValueError, FileNotFoundError) as exc:
        print(f"gsformat train {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
