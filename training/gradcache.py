"""Gradient caching (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup"): a contrastive loss over a large batch in the memory of a small one (``--chunk-size C``).

A step in three parts (the engine does the middle one, so loss, checks and AMP scaling stay in one place):

1. :func:`embed_in_chunks`: run the model over the batch in chunks of at most ``C`` rows (as equal
   as possible) under ``no_grad``,
   keeping only the embeddings ``(M, D)`` and logits ``(M, C)``; they become leaves that require grad.
2. the loss on the *whole* batch (all ranks' rows under DDP) and its backward, which stops at those
   leaves: ``dL/d embeddings`` and ``dL/d logits`` (the gradient cache; scaled by a GradScaler if any).
3. :func:`backward_in_chunks`: run each chunk again *with* the graph and backpropagate the cached
   gradients, ``torch.autograd.backward([emb_c, logits_c], [g_emb_c, g_logits_c])``; parameter
   gradients accumulate over chunks. The head and the CE term are therefore exact: the second pass
   recomputes the logits through the head and sends the cached ``dL/d logits`` back through it (and
   into the encoder unless the loss feeds the head detached embeddings).

By the chain rule the accumulated gradient is exactly the full-batch one, as long as the second pass
reproduces the first pass's outputs:

* **Randomness** (dropout, drop-path): the RNG state (CPU, and the current CUDA device's) is saved
  before each chunk's first pass and restored before its second, so the same masks are drawn.
  Augmentation happens in the data loader, before chunking, so it is the same anyway.
* **BatchNorm** in training mode normalises each chunk by the chunk's own statistics, not the full
  batch's (like DDP without SyncBatchNorm, which normalises per process). The first pass restores the
  BN running statistics it touched, so they are updated once per chunk, as in the second pass. A
  chunked step therefore equals the full-batch step exactly for models without BatchNorm or with
  BatchNorm in eval mode; with BatchNorm in training mode it equals the step whose chunks were run one
  after another with the graph kept ("ghost batch norm" over C rows). The tests pin both statements.
* **DDP**: the chunks' backward passes run under ``no_sync()`` except the last, whose backward
  all-reduces the accumulated gradients once.
* **AMP**: both passes run under the same autocast; a GradScaler scales the loss before the cache is
  computed, so the cached gradients — and the parameter gradients built from them — carry the same
  scale, which ``scaler.unscale_`` removes as usual.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["CachedBatch", "embed_in_chunks", "backward_in_chunks"]


@dataclass
class _RngState:
    """The generators a forward pass may draw from: the CPU one and the current CUDA device's."""

    cpu: Tensor
    cuda: Tensor | None
    device: torch.device

    @classmethod
    def capture(cls, device: torch.device) -> _RngState:
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), cuda, device)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


@dataclass
class CachedBatch:
    """The outcome of the first pass.

    Attributes:
        chunks: the ``(c, 3, H, W)`` image chunks (views of the batch, no copies).
        rng: the RNG state before each chunk's first pass.
        embeddings: ``(M, D)`` leaf requiring grad; its ``.grad`` is the cached ``dL/d embeddings``.
        logits: ``(M, C)`` leaf requiring grad; its ``.grad`` is the cached ``dL/d logits``.
        detach_head: what the model was called with (the second pass calls it the same way).
    """

    chunks: list[Tensor]
    rng: list[_RngState]
    embeddings: Tensor
    logits: Tensor
    detach_head: bool = False


def embed_in_chunks(
    model: nn.Module,
    images: Tensor,
    chunk_size: int,
    autocast: Callable[[], AbstractContextManager],
    detach_head: bool = False,
) -> CachedBatch:
    """First pass: embeddings and logits of ``images`` ``(M, 3, H, W)``, ``chunk_size`` rows at a time, no graph.

    Args:
        model: called as ``model(images, detach_head=...) -> (embeddings, logits)`` (DDP-wrapped or not).
        images: the whole local batch of rows.
        chunk_size: at most this many rows per chunk; the batch is cut into ``ceil(M / chunk_size)``
            chunks of as equal sizes as possible (64 rows at 48 → 2 × 32, not 48 + 16).
        autocast: a factory of the autocast context both passes run under.
        detach_head: passed to the model (pure contrastive losses train the head as a probe).

    Returns:
        A :class:`CachedBatch` whose ``embeddings`` and ``logits`` are leaves requiring grad.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n_chunks = -(-images.shape[0] // chunk_size)
    chunks = list(images.tensor_split(n_chunks))  # sizes differ by ≤ 1: no tiny last chunk for BatchNorm
    # BN running statistics (and any other buffer a forward updates): put back after this pass, so
    # that the second pass updates them once per chunk.
    buffers = [b.detach().clone() for b in model.buffers()]
    rng, embs, logits = [], [], []
    with torch.no_grad():
        for chunk in chunks:
            rng.append(_RngState.capture(images.device))
            with autocast():
                emb, logit = model(chunk, detach_head=detach_head)  # (c, D), (c, C)
            embs.append(emb)
            logits.append(logit)
        for saved, b in zip(buffers, model.buffers(), strict=True):
            b.copy_(saved)
    embeddings = torch.cat(embs).requires_grad_(True)  # (M, D)
    all_logits = torch.cat(logits).requires_grad_(True)  # (M, C)
    return CachedBatch(chunks, rng, embeddings, all_logits, detach_head)


def backward_in_chunks(
    model: nn.Module, cache: CachedBatch, autocast: Callable[[], AbstractContextManager]
) -> None:
    """Second pass: each chunk again with the graph, backpropagating the cached gradients into the parameters.

    Call after the loss's backward has filled ``cache.embeddings.grad`` / ``cache.logits.grad``.
    Parameter gradients accumulate (zero them before the step, not between chunks). Under DDP every
    chunk but the last runs under ``model.no_sync()``, so gradients are all-reduced once.
    """
    grads = (cache.embeddings.grad, cache.logits.grad)
    if grads[0] is None and grads[1] is None:
        raise RuntimeError("backward_in_chunks: the loss's backward left no gradient in the cache")
    rows = [c.shape[0] for c in cache.chunks]
    emb_grads = grads[0].split(rows) if grads[0] is not None else [None] * len(rows)
    logit_grads = grads[1].split(rows) if grads[1] is not None else [None] * len(rows)
    after = (
        torch.get_rng_state(),
        (torch.cuda.get_rng_state(cache.rng[0].device) if cache.rng[0].cuda is not None else None),
    )
    last = len(cache.chunks) - 1
    for i, (chunk, state) in enumerate(zip(cache.chunks, cache.rng, strict=True)):
        no_sync = getattr(model, "no_sync", None)
        sync_ctx = no_sync() if no_sync is not None and i < last else contextlib.nullcontext()
        with sync_ctx:
            state.restore()  # the same dropout / drop-path masks as the first pass
            with autocast():
                emb, logit = model(chunk, detach_head=cache.detach_head)  # (c, D), (c, C)
            outputs, out_grads = [], []
            for out, g in ((emb, emb_grads[i]), (logit, logit_grads[i])):
                if g is not None and out.requires_grad:
                    outputs.append(out)
                    out_grads.append(g.to(out.dtype))
            torch.autograd.backward(outputs, out_grads)
    # The generators end where the first pass left them (the second pass drew the same numbers).
    torch.set_rng_state(after[0])
    if after[1] is not None:
        torch.cuda.set_rng_state(after[1], cache.rng[0].device)
