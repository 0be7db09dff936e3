"""torchrun / DistributedDataParallel helpers, and an all-gather that keeps the gradient.

    torchrun --nproc-per-node 4 -m training.finetune --dataset flowers102 ...          # one node, 4 GPUs
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --master-addr HOST --master-port 29500 \\
        -m training.finetune ...                                                       # and node-rank 1

torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_from_env` reads them (a plain ``python -m training.finetune`` has none and stays a
single process). The backend is NCCL on CUDA and Gloo on the CPU.

Gradient convention of :func:`all_gather_with_grad` (and :func:`gather_rows`): every rank computes
the *same* loss L on the gathered rows, and backpropagates its own copy. The backward all-reduces
(sums) the incoming gradient over ranks and returns this rank's slice, so each rank's local rows
receive ``world_size · ∂L/∂rows``. DDP then *averages* parameter gradients over the ranks, which
divides by ``world_size`` again: the parameters get exactly ∂L/∂θ, the gradient a single process
would compute on the union batch. (The test pins this in float64.)
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "DistInfo",
    "init_from_env",
    "current",
    "cleanup",
    "is_distributed",
    "rank",
    "world_size",
    "is_main",
    "barrier",
    "main_first",
    "all_gather_with_grad",
    "gather_rows",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` in ``[0, world_size)``; ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def init_from_env(device_type: str = "cpu") -> DistInfo:
    """Join the process group torchrun describes in the environment, if any.

    Args:
        device_type: ``"cuda"`` (NCCL; this process takes GPU ``LOCAL_RANK``) or ``"cpu"`` (Gloo).

    Returns:
        This process's :class:`DistInfo`; ``DistInfo()`` (rank 0 of 1) without torchrun.
    """
    world = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    else:
        dist.init_process_group("gloo")
    info = DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)
    log.debug("joined the process group: rank %d of %d", info.rank, info.world_size)
    return info


def current() -> DistInfo:
    """This process's :class:`DistInfo` (rank 0 of 1 without a process group)."""
    return DistInfo(rank(), world_size(), _env_int("LOCAL_RANK", 0) if is_distributed() else 0)


def cleanup() -> None:
    """Leave the process group (no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """A process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0 (or no process group): the process that logs, evaluates and writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. a download), the others after it, from its results."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: concatenate every rank's ``(n, ...)`` tensor in rank order → ``(world·n, ...)``.
    Backward: all-reduce (sum) the incoming gradient, return this rank's slice."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        world = dist.get_world_size()
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(tensor: Tensor) -> Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order, gradient flowing to the local rows.

    All ranks must pass tensors of the same shape and dtype. The local rows receive the *sum* over
    ranks of the gradients (see the module docstring for why that is the right scale under DDP).

    Args:
        tensor: ``(n, ...)``.

    Returns:
        ``(world_size · n, ...)``; ``tensor`` itself in a single process.
    """
    if not is_distributed():
        return tensor
    if not tensor.requires_grad:  # labels, or a no-grad pass: a plain gather
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)
    return _AllGatherWithGrad.apply(tensor)


def gather_rows(tensor: Tensor, views: int) -> Tensor:
    """Gather the rows of every rank into one global batch in the CONTRACTS row layout.

    Each rank holds ``[view 1 of its B images; ...; view V of its B images]``; the result is
    ``[view 1 of rank 0's images, rank 1's, ...; ...; view V of rank 0's images, rank 1's, ...]``,
    i.e. exactly the layout of a single process whose batch is the ranks' images in rank order
    (images of rank r are global images ``r·B .. r·B + B − 1``). The loss only needs rows and labels
    (positives are found by label), but with this order the gathered batch *is* the union batch.

    Args:
        tensor: ``(V·B, ...)`` this rank's rows (embeddings, logits or labels).
        views: V.

    Returns:
        ``(world_size · V·B, ...)``, with gradients to the local rows (:func:`all_gather_with_grad`).
    """
    if not is_distributed():
        return tensor
    world = dist.get_world_size()
    if tensor.shape[0] % views:
        raise ValueError(f"{tensor.shape[0]} rows do not split into {views} views")
    gathered = all_gather_with_grad(tensor)  # (W·V·B, ...), rank-major
    rest = tuple(tensor.shape[1:])
    per_view = tensor.shape[0] // views
    return gathered.view(world, views, per_view, *rest).transpose(0, 1).reshape(-1, *rest)
