"""The subset of kustomize that ``deploy/kubernetes`` uses, so the tests render the overlays offline
without a kustomize binary: ``resources`` (files and folders), ``images`` and ``patches`` holding
JSON 6902 operations with a ``target`` kind and name. Anything else in a kustomization.yaml raises,
so a new feature is added here (and compared with ``kubectl kustomize`` by the tests) before use.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "images", "patches"}


def load_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document in ``path``."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def render(folder: Path) -> list[dict[str, Any]]:
    """The resources that ``kubectl kustomize folder`` would print (in file order).

    Raises:
        ValueError: The kustomization uses a field or a patch operation this subset lacks.
    """
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise ValueError(f"{folder}/kustomization.yaml uses {sorted(unknown)}: add them to {__file__}")
    docs: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = folder / entry
        docs += render(path) if path.is_dir() else load_documents(path)
    for patch in kustomization.get("patches", []):
        operations = yaml.safe_load((folder / patch["path"]).read_text())
        targets = [
            d
            for d in docs
            if all(d[k] == v if k == "kind" else d["metadata"][k] == v for k, v in patch["target"].items())
        ]
        if not targets:
            raise ValueError(f"patch {patch['path']}: no resource matches target {patch['target']}")
        for doc in targets:
            for op in operations:
                _apply(doc, op)
    for image in kustomization.get("images", []):
        for container in _containers(docs):
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}".rstrip(":")
    return docs


def _containers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
    return [c for pod in pods for c in pod.get("containers", []) + pod.get("initContainers", [])]


def _apply(doc: dict[str, Any], op: dict[str, Any]) -> None:
    """One JSON 6902 operation (add, replace, remove) on ``doc``, in place."""
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    kind = op["op"]
    if isinstance(node, list):
        if kind == "add":
            node.insert(len(node) if last == "-" else int(last), copy.deepcopy(op["value"]))
        elif kind == "replace":
            node[int(last)] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del node[int(last)]
        else:
            raise ValueError(f"JSON patch op {kind!r} is not supported here: use add, replace or remove")
    elif kind in ("add", "replace"):
        if kind == "replace" and last not in node:
            raise ValueError(f"JSON patch replace {op['path']}: nothing there to replace")
        node[last] = copy.deepcopy(op["value"])
    elif kind == "remove":
        del node[last]
    else:
        raise ValueError(f"JSON patch op {kind!r} is not supported here: use add, replace or remove")
