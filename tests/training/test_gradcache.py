"""Gradient caching (``--chunk-size``): a chunked step has the full-batch step's gradient (float64, CPU)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from clce_core.losses import create_loss, list_losses
from clce_core.models import create_model
from training.engine import StepContext, train_step

ROWS, CLASSES = 16, 4


def _batch(views: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(views·8, 3, 32, 32)`` float64 rows in the CONTRACTS layout, 2 images per class."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(ROWS // 2 * views, 3, 32, 32, generator=g, dtype=torch.float64)
    labels = (torch.arange(ROWS // 2) // 2 % CLASSES).repeat(views)
    return images, labels


def _model(**timm_kwargs) -> nn.Module:
    torch.manual_seed(0)
    return create_model("test_efficientnet", CLASSES, "none", **timm_kwargs).double()


def _ctx(model: nn.Module, loss: str, chunk_size: int | None, scaler=None, amp=None) -> StepContext:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return StepContext(
        model,
        create_loss(loss),
        optimizer,
        scheduler,
        torch.device("cpu"),
        amp,
        scaler,
        clip_grad=None,
        chunk_size=chunk_size,
    )


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], **tol) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name, **tol)


@pytest.mark.slow
@pytest.mark.parametrize("loss", list_losses())
@pytest.mark.parametrize("chunk_size", [3, 5, ROWS])
def test_chunked_step_equals_the_full_batch_step(loss: str, chunk_size: int) -> None:
    """BatchNorm frozen (eval mode), no dropout: the same loss, parameter gradients and update."""
    views = create_loss(loss).views
    images, labels = _batch(views)
    full, chunked = _model().eval(), _model().eval()
    out_full = train_step(_ctx(full, loss, None), images, labels)
    out_chunked = train_step(_ctx(chunked, loss, chunk_size), images, labels)
    torch.testing.assert_close(out_chunked.total, out_full.total, rtol=1e-12, atol=1e-12)
    assert out_chunked.parts == pytest.approx(out_full.parts, rel=1e-12)
    _assert_same(_grads(chunked), _grads(full), rtol=1e-9, atol=1e-12)
    _assert_same(dict(chunked.named_parameters()), dict(full.named_parameters()), rtol=1e-9, atol=1e-12)


def _ghost_batch_reference(model: nn.Module, loss: str, images, labels, chunk_size: int):
    """The memory-hungry equivalent of a chunked step in train mode: the chunks forwarded one after
    another WITH the graph kept, one loss on all rows, one backward."""
    loss_fn = create_loss(loss)
    chunks = images.tensor_split(-(-images.shape[0] // chunk_size))
    outs = [model(c, detach_head=loss_fn.probe_only) for c in chunks]
    out = loss_fn(torch.cat([e for e, _ in outs]), torch.cat([z for _, z in outs]), labels)
    out.total.backward()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["clce", "supcon"])
def test_dropout_masks_replay_and_batchnorm_counts_once_per_chunk(loss: str) -> None:
    """Train mode with dropout, drop-path and BatchNorm: the chunked step equals the chunks run one after
    another with the graph (same dropout masks in both passes; BN statistics per chunk, updated once)."""
    images, labels = _batch(2)
    chunked = _model(drop_rate=0.3, drop_path_rate=0.3).train()
    reference = copy.deepcopy(chunked)

    torch.manual_seed(123)
    ref_out = _ghost_batch_reference(reference, loss, images, labels, chunk_size=6)
    torch.manual_seed(123)
    ctx = _ctx(chunked, loss, chunk_size=6)
    ctx.optimizer.param_groups[0]["lr"] = 0.0  # keep the weights, compare gradients and buffers
    out = train_step(ctx, images, labels)
    rng_after_step = torch.get_rng_state()

    torch.testing.assert_close(out.total, ref_out.total, rtol=1e-12, atol=1e-12)
    _assert_same(_grads(chunked), _grads(reference), rtol=1e-9, atol=1e-12)
    _assert_same(dict(chunked.named_buffers()), dict(reference.named_buffers()), rtol=1e-12, atol=1e-12)
    # The generator ends where one pass over the chunks leaves it.
    torch.manual_seed(123)
    reference2 = copy.deepcopy(reference)
    _ghost_batch_reference(reference2, loss, images, labels, chunk_size=6)
    assert torch.equal(rng_after_step, torch.get_rng_state())

    # Dropout really is active: another seed draws other masks, hence another loss.
    torch.manual_seed(7)
    other = _ghost_batch_reference(copy.deepcopy(reference), loss, images, labels, chunk_size=6)
    assert abs(float(other.total.detach()) - float(out.total.detach())) > 1e-6


@pytest.mark.slow
def test_one_chunk_with_dropout_equals_the_plain_step() -> None:
    """chunk_size ≥ rows: two passes over the same rows draw the same masks as the one-pass step."""
    images, labels = _batch(2)
    plain = _model(drop_rate=0.5, drop_path_rate=0.3).train()
    for m in plain.modules():  # BN frozen: the only difference left would be the dropout masks
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    chunked = copy.deepcopy(plain)
    torch.manual_seed(5)
    out_plain = train_step(_ctx(plain, "clce", None), images, labels)
    torch.manual_seed(5)
    out_chunked = train_step(_ctx(chunked, "clce", ROWS), images, labels)
    torch.testing.assert_close(out_chunked.total, out_plain.total, rtol=1e-12, atol=1e-12)
    _assert_same(_grads(chunked), _grads(plain), rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_grad_scaler_scales_the_cache_consistently() -> None:
    """With a GradScaler the cached gradients carry the scale; unscale_ leaves the true gradient."""
    images, labels = _batch(2)
    full, chunked = _model().eval(), _model().eval()
    train_step(_ctx(full, "clce", None), images, labels)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    train_step(_ctx(chunked, "clce", 5, scaler=scaler), images, labels)
    assert scaler.get_scale() == 2.0**10  # no inf/nan found, step taken
    _assert_same(_grads(chunked), _grads(full), rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_autocast_runs_both_passes_in_half_precision() -> None:
    """bf16 autocast (CPU): the chunked step's gradient is the full step's within bf16 accuracy."""
    images, labels = _batch(2)
    images = images.float()
    full, chunked = _model().float().eval(), _model().float().eval()
    train_step(_ctx(full, "clce", None, amp=torch.bfloat16), images, labels)
    train_step(_ctx(chunked, "clce", 8, amp=torch.bfloat16), images, labels)
    a, b = _grads(chunked), _grads(full)
    num = sum(float((a[k] - b[k]).norm() ** 2) for k in a) ** 0.5
    den = sum(float(b[k].norm() ** 2) for k in b) ** 0.5
    assert num / den < 0.05
