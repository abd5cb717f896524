"""Command-line options of ``gsformat convert`` (defaults: what a user of the paper would pick)."""
from __future__ import annotations


def add_convert_arguments(p) -> None:
    p.add_argument("src", help="image folder, WebDataset tars (list, glob or {a..b} pattern) or "
                               "MDS dataset; local or URL")
    p.add_argument("out", help="output dataset directory or URL")
    p.add_argument("--source-format", choices=["auto", "folder", "webdataset", "mds"],
                   default="auto")
