"""Fine-tuning steps on the GPU: CE (one view), CE (two views), CLCE (two views); CLCE at bigger batches.

Every step is the product's own :func:`training.engine.train_step`, its context made by the same
builders ``python -m training.finetune`` uses (:func:`training.finetune.build_model`,
:func:`training.optim.build_optimizer` / :func:`~training.optim.build_scheduler`,
:func:`training.engine.build_step_context`) from a :class:`training.config.RunConfig` with the
fine-tuning defaults, ``--amp bf16`` and ``--chunk-size`` where asked. On a fixed random batch in the
CONTRACTS layout (``(2B, 3, H, W)``: view 1 of B images, then view 2; 4 images per class).

Configurations run one after another, each with its own fresh model (random weights): ``warmup``
untimed steps, then ``repeats`` timed steps (device-synchronised), median reported. Peak memory is
``torch.cuda.max_memory_allocated`` over the whole configuration (model, AdamW state, batch, steps),
the counter reset and the cache emptied between configurations: what has to fit under the 12 GB cap.
A configuration that runs out of memory is recorded as ``does not fit``.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.gpu.plan import Plan, free_memory, is_out_of_memory
from benchmarks.harness import peak_memory_mib, reset_peak_memory, timed
from clce_core.losses import create_loss
from training.config import RunConfig
from training.engine import StepContext, build_step_context, train_step
from training.finetune import build_model
from training.optim import build_optimizer, build_scheduler

log = logging.getLogger("clce.gpu_check")


@dataclass(frozen=True)
class StepConfig:
    """One measured configuration: registry ``loss`` on ``views`` views of ``images`` images."""

    name: str
    loss: str
    views: int
    images: int
    chunk_size: int | None = None


def configs(plan: Plan) -> list[StepConfig]:
    """CE 1 view, CE 2 views and CLCE 2 views at ``plan.batch``; CLCE at each big batch, one pass and chunked."""
    b = plan.batch
    out = [
        StepConfig("ce 1 view", "ce", 1, b),
        StepConfig("ce 2 views", "ce", 2, b),
        StepConfig("clce 2 views", "clce", 2, b),
    ]
    for images in plan.big_batches:
        out.append(StepConfig(f"clce {images} images", "clce", 2, images))
        out.append(
            StepConfig(
                f"clce {images} images, chunks of {plan.chunk_size}", "clce", 2, images, plan.chunk_size
            )
        )
    return out


def run_config(plan: Plan, model_name: str, config: StepConfig) -> RunConfig:
    """The RunConfig of one configuration, as the fine-tuning CLI resolves it."""
    return RunConfig(
        dataset="gpu-check",
        model=model_name,
        pretrained="none",
        img_size=plan.img_size,
        loss=config.loss,
        batch_size=config.images,
        chunk_size=config.chunk_size,
        amp="bf16",
        device=plan.device,
        epochs=1,
    ).resolved()


def build_context(plan: Plan, model_name: str, config: StepConfig, steps: int) -> StepContext:
    """A StepContext exactly as ``training.finetune.Run`` builds it (one process, no EMA)."""
    cfg = run_config(plan, model_name, config)
    device = torch.device(plan.device)
    memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
    torch.manual_seed(0)
    model = build_model(cfg, plan.num_classes, "none").to(device, memory_format=memory_format)
    loss_fn = create_loss(cfg.loss, **cfg.loss_kwargs()).to(device)
    optimizer = build_optimizer(cfg, model, device)
    scheduler = build_scheduler(cfg, optimizer, steps)
    return build_step_context(cfg, model, loss_fn, optimizer, scheduler, device, 1, memory_format)


def make_batch(plan: Plan, config: StepConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images ``(views·B, 3, H, W)`` and labels ``(views·B,)`` on the device, ``per_class`` images a class."""
    device = torch.device(plan.device)
    g = torch.Generator(device=device).manual_seed(0)
    rows = config.views * config.images
    images = torch.randn(rows, 3, plan.img_size, plan.img_size, generator=g, device=device)  # (vB, 3, H, W)
    labels = (torch.arange(config.images, device=device) // plan.per_class) % plan.num_classes  # (B,)
    return images, labels.repeat(config.views)  # (vB,)


def measure(plan: Plan, model_name: str, config: StepConfig) -> dict[str, Any]:
    """Median step time, images/s and peak memory of one configuration; ``does not fit`` on OOM."""
    row: dict[str, Any] = {
        "model": model_name,
        "config": config.name,
        "loss": config.loss,
        "views": config.views,
        "images": config.images,
        "rows": config.views * config.images,
        "chunk_size": config.chunk_size,
    }
    free_memory(plan.device)
    base = reset_peak_memory(plan.device)
    try:
        ctx = build_context(plan, model_name, config, plan.warmup + plan.repeats)
        row["amp"] = str(ctx.amp_dtype).removeprefix("torch.") if ctx.amp_dtype else "off"
        images, labels = make_batch(plan, config)
        for _ in range(plan.warmup):
            train_step(ctx, images, labels)
        times = [timed(lambda: train_step(ctx, images, labels), plan.device) for _ in range(plan.repeats)]
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        row.update(
            fits=False, peak_mib=peak_memory_mib(plan.device) - base, error=str(e).splitlines()[0][:300]
        )
        log.info("%s %s: does not fit", model_name, config.name)
        return row
    finally:
        ctx = images = labels = None  # type: ignore[assignment]  (free before the next configuration)
        free_memory(plan.device)
    median = statistics.median(times)
    row.update(
        fits=True,
        median_ms=1e3 * median,
        all_ms=[1e3 * t for t in times],
        images_per_s=config.images / median,
        peak_mib=peak_memory_mib(plan.device) - base,
    )
    log.info("%s %s: %.1f ms, %.0f MiB", model_name, config.name, row["median_ms"], row["peak_mib"])
    return row


def section(plan: Plan, work: Path) -> dict[str, Any]:
    """Every configuration of :func:`configs` for every model of the plan, with the ratios the issue asks."""
    rows = [measure(plan, m, c) for m in plan.models for c in configs(plan)]
    by = {(r["model"], r["config"]): r for r in rows}
    for r in rows:
        ref = by.get((r["model"], "ce 2 views"))
        one = by.get((r["model"], "ce 1 view"))
        if r.get("fits") and ref and ref.get("fits") and one and one.get("fits"):
            r["x_ce_2views"] = r["median_ms"] / ref["median_ms"]
            r["x_ce_1view"] = r["median_ms"] / one["median_ms"]
        if r["chunk_size"]:  # what chunking costs: chunked step over the one-pass step at the same batch
            whole = by.get((r["model"], f"clce {r['images']} images"))
            if r.get("fits") and whole and whole.get("fits"):
                r["x_one_pass"] = r["median_ms"] / whole["median_ms"]
    peak = "CUDA max_memory_allocated" if plan.device.startswith("cuda") else "VmHWM growth (CPU)"
    amp = next((r["amp"] for r in rows if "amp" in r), "off")
    return {
        "img_size": plan.img_size,
        "warmup": plan.warmup,
        "repeats": plan.repeats,
        "amp": amp,
        "peak_memory": peak,
        "rows": rows,
    }
