"""The dependency direction, read statically from every import of every module, lazy ones included.

``test_packaging.py`` checks ``sys.modules`` after importing the server: that sees only the imports
that run. This test parses each ``.py`` file of ``clce_core/``, ``serving/`` and ``training/`` with
``ast`` and checks every ``import``, ``from ... import`` (relative ones resolved) and
``importlib.import_module("literal")`` / ``__import__("literal")``, at module level or inside a
function, against DESIGN.md's rules:

* ``clce_core`` never imports ``training``, ``serving``, ``benchmarks`` or ``tests``;
* ``serving`` never imports ``torch``, ``torchvision``, ``timm``, ``training``, ``benchmarks`` or ``tests``;
* ``training`` never imports ``benchmarks`` or ``tests``;
* ``clce_core/__init__.py`` imports no torch eagerly (module level, outside ``if TYPE_CHECKING:``,
  followed through the clce_core modules it imports that way);
* the numpy-only modules of clce_core (fewshot, metrics, stats, preprocessing, and every clce_core
  module serving imports) import no torch when they run, at module level or in a function, nor
  any clce_core module that does (a package ``__init__`` counts with its module-level imports:
  its functions are the lazy API).

An ``if TYPE_CHECKING:`` import never runs: it breaks the first three rules (a type dependency is
a dependency) but not the last two. ``importlib.import_module(name)`` with a computed name is
invisible here; the runtime test covers it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("clce_core", "serving", "training")
TORCH = frozenset({"torch", "torchvision", "timm"})
NOT_IN_THE_WHEEL = frozenset({"benchmarks", "tests"})
FORBIDDEN = {
    "clce_core": frozenset({"training", "serving"}) | NOT_IN_THE_WHEEL,
    "serving": TORCH | {"training"} | NOT_IN_THE_WHEEL,
    "training": NOT_IN_THE_WHEEL,
}
NUMPY_ONLY = ("clce_core.fewshot", "clce_core.metrics", "clce_core.stats", "clce_core.preprocessing")


@dataclass(frozen=True)
class Import:
    """One import statement: ``importer`` (a module name) imports ``target`` (a module name)."""

    importer: str
    target: str
    line: int
    where: str  # "module" (runs on import), "function" (runs when called) or "type-checking" (never)


@dataclass(frozen=True)
class Violation:
    importer: str
    target: str
    rule: str


def module_names(root: Path) -> dict[str, Path]:
    """Every module of the packages under ``root``: ``{"serving.routes.inference": path, ...}``."""
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Collector(ast.NodeVisitor):
    """Collects the imports of one module, noting whether each runs at import time."""

    def __init__(self, module: str, is_package: bool, modules: set[str]) -> None:
        self.module, self.modules = module, modules
        self.package = module if is_package else module.rpartition(".")[0]
        self.imports: list[Import] = []
        self.where = "module"

    def _add(self, target: str, node: ast.AST) -> None:
        self.imports.append(Import(self.module, target, node.lineno, self.where))

    def _visit_as(self, where: str, nodes: list[ast.AST]) -> None:
        outer, self.where = self.where, where
        for child in nodes:
            self.visit(child)
        self.where = outer

    def _function(self, node: ast.AST) -> None:
        self._visit_as("function" if self.where == "module" else self.where, list(ast.iter_child_nodes(node)))

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self._visit_as("type-checking", node.body)
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:  # relative: up level - 1 packages from this module's package
            base = self.package.split(".")[: max(0, len(self.package.split(".")) - node.level + 1)]
            source = ".".join([*base, node.module] if node.module else base)
        else:
            source = node.module or ""
        self._add(source, node)
        for alias in node.names:  # `from package import submodule` imports the submodule too
            if f"{source}.{alias.name}" in self.modules:
                self._add(f"{source}.{alias.name}", node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        first = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
        if name in ("import_module", "__import__") and isinstance(first, str) and not first.startswith("."):
            self._add(first, node)
        self.generic_visit(node)


@dataclass(frozen=True)
class Tree:
    """The imports of every module under a root, and which modules are packages (``__init__.py``)."""

    imports: dict[str, list[Import]]
    packages: frozenset[str]

    def runs(self, i: Import, eager_only: bool) -> bool:
        """Whether ``i`` runs: on import only, or also in called functions (a package's are its lazy API)."""
        if i.where == "type-checking":
            return False
        return i.where == "module" or not (eager_only or i.importer in self.packages)

    def reachable(self, start: set[str], eager_only: bool) -> set[str]:
        """The modules that importing ``start`` runs, parent packages included, through imports that run."""
        seen, todo = set(), sorted(start)
        while todo:
            name = todo.pop()
            if name not in self.imports:  # outside the packages, or no such module
                continue
            parts = name.split(".")
            for module in (".".join(parts[:n]) for n in range(1, len(parts) + 1)):
                if module in self.imports and module not in seen:
                    seen.add(module)
                    todo += [i.target for i in self.imports[module] if self.runs(i, eager_only)]
        return seen

    def torch_imports(self, modules: set[str], eager_only: bool, rule: str) -> list[Violation]:
        """The torch imports that run in ``modules``."""
        return [
            Violation(i.importer, i.target, rule)
            for module in sorted(modules)
            for i in self.imports[module]
            if self.runs(i, eager_only) and _top(i.target) in TORCH
        ]


def collect_imports(root: Path) -> Tree:
    """The imports of every module of the packages under ``root``."""
    modules = module_names(root)
    imports = {}
    for name, path in modules.items():
        collector = _Collector(name, path.name == "__init__.py", set(modules))
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        imports[name] = collector.imports
    return Tree(imports, frozenset(n for n, p in modules.items() if p.name == "__init__.py"))


def _top(name: str) -> str:
    return name.split(".")[0]


def numpy_only_modules(tree: Tree) -> set[str]:
    """The named numpy-only modules, every clce_core module serving imports, and what they import."""
    served = {i.target for m, found in tree.imports.items() if _top(m) == "serving" for i in found}
    start = {*NUMPY_ONLY, *(t for t in served if _top(t) == "clce_core")}
    return tree.reachable(start, eager_only=False)


def violations(root: Path) -> list[Violation]:
    """Every import under ``root`` that breaks one of the module docstring's rules."""
    tree = collect_imports(root)
    found = [
        Violation(i.importer, i.target, f"{_top(i.importer)} must not import {_top(i.target)}")
        for module, listed in tree.imports.items()
        for i in listed
        if _top(i.target) in FORBIDDEN[_top(module)]
    ]
    eager = tree.reachable({"clce_core"}, eager_only=True)
    found += tree.torch_imports(eager, eager_only=True, rule="import clce_core must not import torch")
    found += tree.torch_imports(
        numpy_only_modules(tree), eager_only=False, rule="numpy-only modules must not import torch"
    )
    return found


# ------------------------------------------------------------------------------------------ the tests
def test_the_packages_keep_the_dependency_direction() -> None:
    tree = collect_imports(REPO)
    assert len(tree.imports) > 30 and {"serving.app", "clce_core.losses", "training.finetune"} <= set(
        tree.imports
    )
    numpy_only = numpy_only_modules(tree)
    assert {"clce_core", "clce_core.preprocessing", "clce_core.fewshot", "clce_core.stats"} <= numpy_only
    assert "clce_core.losses" not in numpy_only
    assert violations(REPO) == []


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    for package in PACKAGES:
        (root / package).mkdir(exist_ok=True)
        for folder in [root / package, *(p for p in (root / package).rglob("*") if p.is_dir())]:
            (folder / "__init__.py").touch()
    return root


CLEAN = {  # every kind of import the rules allow
    "clce_core/__init__.py": "import importlib\ndef __getattr__(name):\n    return importlib.import_module('clce_core.losses')\n",
    "clce_core/losses.py": "import torch\nfrom .fewshot import prototypes\n",
    "clce_core/fewshot.py": "import numpy as np\nfrom clce_core import stats\nif TYPE_CHECKING:\n    import torch\n",
    "clce_core/stats.py": "import math\n",
    "serving/app.py": "from clce_core.fewshot import prototypes\nfrom . import runtime\n",
    "serving/runtime.py": "def f():\n    import onnxruntime\n",
    "training/engine.py": "import torch\nfrom clce_core.losses import x\nfrom serving import app\n",
}  # fmt: skip
NUMPY_RULE, EAGER_RULE = "numpy-only modules must not import torch", "import clce_core must not import torch"
# Each rule broken once, in the ways a sys.modules check after import misses: (files, violations).
PLANTED = {
    "eager torch through __init__, so in numpy-only stats too": (
        {"clce_core/__init__.py": "from clce_core.losses import loss\n", "clce_core/losses.py": "import torch\n",
         "clce_core/stats.py": "import math\n"},
        {("clce_core.losses", "torch", EAGER_RULE), ("clce_core.losses", "torch", NUMPY_RULE)},
    ),
    "lazy torch in a numpy-only module": (
        {"clce_core/fewshot.py": "def f():\n    import torch.nn.functional as F\n"},
        {("clce_core.fewshot", "torch.nn.functional", NUMPY_RULE)},
    ),
    "timm through a relative helper, by import_module": (
        {"clce_core/metrics.py": "from . import helper\n",
         "clce_core/helper.py": "import importlib\ndef g():\n    return importlib.import_module('timm')\n"},
        {("clce_core.helper", "timm", NUMPY_RULE)},
    ),
    "clce_core reaching into training": (
        {"clce_core/models.py": "def build():\n    from ..training.config import RunConfig\n"},
        {("clce_core.models", "training.config", "clce_core must not import training")},
    ),
    "torch in serving, for type checkers only": (
        {"serving/app.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n"},
        {("serving.app", "torch", "serving must not import torch")},
    ),
    "a clce_core module that serving imports": (
        {"serving/app.py": "from clce_core.vision import Thing\n", "clce_core/vision.py": "import torchvision\n"},
        {("clce_core.vision", "torchvision", NUMPY_RULE)},
    ),
    "serving importing benchmarks": (
        {"serving/routes/info.py": "def f():\n    from benchmarks.harness import fail\n"},
        {("serving.routes.info", "benchmarks.harness", "serving must not import benchmarks")},
    ),
    "training importing tests": (
        {"training/engine.py": "async def f():\n    __import__('tests.conftest')\n"},
        {("training.engine", "tests.conftest", "training must not import tests")},
    ),
}  # fmt: skip


def test_a_clean_synthetic_tree_passes(tmp_path: Path) -> None:
    assert violations(_tree(tmp_path, CLEAN)) == []


@pytest.mark.parametrize("case", PLANTED)
def test_a_planted_bad_import_is_found(case: str, tmp_path: Path) -> None:
    files, expected = PLANTED[case]
    found = {(v.importer, v.target, v.rule) for v in violations(_tree(tmp_path, files))}
    assert found == expected
