"""The server on the plan's device under load, and whether ``/health/ready`` reports the CUDA provider.

``python -m serving --device cuda`` (the same field as ``CLCE_DEVICE=cuda``) serves the
``tf_efficientnet_lite0`` fp32 export of the inference section (made here if that section did not
run), started and driven by ``benchmarks/serving_load.py``'s own :func:`~benchmarks.serving_load.server`
and :func:`~benchmarks.serving_load.drive` (httpx async client, real JPEG photographs, one image
per request), batching on (``max_batch``, 5 ms) and off, at each concurrency of the plan; then the
ONNX sessions alone at batch 1 and ``max_batch`` (:func:`~benchmarks.serving_load.direct_throughput`).

``/health/ready`` is read after warm-up: ``ready``, ``device`` and ``providers``; on CUDA the check is
that the first provider is ``CUDAExecutionProvider`` (the server reports not ready otherwise, and
the load points are then not run).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

from benchmarks import serving_load
from benchmarks.gpu.inference import export_folder
from benchmarks.gpu.plan import Plan, skipped

MAX_WAIT_MS = 5.0
CUDA_PROVIDER = "CUDAExecutionProvider"


def cuda_runs(model_dir: Path) -> bool:
    """Whether the server's own sessions of ``model_dir`` really run on the CUDA provider here."""
    from clce_core.export_folder import read_card
    from serving.sessions import ModelRuntime

    return ModelRuntime(read_card(model_dir), "cuda").cuda_active


def ready_report(url: str, device: str) -> dict[str, Any]:
    """``GET /health/ready`` and, on CUDA, whether it truly names the CUDA provider first."""
    r = httpx.get(f"{url}/health/ready", timeout=10)
    body = r.json()
    report: dict[str, Any] = {"status_code": r.status_code, "body": body}
    if device.startswith("cuda"):
        report["cuda_reported"] = (body.get("providers") or [None])[0] == CUDA_PROVIDER
    else:
        report["cuda_check"] = skipped("a CPU run: whether /health/ready reports CUDA is checked on the GPU")
    return report


def section(plan: Plan, work: Path) -> dict[str, Any]:
    """Load points for batching on and off, the ready report, and the direct-session figures."""
    model_dir = export_folder(work, plan.models[0], plan.img_size, fp16=False)
    device = "cuda" if plan.device.startswith("cuda") else "cpu"
    if device == "cuda" and not cuda_runs(
        model_dir
    ):  # else the server would wait minutes for a ready that never comes
        return skipped(
            f"ONNX Runtime's {CUDA_PROVIDER} does not run the export here: install onnxruntime-gpu"
        )
    args = SimpleNamespace(concurrency=list(plan.concurrency), images_per_request=1, device=device)
    images = serving_load.load_jpegs(None)
    points, ready = [], {}
    for batching, max_batch, max_wait in (("on", plan.max_batch, MAX_WAIT_MS), ("off", 1, 0.0)):
        with serving_load.server(model_dir, max_batch, max_wait, args) as (url, _pid):
            ready[batching] = ready_report(url, device)
            for c in plan.concurrency:
                point = asyncio.run(serving_load.drive(url, images, c, plan.requests, plan.max_seconds, 1))
                points.append({"batching": batching, "max_batch": max_batch, **point})
    direct = [
        serving_load.direct_throughput(model_dir, images, b, device, seconds=min(5.0, plan.max_seconds))
        for b in sorted({1, plan.max_batch})
    ]
    top = max(plan.concurrency)
    on_top = next(p for p in points if p["batching"] == "on" and p["concurrency"] == top)
    off_top = next(p for p in points if p["batching"] == "off" and p["concurrency"] == top)
    direct_top = direct[-1]["images_per_s"]
    return {
        "model": plan.models[0],
        "device_setting": f"--device {device} (CLCE_DEVICE={device})",
        "ready": ready,
        "points": points,
        "direct": direct,
        "batching_gain": on_top["images_per_s"] / off_top["images_per_s"]
        if off_top["images_per_s"]
        else None,
        "server_vs_direct": on_top["images_per_s"] / direct_top if direct_top else None,
    }
