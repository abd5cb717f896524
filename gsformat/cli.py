"""The ``gsformat`` command: convert, validate, inspect, render, merge, train."""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys


def cmd_validate(args) -> int:
    from .io.validate import validate_dataset
    from .render_cli import check_dataset_path
    check_dataset_path(args.path)  # "not found", not "index.json missing"
    report = validate_dataset(args.path, progress=not args.json and sys.stderr.isatty())
    first = [p["problem"] for p in report.problems][:1]
    if first == [f"missing: nothing at {args.path} (not found)"]:
        raise FileNotFoundError(f"{args.path}: not found")  # as for a local path
    if first and first[0].startswith("cannot read: unreachable"):  # not the dataset's fault
        print(f"gsformat validate: error: {args.path}: {first[0].removeprefix('cannot read: ')}",
              file=sys.stderr)
        return 2
    print(json.dumps(report.to_json(), indent=2) if args.json else report.text())
    return 0 if report.valid else 1


def cmd_inspect(args) -> int:
    from .io.dataset_files import read_index, read_manifest
    from .render_cli import check_dataset_path, incomplete_note
    check_dataset_path(args.path, manifest=True)
    if args.html:
        from .render_cli import write_html
        done = write_html(args.path, args.html, count=args.count)
        print(f"wrote {done['output']}: {done['cards']} of {done['samples']} samples shown")
        return 0
    manifest = read_manifest(args.path)
    index = read_index(args.path)
    shards = index["shards"]
    summary = {
        "manifest": manifest,
        "index": {"n_shards": len(shards),
                  "n_samples": sum(s.get("samples", 0) for s in shards),
                  "bytes_stored": sum((s.get("zip_data") or s["raw_data"])["bytes"]
                                      for s in shards),
                  "bytes_raw": sum(s["raw_data"]["bytes"] for s in shards)},
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    idx, stats = summary["index"], manifest.get("stats", {})
    lines = [f"{args.path}: gsformat {'.'.join(map(str, manifest.get('format_version', [])))}, "
             f"{idx['n_samples']:,} samples in {idx['n_shards']} shards, "
             f"{idx['bytes_stored']:,} bytes stored ({idx['bytes_raw']:,} uncompressed)",
             f"  columns: {', '.join(manifest.get('columns', {}))}",
             f"  codecs: {json.dumps(manifest.get('codecs', [])) or 'raw'}"]
    lines += incomplete_note(manifest)
    for name, value in stats.items():
        lines.append(f"  {name}: {value:.4g}" if isinstance(value, float) else
                     f"  {name}: {value}")
    print("\n".join(lines))
    return 0


def cmd_render(args) -> int:
    from .render_cli import render_samples
    if args.index < 0 or args.count < 1 or (args.size is not None and not 4 <= args.size <= 8192):
        raise ValueError("--index must be ≥ 0, --count ≥ 1 and --size in [4, 8192]")
    render_samples(args.path, args.index, args.output, size=args.size, count=args.count)
    print(f"wrote {args.output}")
    return 0


def cmd_convert(args) -> int:
    from .convert import run_convert
    return run_convert(args)


def cmd_merge(args) -> int:
    from .convert.merge import merge_parts
    manifest = merge_parts(args.path)
    print(f"merged {manifest['n_samples']} samples from {len(manifest.get('parts', []))} parts "
          f"into {args.path}")
    from .render_cli import incomplete_note
    for line in incomplete_note(manifest):
        print(line.strip(), file=sys.stderr)
    return 0


class DefaultsFormatter(argparse.HelpFormatter):
    """Every option's default in its help (as the train commands show them), unless the help
    already names it or there is none to show."""

    def _format_action(self, action):
        if action.option_strings and all(action.default is not v for v in (
                None, False, argparse.SUPPRESS)) and "default" not in (action.help or ""):
            action = copy.copy(action)
            action.help = (f"{action.help} " if action.help else "") + "(default: %(default)s)"
        return super()._format_action(action)


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__
    parser = argparse.ArgumentParser(prog="gsformat", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gsformat {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (default: one line)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a dataset against the spec (exit 0 valid, 1 not)")
    p.add_argument("path", help="dataset directory or URL (s3://...)")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("inspect", help="summary statistics (--json: the manifest and index "
                                       "figures; --html: a page to browse the samples)")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--html", metavar="FILE", default=None,
                   help="write a static page: a grid of stored image | rendered splats with key, "
                        "caption or label, PSNR and bytes; histograms of PSNR and bytes")
    p.add_argument("--count", type=int, default=24, help="--html: samples shown")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("render", help="render samples (beside their stored source images) to PNG")
    p.add_argument("path")
    p.add_argument("--index", type=int, default=0, help="first sample to render")
    p.add_argument("--count", type=int, default=1, help="number of samples")
    p.add_argument("--size", type=int, default=None, help="render size (default: canvas size)")
    p.add_argument("-o", "--output", default="render.png")
    p.set_defaults(func=cmd_render)

    from .convert.options import add_convert_arguments
    p = sub.add_parser("convert", help="fit image datasets into splat shards",
                       formatter_class=DefaultsFormatter)
    add_convert_arguments(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("merge", help="join the parts that ranks wrote into one dataset")
    p.add_argument("path")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("train", help="reference training: distill | clip | zeroshot | describe",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_train)  # (main() hands `train …` to its own parser first)
    return parser


def cmd_train(args) -> int:
    from .train.cli import main as train_main
    return train_main(args.rest)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # its own parser: `gsformat train --help` and every flag
        from .train.cli import main as train_main
        return train_main(argv[1:])
    import logging
    logging.getLogger("streaming").setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)  # streaming logs through the root logger too
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:  # `gsformat inspect --json | head -1`: stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool its pipe stopped
    except KeyboardInterrupt:
        print(f"gsformat {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line naming the file, shard or URL; --debug for the rest
        if args.debug:
            raise
        where = getattr(args, "path", None)  # validate, inspect, render: one location
        print(f"gsformat {args.command}: error: {one_line(exc, where)}", file=sys.stderr)
        return 2


def one_line(exc: BaseException, where: str | None = None) -> str:
    """An exception as one line: its message (the class name where the message does not say
    enough: botocore's, OSError's), newlines folded. A store that cannot be reached or refuses
    access is named first: ``where`` (the command's location) where given, else the first word
    of the message (fsspec's "not found" for a server that is down is the bare URL)."""
    from .core.errors import FormatError
    from .io import failures
    text = " ".join(str(exc).split()) or type(exc).__name__
    kind = failures.failure_kind(exc)
    if kind == failures.UNREACHABLE and isinstance(exc, OSError) or \
            kind in (failures.UNREACHABLE, failures.DENIED) and where:
        where = where or (text.split()[0] if text.split() else "").rstrip(":")
        return f"{where}: {failures.describe(exc)}"
    if isinstance(exc, FileNotFoundError) and " " not in text:
        return f"{text}: not found"  # fsspec's message is the bare URL
    if isinstance(exc, FileNotFoundError) and exc.filename:  # open()'s "[Errno 2] No such …"
        return f"{exc.filename}: not found"
    if isinstance(exc, (FormatError, ValueError, FileNotFoundError)):
        return text
    if isinstance(exc, MemoryError):
        return "out of memory (a smaller --batch or --size helps)"
    return f"{type(exc).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
