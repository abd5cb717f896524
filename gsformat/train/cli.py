"""``gsformat train distill|clip|zeroshot|describe`` (also the ``gsformat-train`` script).

Every flag of distill and clip is a `TrainConfig` field (``--config FILE.json`` sets many at
once; flags override it). With ``--init CHECKPOINT`` the model settings come from the
checkpoint (which carries its model config), so nothing needs repeating. An error is one line
(``--debug``, anywhere on the line, shows its traceback).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, fields

from .config import ARCHITECTURE, TrainConfig, model_name_of

STAGES = {"distill": "stage 1: distil an RGB teacher's embedding into the splat stem",
          "clip": "stage 2: CLIP-align the stem, first blocks and projection with captions"}


def _default_of(f):
    return f.default_factory() if f.default is MISSING else f.default


def _add_config_flags(parser) -> None:
    """One flag per `TrainConfig` field but ``stage`` (the subcommand): its help is the field's
    ``metadata["help"]`` and its type the field's annotation (bool: --x/--no-x; list: a list)."""
    parser.add_argument("--config", help="a JSON file of these settings; flags override it")
    for f in fields(TrainConfig):
        if f.name == "stage":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = _default_of(f)
        shown = default != "" and "default" not in f.metadata["help"]
        text = f.metadata["help"] + (f" (default: {default})" if shown else "")
        kind = f.type.split("|")[0].strip()  # "int | None" → "int" (annotations are strings)
        if kind == "bool":
            parser.add_argument(flag, dest=f.name, default=None, help=text,
                                action=argparse.BooleanOptionalAction)
        elif kind.startswith("list["):
            parser.add_argument(flag, dest=f.name, default=None, nargs="+", help=text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=text,
                                type={"int": int, "float": float, "str": str}[kind])


def _config(args, stage: str) -> TrainConfig:
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
             if f.name != "stage" and getattr(args, f.name, None) is not None}
    if args.config:
        with open(args.config) as f:
            given = {**json.load(f), **given}
    if given.get("model_config") and "model" not in given:
        given["model"] = model_name_of(given["model_config"])  # open_clip's name for it
    if given.get("init"):  # the architecture of the checkpoint, unless given
        from .loop import load_checkpoint
        saved = load_checkpoint(given["init"]).get("config", {})
        for name in ARCHITECTURE:
            if name not in given and name in saved:
                given[name] = saved[name]
    given["stage"] = stage
    return TrainConfig.from_dict(given)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gsformat train", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (default: one line); also after "
                             "the command")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage, text in STAGES.items():
        _add_config_flags(sub.add_parser(stage, help=text, description=text))
    p = sub.add_parser("zeroshot", help="zero-shot classification and retrieval (JSON)",
                       description="zero-shot classification (labels + class names) and "
                                   "retrieval (captions) on a splat dataset")
    p.add_argument("--data", required=True, help="the splat dataset (directory or URL)")
    p.add_argument("--init", help="a gsformat checkpoint (it carries its model)")
    p.add_argument("--model", default=None, help="open_clip model, without --init")
    p.add_argument("--model-config", dest="model_config", default=None,
                   help="a JSON open_clip config, without --init")
    p.add_argument("--pretrained", default=None, help="open_clip weights, without --init")
    p.add_argument("--input", choices=["splats", "rgb"], default="splats",
                   help="evaluate the splat path or the RGB tower (default: splats)")
    p.add_argument("--templates", help="a file of prompt templates, one per line, with {}")
    p.add_argument("--classnames", help="a file of class names, one per line (default: the "
                                        "manifest's class_names)")
    p.add_argument("--batch-size", type=int, default=64, help="(default: 64)")
    p.add_argument("--device", default="auto", help="(default: auto)")
    p.add_argument("--output", help="also write the metrics JSON here")
    p = sub.add_parser("describe", help="parameters per stage as JSON")
    p.add_argument("--model", default="ViT-B-16", help="(default: ViT-B-16)")
    p.add_argument("--model-config", dest="model_config", default=None)
    p.add_argument("--n-latents", dest="n_latents", type=int, default=196,
                   help="(default: 196)")
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # before or after the command
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    try:
        if args.command in STAGES:
            from .loop import train
            print(json.dumps(train(_config(args, args.command)), indent=2))
        elif args.command == "zeroshot":
            from .zeroshot import evaluate, read_lines
            if args.model_config and not args.model:
                args.model = model_name_of(args.model_config)
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
            model = args.model if args.model != "ViT-B-16" or not args.model_config else \
                model_name_of(args.model_config)
            print(json.dumps(describe(model, args.n_latents, args.model_config), indent=2))
    except KeyboardInterrupt:
        print(f"gsformat train {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line naming what is wrong; --debug for the traceback
        if debug:
            raise
        print(f"gsformat train {args.command}: error: {error_line(exc)}", file=sys.stderr)
        return 2
    return 0


def error_line(exc: BaseException) -> str:
    """An error as one line, as `gsformat.cli.one_line` writes one (the layer above this one):
    the message, after the class name where the message alone does not say enough. An error a
    DataLoader worker raised, which torch re-raises with the worker's traceback as its text, is
    that error's own message and the worker."""
    from ..core.errors import FormatError
    text = str(exc).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        worker = text.splitlines()[0].removeprefix("Caught ").rstrip(".")  # "X in … process 1"
        message = text.splitlines()[-1].partition(": ")[2]
        return f"{' '.join(message.split())} ({worker.partition(' in ')[2]})"
    text = " ".join(text.split()) or type(exc).__name__
    if isinstance(exc, (FormatError, ValueError, FileNotFoundError)):
        return text
    return f"{type(exc).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
