"""The training step, one epoch, and evaluation. No argparse, no globals: everything comes in as arguments.

:class:`StepContext` holds what a step needs besides the batch; :func:`build_step_context` makes it
from a run's config (AMP, EMA, DDP). The optimizer and schedule are built in :mod:`training.optim`.

Rows: a batch from a two-view loader arrives as ``(2B, 3, H, W)`` in the CONTRACTS layout
(``[view 1 of images 0..B-1; view 2 of images 0..B-1]``) with labels ``(2B,)``; a one-view loader
gives ``(B, 3, H, W)``. The loss sees every row; top-1 during training is not computed (evaluation
does that on the eval transform).

Distributed (``StepContext.world_size > 1``, the model wrapped in DDP): the loss is called once, with
the unchanged ``loss(embeddings, logits, labels)``, on the rows of ALL ranks gathered into the
CONTRACTS layout (:func:`training.distributed.gather_rows`), so the contrastive negatives span the
global batch. Every rank computes the same loss value; the gradient reaches only the local rows, at
``world_size`` times their share, which DDP's averaging turns into the exact gradient of the union
batch. For the CE term this makes each rank's gradient exactly that of the CE over its own rows: CE
stays local in what it trains; the other ranks' logits are only read (one all-gather of ``(M, C)``).

Chunked (``StepContext.chunk_size``): gradient caching, see :mod:`training.gradcache`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from clce_core.losses import LossOutput
from clce_core.metrics import topk_accuracy
from clce_core.models import ClassifierModel
from training import gradcache
from training.config import RunConfig
from training.distributed import gather_rows

log = logging.getLogger("clce.finetune")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says what to change."""


@dataclass
class StepContext:
    """What one optimisation step needs besides the batch."""

    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    amp_dtype: torch.dtype | None = None  # None: full precision
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    clip_grad: float | None = None
    ema: nn.Module | None = None  # timm ModelEmaV3, updated from the unwrapped model
    world_size: int = 1  # > 1: `model` is DDP-wrapped and the loss sees every rank's rows
    chunk_size: int | None = None  # rows per chunk for gradient caching; None: one pass
    memory_format: torch.memory_format = torch.preserve_format  # channels_last with --channels-last

    @property
    def module(self) -> nn.Module:
        """The model without its DDP wrapper."""
        return getattr(self.model, "module", self.model)


def build_step_context(
    cfg: RunConfig,
    model: ClassifierModel,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    world_size: int = 1,
    memory_format: torch.memory_format = torch.preserve_format,
) -> StepContext:
    """The step context of a run: ``--amp`` (and its fp16 scaler), ``--ema``, ``--clip-grad``,
    ``--chunk-size``; under DDP (``world_size > 1``) the model wrapped in DistributedDataParallel.

    Args:
        model: the unwrapped model, already on ``device``; the optimizer and EMA hold it, not the wrapper.
    """
    amp_dtype = resolve_amp(cfg.amp, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay, device=device)
    train_model: nn.Module = model
    if world_size > 1:
        train_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
        log.info(
            "DDP: %d processes × %d images per step, backend %s",
            world_size,
            cfg.batch_size // world_size,
            torch.distributed.get_backend(),
        )
    return StepContext(
        train_model,
        loss_fn,
        optimizer,
        scheduler,
        device,
        amp_dtype,
        scaler,
        cfg.clip_grad,
        ema,
        world_size=world_size,
        chunk_size=cfg.chunk_size,
        memory_format=memory_format,
    )


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on CUDA where supported, else fp16; off on the CPU."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def _autocast(ctx: StepContext) -> AbstractContextManager:
    return torch.autocast(
        ctx.device.type, dtype=ctx.amp_dtype or torch.float32, enabled=ctx.amp_dtype is not None
    )


def _loss(ctx: StepContext, embeddings: Tensor, logits: Tensor, labels: Tensor) -> LossOutput:
    """The registry loss on the global batch: this rank's rows, or every rank's gathered (CONTRACTS layout)."""
    if ctx.world_size > 1:
        views = ctx.loss_fn.views
        embeddings, logits, labels = (gather_rows(t, views) for t in (embeddings, logits, labels))
    out: LossOutput = ctx.loss_fn(embeddings, logits, labels)  # (W·M, D), (W·M, C), (W·M,)
    if not torch.isfinite(out.total):
        raise TrainingError(
            f"the loss became {out.total.item()} (parts {out.parts}); lower --lr, raise --tau, or try --amp off"
        )
    return out


def _backward(ctx: StepContext, total: Tensor) -> None:
    (ctx.scaler.scale(total) if ctx.scaler is not None else total).backward()


