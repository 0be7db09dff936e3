"""Export both models (fp32 and ``--fp16``) and time ONNX Runtime's CUDA provider against PyTorch eager.

Each model (random weights, the plan's size) is exported by the product's own
:func:`training.exporter.export_model` (parity-checked against PyTorch on the CPU) into the work
folder, fp32 and fp16; the exports are kept there for the serving section. Then, at each batch size
of the plan, encoder + head on the same random images:

* ``PyTorch eager``: the model on the plan's device, float32, ``torch.inference_mode``; on CUDA also
  under bf16 autocast (the precision the fp16 export is closest to);
* ``ORT <device>`` / ``ORT <device> fp16``: :class:`serving.sessions.ModelRuntime`, the server's
  sessions (uint8 crops in, normalised inside the graph, as the server runs them) with its provider options (CUDA where the plan says so and onnxruntime-gpu is
  installed, else skipped with the reason);
* ``ORT TensorRT`` / ``fp16``: where the wheel lists ``TensorrtExecutionProvider`` and its libraries
  load (the session's active provider is checked), with one optimisation profile over the batch sizes.

Timing: :func:`benchmarks.inference_speed.measure` (median of ``infer_repeats`` calls after warm-up,
interleaved, numpy in and out, so host↔device copies are counted as in serving).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.gpu.plan import Plan, free_memory, skipped
from benchmarks.inference_speed import measure

Runner = Callable[[np.ndarray], np.ndarray]
TRT_PROVIDER = "TensorrtExecutionProvider"
EAGER = "PyTorch eager"
PAUSE_S = 0.005


def export_folder(work: Path, model_name: str, img_size: int, fp16: bool) -> Path:
    """``work/exports/MODEL-fp32|fp16``: made once (random weights, seed 0) by the product's exporter."""
    from clce_core.models import create_model
    from training.card_info import CardInfo
    from training.exporter import export_model

    folder = work / "exports" / f"{model_name}-{'fp16' if fp16 else 'fp32'}"
    if not (folder / "model.json").is_file():
        torch.manual_seed(0)
        model = create_model(model_name, 10, "none", img_size=img_size).eval()
        info = CardInfo.from_model(model)
        info.data_config["input_size"] = (3, img_size, img_size)
        export_model(model, info, folder, fp16=fp16, force=True)
    return folder


def _eager(model_name: str, img_size: int, device: str, autocast: bool) -> Runner:
    from clce_core.models import create_model

    torch.manual_seed(0)
    model = create_model(model_name, 10, "none", img_size=img_size).eval().to(device)

    def run(x: np.ndarray) -> np.ndarray:
        with (
            torch.inference_mode(),
            torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=autocast),
        ):
            return model(torch.from_numpy(x).to(device))[1].float().cpu().numpy()  # (N, C)

    return run


def _ort(folder: Path, device: str) -> tuple[Runner, list[str]]:
    """The server's sessions of ``folder`` on ``device``, and their active providers."""
    from clce_core.export_folder import read_card
    from serving.sessions import ModelRuntime

    runtime = ModelRuntime(read_card(folder), device)  # type: ignore[arg-type]
    if device == "cuda" and not runtime.cuda_active:
        raise RuntimeError(f"CUDA asked for, but the sessions run on {runtime.providers}")
    crops: dict[tuple[int, ...], np.ndarray] = {}  # the server's input: uint8 (N, H, W, 3) crops

    def run(x: np.ndarray) -> np.ndarray:
        n, _, h, w = x.shape
        if (n, h, w) not in crops:  # made once per batch size (the warm-up call), never timed after
            crops[(n, h, w)] = np.random.default_rng(n).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
        return runtime.run(crops[(n, h, w)])[1]

    return run, runtime.providers


def trt_options(input_name: str, tail: str, max_batch: int, cache: Path, fp16: bool) -> dict[str, str]:
    """TensorRT provider options: one optimisation profile from batch 1 to ``max_batch`` (no rebuild per
    batch size), the engine cached in ``cache``; ``tail`` is the input shape after the batch, ``3x224x224``."""
    return {
        "trt_fp16_enable": "True" if fp16 else "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_profile_min_shapes": f"{input_name}:1x{tail}",
        "trt_profile_opt_shapes": f"{input_name}:{max_batch}x{tail}",
        "trt_profile_max_shapes": f"{input_name}:{max_batch}x{tail}",
    }


