"""What ``--resume`` may change: the options that leave the maths alone; the rest come from the checkpoint."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from training.checkpoint import load_checkpoint
from training.config import ConfigError, RunConfig

__all__ = ["RESUME_OVERRIDABLE", "resume_config"]

# Options that may differ from the checkpoint's when resuming (they do not change the maths).
RESUME_OVERRIDABLE = {
    "epochs",
    "output",
    "device",
    "workers",
    "resume",
    "max_steps_per_epoch",
    "data_dir",
    "download",
    "val_per_class",
    "test_per_class",
    "chunk_size",  # the same gradient (BatchNorm aside, see --help): fit the memory you have now
    "channels_last",  # a memory layout: the same maths up to float rounding
}


def resume_config(args: argparse.Namespace) -> tuple[RunConfig, dict[str, Any]]:
    """The checkpoint's config, with only :data:`RESUME_OVERRIDABLE` options taken from the flags."""
    state = load_checkpoint(args.resume)
    base = RunConfig.from_dict(state["config"], source=str(args.resume))
    given = {k: v for k, v in vars(args).items() if k != "config"}
    changed = sorted(k for k, v in given.items() if k not in RESUME_OVERRIDABLE and getattr(base, k) != v)
    if changed:
        raise ConfigError(
            f"cannot change {', '.join('--' + k.replace('_', '-') for k in changed)} when resuming; "
            f"only {', '.join(sorted('--' + k.replace('_', '-') for k in RESUME_OVERRIDABLE))} may differ"
        )
    overrides = {k: v for k, v in given.items() if k in RESUME_OVERRIDABLE}
    return dataclasses.replace(base, **overrides).resolved(), state
