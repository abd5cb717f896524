"""``gsformat render`` and ``gsformat inspect --html``: samples of a dataset as pictures — the
stored source image beside the rendered splats, labelled with key, caption or label, PSNR and
record bytes; as a PNG grid, or as a static HTML page with histograms over every record."""
from __future__ import annotations

import base64
import html
import io
import itertools
import math

import numpy as np

MIN_CELL_WIDTH = 150  # pixels: room for ~25 characters of label under a cell's tiles
MIN_TILE = 96  # at the canvas size, smaller tiles are drawn enlarged (whole pixels) in a grid
LINE_HEIGHT = 13  # one line of PIL's default font
TEXT_LINES = 2  # lines at most for the key, and for PSNR · bytes · caption; then "…"


def sample_tiles(samples, size: int | None = None, class_names=None):
    """Per sample of ``samples`` (`iter_dataset(..., decode=False)` rows): a dict of key, text
    (caption or class), n_splats, psnr (against the stored image, else the fit's), bytes (of the
    record), and the uint8 tiles ``stored`` (None without an image column) and ``splats``
    ``[H, W, 3]``."""
    from PIL import Image
    from .core.record import decode_record
    from .core.render_math import psnr
    from .render import render_splats
    for sample in samples:
        record = sample["splats"]
        splats = decode_record(record)
        height, width = (size, round(size * splats.width / splats.height)) if size else \
            splats.canvas_hw
        recon = render_splats(splats, height=height, width=width)[0].permute(1, 2, 0).numpy()
        entry = {"key": sample["key"], "n_splats": splats.n_splats, "bytes": len(record),
                 "text": _text_of(sample, class_names), "stored": None,
                 "splats": (recon * 255 + 0.5).astype(np.uint8),
                 "psnr": splats.meta.get("psnr"), "psnr_of": "fit"}
        if sample.get("image"):
            image = Image.open(io.BytesIO(sample["image"])).convert("RGB")
            entry["stored"] = np.asarray(image.resize((width, height), Image.LANCZOS))
            entry["psnr"] = float(psnr(recon[None], entry["stored"][None] / 255.0)[0])
            entry["psnr_of"] = "stored image"
        yield entry


def _text_of(sample: dict, class_names) -> str:
    if sample.get("caption"):
        return str(sample["caption"])
    label = sample.get("label")
    if label is not None and label >= 0:
        return str(class_names[label]) if class_names and label < len(class_names) \
            else f"label {label}"
    return ""


def fit_lines(text: str, width: float, max_lines: int, measure, ellipsis: str = "…") -> list:
    """``text`` wrapped at spaces into lines ``measure``d at most ``width`` (a word wider than a
    line is cut); past ``max_lines``, the last line kept ends in ``ellipsis`` after a whole
    word.

    >>> fit_lines("a ginger cat", 40, 2, len)
    ['a ginger cat']
    >>> fit_lines("a ginger cat on a mat", 10, 2, len)
    ['a ginger', 'cat on a…']
    """
    lines, current = [], ""
    for word in text.split():
        joined = f"{current} {word}" if current else word
        if measure(joined) <= width:
            current = joined
            continue
        if current:
            lines.append(current)
        current = word
        while len(current) > 1 and measure(current) > width:  # a word wider than a line
            cut = 1
            while cut + 1 < len(current) and measure(current[:cut + 1]) <= width:
                cut += 1
            lines.append(current[:cut])
            current = current[cut:]
    if current:
        lines.append(current)
    if len(lines) <= max_lines:
        return lines
    last = lines[max_lines - 1]
    while last and measure(last + ellipsis) > width:
        last = last.rsplit(" ", 1)[0] if " " in last else last[:-1]
    return lines[:max_lines - 1] + [last + ellipsis]


