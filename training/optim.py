"""The optimizer and the learning-rate schedule of a run, built from its :class:`RunConfig`.

* :func:`param_groups`: encoder and head at their own learning rates; no weight decay on norms and biases.
* :func:`build_optimizer`: fused AdamW (default) or SGD with Nesterov momentum over those groups.
* :func:`warmup_cosine` / :func:`build_scheduler`: linear warm-up, then cosine decay to 0, per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from training.config import RunConfig

__all__ = ["build_optimizer", "build_scheduler", "param_groups", "warmup_cosine"]


def param_groups(model: nn.Module, lr: float, head_lr: float, weight_decay: float) -> list[dict]:
    """Encoder and head at their own learning rates; no weight decay on norms and biases (1-D tensors)."""
    groups = []
    for part, part_lr in (("encoder", lr), ("head", head_lr)):
        decay, no_decay = [], []
        for p in getattr(model, part).parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        groups += [
            {"params": decay, "lr": part_lr, "weight_decay": weight_decay, "name": f"{part}"},
            {"params": no_decay, "lr": part_lr, "weight_decay": 0.0, "name": f"{part}-no-decay"},
        ]
    return [g for g in groups if g["params"]]


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Factor of the peak lr: linear from ~0 over ``warmup_steps``, then cosine down to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_optimizer(cfg: RunConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """``--optimizer`` over :func:`param_groups` of ``model`` (``--lr``, ``--head-lr``, ``--weight-decay``).

    AdamW is fused on the CPU and CUDA: one kernel for all parameters, about 4× faster than the
    per-tensor loop. SGD uses Nesterov momentum ``--momentum``.
    """
    groups = param_groups(model, cfg.lr, cfg.head_lr, cfg.weight_decay)  # type: ignore[arg-type]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=device.type in ("cpu", "cuda"))


def build_scheduler(
    cfg: RunConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step :func:`warmup_cosine` over ``--epochs`` × ``steps_per_epoch`` steps, ``--warmup-epochs`` of warm-up."""
    total = steps_per_epoch * cfg.epochs
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, warmup))
