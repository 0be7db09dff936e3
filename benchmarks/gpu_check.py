"""The GPU path, measured in one run: training steps, loss speed, export + inference, serving, quick start.

    python -m benchmarks.gpu_check --output results/gpu        # the full run, on a CUDA machine (≤ 8 min)
    python -m benchmarks.gpu_check --smoke --output /tmp/gc    # every section on the CPU in seconds

Sections (each a module of ``benchmarks/gpu/``, run in this order; one that fails is recorded as
``failed`` with its error and the next one runs; one that cannot run here is ``skipped`` with why):

1. ``train_steps``: fine-tuning steps under bf16 autocast, CE (one view), CE (two views), CLCE (two
   views) for ``tf_efficientnet_lite0`` and ``vit_base_patch16_224`` (random weights, 224 px) at 64
   images per step, and CLCE at 128 and 256 images in one pass and with ``--chunk-size``: median step
   time, images/s, peak ``max_memory_allocated``, or ``does not fit``;
2. ``losses``: ``benchmarks.loss_speed`` to M = 16,384 rows against pytorch-metric-learning;
3. ``inference``: both models exported fp32 and ``--fp16`` by the product's exporter, ONNX Runtime's
   CUDA provider (and TensorRT's where the wheel has it) against PyTorch eager at batch 1 and 64;
4. ``serving``: ``python -m serving --device cuda`` under ``benchmarks.serving_load`` at concurrency
   32 and 64, batching on and off, and what ``/health/ready`` reports;
5. ``quickstart``: the ``make quickstart`` recipe for 2 epochs on the GPU, then export, serve, classify.

On CUDA the process is capped at ``--memory-cap-gib`` (12) with
``torch.cuda.set_per_process_memory_fraction``; the cap binds this process's PyTorch allocations
(sections 1-3), not ONNX Runtime's arena nor the child processes. ``--smoke`` runs the same code on
the CPU with timm's ``test_efficientnet`` / ``test_vit`` at 32 px and a handful of steps; the
CUDA-only rows are skipped there with the reason. The JSON and the Markdown are rewritten after every
section (a run stopped half-way keeps what it measured); the Markdown is printed at the end.
Writes ``OUTPUT/gpu_check.json`` and ``OUTPUT/gpu_check.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.gpu import inference, losses, quickstart, serving, train_steps
from benchmarks.gpu.plan import GIB, MEMORY_CAP_GIB, Plan, full_plan, run_section, skipped, smoke_plan
from benchmarks.gpu.report import markdown
from benchmarks.harness import RESULTS, fail, load_average, machine_line

SECTIONS: dict[str, Callable[[Plan, Path], dict[str, Any]]] = {
    "train_steps": train_steps.section,
    "losses": losses.section,
    "inference": inference.section,
    "serving": serving.section,
    "quickstart": quickstart.section,
}
JSON_FILE, MD_FILE = "gpu_check.json", "gpu_check.md"


def cap_memory(plan: Plan, cap_gib: float) -> str:
    """Cap this process's CUDA allocations at ``cap_gib`` GiB; returns what the report says about the cap."""
    if not plan.device.startswith("cuda"):
        return "none (CPU run; the cap is CUDA-only)"
    import torch

    total = torch.cuda.get_device_properties(0).total_memory
    fraction = min(1.0, cap_gib * GIB / total)
    torch.cuda.set_per_process_memory_fraction(fraction)
    return f"{cap_gib:g} GiB of {total / GIB:.1f} GiB (fraction {fraction:.4f}) for this process's PyTorch"


def machine(plan: Plan) -> str:
    import onnxruntime as ort

    return machine_line(f"onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())})")


def write(results: dict[str, Any], output: Path) -> str:
    """Rewrite the JSON and the Markdown in ``output``; returns the Markdown."""
    text = markdown(results)
    (output / JSON_FILE).write_text(json.dumps(results, indent=2, default=str))
    (output / MD_FILE).write_text(text)
    return text


def run(plan: Plan, names: list[str], output: Path, work: Path, cap_gib: float, time_limit: float) -> str:
    """Every section of ``names`` in order until ``time_limit`` seconds have passed; returns the Markdown."""
    start = time.perf_counter()
    results: dict[str, Any] = {
        "machine": machine(plan),
        "plan": plan.to_dict(),
        "memory_cap": cap_memory(plan, cap_gib),
        "load_before": load_average(),
        "seconds": 0.0,
        "sections": {},
    }
    for name in names:
        if time.perf_counter() - start > time_limit:
            results["sections"][name] = skipped(
                f"the --time-limit of {time_limit:g} s was reached", seconds=0.0
            )
        else:
            results["sections"][name] = run_section(name, SECTIONS[name], plan, work)
        results["seconds"] = time.perf_counter() - start
        write(results, output)
    results["load_after"] = load_average()
    return write(results, output)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS / "gpu_check", help="folder for the JSON and Markdown"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="the tiny CPU run (tests): every section in seconds"
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=list(SECTIONS),
        default=list(SECTIONS),
        help="run only these sections",
    )
    parser.add_argument(
        "--memory-cap-gib", type=float, default=MEMORY_CAP_GIB, help="CUDA cap of this process"
    )
    parser.add_argument(
        "--no-tensorrt", action="store_true", help="do not try ONNX Runtime's TensorRT provider"
    )
    parser.add_argument(
        "--fashion-mnist", help="Fashion-MNIST folder for the quick start (finetune's --data-dir)"
    )
    parser.add_argument(
        "--work", type=Path, help="keep the exports and runs here (default: a temporary folder)"
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=480.0,
        help="start no section after this many seconds (default 8 min)",
    )
    args = parser.parse_args(argv)
    if args.memory_cap_gib <= 0 or args.time_limit <= 0:
        parser.error("--memory-cap-gib and --time-limit must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    plan = smoke_plan() if args.smoke else full_plan(not args.no_tensorrt, args.fashion_mnist)
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            fail("CUDA is not available here: the full check needs a GPU; run `--smoke` on the CPU")
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"cannot create --output {args.output}: {e.strerror or e}")
    with tempfile.TemporaryDirectory(prefix="clce-gpu-check-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        text = run(plan, args.sections, args.output, work, args.memory_cap_gib, args.time_limit)
    print(text)
    print(f"wrote {args.output / JSON_FILE} and {args.output / MD_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
