"""Images/s and peak memory of one full training step: CLCE against CE over the same two views.

    python -m benchmarks.train_speed                          # tf_efficientnet_lite0, 32 images, 64 px, CPU
    python -m benchmarks.train_speed --device cuda --amp bf16 --img-size 224 --batch-size 128

One step is the product's own ``training.engine.train_step`` (forward, loss, backward, gradient
clipping, AdamW step, scheduler step) with the fine-tuning defaults of ``RunConfig`` (lr, head lr,
weight decay, clip, λ, τ). Compared, in one run, on the same model (one random initialisation,
copied) and the same fixed random batch of B images, 4 images per class:

* ``ce 1 view``: the ``ce`` entry on B rows, the user's usual baseline;
* ``ce 2 views``: the ``ce`` entry on the same 2B rows CLCE sees, the fair comparison (CONTRACTS.md:
  the loss's own overhead, target ≤ 1.05×);
* ``clce 2 views``: the ``clce`` entry on 2B rows (issue target ≤ 2.05× the one-view CE step; on a
  CPU doubling the batch alone costs 2.1–2.9×, so that figure is reported beside it).

Throughput counts images, not views (B / step time). Time: median over ``--repeats`` steps after
``--warmup`` steps, the configurations interleaved round-robin so that machine noise hits them
alike. Peak memory: the growth of the peak over the memory held just before one step (model,
optimiser state, batch); on CUDA ``max_memory_allocated``, on the CPU each configuration runs in a
fresh subprocess and reads ``VmHWM`` (reset just before the step). Prints a Markdown table; writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.harness import (
    REPO,
    RESULTS,
    load_average,
    machine_line,
    module_command,
    peak_memory_mib,
    publish,
    release_memory,
    reset_peak_memory,
    timed,
)
from clce_core.losses import create_loss
from clce_core.models import create_model
from training.config import RunConfig
from training.engine import StepContext, resolve_amp, train_step
from training.optim import param_groups, warmup_cosine


@dataclass(frozen=True)
class Config:
    """One measured configuration: a registry loss fed ``views`` views of the B images."""

    name: str
    loss: str
    views: int


CONFIGS = (Config("ce 1 view", "ce", 1), Config("ce 2 views", "ce", 2), Config("clce 2 views", "clce", 2))
BY_NAME = {c.name: c for c in CONFIGS}
CE_ONE, CE_TWO, CLCE = (c.name for c in CONFIGS)


def make_batch(
    batch_size: int, img_size: int, num_classes: int, per_class: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random batch in the CONTRACTS layout: images ``(2B, 3, H, W)`` (view 1 of images 0..B-1,
    then view 2) and labels ``(2B,)``, ``per_class`` consecutive images per class. One view is its first B rows.
    """
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(2 * batch_size, 3, img_size, img_size, generator=g)  # (2B, 3, H, W)
    labels = (torch.arange(batch_size) // per_class) % num_classes  # (B,)
    return images, labels.repeat(2)  # (2B,)


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    """The model every configuration copies (random weights: they do not change the speed)."""
    torch.manual_seed(args.seed)
    return create_model(args.model, args.num_classes, pretrained="none", img_size=args.img_size)


def build_context(
    config: Config, model: torch.nn.Module, args: argparse.Namespace, device: torch.device
) -> StepContext:
    """A StepContext as ``training.finetune`` builds it, with the fine-tuning defaults."""
    defaults = RunConfig()
    model = copy.deepcopy(model).to(device).train()
    lr = defaults.lr
    head_lr = defaults.head_lr if defaults.head_lr is not None else 10 * lr
    optimizer = torch.optim.AdamW(param_groups(model, lr, head_lr, defaults.weight_decay), lr=lr)
    total = args.warmup + args.repeats + 1000  # keep the lr away from 0; the value does not matter
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, 10))
    amp_dtype = resolve_amp(args.amp, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    loss_fn = create_loss(config.loss, **RunConfig(loss=config.loss).loss_kwargs()).to(device)
    return StepContext(
        model, loss_fn, optimizer, scheduler, device, amp_dtype, scaler, defaults.clip_grad, None
    )


def rows_of(config: Config, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``views × B`` rows of the two-view batch."""
    rows = images.shape[0] // 2 * config.views
    return images[:rows], labels[:rows]


def time_step(ctx: StepContext, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Seconds for one ``train_step``."""
    return timed(lambda: train_step(ctx, images, labels), ctx.device)


# ------------------------------------------------------------------------------------------------ memory
def _memory_child(args: argparse.Namespace) -> None:
    """One configuration in a fresh process: warm up, reset the peak, run one step, print JSON."""
    config = BY_NAME[args.memory_child]
    device = torch.device("cpu")
    images, labels = rows_of(
        config, *make_batch(args.batch_size, args.img_size, args.num_classes, args.per_class, args.seed)
    )
    ctx = build_context(config, build_model(args), args, device)
    for _ in range(max(1, args.warmup)):  # optimiser state and lazy allocations exist after this
        train_step(ctx, images, labels)
    release_memory()
    before = reset_peak_memory(device)  # VmHWM from here on is this one step's peak
    train_step(ctx, images, labels)
    peak = peak_memory_mib(device)
    print(json.dumps({"step_peak_mib": peak - before, "process_peak_mib": peak}))


def _child_argv(args: argparse.Namespace, name: str) -> list[str]:
    argv = module_command("benchmarks.train_speed", "--_memory-child", name)
    for flag in ("model", "batch_size", "img_size", "num_classes", "per_class", "warmup", "seed", "amp"):
        argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return argv


def peak_memory(
    config: Config, ctx: StepContext, images: torch.Tensor, labels: torch.Tensor, args: argparse.Namespace
) -> dict[str, float]:
    """``step_peak_mib`` (growth over the memory held before the step) and ``process_peak_mib``."""
    if ctx.device.type == "cuda":
        base = reset_peak_memory(ctx.device)
        time_step(ctx, images, labels)
        peak = peak_memory_mib(ctx.device)
        return {"step_peak_mib": peak - base, "process_peak_mib": peak}
    out = subprocess.run(_child_argv(args, config.name), cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"memory child for {config.name!r} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ run
def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    amp_dtype = resolve_amp(args.amp, device)
    results: dict = {
        "machine": machine_line(f"device {device}"),
        "device": str(device),
        "model": args.model,
        "batch_images": args.batch_size,
        "img_size": args.img_size,
        "num_classes": args.num_classes,
        "per_class": args.per_class,
        "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype else "off",
        "warmup": args.warmup,
        "repeats": args.repeats,
        "load_before": load_average(),
        "configs": {},
    }
    images, labels = make_batch(args.batch_size, args.img_size, args.num_classes, args.per_class, args.seed)
    images, labels = images.to(device), labels.to(device)
    model = build_model(args)
    ctxs = {c.name: build_context(c, model, args, device) for c in CONFIGS}
    batches = {c.name: rows_of(c, images, labels) for c in CONFIGS}
    for _ in range(args.warmup):
        for name, ctx in ctxs.items():
            time_step(ctx, *batches[name])
    times: dict[str, list[float]] = {name: [] for name in ctxs}
    for r in range(args.repeats):
        for name, ctx in ctxs.items():
            times[name].append(time_step(ctx, *batches[name]))
        print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr)
    results["load_after_timing"] = load_average()

    for c in CONFIGS:
        t = times[c.name]
        median = statistics.median(t)
        results["configs"][c.name] = {
            "loss": c.loss,
            "views": c.views,
            "rows": batches[c.name][0].shape[0],
            "median_ms": 1e3 * median,
            "all_ms": [1e3 * x for x in t],
            "images_per_s": args.batch_size / median,
        }
        if args.memory:
            results["configs"][c.name].update(peak_memory(c, ctxs[c.name], *batches[c.name], args))
    for c in CONFIGS:  # ratios of medians, and the median of the per-repeat (paired) ratios
        row = results["configs"][c.name]
        for ref, key in ((CE_TWO, "x_ce_2views"), (CE_ONE, "x_ce_1view")):
            row[key] = row["median_ms"] / results["configs"][ref]["median_ms"]
            row[key + "_paired"] = statistics.median(
                a / b for a, b in zip(times[c.name], times[ref], strict=True)
            )
    results["load_after"] = load_average()
    return results


def _mib(row: dict) -> str:
    return f"{row['step_peak_mib']:.0f}" if "step_peak_mib" in row else "–"


def table(results: dict) -> str:
    load = results["load_before"]
    lines = [
        f"Machine: {results['machine']}; load average (1, 5, 15 min) {load} before, "
        f"{results['load_after']} after.",
        f"{results['model']} (random weights), B = {results['batch_images']} images at "
        f"{results['img_size']} px, {results['per_class']} images/class, AMP {results['amp']}; "
        f"one train_step (forward, loss, backward, clip, AdamW, scheduler); median of "
        f"{results['repeats']} after {results['warmup']} warm-up, round-robin.",
        "",
        "| config | rows | median step (ms) | images/s | × ce 2 views | × ce 1 view | peak memory (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["configs"].items():
        lines.append(
            f"| {name} | {r['rows']} | {r['median_ms']:.1f} | {r['images_per_s']:.1f} | "
            f"{r['x_ce_2views']:.3f} | {r['x_ce_1view']:.3f} | {_mib(r)} |"
        )
    cfg = results["configs"]

    def fastest(name: str) -> float:
        return min(cfg[name]["all_ms"])

    lines += [
        "",
        f"clce / ce over the same two views: {cfg[CLCE]['x_ce_2views']:.3f}× "
        f"(paired median {cfg[CLCE]['x_ce_2views_paired']:.3f}×; target ≤ 1.05×: the loss's own overhead).",
        f"clce / ce one view: {cfg[CLCE]['x_ce_1view']:.3f}× (issue target ≤ 2.05×); doubling the rows "
        f"alone (ce 2 views / ce 1 view): {cfg[CE_TWO]['x_ce_1view']:.3f}×.",
        f"Fastest steps (least disturbed by other load): clce / ce 2 views {fastest(CLCE) / fastest(CE_TWO):.3f}×, "
        f"clce / ce 1 view {fastest(CLCE) / fastest(CE_ONE):.3f}×, ce 2 views / ce 1 view "
        f"{fastest(CE_TWO) / fastest(CE_ONE):.3f}×.",
    ]
    if any("step_peak_mib" in r for r in cfg.values()):
        how = (
            "CUDA max_memory_allocated"
            if results["device"].startswith("cuda")
            else "VmHWM, a fresh process per config"
        )
        lines.append(
            f"Peak memory: growth of the peak over the memory held before the step (model, AdamW state, batch); {how}."
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tf_efficientnet_lite0", help="timm model name")
    parser.add_argument("--batch-size", type=int, default=32, help="B, images per batch (clce sees 2B rows)")
    parser.add_argument("--img-size", type=int, default=64, help="square image size (px)")
    parser.add_argument("--num-classes", type=int, default=10, help="classes of the linear head")
    parser.add_argument("--per-class", type=int, default=4, help="consecutive images per class in the batch")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per configuration first")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per configuration (median)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument(
        "--amp", default="off", choices=["off", "auto", "bf16", "fp16"], help="mixed precision (CUDA only)"
    )
    parser.add_argument(
        "--no-memory", dest="memory", action="store_false", help="skip the peak-memory measurement"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS / "train_speed.json")
    parser.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.per_class < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--batch-size, --per-class and --repeats must be ≥ 1, --warmup ≥ 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_child:
        _memory_child(args)
        return
    results = run(args)
    publish(results, args.output, table(results))


if __name__ == "__main__":
    main()
