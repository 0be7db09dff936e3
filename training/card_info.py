"""What an export's model card says beyond the network: :class:`CardInfo` from a run or a model, and
:func:`build_card`, the :class:`~clce_core.export_folder.ModelCard` that :mod:`training.exporter` writes.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clce_core.export_folder import ModelCard
from clce_core.models import ClassifierModel


@dataclass
class CardInfo:
    """What ``model.json`` says beyond the network itself.

    Attributes:
        model_name: the timm model name.
        labels: class names in logit order (C of them).
        data_config: eval preprocessing: input_size [3, H, W], interpolation, crop_pct, crop_mode, mean, std.
        loss: ``{"name", "lam", "tau"}`` of the training run (None for a head that was never trained).
        metrics: training metrics (val_top1, test_top1, ... in percent).
    """

    model_name: str
    labels: list[str]
    data_config: dict[str, Any]
    loss: dict[str, Any] = field(default_factory=lambda: {"name": None, "lam": None, "tau": None})
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], checkpoint: str | os.PathLike[str]) -> CardInfo:
        """Card info of a training checkpoint; its test metrics come from ``metrics.jsonl`` beside it.

        The last line of ``metrics.jsonl`` holds the test top-1 of ``best.pt``; it is taken when its
        ``best_epoch`` is this checkpoint's epoch.
        """
        cfg = state["config"]
        metrics = {k: v for k, v in dict(state.get("metrics") or {}).items() if k != "epoch"}
        metrics["epoch"] = int(state["epoch"])
        if "best_val_top1" in state:
            metrics["best_val_top1"] = state["best_val_top1"]
        with contextlib.suppress(OSError, ValueError):
            for line in Path(checkpoint).with_name("metrics.jsonl").read_text().splitlines():
                row = json.loads(line) if line.strip() else {}
                if "test_top1" in row and row.get("best_epoch") == state["epoch"]:
                    metrics.update(test_top1=row["test_top1"], test_top5=row.get("test_top5"))
        return cls(
            model_name=state.get("model_name") or cfg["model"],
            labels=[str(c) for c in state["classes"]],
            data_config=dict(state["data_config"]),
            loss={"name": cfg.get("loss"), "lam": cfg.get("lam"), "tau": cfg.get("tau")},
            metrics=metrics,
        )

    @classmethod
    def from_model(cls, model: ClassifierModel, labels: list[str] | None = None) -> CardInfo:
        """Card info of a model without a training run (e.g. packaged weights and a fresh head)."""
        labels = labels or [f"class_{i}" for i in range(model.num_classes)]
        return cls(model.model_name, list(labels), model.data_config)


def build_card(info: CardInfo, embedding_dim: int, opset: int, precision: str) -> ModelCard:
    """The model card of an export, before :func:`~clce_core.export_folder.write_card` adds the files' sha256.

    Raises:
        ExportFolderError: labels or preprocessing the card cannot hold (e.g. duplicate labels).
    """
    import onnx
    import timm

    return ModelCard.from_data_config(
        info.data_config,
        model_name=info.model_name,
        labels=list(info.labels),
        embedding_dim=int(embedding_dim),
        loss=dict(info.loss),
        metrics=dict(info.metrics),
        opset=int(opset),
        precision=precision,
        versions={"torch": str(torch.__version__), "timm": timm.__version__, "onnx": onnx.__version__},
    )
