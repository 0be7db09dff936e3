"""Peak memory and step time against the batch size, with and without gradient caching (``--chunk-size``).

    python -m benchmarks.batch_memory                              # 64 … 1024 images at 64 px, CPU
    python -m benchmarks.batch_memory --sizes 64,256 --chunk-size 32
    python -m benchmarks.batch_memory --device cuda --img-size 224 --sizes 128,512,2048 --chunk-size 256

One step is the product's own ``training.engine.train_step`` (forward, CLCE loss on all 2B rows,
backward, clip, AdamW, scheduler) on a fixed random batch of B images, two views each, 4 images per
class, ``tf_efficientnet_lite0`` with random weights in training mode and the fine-tuning defaults
of ``RunConfig``. Each batch size runs twice: in one pass, and with ``chunk_size`` rows per chunk
(gradient caching: the loss still sees all 2B rows — the table says how many rows it saw — while
the network's activations are those of one chunk).

Every (batch size, configuration) runs in a fresh subprocess: ``--warmup`` steps on the batch's
first 64 rows (they create the AdamW state and the lazy allocations at a fraction of a full step's
cost), then ``--repeats`` timed steps on the whole batch. Peak memory is the growth of the peak over the memory held just before
the timed steps (model, AdamW state, batch): on the CPU ``VmHWM`` from /proc/self/status, reset by
writing 5 to /proc/self/clear_refs; on CUDA ``torch.cuda.max_memory_allocated``. A configuration
whose peak, extrapolated from the previous batch size, would pass ``--max-rss-gb`` is skipped, and a
child whose resident memory passes it anyway is stopped. Prints a Markdown table; writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks import harness
from clce_core.losses import create_loss
from clce_core.models import create_model
from training.config import RunConfig
from training.engine import StepContext, build_step_context, resolve_amp, train_step
from training.optim import build_optimizer, build_scheduler


# ------------------------------------------------------------------------------------------------ child
def make_batch(
    images: int, img_size: int, num_classes: int, per_class: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random batch in the CONTRACTS layout: ``(2B, 3, H, W)`` and labels ``(2B,)``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * images, 3, img_size, img_size, generator=g)  # (2B, 3, H, W)
    labels = (torch.arange(images) // per_class) % num_classes  # (B,)
    return x.to(device), labels.repeat(2).to(device)  # (2B,)


def build_context(args: argparse.Namespace, chunk_size: int | None, device: torch.device) -> StepContext:
    """A StepContext as ``training.finetune`` builds it, with the fine-tuning defaults."""
    cfg = RunConfig(  # a dataset name only to pass validation: the batch is made here
        dataset="synthetic", model=args.model, loss=args.loss, amp=args.amp, chunk_size=chunk_size
    ).resolved()
    torch.manual_seed(0)
    model = create_model(cfg.model, args.num_classes, "none", img_size=args.img_size).to(device).train()
    optimizer = build_optimizer(cfg, model, device)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch=100)
    loss_fn = create_loss(cfg.loss, **cfg.loss_kwargs()).to(device)
    return build_step_context(cfg, model, loss_fn, optimizer, scheduler, device)


def _child(args: argparse.Namespace) -> None:
    """One (batch size, chunk size) in this fresh process; prints one JSON line."""
    images_s, chunk_s = args.child.split(",")
    images, chunk = int(images_s), (int(chunk_s) or None)
    device = torch.device(args.device)
    x, y = make_batch(images, args.img_size, args.num_classes, args.per_class, device)
    ctx = build_context(args, chunk, device)
    loss_rows: list[int] = []
    ctx.loss_fn.register_forward_hook(lambda m, inputs, out: loss_rows.append(inputs[0].shape[0]))
    if args.threads:
        torch.set_num_threads(args.threads)
    warm = min(x.shape[0], 64)
    for _ in range(args.warmup):  # optimiser state and lazy allocations exist after this
        train_step(ctx, x[:warm], y[:warm])
    harness.release_memory()
    before = harness.reset_peak_memory(device)  # the peak from here on is the timed steps' own
    times, outputs = [], []
    for _ in range(args.repeats):
        times.append(harness.timed(lambda: outputs.append(train_step(ctx, x, y)), device))
    losses = [float(out.total.detach()) for out in outputs]
    peak = harness.peak_memory_mib(device)
    result = {
        "images": images,
        "rows": 2 * images,
        "chunk_size": chunk,
        "loss_rows": loss_rows[-1],
        "step_s": statistics.median(times),
        "all_s": times,
        "loss": losses[0],
        "before_mib": before,
        "step_peak_mib": peak - before,
        "process_peak_mib": peak,
    }
    print(json.dumps(result))


# ------------------------------------------------------------------------------------------------ parent
def _child_argv(args: argparse.Namespace, images: int, chunk: int | None) -> list[str]:
    argv = harness.module_command("benchmarks.batch_memory", "--_child", f"{images},{chunk or 0}")
    for flag in (
        "model",
        "img_size",
        "num_classes",
        "per_class",
        "loss",
        "warmup",
        "repeats",
        "device",
        "amp",
        "threads",
    ):
        argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return argv


def run_child(args: argparse.Namespace, images: int, chunk: int | None) -> dict:
    """Run one configuration in a subprocess; stop it if its resident memory passes the guard."""
    limit_kib = args.max_rss_gb * 2**20
    proc = subprocess.Popen(
        _child_argv(args, images, chunk),
        cwd=harness.REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak_kib, killed = 0, False
    while proc.poll() is None:
        with contextlib.suppress(OSError, RuntimeError):
            rss = harness.rss_kib("VmRSS", proc.pid)
            peak_kib = max(peak_kib, rss)
            if rss > limit_kib:
                proc.kill()
                killed = True
        time.sleep(0.05)
    stdout, stderr = proc.communicate()
    if killed:
        return {"skipped": f"stopped at {peak_kib / 2**20:.1f} GiB > --max-rss-gb {args.max_rss_gb:g}"}
    if proc.returncode != 0 and "out of memory" in stderr.lower():
        return {"skipped": "out of memory"}
    if proc.returncode != 0:
        raise RuntimeError(f"child {images} images, chunk {chunk} failed:\n{stderr[-2000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def predicted_peak_gib(previous: dict | None, images: int, img_size: int) -> float | None:
    """The process peak at ``images``: the memory held before grows by the batch, the step's growth
    is extrapolated linearly from the last size measured."""
    if previous is None or "skipped" in previous:
        return None
    batch_mib = 2 * 3 * img_size * img_size * 4 / harness.MIB  # per image, two float32 views
    before = previous["before_mib"] + batch_mib * (images - previous["images"])
    return (before + previous["step_peak_mib"] * images / previous["images"]) / 1024


def machine(device: torch.device, threads: int = 0) -> str:
    text = harness.machine_line(f"device {device}")
    if threads:
        text += f"; the measured processes use {threads} thread(s)"
    return text


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    amp_dtype = resolve_amp(args.amp, device)
    results: dict = {
        "machine": machine(device, args.threads),
        "device": str(device),
        "model": args.model,
        "img_size": args.img_size,
        "loss": args.loss,
        "per_class": args.per_class,
        "chunk_size": args.chunk_size,
        "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype else "off",
        "warmup": args.warmup,
        "repeats": args.repeats,
        "max_rss_gb": args.max_rss_gb,
        "load_before": harness.load_average(),
        "runs": [],
    }
    last: dict[int | None, dict | None] = {None: None, args.chunk_size: None}
    start = time.perf_counter()
    for images in args.sizes:
        for chunk in (None, args.chunk_size):
            predicted = predicted_peak_gib(last[chunk], images, args.img_size)
            if last[chunk] is not None and "skipped" in last[chunk]:  # type: ignore[operator]
                row = {"skipped": f"a smaller batch already passed --max-rss-gb {args.max_rss_gb:g}"}
            elif predicted is not None and predicted > args.max_rss_gb and device.type == "cpu":
                row = {"skipped": f"predicted {predicted:.1f} GiB > --max-rss-gb {args.max_rss_gb:g}"}
            else:
                row = run_child(args, images, chunk)
            row.update(images=images, rows=2 * images, chunk_size=chunk)
            results["runs"].append(row)
            last[chunk] = row
            what = row.get("skipped") or f"{row['step_s']:.1f} s, peak +{row['step_peak_mib']:.0f} MiB"
            print(f"{images} images, chunk {chunk or '-'}: {what}", file=sys.stderr)
    results["wall_s"] = time.perf_counter() - start
    results["load_after"] = harness.load_average()
    return results


def table(results: dict) -> str:
    c = results["chunk_size"]
    how = "CUDA max_memory_allocated" if results["device"].startswith("cuda") else "VmHWM"
    lines = [
        f"Machine: {results['machine']}; load average (1, 5, 15 min) {results['load_before']} before, "
        f"{results['load_after']} after; {results['wall_s'] / 60:.1f} min in all.",
        f"{results['model']} (random weights, train mode), {results['img_size']} px, loss {results['loss']} "
        f"on 2 views × B images ({results['per_class']} images/class), AdamW, AMP {results['amp']}; "
        f"median of {results['repeats']} train_step after {results['warmup']} warm-up step(s) on 64 rows, each "
        f"configuration in a fresh process. Peak: growth over the memory held before the step "
        f"(model, AdamW state, batch), {how}.",
        "",
        f"| B (images) | rows the loss sees | peak, one pass (MiB) | peak, chunks of {c} rows (MiB) | "
        f"step, one pass (s) | step, chunked (s) | chunked / one pass |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by = {(r["images"], r["chunk_size"]): r for r in results["runs"]}
    for images in sorted({r["images"] for r in results["runs"]}):
        one, ch = by[(images, None)], by[(images, c)]

        def peak(r: dict) -> str:
            return "skipped" if "skipped" in r else f"{r['step_peak_mib']:.0f}"

        def secs(r: dict) -> str:
            return "–" if "skipped" in r else f"{r['step_s']:.2f}"

        rows = ch.get("loss_rows", one.get("loss_rows", 2 * images))
        ratio = "–" if "skipped" in one or "skipped" in ch else f"{ch['step_s'] / one['step_s']:.2f}×"
        lines.append(f"| {images} | {rows} | {peak(one)} | {peak(ch)} | {secs(one)} | {secs(ch)} | {ratio} |")
    skipped = [r for r in results["runs"] if "skipped" in r]
    for r in skipped:
        lines.append(f"Skipped: {r['images']} images, chunk {r['chunk_size'] or '-'}: {r['skipped']}.")
    return "\n".join(lines)


def _sizes(text: str) -> list[int]:
    sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"--sizes wants positive integers separated by commas, got {text!r}")
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=_sizes, default=[64, 128, 256, 512, 1024], help="batch sizes B in images (2B rows)"
    )
    parser.add_argument("--chunk-size", type=int, default=64, help="rows per chunk for gradient caching")
    parser.add_argument("--model", default="tf_efficientnet_lite0", help="timm model name")
    parser.add_argument("--img-size", type=int, default=64, help="square image size (px)")
    parser.add_argument("--num-classes", type=int, default=100, help="classes of the linear head")
    parser.add_argument("--per-class", type=int, default=4, help="consecutive images per class in the batch")
    parser.add_argument("--loss", default="clce", help="registry loss")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (on 64 rows)")
    parser.add_argument("--repeats", type=int, default=1, help="timed steps (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument(
        "--amp", default="off", choices=["off", "auto", "bf16", "fp16"], help="mixed precision (CUDA only)"
    )
    parser.add_argument(
        "--max-rss-gb",
        type=float,
        default=16.0,
        help="skip or stop a configuration past this resident memory",
    )
    parser.add_argument("--output", type=Path, default=harness.RESULTS / "batch_memory.json")
    parser.add_argument("--_child", dest="child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.chunk_size < 1 or args.repeats < 1 or args.warmup < 0 or args.per_class < 1:
        parser.error("--chunk-size, --repeats and --per-class must be ≥ 1, --warmup ≥ 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        _child(args)
        return
    results = run(args)
    harness.publish(results, args.output, table(results))


if __name__ == "__main__":
    main()
