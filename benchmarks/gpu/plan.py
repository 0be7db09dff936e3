"""What a ``gpu_check`` run measures (the full GPU plan or the ``--smoke`` CPU plan) and how a section runs.

A section is a function ``(plan, work) -> dict``; :func:`run_section` times it and turns what it
raises into a ``failed`` entry, so that one broken section does not cost the others on a GPU lent
for minutes. A section that cannot run here (no CUDA, no CUDA provider) returns
:func:`skipped` with the reason.
"""

from __future__ import annotations

import gc
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("clce.gpu_check")

GIB = 2**30
MEMORY_CAP_GIB = 12.0  # the product's promise: training and serving on one 12 GB GPU


@dataclass(frozen=True)
class Plan:
    """The sizes of one run. :func:`full_plan` is the GPU run, :func:`smoke_plan` the CPU smoke run.

    Attributes:
        device: ``cuda`` or ``cpu``.
        smoke: the tiny CPU run that the test keeps from rotting.
        models: timm names, random weights.
        img_size: square training and export size (px).
        batch: images per fine-tuning step for the CE / CLCE comparison.
        big_batches: images per step for CLCE with and without ``--chunk-size``.
        chunk_size: rows per chunk (gradient caching).
        warmup / repeats: untimed and timed training steps per configuration.
        loss_rows: rows M of the loss-speed comparison; ``loss_repeats`` timed steps each.
        loss_memory: measure the losses' peak memory (on the CPU each is a fresh process: slow).
        infer_batches: batch sizes of the inference comparison; ``infer_repeats`` timed calls each.
        tensorrt: try ONNX Runtime's TensorRT provider where the wheel has it.
        concurrency: load-test concurrencies; ``requests`` per point, at most ``max_seconds`` each.
        max_batch: the server's micro-batch size with batching on.
        quick_model / quick_epochs / quick_img_size: the quick-start fine-tune.
        quick_data: the Fashion-MNIST folder for it (``--data-dir``); None: the dataset's own lookup.
    """

    device: str
    smoke: bool
    models: tuple[str, ...]
    img_size: int
    batch: int
    big_batches: tuple[int, ...]
    chunk_size: int
    warmup: int
    repeats: int
    loss_rows: tuple[int, ...]
    loss_repeats: int
    loss_memory: bool
    infer_batches: tuple[int, ...]
    infer_repeats: int
    tensorrt: bool
    concurrency: tuple[int, ...]
    requests: int
    max_seconds: float
    max_batch: int
    quick_model: str
    quick_epochs: int
    quick_img_size: int
    quick_data: str | None = None
    num_classes: int = 100
    per_class: int = 4

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def full_plan(tensorrt: bool = True, quick_data: str | None = None) -> Plan:
    """The GPU run (≤ 8 minutes on one H100/H200-class GPU): the sizes the issue names."""
    return Plan(
        device="cuda",
        smoke=False,
        models=("tf_efficientnet_lite0", "vit_base_patch16_224"),
        img_size=224,
        batch=64,
        big_batches=(128, 256),
        chunk_size=128,
        warmup=3,
        repeats=10,
        loss_rows=(1024, 4096, 16384),
        loss_repeats=5,
        loss_memory=True,
        infer_batches=(1, 64),
        infer_repeats=20,
        tensorrt=tensorrt,
        concurrency=(32, 64),
        requests=512,
        max_seconds=30.0,
        max_batch=32,
        quick_model="tf_efficientnet_lite0",
        quick_epochs=2,
        quick_img_size=64,
        quick_data=quick_data,
    )


def smoke_plan() -> Plan:
    """Every section on the CPU in seconds: tiny timm test models, tiny sizes, a handful of steps."""
    return Plan(
        device="cpu",
        smoke=True,
        models=("test_efficientnet", "test_vit"),
        img_size=32,
        batch=8,
        big_batches=(16,),
        chunk_size=8,
        warmup=1,
        repeats=2,
        loss_rows=(64,),
        loss_repeats=2,
        loss_memory=False,
        infer_batches=(1, 4),
        infer_repeats=2,
        tensorrt=False,
        concurrency=(2,),
        requests=6,
        max_seconds=2.0,
        max_batch=4,
        quick_model="test_efficientnet",
        quick_epochs=1,
        quick_img_size=32,
    )


def skipped(reason: str, **found: Any) -> dict[str, Any]:
    """A section (or a row) that cannot run here, with the reason (e.g. ``no CUDA on this machine``)."""
    return {"status": "skipped", "reason": reason, **found}


def free_memory(device: str) -> None:
    """Collect garbage and give the CUDA caching allocator's free blocks back (between configurations)."""
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is the allocator refusing memory (CUDA OOM, the cap of
    ``set_per_process_memory_fraction`` included, or the CPU allocator)."""
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def run_section(
    name: str, fn: Callable[[Plan, Path], dict[str, Any]], plan: Plan, work: Path
) -> dict[str, Any]:
    """Run one section; a section that raises is recorded as ``failed`` with the error, not re-raised.

    Returns:
        The section's dict with ``status`` (``ok`` unless the section said otherwise) and ``seconds``.
    """
    log.info("section %s ...", name)
    start = time.perf_counter()
    try:
        result = fn(plan, work)
        result.setdefault("status", "ok")
    except (Exception, SystemExit) as e:  # SystemExit: a reused benchmark helper that ends with fail()
        log.error("section %s failed: %s", name, e)
        result = {
            "status": "failed",
            "reason": f"{type(e).__name__}: {e}"[:2000],
            "traceback": traceback.format_exc()[-4000:],
        }
    result["seconds"] = round(time.perf_counter() - start, 1)
    free_memory(plan.device)
    log.info("section %s: %s in %.1f s", name, result["status"], result["seconds"])
    return result
