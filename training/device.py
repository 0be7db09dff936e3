"""Where a process computes: the one reading of ``--device`` for fine-tuning, evaluation and the rest."""

from __future__ import annotations

import torch

from training.config import ConfigError

__all__ = ["resolve_device"]


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """The device a ``--device`` value names.

    Args:
        name: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        local_rank: under torchrun, the process's local rank: a CUDA process takes GPU ``local_rank``.

    Raises:
        ConfigError: CUDA asked for where there is none (a ``ValueError``; the message says what to pass).
    """
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
    if device.type == "cuda" and local_rank is not None:
        device = torch.device("cuda", local_rank)
    return device
