"""Train / eval transforms and the two-view row layout of the two-view losses.

* :func:`eval_transform` is timm's eval transform of a model's data config: the one that
  training, evaluation, embedding and the export's parity check use, and that serving reproduces.
* :func:`build_transforms` gives the train / eval transforms of a run.
* :class:`TwoViews` and :func:`two_view_collate` produce the CONTRACTS row layout
  ``[view 1 of images 0..B-1; view 2 of images 0..B-1]`` (see :func:`stack_views`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch.utils.data import default_collate

__all__ = ["AugConfig", "TwoViews", "build_transforms", "eval_transform", "stack_views", "two_view_collate"]

EVAL_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")  # what it reads


@dataclass
class AugConfig:
    """Training augmentation (the same for both views)."""

    scale: tuple[float, float] = (
        0.25,
        1.0,
    )  # RandomResizedCrop area range (config.py crop_scale; timm: 0.08)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect-ratio range
    hflip: float = 0.5  # horizontal-flip probability; 0 for data where mirroring changes the class (glyphs)
    color_jitter: float = 0.4  # brightness = contrast = saturation strength; 0 disables


def eval_transform(data_config: dict[str, Any]) -> Callable:
    """timm's eval transform for a data config: resize to size / crop_pct, centre crop, normalise.

    Args:
        data_config: timm's ``resolve_data_config`` output, a checkpoint's ``data_config`` or a model
            card (lists are read as tuples; missing or None keys take timm's defaults).

    Returns:
        RGB PIL image -> ``(3, H, W)`` float32 tensor, timm's ``create_transform(is_training=False)``.
    """
    from timm.data import create_transform

    cfg = {k: data_config[k] for k in EVAL_KEYS if data_config.get(k) is not None}
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    return create_transform(**cfg, is_training=False)


def build_transforms(
    data_config: dict[str, Any],
    img_size: int | None = None,
    two_views: bool = False,
    aug: AugConfig | None = None,
) -> tuple[Callable, Callable]:
    """Train and eval transforms for RGB PIL images.

    Args:
        data_config: timm's ``resolve_data_config`` output (input_size, interpolation, crop_pct, mean, std).
        img_size: square training / eval size; None keeps ``data_config["input_size"]``.
        two_views: wrap the train transform in :class:`TwoViews` (items become ``(2, 3, H, W)``).
        aug: augmentation settings; None = ``AugConfig()``.

    Returns:
        ``(train_transform, eval_transform)``. Eval = :func:`eval_transform` at the training size
        (resize to size / crop_pct, centre crop, normalise), exactly what serving reproduces.
        Train = RandomResizedCrop -> horizontal flip -> ColorJitter -> ToTensor -> Normalize, with the
        eval interpolation.
    """
    from timm.data.transforms import str_to_interp_mode
    from torchvision import transforms as tvt

    aug = aug or AugConfig()
    lo, hi = aug.scale
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"aug.scale must satisfy 0 < low <= high <= 1, got {aug.scale}")
    if not 0 <= aug.hflip <= 1 or aug.color_jitter < 0:
        raise ValueError(
            f"aug.hflip must lie in [0, 1] and color_jitter be >= 0, got {aug.hflip}, {aug.color_jitter}"
        )
    cfg = dict(data_config)
    if img_size is not None:
        cfg["input_size"] = (3, img_size, img_size)
    eval_tf = eval_transform(cfg)
    size = tuple(cfg["input_size"][-2:])
    interpolation = str_to_interp_mode(cfg.get("interpolation", "bilinear"))
    steps: list[Callable] = [
        tvt.RandomResizedCrop(size, scale=aug.scale, ratio=aug.ratio, interpolation=interpolation)
    ]
    if aug.hflip > 0:
        steps.append(tvt.RandomHorizontalFlip(aug.hflip))
    if aug.color_jitter > 0:
        steps.append(tvt.ColorJitter(aug.color_jitter, aug.color_jitter, aug.color_jitter))
    steps += [tvt.ToTensor(), tvt.Normalize(cfg["mean"], cfg["std"])]
    train_tf: Callable = tvt.Compose(steps)
    return (TwoViews(train_tf) if two_views else train_tf), eval_tf


class TwoViews:
    """Apply a random transform twice: image -> ``(2, 3, H, W)``, two independent augmentations."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.stack([self.transform(image), self.transform(image)])  # (2, 3, H, W)

    def __repr__(self) -> str:
        return f"TwoViews({self.transform!r})"


def stack_views(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, V, 3, H, W)``, ``(B,)`` -> ``(V*B, 3, H, W)``, ``(V*B,)`` in the CONTRACTS row layout.

    Rows are ``[view 1 of images 0..B-1; view 2 of images 0..B-1; ...]``; row ``v*B + i`` is view v+1
    of image i, and the labels are the image labels repeated V times.
    """
    b, v = images.shape[:2]
    rows = images.transpose(0, 1).reshape(v * b, *images.shape[2:])  # (V*B, 3, H, W)
    return rows, labels.repeat(v)  # (V*B,)


def two_view_collate(batch: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """DataLoader ``collate_fn`` for :class:`TwoViews` items: ``(2B, 3, H, W)`` rows, ``(2B,)`` labels."""
    images, labels = default_collate(batch)  # (B, 2, 3, H, W), (B,)
    return stack_views(images, labels)
