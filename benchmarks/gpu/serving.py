"""The server on the plan's device under load, and whether ``/health/ready`` reports the CUDA provider.

``python -m serving --device cuda`` (the same field as ``CLCE_DEVICE=cuda``) serves the
``tf_efficientnet_lite0`` fp32 export of the inference section (made here if that section did not
run), started as the load benchmark starts it (:func:`benchmarks.serving_servers.server_specs`:
``clce`` with batching, ``max_batch`` and 5 ms, and ``clce-nobatch``) and driven by its keep-alive
client (:func:`benchmarks.load_client.drive`, real JPEG photographs, one image per request) at each
concurrency of the plan; then the ONNX sessions alone at batch 1 and ``max_batch``
(:func:`benchmarks.serving_load.direct_throughput`).

``/health/ready`` is read after warm-up: ``ready``, ``device`` and ``providers``; on CUDA the check is
that the first provider is ``CUDAExecutionProvider`` (the server reports not ready otherwise, and
the load points are then not run).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

from benchmarks.gpu.inference import export_folder
from benchmarks.gpu.plan import Plan, skipped
from benchmarks.load_client import drive, multipart_request
from benchmarks.serving_load import direct_throughput
from benchmarks.serving_servers import running, server_specs
from benchmarks.serving_setup import load_jpegs

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
    args = SimpleNamespace(
        concurrency=list(plan.concurrency), images_per_request=1, device=device, max_batch=plan.max_batch,
        max_wait_ms=MAX_WAIT_MS,
    )  # fmt: skip
    images = load_jpegs(None)
    points, ready = [], {}
    with tempfile.TemporaryDirectory() as db:
        specs = server_specs(model_dir, Path(db), args)
        for batching, name, max_batch in (("on", "clce", plan.max_batch), ("off", "clce-nobatch", 1)):
            with running(specs[name]) as (port, _pid):
                ready[batching] = ready_report(f"http://127.0.0.1:{port}", device)
                host = f"127.0.0.1:{port}"
                requests = [multipart_request(host, "/classify?top_k=1", "images", [image]) for image in images]
                for c in plan.concurrency:
                    point = asyncio.run(drive("127.0.0.1", port, requests, c, plan.requests, plan.max_seconds))
                    row = point.summary()
                    points.append({"batching": batching, "max_batch": max_batch, **row,
                                   "images_per_s": row["requests_per_s"]})  # fmt: skip
    direct = [
        direct_throughput(model_dir, images, b, device, seconds=min(5.0, plan.max_seconds))
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