def train_step(ctx: StepContext, images: Tensor, labels: Tensor) -> LossOutput:
    """Forward, loss, backward, clip, step, schedule, EMA for one batch of rows ``(M, 3, H, W)``, ``(M,)``.

    With ``ctx.chunk_size`` the forward and backward go through gradient caching (same gradient,
    memory of one chunk); with ``ctx.world_size > 1`` the loss sees every rank's rows.
    """
    images = images.to(ctx.device, non_blocking=True, memory_format=ctx.memory_format)
    labels = labels.to(ctx.device, non_blocking=True)
    probe_only = ctx.loss_fn.probe_only
    ctx.optimizer.zero_grad(set_to_none=True)
    if ctx.chunk_size:
        cache = gradcache.embed_in_chunks(
            ctx.model, images, ctx.chunk_size, lambda: _autocast(ctx), detach_head=probe_only
        )
        with _autocast(ctx):
            out = _loss(ctx, cache.embeddings, cache.logits, labels)
        _backward(ctx, out.total)  # stops at the cached leaves
        gradcache.backward_in_chunks(ctx.model, cache, lambda: _autocast(ctx))
    else:
        with _autocast(ctx):
            embeddings, logits = ctx.model(images, detach_head=probe_only)  # (M, D), (M, C)
            out = _loss(ctx, embeddings, logits, labels)
        _backward(ctx, out.total)
    if ctx.scaler is not None:
        ctx.scaler.unscale_(ctx.optimizer)
    if ctx.clip_grad is not None:
        nn.utils.clip_grad_norm_(ctx.model.parameters(), ctx.clip_grad)
    if ctx.scaler is not None:
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
    else:
        ctx.optimizer.step()
    ctx.scheduler.step()
    if ctx.ema is not None:
        ctx.ema.update(ctx.module)
    return out


def train_one_epoch(
    ctx: StepContext,
    loader: Iterable,
    epoch: int,
    max_steps: int | None = None,
    show_progress: bool = True,
) -> dict[str, float]:
    """One pass over ``loader``; returns mean ``train_loss``, ``train_ce``, ``train_contrastive``,
    ``images_per_s`` (images, not views, over all ranks) and the last ``lr`` (encoder group).

    Under DDP the losses are those of the global batch (the same on every rank)."""
    ctx.model.train()
    total = len(loader) if max_steps is None else min(len(loader), max_steps)  # type: ignore[arg-type]
    sums = {"loss": 0.0, "ce": 0.0, "contrastive": 0.0}
    images_seen, steps = 0, 0
    views = ctx.loss_fn.views
    start = time.perf_counter()
    bar = tqdm(
        loader, total=total, desc=f"epoch {epoch}", disable=not show_progress, leave=False, dynamic_ncols=True
    )
    for images, labels in bar:
        out = train_step(ctx, images, labels)
        steps += 1
        images_seen += images.shape[0] // views * ctx.world_size
        sums["loss"] += float(out.total.detach())
        sums["ce"] += out.parts.get("ce", 0.0)
        sums["contrastive"] += out.parts.get("contrastive", 0.0)
        rate = images_seen / (time.perf_counter() - start)
        bar.set_postfix(
            loss=f"{sums['loss'] / steps:.3f}",
            ce=f"{sums['ce'] / steps:.3f}",
            con=f"{sums['contrastive'] / steps:.3f}",
            lr=f"{ctx.optimizer.param_groups[0]['lr']:.2e}",
            img_s=f"{rate:.1f}",
            refresh=False,
        )
        if steps >= total:
            break
    bar.close()
    elapsed = time.perf_counter() - start
    steps = max(steps, 1)
    return {
        "lr": ctx.optimizer.param_groups[0]["lr"],
        "train_loss": sums["loss"] / steps,
        "train_ce": sums["ce"] / steps,
        "train_contrastive": sums["contrastive"] / steps,
        "images_per_s": images_seen / elapsed if elapsed > 0 else 0.0,
    }


@dataclass
class EvalResult:
    """Outputs of :func:`evaluate`: ``top1``/``top5`` in percent; arrays for reports."""

    top1: float
    top5: float
    logits: np.ndarray  # (N, C)
    targets: np.ndarray  # (N,)
    embeddings: np.ndarray | None = None  # (N, D), un-normalised, when asked for


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    keep_embeddings: bool = False,
    desc: str = "eval",
    show_progress: bool = True,
    memory_format: torch.memory_format = torch.preserve_format,
) -> EvalResult:
    """Top-1/top-5 of ``model`` over ``loader`` (one view per image, the eval transform)."""
    model.eval()
    logits_all, targets_all, emb_all = [], [], []
    for images, labels in tqdm(loader, desc=desc, disable=not show_progress, leave=False, dynamic_ncols=True):
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            embeddings, logits = model(images.to(device, non_blocking=True, memory_format=memory_format))
        logits_all.append(logits.float().cpu().numpy())
        targets_all.append(labels.numpy())
        if keep_embeddings:
            emb_all.append(embeddings.float().cpu().numpy())
    logits_np = np.concatenate(logits_all) if logits_all else np.zeros((0, 0), np.float32)
    targets_np = np.concatenate(targets_all) if targets_all else np.zeros(0, np.int64)
    acc = topk_accuracy(logits_np, targets_np, ks=(1, 5)) if len(targets_np) else {1: 0.0, 5: 0.0}
    return EvalResult(
        top1=acc[1],
        top5=acc[5],
        logits=logits_np,
        targets=targets_np,
        embeddings=np.concatenate(emb_all) if keep_embeddings and emb_all else None,
    )
