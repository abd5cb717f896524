"""The package's layers import one way (issue 19): every import of a gsformat module — at the top
of a file or inside a function — points to the same rank or below, there are no import cycles,
and each layer uses only the third-party packages its install extra provides.

    rank  layer      modules                                        install (pyproject.toml)
    0-3   core       constants, errors, zstd_frame, splatset,       (plain install)
                     render_math, codecs, record
    4     io         mds, storage, dataset, validate                (plain install)
    5     fitting    gsformat.fitting                               [fit]
    6     convert    gsformat.convert                               [fit]
    7     torch      render, loaders                                [loader]
    8     train      gsformat.train                                 [train]
    9     apps       cli, render_cli
"""
from __future__ import annotations

import ast
import pathlib
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "gsformat"

RANKS = [  # (rank, module-name prefixes); the longest matching prefix decides
    (0, ["gsformat._version", "gsformat.format.constants", "gsformat.format.errors"]),
    (1, ["gsformat.format.zstd_frame", "gsformat.format.splatset", "gsformat.format.render_math"]),
    (2, ["gsformat.codecs"]),
    (3, ["gsformat.format.record", "gsformat.format"]),
    (4, ["gsformat.format.mds", "gsformat.format.storage", "gsformat.format.dataset",
         "gsformat.format.validate"]),
    (5, ["gsformat.fitting"]),
    (6, ["gsformat.convert"]),
    (7, ["gsformat.render", "gsformat.loaders"]),
    (8, ["gsformat.train"]),
    (9, ["gsformat.cli", "gsformat.render_cli"]),
]
CORE = {"numpy", "msgpack", "numcodecs", "zstd"}
THIRD_PARTY = {  # rank → packages a module of that rank may import at its top
    0: CORE, 1: CORE, 2: CORE, 3: CORE, 4: CORE | {"xxhash"},
    5: CORE | {"xxhash", "scipy"}, 6: CORE | {"xxhash", "scipy"},
}
LAZY_ONLY = {  # rank → packages allowed only inside functions (optional paths of a plain install)
    4: {"xxhash", "streaming", "PIL", "tqdm"},  # xxh* hashes; remote storage; decoding an image
                                                # column; validate's progress bar
    5: {"cupy", "cupyx", "torch"},      # the GPU backend; the dense autograd baseline engine
    6: {"tqdm", "PIL", "streaming", "cupy", "fsspec", "ray",  # fsspec: URLs but s3://
        "pyarrow"},                                            # Parquet sources
}
# The top package's lazy attribute (`gsformat.render_splats`) is a convenience, not a dependency.
FACADE_LAZY = {("gsformat", "gsformat.render")}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def rank_of(name: str) -> int:
    best = None
    for rank, prefixes in RANKS:
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > len(best[1]):
                    best = (rank, prefix)
    if name == "gsformat":
        return 3  # the top package imports only the core at import time
    assert best is not None, f"{name} has no layer: add it to RANKS"
    return best[0]


def imports_of(name: str, path: pathlib.Path, known: set[str]):
    """(imported module, line, lazy) for every import statement in the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        lazy = id(node) not in top_level
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, lazy
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                full = f"{source}.{alias.name}"
                yield (full if full in known else source), node.lineno, lazy


def graph():
    mods = modules()
    known = set(mods)
    edges, third = {}, {}
    for name, path in mods.items():
        for target, line, lazy in imports_of(name, path, known):
            top = target.split(".")[0]
            if top == "gsformat":
                edges.setdefault(name, []).append((target, line, lazy))
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                third.setdefault(name, []).append((top, line, lazy))
    return mods, edges, third


def test_imports_point_down_the_layers():
    mods, edges, _ = graph()
    wrong = []
    for name, targets in edges.items():
        for target, line, lazy in targets:
            if (name, target) in FACADE_LAZY and lazy:
                continue
            if rank_of(target) > rank_of(name):
                wrong.append(f"{mods[name].relative_to(PACKAGE.parent)}:{line} {name} "
                             f"(rank {rank_of(name)}) imports {target} "
                             f"(rank {rank_of(target)}){' lazily' if lazy else ''}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_import_cycles():
    """Among modules (package __init__ files re-export and are left out)."""
    mods, edges, _ = graph()
    plain = {n for n, p in mods.items() if p.name != "__init__.py"}
    adjacency = {n: sorted({t for t, _, _ in edges.get(n, []) if t in plain and t != n})
                 for n in plain}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in adjacency[node]:
            if state.get(nxt) == 1:
                cycles.append(" → ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(plain):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_core_and_io_use_only_their_dependencies():
    mods, _, third = graph()
    wrong = []
    for name, uses in third.items():
        rank = rank_of(name)
        if rank not in THIRD_PARTY:
            continue
        for top, line, lazy in uses:
            if top in THIRD_PARTY[rank] or (lazy and top in LAZY_ONLY.get(rank, set())):
                continue
            wrong.append(f"{mods[name].relative_to(PACKAGE.parent)}:{line} {name} imports "
                         f"{top}{' lazily' if lazy else ''}")
    assert not wrong, "third-party imports outside the layer's extra:\n" + "\n".join(wrong)


def test_the_checker_sees_a_back_import(tmp_path, monkeypatch):
    """The test can fail: a core module that imports the fitter is reported."""
    fake = tmp_path / "gsformat"
    (fake / "format").mkdir(parents=True)
    (fake / "fitting").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "format" / "__init__.py").write_text("")
    (fake / "fitting" / "__init__.py").write_text("")
    (fake / "fitting" / "fit.py").write_text("from ..format import record\n")
    (fake / "format" / "record.py").write_text("def f():\n    from ..fitting import fit\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    with pytest.raises(AssertionError, match=r"record.py:2 gsformat.format.record \(rank 3\) "
                                             r"imports gsformat.fitting.fit \(rank 5\) lazily"):
        test_imports_point_down_the_layers()
    with pytest.raises(AssertionError, match="import cycles"):
        test_no_import_cycles()
