"""The dataset registry is complete however ``training.datasets`` is reached (a fresh interpreter), and
the package keeps timm's shape: a leaf registry, families that register themselves, no import cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {
    "caltech256",
    "cifar-fs",
    "cifar100",
    "fashion-mnist",
    "fc100",
    "flowers102",
    "food101",
    "glyphs64",
    "imagefolder",
    "oxford-pets",
}
LEAVES = ("training.datasets.registry", "training.datasets.splits", "training.datasets.images")


@pytest.mark.slow
@pytest.mark.parametrize(
    "first_import",
    ["import training.finetune", "import training.datasets.registry", "import training.evaluate"],
)
def test_every_dataset_is_registered_on_import(first_import: str) -> None:
    code = f"{first_import}; from training.datasets import list_datasets; print(','.join(list_datasets()))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert set(out.split(",")) == EXPECTED


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of ``training`` that ``path`` imports when it is imported (not lazily, not for typing)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:  # module level only: function bodies are lazy
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found & modules


def _import_graph() -> dict[str, set[str]]:
    """Module -> the ``training`` modules it imports at import time (a package's own name left out)."""
    paths = {_module_name(p): p for p in (ROOT / "training").rglob("*.py")}
    return {name: _top_level_imports(path, set(paths)) - {name} for name, path in paths.items()}


def test_the_training_package_has_no_import_cycle() -> None:
    graph = _import_graph()
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for dep in sorted(graph[name]):
            assert state.get(dep) != "open", f"import cycle: {' -> '.join([*trail, name, dep])}"
            if dep not in state:
                visit(dep, [*trail, name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_the_dataset_registry_is_a_leaf() -> None:
    graph = _import_graph()
    for leaf in LEAVES:
        assert all(dep in LEAVES for dep in graph[leaf] if dep.startswith("training")), (leaf, graph[leaf])
    package_users = [
        m for m, deps in graph.items() if "training.datasets" in deps and m.startswith("training.datasets.")
    ]
    assert package_users == [], "a dataset module imports its own package back"
    families = {"fashion_mnist", "image_folders", "torchvision"}
    assert {f"training.datasets.{f}" for f in families} <= graph["training.datasets"]
