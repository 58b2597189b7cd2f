"""The package's floors (../shared/DESIGN.md, "Layout"): lower floors never import higher ones.

data/features/layers/models know nothing of train, eval, stream, export, runtime or compress;
kernels/ (compiled kernels for layers/) imports no other kwskit package;
eval, stream, export and runtime load models through models/, never through train/ or
compress/ (a compressed run rebuilds through models/io.py's ARCH_EDITS); runtime/ runs without
torch. Every import statement counts, also those inside functions; imports under
``if TYPE_CHECKING:`` (annotations only, never run) do not.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "kwskit"

FORBIDDEN = {
    **{low: ("train", "eval", "stream", "export", "runtime", "compress")
       for low in ("data", "features", "layers", "models")},
    **{high: ("train", "compress") for high in ("eval", "stream", "export", "runtime")},
    # C++ kernels and their loader: the floor under layers/, importing no other kwskit package
    "kernels": ("data", "features", "layers", "models", "train", "eval", "stream", "export",
                "runtime", "compress", "config", "cli"),
}


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(tree: ast.Module):
    """(name, line, top level?) of every import that runs: ``import a.b`` gives "a.b",
    ``from a import b`` gives "a.b" (b may be a module), relative names keep their dots."""
    def walk(nodes, top):
        for node in nodes:
            if _type_checking_only(node):
                yield from walk(node.orelse, top)
                continue
            if isinstance(node, ast.Import):
                for a in node.names:
                    yield a.name, node.lineno, top
            elif isinstance(node, ast.ImportFrom):
                base = "." * node.level + (node.module or "")
                for a in node.names:
                    yield (base + a.name if base.endswith(".") else f"{base}.{a.name}"), node.lineno, top
            # top level stays top level inside if/try blocks (``try: import x``); the body of a
            # def or a class runs later or on demand
            inner = top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            yield from walk(ast.iter_child_nodes(node), inner)

    yield from walk(tree.body, True)


def _absolute(name: str, package: str) -> str:
    """``name`` as imported from a module of kwskit/<package>/ (relative imports resolved)."""
    level = len(name) - len(name.lstrip("."))
    if level == 0:
        return name
    return ".".join(["kwskit", package][: 3 - level] + [name[level:]])


def _modules(package: str):
    return sorted((PKG / package).glob("*.py"))


def test_the_floors_are_all_there():
    for package in FORBIDDEN:
        assert _modules(package), f"kwskit/{package}/ has no modules: update FORBIDDEN"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_floors_import_no_higher_ones(package):
    bad = []
    for f in _modules(package):
        for name, line, _ in _imports(ast.parse(f.read_text(encoding="utf-8"))):
            parts = _absolute(name, package).split(".")
            if parts[0] == "kwskit" and len(parts) > 1 and parts[1] in FORBIDDEN[package]:
                bad.append(f"{f.relative_to(PKG.parent)}:{line} imports {'.'.join(parts)}")
    assert not bad, "\n".join(bad)


def test_runtime_imports_no_torch_at_module_level():
    bad = [f"{f.relative_to(PKG.parent)}:{line} imports {name}"
           for f in _modules("runtime")
           for name, line, top in _imports(ast.parse(f.read_text(encoding="utf-8")))
           if top and name.split(".")[0] == "torch"]
    assert not bad, "\n".join(bad)
    # and nothing it imports pulls torch in either
    code = ("import sys, kwskit.runtime\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'kwskit' in m)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_the_walk_sees_what_it_must():
    src = ("import kwskit.train.loop\n"
           "from typing import TYPE_CHECKING\n"
           "if TYPE_CHECKING:\n    from kwskit.stream.streaming import Streamer\n"
           "try:\n    import onnxruntime\nexcept ImportError:\n    from torch import nn\n"
           "def f():\n    from kwskit import eval\n"
           "    from ..train import loop\n    from . import io\n")
    got = [(_absolute(n, "models"), top) for n, _, top in _imports(ast.parse(src))]
    assert got == [("kwskit.train.loop", True), ("typing.TYPE_CHECKING", True),
                   ("onnxruntime", True), ("torch.nn", True), ("kwskit.eval", False),
                   ("kwskit.train.loop", False), ("kwskit.models.io", False)]
