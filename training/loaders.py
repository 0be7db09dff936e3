"""What a run reads: its dataset splits under its transforms, and the loaders over them.

* :func:`build_splits`: the dataset of ``--dataset`` with the train (one or two views) and eval
  transforms, the validation / test caps applied (seeded, class-balanced).
* :func:`build_loaders` -> :class:`Loaders`: class-balanced (``--per-class m``) or shuffled training
  batches, eval loaders for val and test; :meth:`Loaders.set_epoch` reseeds the batches of an epoch.

Under DDP each of the ``world_size`` processes loads ``batch_size / world_size`` images per step: its
own share of the same seeded sequence of batches, so the schedule does not depend on the process count.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler

from training import distributed
from training.config import ConfigError, RunConfig
from training.datasets import DatasetSplits, build_datasets, take_per_class
from training.samplers import ClassBalancedBatchSampler
from training.transforms import AugConfig, build_transforms, two_view_collate

__all__ = ["Loaders", "build_loaders", "build_splits"]

EPOCH_SEED_STRIDE = 100_003  # shuffled batches of epoch e are seeded with seed * stride + e


def build_splits(cfg: RunConfig, data_config: dict, views: int) -> DatasetSplits:
    """The run's train / val / test splits under its transforms (a ``--download`` happens on rank 0 only).

    Args:
        cfg: the resolved run config (dataset, augmentation, ``--val-per-class``, ``--test-per-class``).
        data_config: the model's timm data config (eval preprocessing).
        views: 2 for the contrastive losses (each training item is ``(2, 3, H, W)``), else 1.
    """
    train_tf, eval_tf = build_transforms(
        data_config,
        cfg.img_size,
        two_views=views == 2,
        aug=AugConfig(scale=(cfg.crop_scale, 1.0), hflip=cfg.hflip, color_jitter=cfg.color_jitter),
    )
    with distributed.main_first():
        data = build_datasets(
            cfg.dataset,
            cfg.data_dir,
            cfg.download,
            train_tf,
            eval_tf,
            cfg.train_per_class,
            cfg.seed,
            cfg.val_fraction,
        )
    if cfg.val_per_class is not None:  # seeded and class-balanced, like every split decision
        data.val = data.val.subset(take_per_class(data.val.targets, cfg.val_per_class, cfg.seed))
    if cfg.test_per_class is not None and data.test is not None:
        data.test = data.test.subset(take_per_class(data.test.targets, cfg.test_per_class, 0))
    return data


class _EveryNth(Sampler[list[int]]):
    """Batches ``rank, rank + n, ...`` of a batch sampler that every rank builds identically."""

    def __init__(self, batches: Sampler[list[int]], n: int, rank: int) -> None:
        self.batches, self.n, self.rank = batches, n, rank

    def __len__(self) -> int:
        return len(self.batches) // self.n  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[int]]:
        for i, batch in enumerate(self.batches):
            if i // self.n == len(self):
                return
            if i % self.n == self.rank:
                yield batch


@dataclass
class Loaders:
    """The loaders of a run.

    Attributes:
        train: batches of rows ``(M, 3, H, W)``, ``(M,)`` (M = views × this process's images).
        val / test: one view per image under the eval transform; ``test`` is None without a test split.
        steps_per_epoch: optimizer steps of an epoch (full batches, capped by ``--max-steps-per-epoch``).
        generator: seeds the shuffled batches (None: class-balanced batches, seeded by their sampler).
        seed: the run's seed.
    """

    train: DataLoader
    val: DataLoader
    test: DataLoader | None
    steps_per_epoch: int
    generator: torch.Generator | None
    seed: int

    def set_epoch(self, epoch: int) -> None:
        """Reseed the training batches for ``epoch`` (0-based): every rank and every resume agree."""
        if self.generator is not None:
            self.generator.manual_seed(self.seed * EPOCH_SEED_STRIDE + epoch)
        else:
            self.train.batch_sampler.set_epoch(epoch)  # type: ignore[union-attr]


def _train_batches(
    cfg: RunConfig, data: DatasetSplits, world: distributed.DistInfo
) -> tuple[Sampler[list[int]], torch.Generator | None]:
    """This process's batch sampler of the training split, and the generator of shuffled batches."""
    per_rank = cfg.batch_size // world.world_size
    if cfg.per_class:
        try:
            sampler = ClassBalancedBatchSampler(
                data.train.targets,
                per_rank,
                cfg.per_class,
                seed=cfg.seed,
                num_replicas=world.world_size,
                rank=world.rank,
            )
        except ValueError as e:
            if world.world_size == 1:
                raise
            raise ConfigError(
                f"each of {world.world_size} processes gets {per_rank} of the --batch-size {cfg.batch_size} "
                f"images: {e}"
            ) from None
        return sampler, None
    if len(data.train) < cfg.batch_size:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} is larger than the {len(data.train)} training images; lower it"
        )
    generator = torch.Generator()
    batches: Sampler[list[int]] = BatchSampler(
        RandomSampler(data.train, generator=generator), per_rank, drop_last=True
    )
    if world.world_size > 1:
        batches = _EveryNth(batches, world.world_size, world.rank)
    return batches, generator


def build_loaders(
    cfg: RunConfig,
    data: DatasetSplits,
    views: int,
    device: torch.device,
    world: distributed.DistInfo | None = None,
) -> Loaders:
    """Training loader (class-balanced or shuffled batches) and eval loaders of a run.

    Args:
        cfg: the resolved run config (batch size, ``--per-class``, workers, seed).
        data: the splits from :func:`build_splits`.
        views: 2 for the contrastive losses (batches are collated into the CONTRACTS row layout), else 1.
        device: pins host memory when it is CUDA.
        world: this process's rank and the world size (default: one process).

    Raises:
        ConfigError: the batch does not split over the processes, or no full batch fits the training split.
    """
    world = world or distributed.DistInfo()
    if cfg.batch_size % world.world_size:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} does not split evenly over {world.world_size} processes; "
            f"use a multiple of {world.world_size}"
        )
    sampler, generator = _train_batches(cfg, data, world)
    common = {"num_workers": cfg.workers, "pin_memory": device.type == "cuda"}
    collate = two_view_collate if views == 2 else None
    eval_bs = max(cfg.batch_size, 64)
    train = DataLoader(data.train, batch_sampler=sampler, collate_fn=collate, **common)
    steps = len(train) if not cfg.max_steps_per_epoch else min(len(train), cfg.max_steps_per_epoch)
    if steps == 0:
        raise ConfigError(
            f"no full batch of {cfg.batch_size} images in {len(data.train)} training images; "
            "lower --batch-size"
        )
    return Loaders(
        train=train,
        val=DataLoader(data.val, batch_size=eval_bs, **common),
        test=DataLoader(data.test, batch_size=eval_bs, **common) if data.test is not None else None,
        steps_per_epoch=steps,
        generator=generator,
        seed=cfg.seed,
    )