def _tensorrt(folder: Path, img_size: int, max_batch: int, fp16: bool) -> tuple[Runner, list[str]]:
    """Encoder + head sessions with TensorRT first; raises if TensorRT is not what runs them."""
    import json

    import onnxruntime as ort

    dim = json.loads((folder / "model.json").read_text())["embedding_dim"]
    cache = folder.parent / f".trt-{folder.name}"
    cache.mkdir(exist_ok=True)
    sessions = []
    for file, name, tail in (
        ("encoder.onnx", "pixel_values", f"3x{img_size}x{img_size}"),
        ("head.onnx", "embedding", str(dim)),
    ):
        options = trt_options(name, tail, max_batch, cache, fp16)
        providers = [(TRT_PROVIDER, options), "CUDAExecutionProvider", "CPUExecutionProvider"]
        session = ort.InferenceSession(str(folder / file), providers=providers)
        if session.get_providers()[0] != TRT_PROVIDER:
            raise RuntimeError(f"TensorRT did not load (the session runs on {session.get_providers()})")
        sessions.append(session)
    encoder, head = sessions

    def run(x: np.ndarray) -> np.ndarray:
        return head.run(None, {"embedding": encoder.run(None, {"pixel_values": x})[0]})[0]

    return run, list(encoder.get_providers())


def runners(plan: Plan, model_name: str, work: Path) -> tuple[dict[str, Runner], dict[str, Any]]:
    """Every runtime this machine has for one model; the others in ``notes`` with the reason."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    cuda = plan.device.startswith("cuda")
    out: dict[str, Runner] = {EAGER: _eager(model_name, plan.img_size, plan.device, autocast=False)}
    notes: dict[str, Any] = {"available_providers": available, "exports": {}, "providers": {}}
    if cuda:
        out[f"{EAGER}, bf16 autocast"] = _eager(model_name, plan.img_size, plan.device, autocast=True)
    ort_device = "cuda" if cuda else "cpu"
    for fp16 in (False, True):
        start = time.perf_counter()
        folder = export_folder(work, model_name, plan.img_size, fp16)
        suffix = " fp16" if fp16 else ""
        notes["exports"]["fp16" if fp16 else "fp32"] = {
            "folder": str(folder),
            "seconds": time.perf_counter() - start,
        }
        if not cuda:
            notes[f"ORT CUDA{suffix}"] = skipped("a CPU run: the CUDA provider is timed on the GPU only")
        if cuda and "CUDAExecutionProvider" not in available:
            notes[f"ORT CUDA{suffix}"] = skipped(
                "this onnxruntime has no CUDAExecutionProvider: install onnxruntime-gpu"
            )
        else:
            name = f"ORT {ort_device.upper()}{suffix}"
            out[name], notes["providers"][name] = _ort(folder, ort_device)
        if not plan.tensorrt or TRT_PROVIDER not in available:
            notes[f"ORT TensorRT{suffix}"] = skipped(
                "TensorRT provider not asked for or not in this onnxruntime"
            )
            continue
        try:
            name = f"ORT TensorRT{suffix}"
            out[name], notes["providers"][name] = _tensorrt(
                folder, plan.img_size, max(plan.infer_batches), fp16
            )
        except Exception as e:  # TensorRT's libraries (libnvinfer) missing or the engine build failed
            notes[f"ORT TensorRT{suffix}"] = skipped(f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
    return out, notes


def section(plan: Plan, work: Path) -> dict[str, Any]:
    """Latency / throughput rows for every model, runtime and batch size of the plan."""
    rows, notes = [], {}
    rng = np.random.default_rng(0)
    for model_name in plan.models:
        found, notes[model_name] = runners(plan, model_name, work)
        for batch in plan.infer_batches:
            x = rng.standard_normal((batch, 3, plan.img_size, plan.img_size), dtype=np.float32)
            times = measure(found, x, plan.infer_repeats, max(2, plan.infer_repeats // 5), PAUSE_S)
            eager = statistics.median(times[EAGER])
            for name, t in times.items():
                median = statistics.median(t)
                rows.append(
                    {
                        "model": model_name,
                        "runtime": name,
                        "batch": batch,
                        "median_ms": 1e3 * median,
                        "images_per_s": batch / median,
                        "x_eager": eager / median,
                    }
                )
        del found  # the sessions and the eager model go before the next model
        free_memory(plan.device)
    return {"img_size": plan.img_size, "repeats": plan.infer_repeats, "rows": rows, "notes": notes}