def _cell(entry: dict, enlarge: bool = True) -> np.ndarray:
    """The tiles that exist ([stored | splats], or the splats alone), centred over a label:
    the key, then PSNR, bytes and caption or class, each wrapped at words to the cell's width.
    With ``enlarge``, tiles under `MIN_TILE` pixels are drawn 2, 3, … times larger (whole
    pixels)."""
    from PIL import Image, ImageDraw, ImageFont
    tiles = [t for t in (entry["stored"], entry["splats"]) if t is not None]
    height = max(t.shape[0] for t in tiles)
    scale = math.ceil(MIN_TILE / height) if enlarge and height < MIN_TILE else 1
    tiles = [t.repeat(scale, 0).repeat(scale, 1) for t in tiles]
    gap = np.zeros((height * scale, 2, 3), np.uint8)
    pixels = np.concatenate([part for t in tiles for part in (gap, t)][1:], axis=1)
    width = max(pixels.shape[1], MIN_CELL_WIDTH)
    font = ImageFont.load_default()
    ellipsis = "…" if isinstance(font, ImageFont.FreeTypeFont) else "..."
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    room = width - 4

    def fit(text, max_lines):
        return fit_lines(text, room, max_lines, lambda t: measure(t, font=font), ellipsis)
    quality = f"{entry['psnr']:.1f} dB" if entry["psnr"] is not None else "no PSNR"
    about = f"{quality}, {entry['bytes']:,} B" + (f" · {entry['text']}" if entry["text"] else "")
    lines = fit(entry["key"], TEXT_LINES) + fit(about, TEXT_LINES)
    canvas = Image.new("RGB", (width, pixels.shape[0] + 2 + LINE_HEIGHT * len(lines)), (0, 0, 0))
    canvas.paste(Image.fromarray(pixels), ((width - pixels.shape[1]) // 2, 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((2, pixels.shape[0] + 2 + LINE_HEIGHT * i), line, fill=(255, 255, 255),
                  font=font)
    return np.asarray(canvas)


def render_samples(path: str, index: int, output: str, size: int | None = None,
                   count: int = 1) -> list[dict]:
    """Write samples ``index … index+count-1`` as a labelled grid PNG (up to 4 cells a row; a
    small canvas drawn enlarged unless ``size`` is given); returns per-sample info (key,
    n_splats, psnr, bytes)."""
    from PIL import Image
    from .io.dataset_files import iter_dataset, read_manifest
    names = _class_names(path, read_manifest)
    rows = itertools.islice(iter_dataset(path, decode=False), index, index + count)
    entries = list(sample_tiles(rows, size, names))
    if not entries:
        raise ValueError(f"{path}: no sample at index {index}")
    cells = [_cell(e, enlarge=size is None) for e in entries]
    columns = min(4, len(cells))
    cell_h, cell_w = max(c.shape[0] for c in cells), max(c.shape[1] for c in cells)
    rows = math.ceil(len(cells) / columns)
    grid = np.full((rows * (cell_h + 4), columns * (cell_w + 4), 3), 32, np.uint8)
    for i, cell in enumerate(cells):
        top, left = (i // columns) * (cell_h + 4), (i % columns) * (cell_w + 4)
        grid[top:top + cell.shape[0], left:left + cell.shape[1]] = cell
    Image.fromarray(grid).save(output)
    return [{k: e[k] for k in ("key", "n_splats", "psnr", "bytes")} for e in entries]


def check_dataset_path(path: str, manifest: bool = False) -> None:
    """``FileNotFoundError`` saying "not found" for a local path that does not exist (before a
    reader's raw Errno or "index.json missing"), and, with ``manifest``, "not a gsformat
    dataset" for a folder without ``gsformat.json`` (naming `gsformat merge` where a
    conversion's parts wait for it). Remote paths: their readers say "not found" themselves."""
    import os
    from .core import constants as C
    from .io import storage
    if storage.is_remote(path):
        return
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: not found")
    if not manifest and os.path.isdir(path) \
            and not os.path.exists(os.path.join(path, C.INDEX_NAME)) and _has_parts(path):
        raise FileNotFoundError(f"{path}: not a dataset yet (no {C.INDEX_NAME}); it holds a "
                                f"conversion's finished parts: `gsformat merge {path}` merges "
                                f"them")
    if manifest and not os.path.isfile(os.path.join(path, C.MANIFEST_NAME)):
        hint = (f"; it holds a conversion's finished parts: `gsformat merge {path}` merges "
                f"them" if _has_parts(path) else "")
        raise FileNotFoundError(f"{path}: not a gsformat dataset (no {C.MANIFEST_NAME}){hint}")


def _has_parts(path: str) -> bool:
    """Whether a local folder holds a conversion's finished parts (not merged yet)."""
    import glob
    import os
    return bool(glob.glob(os.path.join(glob.escape(path), "part-*", "part.json")))


def incomplete_note(manifest: dict) -> list[str]:
    """A line for a dataset merged from a conversion that had failed units (else none)."""
    summary = manifest.get("summary") or {}
    if summary.get("complete", True) or not summary.get("units_failed"):
        return []
    of = f" of {summary['units']}" if summary.get("units") else ""
    return [f"  incomplete: {summary['units_failed']}{of} source units failed (summary.json "
            f"lists them; re-running the convert command retries them)"]


def _class_names(path: str, read_manifest):
    try:
        return read_manifest(path).get("class_names")
    except Exception:  # a dataset without a manifest still renders
        return None


def _png_uri(tile: np.ndarray) -> str:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(tile).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _histogram_svg(values, title: str, unit: str, bins: int = 24) -> str:
    """A bar histogram as inline SVG (no script: the page needs none)."""
    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
    if not len(values):
        return f"<figure><figcaption>{html.escape(title)}: no values</figcaption></figure>"
    counts, edges = np.histogram(values, bins=bins)
    w, h, pad = 360, 150, 22
    bar = (w - 2 * pad) / bins
    top = counts.max() or 1
    rects = "".join(
        f'<rect x="{pad + i * bar:.1f}" y="{h - pad - (h - 2 * pad) * c / top:.1f}" '
        f'width="{bar - 1:.1f}" height="{(h - 2 * pad) * c / top:.1f}" fill="#4a78b0">'
        f'<title>{edges[i]:.2f}–{edges[i + 1]:.2f} {unit}: {c}</title></rect>'
        for i, c in enumerate(counts))
    def number(v):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    axis = (f'<text x="{pad}" y="{h - 6}" font-size="11">{number(edges[0])}</text>'
            f'<text x="{w - pad}" y="{h - 6}" font-size="11" text-anchor="end">'
            f'{number(edges[-1])} {html.escape(unit)}</text>')
    return (f'<figure><svg width="{w}" height="{h}" role="img">{rects}{axis}</svg>'
            f"<figcaption>{html.escape(title)} (n = {len(values)}, mean {number(values.mean())} "
            f"{html.escape(unit)})</figcaption></figure>")


def write_html(path: str, output: str, count: int = 24, size: int | None = None) -> dict:
    """A static page: the first ``count`` samples as [stored | splats] cards with key, caption or
    label, PSNR and bytes; histograms of the fit PSNR and the record bytes of every sample."""
    from .io.dataset_files import iter_dataset, read_manifest
    from .core.record import read_header
    manifest = read_manifest(path)
    names = manifest.get("class_names")
    psnrs, sizes, shown = [], [], []
    for sample in iter_dataset(path, decode=False):  # one pass: headers of every record, the
        header = read_header(sample["splats"])       # first ``count`` rows kept to draw
        psnrs.append(header.get("fit", {}).get("psnr"))
        sizes.append(len(sample["splats"]))
        if len(shown) < count:
            shown.append(sample)
    cards = []
    for entry in sample_tiles(shown, size, names):
        images = "".join(f'<img src="{_png_uri(t)}" alt="{alt}" title="{alt}">'
                         for t, alt in ((entry["stored"], "stored image"),
                                        (entry["splats"], f"{entry['n_splats']} splats"))
                         if t is not None)
        quality = (f"{entry['psnr']:.2f} dB ({entry['psnr_of']})" if entry["psnr"] is not None
                   else "")
        cards.append(f'<div class="card"><div class="pics">{images}</div>'
                     f'<div class="key">{html.escape(entry["key"])}'
                     f'</div><div>{html.escape(entry["text"])}</div><div class="num">'
                     f'{quality} · {entry["bytes"]:,} B · {entry["n_splats"]} splats</div></div>')
    title = f"gsformat dataset {path}"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 24px; background: #fafafa; color: #222; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr));
         gap: 12px; }}
