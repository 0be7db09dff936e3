"""Class-balanced batches: B/m classes × m images per batch (CONTRACTS "Fine-tuning", ``--per-class``).

Contrastive losses need positives beyond the second view of an image; a batch of random images from
many classes holds few. :class:`ClassBalancedBatchSampler` builds every batch from ``batch_size //
per_class`` distinct classes with ``per_class`` images each, deterministically from ``(seed, epoch)``.

How a batch is drawn:

* **Classes** are drawn without replacement within a batch, with probability proportional to their
  number of images, so an epoch keeps the dataset's class frequencies and visits about every image
  once (the same class prior as plain shuffling; only the grouping differs).
* **Images** of a class come from a per-class queue, a seeded permutation of the class; when it runs
  out it is reshuffled and refilled (cycling). A refill never repeats, inside one batch, an image that
  batch already took from the class, so a batch holds distinct images whenever the class has at least
  ``per_class`` of them (``per_class`` times the number of slots the class fills).
* **Small classes** (fewer than ``per_class`` images) are kept, not skipped: such a class gives all its
  images and then repeats some (sampling with replacement), so the batch keeps its shape. With two
  augmented views, a repeated image is still a valid positive. A warning names how many there are.
* **Fewer classes than slots** (e.g. Fashion-MNIST's 10 classes with 64 images at 4 per class = 16
  slots): every class takes one slot per round, the remaining slots go to distinct classes, so some
  classes fill two slots (2m images). A warning says so; with at least as many classes as slots
  every batch is exactly ``batch_size // per_class`` classes × ``per_class`` images.

Distributed training: every rank builds the same global sequence of ``len(self) * num_replicas``
batches and takes batches ``rank, rank + num_replicas, ...``, so ranks get distinct batches.
``batch_size`` is per rank. Batches are always full; ``drop_last`` only decides whether the number of
batches per epoch, ``len(labels) / (batch_size * num_replicas)``, is rounded down (True) or up.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

__all__ = ["ClassBalancedBatchSampler"]

log = logging.getLogger(__name__)


class _ClassQueue:
    """The images of one class, served in seeded reshuffled passes."""

    def __init__(self, indices: np.ndarray, rng: np.random.Generator) -> None:
        self.indices = indices
        self.rng = rng
        self.order = rng.permutation(indices)
        self.pos = 0

    def take(self, m: int) -> list[int]:
        """Return ``m`` indices; distinct whenever the class has at least ``m`` images."""
        out: list[int] = []
        while len(out) < m:
            if self.pos == len(self.order):  # pass finished: reshuffle, the images just taken go last
                taken = set(out)
                fresh = np.array([i for i in self.indices if i not in taken], dtype=np.int64)
                used = np.array([i for i in self.indices if i in taken], dtype=np.int64)
                self.order = np.concatenate([self.rng.permutation(fresh), self.rng.permutation(used)])
                self.pos = 0
            n = min(m - len(out), len(self.order) - self.pos)
            out.extend(int(i) for i in self.order[self.pos : self.pos + n])
            self.pos += n
        return out


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Yield batches of ``batch_size // per_class`` classes × ``per_class`` dataset indices.

    Args:
        labels: the integer label of every dataset item, in dataset order (e.g. ``split.targets``).
        batch_size: images per batch (per rank); a multiple of ``per_class``.
        per_class: images per class in a batch (``--per-class m``).
        seed: base seed; the batches of an epoch depend only on ``(seed, epoch)``.
        drop_last: round the number of batches per epoch down (True) or up (False).
        num_replicas: number of distributed processes.
        rank: this process's rank, ``0 <= rank < num_replicas``.

    Raises:
        ValueError: with a one-line message, when no batch of the requested shape can be built.
    """

    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        per_class: int,
        seed: int = 0,
        drop_last: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        labels_arr = np.asarray(labels, dtype=np.int64).reshape(-1)
        if per_class < 1:
            raise ValueError(f"per_class must be at least 1, got {per_class}")
        if batch_size % per_class:
            raise ValueError(f"batch size {batch_size} is not a multiple of per_class {per_class}")
        if batch_size // per_class < 2:
            raise ValueError(
                f"a batch of {batch_size} images at {per_class} per class holds "
                f"{batch_size // per_class} class; need at least 2: raise the batch size or lower per_class"
            )
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, num_replicas={num_replicas})")
        classes, counts = np.unique(labels_arr, return_counts=True)
        if len(classes) < 2:
            raise ValueError(
                f"class-balanced batches need at least 2 classes, the labels hold {len(classes)}"
            )
        self.batch_size = batch_size
        self.per_class = per_class
        self.seed = seed
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.classes = classes  # (K,)
        self.class_indices = [np.flatnonzero(labels_arr == c) for c in classes]
        self.class_probs = counts / counts.sum()  # (K,) classes drawn in proportion to their size
        self.slots = batch_size // per_class
        per_rank = len(labels_arr) / (batch_size * num_replicas)
        self.num_batches = math.floor(per_rank) if drop_last else math.ceil(per_rank)
        if self.num_batches < 1:
            raise ValueError(
                f"{len(labels_arr)} images make no full batch of {batch_size} on each of {num_replicas} "
                "process(es): lower the batch size or pass drop_last=False"
            )
        small = int((counts < per_class).sum())
        if small:
            log.warning(
                "%d of %d classes have fewer than %d images; their images repeat within a batch",
                small,
                len(classes),
                per_class,
            )
        if len(classes) < self.slots:
            log.warning(
                "%d classes for %d class slots per batch: some classes fill two or more slots",
                len(classes),
                self.slots,
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose (deterministic) batches the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Number of batches this rank yields per epoch."""
        return self.num_batches

    def _batch_classes(self, rng: np.random.Generator) -> np.ndarray:
        """Class positions (into ``self.classes``) for the ``self.slots`` slots of one batch."""
        k = len(self.classes)
        rounds, rest = divmod(self.slots, k)
        chosen = [rng.permutation(k) for _ in range(rounds)]
        if rest:
            chosen.append(rng.choice(k, size=rest, replace=False, p=self.class_probs))
        return np.concatenate(chosen)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        queues = [_ClassQueue(idx, rng) for idx in self.class_indices]
        for b in range(self.num_batches * self.num_replicas):
            batch: list[int] = []
            for c, n_slots in Counter(self._batch_classes(rng).tolist()).items():
                batch.extend(queues[c].take(self.per_class * n_slots))
            if b % self.num_replicas == self.rank:
                yield batch
