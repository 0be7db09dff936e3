"""CLCE core library: losses, models, few-shot math and metrics.

Importing ``clce_core`` does not import torch: ``clce_core.fewshot``, ``clce_core.stats`` and
``clce_core.metrics`` are numpy-only so that the serving image can use them without torch. The
torch-backed names (``clce_loss``, ``create_model``, ...) are resolved lazily on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    # losses (torch)
    "LossOutput": "clce_core.losses",
    "lacln_loss": "clce_core.losses",
    "supcon_loss": "clce_core.losses",
    "hscl_loss": "clce_core.losses",
    "clce_loss": "clce_core.losses",
    "ce_supcon_loss": "clce_core.losses",
    "create_loss": "clce_core.losses",
    "list_losses": "clce_core.losses",
    # models (torch, timm)
    "create_model": "clce_core.models",
    "ClassifierModel": "clce_core.models",
    # few-shot, statistics and metrics (numpy only)
    "prototypes": "clce_core.fewshot",
    "cosine_scores": "clce_core.fewshot",
    "sample_episode": "clce_core.fewshot",
    "evaluate_episodes": "clce_core.fewshot",
    "mean_confidence_interval": "clce_core.stats",
    "t_confidence_interval": "clce_core.stats",
    "topk_accuracy": "clce_core.metrics",
    "isotropy_score": "clce_core.metrics",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clce_core' has no attribute {name!r}")
