"""Seeding every generator a run draws from (Python, numpy, torch), once per run and per DDP epoch.

The generators' states themselves travel in checkpoints (:func:`training.run_state.rng_state`).
"""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["rank_epoch_seed", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch's (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rank_epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A seed of its own for each (run seed, epoch, rank): under DDP each process draws its own
    augmentations and dropout masks, and a resume under the same number of processes repeats them."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
