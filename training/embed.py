"""Frozen embeddings of a class set: load an encoder, pick the images, embed each image once, dump.

* :func:`load_encoder` gives an :class:`Encoder` from a fine-tuning checkpoint (its classes and its
  eval preprocessing) or from a timm name with pretrained weights (the frozen floor: no classes).
* :func:`load_class_set` gives the images of a class set: a dataset split, a few-shot class split of
  CIFAR-100 (``cifar-fs`` / ``fc100``) or a folder of class folders.
* :func:`embed_images` / :func:`embed_and_classify` run the encoder once per image (batched, no_grad,
  eval mode, the eval transform) and return numpy arrays; the episodes then run in numpy.
* :func:`save_embeddings` writes the dump: ``embeddings.npy`` (N, D) float32 un-normalised,
  ``labels.npy`` (N,) int64 positions in ``classes.json`` (+ ``paths.txt`` for file-based images) in
  a folder, or the same arrays in one ``.npz`` when the path ends in ``.npz``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from clce_core.models import ClassifierModel, create_model, model_data_config

__all__ = [
    "ClassSet",
    "Encoder",
    "embed_and_classify",
    "embed_images",
    "load_class_set",
    "load_encoder",
    "save_embeddings",
]


@dataclass
class Encoder:
    """A model ready to embed images.

    Attributes:
        model: the :class:`ClassifierModel`, in eval mode, on its device.
        data_config: eval preprocessing (``input_size``, ``interpolation``, ``crop_pct``, ``mean``, ``std``).
        classes: the head's class names in label order; None for a frozen pretrained encoder (no head).
        source: where it came from: the checkpoint path, or ``NAME (pretrained: SOURCE)``.
        checkpoint: the checkpoint path, or None.
        config: the checkpoint's run config (empty for a frozen encoder).
    """

    model: ClassifierModel
    data_config: dict[str, Any]
    classes: list[str] | None
    source: str
    checkpoint: str | None = None
    config: dict[str, Any] | None = None


def load_encoder(
    checkpoint: str | os.PathLike[str] | None = None,
    model_name: str | None = None,
    pretrained: str = "auto",
    img_size: int | None = None,
    device: torch.device | str = "cpu",
) -> Encoder:
    """An encoder from a checkpoint, or a timm model with pretrained weights (the frozen floor).

    Raises:
        training.checkpoint.CheckpointError: a missing, corrupt or foreign checkpoint.
        clce_core.models.WeightsError / ValueError: unknown model or unavailable weights.
    """
    if (checkpoint is None) == (model_name is None):
        raise ValueError("give either a checkpoint or a model name")
    if checkpoint is not None:
        from training.checkpoint import model_from_checkpoint

        model, state = model_from_checkpoint(checkpoint)
        data_config = dict(state["data_config"])
        classes = [str(c) for c in state["classes"]]
        enc = Encoder(model, data_config, classes, str(checkpoint), str(checkpoint), dict(state["config"]))
    else:
        # 1000 classes: packaged ImageNet weights load whole (no head warning); the head is not used
        model = create_model(model_name, 1000, pretrained, img_size=img_size).eval()
        enc = Encoder(
            model, model_data_config(model_name, img_size), None, f"{model_name} (pretrained: {pretrained})"
        )
    enc.model.to(device)
    return enc


@dataclass
class ClassSet:
    """The images of a class set, untransformed: ``dataset[i] -> (PIL image, label)`` until
    :meth:`with_transform`; ``targets`` are positions in ``classes``."""

    dataset: Any  # training.datasets.LabeledImages
    classes: list[str]
    description: str

    @property
    def targets(self) -> np.ndarray:
        return np.asarray(self.dataset.targets, dtype=np.int64)

    def paths(self) -> list[str] | None:
        """File paths in item order when the images are files, else None."""
        files = getattr(self.dataset.source, "paths", None)
        return None if files is None else [str(files[int(i)]) for i in self.dataset.indices]


def load_class_set(
    dataset: str | None = None,
    split: str = "test",
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> ClassSet:
    """The images to evaluate on.

    Args:
        dataset: a registered dataset name; ``cifar-fs`` / ``fc100`` take ``split``'s few-shot classes
            (all 600 CIFAR-100 images of each), ``glyphs64`` its train / val / novel classes (all images
            of each); other datasets take their own ``split``. None: ``data_dir``
            is a folder of class folders.
        split: ``train``, ``val`` or ``test``.
        data_dir: the dataset root (with ``dataset``) or the folder of class folders.
        download: let torchvision download a missing dataset.

    Raises:
        training.datasets.DatasetError: one line saying what is missing or wrong.
    """
    from training.datasets import (
        FEWSHOT_SPLITS,
        DatasetError,
        build_datasets,
        build_fewshot_split,
        class_folder_images,
        glyph_class_set,
    )

    if split not in ("train", "val", "test"):
        raise DatasetError(f"split must be train, val or test, got {split!r}")
    if dataset is None:
        if data_dir is None:
            raise DatasetError(
                "give --dataset NAME (with --split) or --data-dir DIR (a folder of class folders)"
            )
        images, classes = class_folder_images(data_dir)
        return ClassSet(images, list(classes), f"{data_dir}")
    if dataset in FEWSHOT_SPLITS:
        images, classes = build_fewshot_split(dataset, split, data_dir, download)
        return ClassSet(images, list(classes), f"{dataset} few-shot {split} classes")
    if dataset == "glyphs64":
        images, classes = glyph_class_set(split, data_dir)
        return ClassSet(images, list(classes), f"glyphs64 few-shot {split} classes")
    splits = build_datasets(dataset, data_dir, download, None, None)
    chosen = getattr(splits, split)
    if chosen is None:
        raise DatasetError(f"{dataset} has no {split} split here; choose train or val")
    return ClassSet(chosen, list(splits.classes), f"{dataset} {split} split")


def _loader(
    dataset: Any, transform: Callable | None, batch_size: int, workers: int, show_progress: bool, desc: str
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    if len(dataset) == 0:
        raise ValueError("no images to embed")
    data = dataset.with_transform(transform) if transform is not None else dataset
    loader = DataLoader(data, batch_size=batch_size, num_workers=workers, shuffle=False)
    return tqdm(loader, desc=desc, disable=not show_progress, unit="batch", dynamic_ncols=True)


@torch.no_grad()
def embed_images(
    model: ClassifierModel,
    dataset: Any,
    device: torch.device | str = "cpu",
    batch_size: int = 128,
    *,
    transform: Callable | None = None,
    workers: int = 0,
    show_progress: bool = True,
    desc: str = "embed",
) -> np.ndarray:
    """The un-normalised pooled features of every image, in dataset order (eval mode, no_grad).

    Args:
        model: the encoder (its ``embed`` is used).
        dataset: ``dataset[i] -> (image, label)``; images are tensors ``(3, H, W)`` unless ``transform``
            is given (then any dataset with ``with_transform``, e.g. ``LabeledImages`` of PIL images).
        device: where the model lives.
        batch_size: images per forward pass.
        transform: the eval transform, usually
            ``training.transforms.eval_transform(encoder.data_config)``.
        workers: DataLoader worker processes (0: decode in this process).

    Returns:
        ``(N, D)`` float32.
    """
    model.eval()
    parts = [
        model.embed(images.to(device)).float().cpu().numpy()  # (B, D)
        for images, _ in _loader(dataset, transform, batch_size, workers, show_progress, desc)
    ]
    return np.concatenate(parts)


@torch.no_grad()
def embed_and_classify(
    model: ClassifierModel,
    dataset: Any,
    device: torch.device | str = "cpu",
    batch_size: int = 128,
    *,
    transform: Callable | None = None,
    workers: int = 0,
    show_progress: bool = True,
    desc: str = "embed",
) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`embed_images`, plus the head's logits: ``(N, D)`` and ``(N, C)``, float32."""
    model.eval()
    emb, logits = [], []
    for images, _ in _loader(dataset, transform, batch_size, workers, show_progress, desc):
        e, z = model(images.to(device))  # (B, D), (B, C)
        emb.append(e.float().cpu().numpy())
        logits.append(z.float().cpu().numpy())
    return np.concatenate(emb), np.concatenate(logits)


def save_embeddings(
    path: str | os.PathLike[str],
    embeddings: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    paths: list[str] | None = None,
) -> Path:
    """Write the dump: a folder (``embeddings.npy``, ``labels.npy``, ``classes.json``, ``paths.txt``)
    or, for a path ending in ``.npz``, one npz with ``embeddings``, ``labels``, ``classes`` (and ``paths``).

    Returns:
        The path written.
    """
    path = Path(path)
    emb = np.asarray(embeddings, dtype=np.float32)
    lab = np.asarray(labels, dtype=np.int64)
    if path.suffix == ".npz":
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = {"paths": np.asarray(paths)} if paths is not None else {}
        np.savez(path, embeddings=emb, labels=lab, classes=np.asarray(classes), **extra)
        return path
    path.mkdir(parents=True, exist_ok=True)
    np.save(path / "embeddings.npy", emb)
    np.save(path / "labels.npy", lab)
    (path / "classes.json").write_text(json.dumps(list(classes), ensure_ascii=False, indent=0) + "\n")
    if paths is not None:
        (path / "paths.txt").write_text("".join(f"{p}\n" for p in paths))
    return path
