"""The package's folders are its layers and import one way: every import of a gsformat module —
at the top of a file or inside a function — goes to the module's own layer or one it builds on
(`BUILDS_ON`, followed transitively), there are no import cycles, and each layer uses only the
third-party packages its install extra provides.

    layer     modules                                   builds on          install (pyproject)
    version   gsformat._version                         —                  (plain install)
    core      gsformat/core (constants, errors,         version            (plain install)
              splatset, render_math, zstd_frame)
    codecs    gsformat/codecs                           core               (plain install)
    records   gsformat/core/record.py                   codecs             (plain install)
    io        gsformat/io (storage, failures, mds,      records            (plain install)
              dataset_files, validate)
    fitting   gsformat/fitting                          records            [fit]
    convert   gsformat/convert                          io, fitting        [fit]
    render    gsformat/render.py                        records            [loader]
    loaders   gsformat/loaders                          io, render         [loader]
    train     gsformat/train                            loaders            [train]
    apps      gsformat/cli.py, render_cli.py            convert, train     —
    compat    gsformat/format, _moved.py (old paths)    io                 —
    testing   gsformat/testing (helpers for tests,      apps, top          (plain install to
              benchmarks, examples)                                        import; dev to use)

The layers form a tree, not a line: fitting and io are siblings (a fitter needs no datasets),
so are convert and loaders (reading a dataset never needs the fitter or the converter). The top
package imports the core and the codecs at import time; nothing but the compat aliases imports
`gsformat.format`, and nothing in the library imports `gsformat.testing` (the tests',
benchmarks' and examples' helpers, like numpy.testing).
"""
from __future__ import annotations

import ast
import pathlib
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "gsformat"

LAYERS = {  # layer → module-name prefixes (the longest matching prefix decides)
    "version": ["gsformat._version"],
    "core": ["gsformat.core"],
    "codecs": ["gsformat.codecs"],
    "records": ["gsformat.core.record"],
    "io": ["gsformat.io"],
    "fitting": ["gsformat.fitting"],
    "convert": ["gsformat.convert"],
    "render": ["gsformat.render"],
    "loaders": ["gsformat.loaders"],
    "train": ["gsformat.train"],
    "apps": ["gsformat.cli", "gsformat.render_cli"],
    "compat": ["gsformat.format", "gsformat._moved"],
    "testing": ["gsformat.testing"],
    "top": ["gsformat"],
}
BUILDS_ON = {  # layer → the layers right below it
    "version": set(), "core": {"version"}, "codecs": {"core"}, "records": {"codecs"},
    "io": {"records"}, "fitting": {"records"}, "convert": {"io", "fitting"},
    "render": {"records"}, "loaders": {"io", "render"}, "train": {"loaders"},
    "apps": {"convert", "train"}, "compat": {"io"}, "top": {"codecs", "records"},
    "testing": {"apps", "top"},
}
CORE = {"numpy", "msgpack", "numcodecs", "zstd"}
THIRD_PARTY = {  # layer → packages its modules may import at their top
    "version": CORE, "core": CORE, "codecs": CORE, "records": CORE, "io": CORE | {"xxhash"},
    "fitting": CORE | {"xxhash", "scipy"}, "convert": CORE | {"xxhash", "scipy"},
    "compat": CORE, "testing": CORE,
}
LAZY_ONLY = {  # layer → packages allowed only inside functions (optional paths of a plain install)
    "io": {"xxhash", "streaming", "PIL", "tqdm", "fsspec"},  # xxh* hashes; remote storage
                                                # (fsspec URLs); an image column; a progress bar
    "fitting": {"cupy", "cupyx", "torch"},      # the GPU backend; the dense autograd baseline
    "convert": {"tqdm", "PIL", "streaming", "cupy", "fsspec", "ray",
                "pyarrow"},                     # Parquet sources
    "testing": {"PIL", "skimage", "sklearn", "matplotlib"},  # bundled photographs, digits (dev)
}
# The top package's lazy attribute (`gsformat.render_splats`) is a convenience, not a dependency.
FACADE_LAZY = {("gsformat", "gsformat.render")}


def below(layer: str) -> set[str]:
    """Every layer ``layer`` may import: itself and what it builds on, transitively."""
    seen, todo = {layer}, [layer]
    while todo:
        for lower in BUILDS_ON[todo.pop()]:
            if lower not in seen:
                seen.add(lower)
                todo.append(lower)
    return seen


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(name: str) -> str:
    best = None
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > len(best[1]):
                    best = (layer, prefix)
    assert best is not None, f"{name} has no layer: add it to LAYERS"
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
            if layer_of(target) not in below(layer_of(name)):
                wrong.append(f"{mods[name].relative_to(PACKAGE.parent)}:{line} {name} "
                             f"({layer_of(name)}) imports {target} "
                             f"({layer_of(target)}){' lazily' if lazy else ''}")
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
        layer = layer_of(name)
        if layer not in THIRD_PARTY:
            continue
        for top, line, lazy in uses:
            if top in THIRD_PARTY[layer] or (lazy and top in LAZY_ONLY.get(layer, set())):
                continue
            wrong.append(f"{mods[name].relative_to(PACKAGE.parent)}:{line} {name} imports "
                         f"{top}{' lazily' if lazy else ''}")
    assert not wrong, "third-party imports outside the layer's extra:\n" + "\n".join(wrong)


def write_package(root: pathlib.Path, files: dict) -> pathlib.Path:
    fake = root / "gsformat"
    for rel, text in {"__init__.py": "", **files}.items():
        path = fake / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(fake).parents:
            (fake / parent / "__init__.py").touch()
        path.write_text(text)
    return fake


def test_the_checker_sees_a_back_import(tmp_path, monkeypatch):
    """The test can fail: a record module that imports the fitter is reported, and so is a
    loader importing the converter (siblings: neither builds on the other)."""
    fake = write_package(tmp_path, {
        "fitting/fit.py": "from ..core import record\n",
        "core/record.py": "def f():\n    from ..fitting import fit\n",
        "convert/run.py": "X = 1\n",
        "loaders/dataset.py": "from ..convert.run import X\n"})
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    with pytest.raises(AssertionError) as failed:
        test_imports_point_down_the_layers()
    assert "record.py:2 gsformat.core.record (records) imports gsformat.fitting.fit (fitting) " \
           "lazily" in str(failed.value)
    assert "dataset.py:1 gsformat.loaders.dataset (loaders) imports gsformat.convert.run " \
           "(convert)" in str(failed.value)
    with pytest.raises(AssertionError, match="import cycles"):
        test_no_import_cycles()


@pytest.mark.parametrize("layer", ["compat", "testing"])
def test_no_other_layer_imports(layer):
    """compat: 0.1's module paths, aliases only; testing: helpers of tests and benchmarks."""
    mods, edges, _ = graph()
    users = sorted(f"{name} → {target}" for name, targets in edges.items()
                   for target, _, _ in targets
                   if layer_of(target) == layer and layer_of(name) != layer)
    assert not users, users
