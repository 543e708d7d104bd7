"""The shape of the house, checked on the source (ast), not by convention:

* arrows point one way: command line -> study -> engine -> restoration toolkit; the model
  packages (backbones, search_spaces) and the model modules of the engine never import data I/O;
* no module imports a private name from another module; the command line loads its commands
  statically (no importlib) and nothing outside it imports it; adapters are imported by nobody;
* no file of ``nas/`` is longer than 500 lines; every ``docs/...`` a docstring cites exists, and
  no docstring cites the steering documents (design.md, papers.md) outside the repository;
* every package can be imported first in a fresh interpreter.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("nas", "backbones", "search_spaces")
FILES = sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, [names])`` of every import in the file (function-level imports included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
    return out


def layer(mod: str) -> str:
    for prefix, name in (("nas.cli", "cli"), ("nas.adapters", "adapters"), ("nas.study", "study"),
                         ("nas.engine", "engine"), ("nas.restoration", "restoration"),
                         ("backbones", "model"), ("search_spaces", "model")):
        if mod == prefix or mod.startswith(prefix + "."):
            return name
    return "base" if mod.startswith("nas") else "external"


#: what each layer may import (besides "base": nas.errors, nas.io, nas.config, ...)
ALLOWED = {
    "restoration": {"restoration", "base"},
    "model": {"model", "base"},
    "engine": {"engine", "restoration", "model", "base"},
    "study": {"study", "engine", "restoration", "model", "base"},
    "cli": {"cli", "study", "engine", "restoration", "model", "base"},
    "adapters": {"adapters", "engine", "restoration", "model", "base"},
}
#: base modules allowed below the engine, and the ones the model layer may use
BASE_FOR_MODEL = {"nas.errors", "nas.registry"}
#: the model modules of the engine: no data I/O
MODEL_MODULES = {"nas.engine.network", "nas.engine.flops", "nas.engine.supernet",
                 "nas.engine.gates"}
DATA_IO = {"nas.restoration.images", "nas.restoration.data", "nas.restoration.evaluate"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_layers_point_one_way(path):
    me = module_name(path)
    mine = layer(me)
    for mod, _ in imports(path):
        other = layer(mod)
        if other == "external" or me == "nas" or mine == "base":
            continue
        assert other in ALLOWED[mine], f"{me} ({mine}) imports {mod} ({other})"
        if mine == "model" and other == "base":
            assert mod in BASE_FOR_MODEL, f"{me} (model layer) imports {mod}"
        if me in MODEL_MODULES or mine == "model":
            assert mod not in DATA_IO, f"{me} (model) imports data I/O {mod}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_private_imports_across_modules(path):
    for mod, names in imports(path):
        if mod.split(".")[0] in PACKAGES:
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            assert not private, f"{module_name(path)} imports private {private} from {mod}"


def test_cli_is_static_and_imported_by_nobody_else():
    for path in FILES:
        me = module_name(path)
        names = [m for m, _ in imports(path)]
        if me.startswith("nas.cli"):
            assert "importlib" not in names, f"{me} uses importlib"
        elif me != "nas.__main__":
            assert not any(m == "nas.cli" or m.startswith("nas.cli.") for m in names), \
                f"{me} imports the command line"
        if not me.startswith("nas.adapters"):
            assert not any(m.startswith("nas.adapters") for m in names), f"{me} imports adapters"


@pytest.mark.parametrize("path", [p for p in FILES if p.relative_to(REPO).parts[0] == "nas"],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_files_stay_small(path):
    n = len(path.read_text().splitlines())
    assert n <= 500, f"{path.relative_to(REPO)} has {n} lines"


def test_docstrings_cite_documents_in_the_repository():
    cited = re.compile(r"(docs/[\w./-]+\.md)")
    for path in [*FILES, *(REPO / "experiments").rglob("*.py")]:
        text = path.read_text()
        for doc in cited.findall(text):
            assert (REPO / doc).is_file(), f"{path.relative_to(REPO)} cites missing {doc}"
        for bad in ("papers.md", "design.md §", "design.md section", "style_anchors.md"):
            assert bad not in text, f"{path.relative_to(REPO)} cites {bad!r}"


#: methods overriding torch.nn.Module's own (documented there)
OVERRIDES = {"extra_repr"}


def _is_setter(fn: ast.FunctionDef) -> bool:
    return any(isinstance(d, ast.Attribute) and d.attr == "setter" for d in fn.decorator_list)


def test_public_definitions_have_docstrings():
    missing = []
    for path in FILES:
        if path.name.startswith("_") and path.name != "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        if not ast.get_docstring(tree):
            missing.append(module_name(path))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                if not ast.get_docstring(node):
                    missing.append(f"{module_name(path)}.{node.name}")
                if isinstance(node, ast.ClassDef):
                    for sub in node.body:
                        if isinstance(sub, ast.FunctionDef) and not sub.name.startswith("_") \
                                and sub.name not in OVERRIDES and not _is_setter(sub) \
                                and not ast.get_docstring(sub):
                            missing.append(f"{module_name(path)}.{node.name}.{sub.name}")
    assert not missing, f"{len(missing)} public definitions without a docstring: {missing[:20]}"


@pytest.mark.parametrize("package", ["search_spaces", "search_spaces.operators", "backbones", "nas"])
def test_each_package_imports_first(package):
    """A fresh interpreter can import any package first (no import cycle through nas's own
    __init__: its public names load on first use)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", f"import {package}"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1:]
