"""What a run's checkpoint holds, and how ``--resume`` puts it back so the run continues bit for bit.

:func:`training_state` builds the dict that :func:`training.checkpoint.save_checkpoint` writes (its keys
are listed in :mod:`training.checkpoint`) from a run's step context and :class:`Progress`;
:func:`restore_training_state` puts it back (weights, optimizer, schedule, scaler, EMA, generators)
and returns the :class:`Progress`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from training.checkpoint import CheckpointError

if TYPE_CHECKING:
    from torch import nn

    from training.config import RunConfig
    from training.engine import StepContext

__all__ = [
    "Progress",
    "eval_module",
    "restore_training_state",
    "rng_state",
    "set_rng_state",
    "training_state",
]


@dataclass
class Progress:
    """How far a run has come; saved in every checkpoint and restored on ``--resume``."""

    epoch: int = 0  # completed epochs
    global_step: int = 0  # optimizer steps taken
    best_val_top1: float = -1.0  # best validation top-1 so far (percent; -1: none yet)
    best_epoch: int = 0  # the epoch best.pt holds (0: none yet)
    metrics: dict[str, float] = field(default_factory=dict)  # the last completed epoch's metrics.jsonl line


def eval_module(ctx: StepContext) -> nn.Module:
    """The weights a run evaluates and saves as ``model``: the EMA copy when EMA is on, else the model."""
    return ctx.ema.module if ctx.ema is not None else ctx.module


def training_state(
    ctx: StepContext, cfg: RunConfig, classes: list[str], data_config: dict[str, Any], progress: Progress
) -> dict[str, Any]:
    """Everything a resume, an evaluation or an export needs, as :func:`save_checkpoint` writes it.

    Args:
        ctx: the run's step context (model, EMA, optimizer, scheduler, scaler).
        cfg: the resolved run config.
        classes: class names in label order.
        data_config: the eval preprocessing (timm's data config; tuples are stored as lists).
        progress: epochs, steps and metrics so far.
    """
    import timm

    import clce_core

    model = ctx.module
    state = {
        "model": eval_module(ctx).state_dict(),
        "optimizer": ctx.optimizer.state_dict(),
        "scheduler": ctx.scheduler.state_dict(),
        "epoch": progress.epoch,
        "global_step": progress.global_step,
        "rng": rng_state(),
        "config": cfg.to_dict(),
        "classes": list(classes),
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
        "model_name": cfg.model,
        "embedding_dim": model.embedding_dim,
        "metrics": dict(progress.metrics),
        "best_val_top1": progress.best_val_top1,
        "best_epoch": progress.best_epoch,
        "versions": {
            "torch": str(torch.__version__),
            "timm": timm.__version__,
            "clce": clce_core.__version__,
        },
    }
    if ctx.ema is not None:
        state["raw_model"] = model.state_dict()
    if ctx.scaler is not None:
        state["scaler"] = ctx.scaler.state_dict()
    return state


def restore_training_state(state: dict[str, Any], ctx: StepContext) -> Progress:
    """Load a :func:`training_state` dict into a freshly built run; returns its :class:`Progress`.

    The random generators are restored last, so the next draw is the one the saved run would have made.

    Raises:
        CheckpointError: the weights or optimizer state do not fit this run (another model or loss).
    """
    try:
        ctx.module.load_state_dict(state["raw_model"] if "raw_model" in state else state["model"])
        if ctx.ema is not None:
            ctx.ema.module.load_state_dict(state["model"])
        ctx.optimizer.load_state_dict(state["optimizer"])
        ctx.scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, KeyError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"the checkpoint does not fit this run ({first[:200]})") from None
    if ctx.scaler is not None and "scaler" in state:
        ctx.scaler.load_state_dict(state["scaler"])
    progress = Progress(
        epoch=int(state["epoch"]),
        global_step=int(state.get("global_step", 0)),
        best_val_top1=float(state.get("best_val_top1", -1.0)),
        best_epoch=int(state.get("best_epoch", 0)),
        metrics=dict(state.get("metrics", {})),
    )
    set_rng_state(state["rng"])
    return progress


def rng_state() -> dict[str, Any]:
    """Every random generator a run draws from, as tensors and plain values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_plain(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    random.setstate(_to_tuple(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_plain(value: Any) -> Any:
    return [_to_plain(v) for v in value] if isinstance(value, tuple | list) else value


def _to_tuple(value: Any) -> Any:
    return tuple(_to_tuple(v) for v in value) if isinstance(value, list) else value