.card {{ background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px; }}
.pics {{ display: flex; gap: 2%; }}
.pics img {{ flex: 1 1 0; min-width: 0; image-rendering: pixelated; }}
.key {{ font-weight: 600; word-break: break-all; }} .num {{ color: #555; font-size: 12px; }}
.hist {{ display: flex; gap: 24px; flex-wrap: wrap; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{manifest.get("n_samples", len(sizes))} samples · codecs
{html.escape(", ".join(c.get("id", "?") for c in manifest.get("codecs", [])) or "raw")} ·
format {".".join(map(str, manifest.get("format_version", [])))} · left: the stored source image
(where the dataset keeps it), right: its splats rendered.</p>
<div class="hist">{_histogram_svg(psnrs, "fit PSNR per record", "dB")}
{_histogram_svg(sizes, "bytes per record", "B")}</div>
<h2>First {len(cards)} samples</h2>
<div class="grid">{"".join(cards)}</div>
<script>  // the page's own check: every embedded picture decoded (a browser test reads this)
addEventListener("load", () => {{ for (const img of document.images)
  if (!img.naturalWidth) console.error("picture did not decode: " + img.alt); }});
</script>
</body></html>
"""
    from .io import storage
    storage.write_bytes(output, page.encode())
    return {"samples": len(sizes), "cards": len(cards), "output": output}
