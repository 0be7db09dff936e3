"""Load test of the HTTP server: throughput and latency of POST /classify, batching on vs off.

    python -m benchmarks.serving_load --model-dir models/NAME
    python -m benchmarks.serving_load                      # builds a tf_efficientnet_lite0 export first
    python -m benchmarks.serving_load --model-dir models/NAME --requests 128 --concurrency 1 8 32 --device cuda

For each setting (batching on: ``--max-batch``/``--max-wait-ms``; batching off: max_batch 1) the
server is started as its own process (``python -m serving``, uvicorn on 127.0.0.1 and a free port,
loopback only) and driven with an httpx async client at each concurrency: ``--requests`` requests
of ``--images-per-request`` real JPEG photos each (``skimage.data``'s photographs, or ``--images
DIR``), after a short warm-up that is not counted. Reported per setting: requests/s, images/s,
p50 and p99 latency, errors.

Right after the batched server stops, the ONNX session itself is timed in this process at batch 1
and at ``--max-batch`` on already preprocessed inputs ("direct", same session options as the
server): the server's images/s at the highest concurrency divided by the direct images/s at the
same batch size is the ratio CONTRACTS sets a CPU target for (>= 0.8). The client runs on the same
machine as the server, so its CPU time per request is reported too, with the 1-minute load average
(other jobs on the machine change every number). Everything is bounded: ``--requests`` per point, ``--max-seconds`` per
point, ``--time-limit`` for the whole run; the script stops the server and exits by itself.

Without ``--model-dir``: if torch, timm and the packaged EfficientNet-Lite0 weights are importable,
``tf_efficientnet_lite0`` (ImageNet head, 224 px) is exported to a temporary folder (or
``--export-to DIR``, to keep it) with the project's exporter ``training.export.export_model``, or,
where that is not importable, a minimal stand-in in the same folder format (legacy ONNX exporter,
opset 17). Otherwise the script says that ``--model-dir`` is needed.

Prints a Markdown table; writes ``benchmarks/results/serving_load.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.harness import (
    RESULTS,
    Server,
    ServerError,
    cpu_seconds,
    fail,
    free_port,
    load_average,
    machine_line,
)

DEFAULT_OUTPUT = RESULTS / "serving_load.json"


# ------------------------------------------------------------------------------------ the model


def imagenet_labels() -> list[str]:
    try:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        labels = [info.index_to_description(i) for i in range(1000)]
    except Exception:
        labels = [f"class_{i}" for i in range(1000)]
    if len(set(labels)) != len(labels):  # a few ImageNet descriptions repeat
        labels = [f"{label} ({i})" for i, label in enumerate(labels)]
    return labels


def export_lite0(dest: Path) -> Path:
    """Export tf_efficientnet_lite0 with its packaged ImageNet weights and head to ``dest``.

    Uses the project's exporter (``training.export.export_model``, with its parity check) when it is
    importable, else a minimal stand-in written here in the same folder format.
    """
    from clce_core.models import create_model

    model = create_model("tf_efficientnet_lite0", num_classes=1000, pretrained="packaged").eval()
    labels = imagenet_labels()
    try:
        from training.export import CardInfo, export_model
    except ImportError as e:
        print(f"training.export not importable ({e}); using the stand-in exporter", flush=True)
    else:
        try:
            export_model(model, CardInfo.from_model(model, labels), dest, force=True)
            return dest
        except Exception as e:
            print(f"training.export failed ({e}); using the stand-in exporter", flush=True)
    return _export_standin(model, labels, dest)


def _export_standin(model: Any, labels: list[str], dest: Path) -> Path:
    import onnx
    import timm
    import torch

    from clce_core.export_folder import ENCODER_FILE, HEAD_FILE, ModelCard, write_card

    cfg = model.data_config
    dest.mkdir(parents=True, exist_ok=True)
    images = torch.zeros(1, *cfg["input_size"])
    with torch.no_grad():
        torch.onnx.export(
            model.encoder,
            (images,),
            str(dest / ENCODER_FILE),
            input_names=["pixel_values"],
            output_names=["embedding"],
            dynamic_axes={"pixel_values": {0: "N"}, "embedding": {0: "N"}},
            opset_version=17,
            dynamo=False,
        )
        torch.onnx.export(
            model.head,
            (torch.zeros(1, model.embedding_dim),),
            str(dest / HEAD_FILE),
            input_names=["embedding"],
            output_names=["logits"],
            dynamic_axes={"embedding": {0: "N"}, "logits": {0: "N"}},
            opset_version=17,
            dynamo=False,
        )
    card = ModelCard.from_data_config(
        cfg,
        model_name="tf_efficientnet_lite0",
        labels=labels,
        embedding_dim=model.embedding_dim,
        loss={"name": "ce", "lam": 0.0, "tau": None},
        opset=17,
        versions={"torch": torch.__version__, "timm": timm.__version__, "onnx": onnx.__version__},
        extras={"note": "stand-in export written by benchmarks/serving_load.py (packaged ImageNet weights)"},
    )
    write_card(dest, card)
    return dest


@contextlib.contextmanager
def model_folder(model_dir: str | None, export_to: str | None = None) -> Iterator[Path]:
    if model_dir:
        yield Path(model_dir)
        return
    try:
        import timm  # noqa: F401
        import torch  # noqa: F401

        from clce_core.weights import load_packaged_state_dict  # noqa: F401
    except ImportError as e:
        sys.exit(
            f"error: no --model-dir given and torch/timm are not importable ({e}); pass --model-dir models/NAME"
        )
    with tempfile.TemporaryDirectory(prefix="clce-bench-") as tmp:
        dest = Path(export_to) if export_to else Path(tmp) / "tf_efficientnet_lite0"
        print(
            f"no --model-dir: exporting tf_efficientnet_lite0 (packaged ImageNet weights) to {dest} ...",
            flush=True,
        )
        try:
            yield export_lite0(dest)
        except SystemExit:
            raise
        except Exception as e:  # e.g. packaged weights not installed
            sys.exit(f"error: could not build a model to serve ({e}); pass --model-dir models/NAME")


# ----------------------------------------------------------------------------------- the images


def load_jpegs(folder: str | None, limit: int = 16) -> list[tuple[str, bytes]]:
    """Real photographs as JPEG bytes: ``folder``'s ``*.jpg``, else skimage's sample photographs."""
    if folder:
        paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[:limit]
        if not paths:
            sys.exit(f"error: no .jpg files in {folder}")
        return [(p.name, p.read_bytes()) for p in paths]
    from PIL import Image

    try:
        import skimage.data as data

        arrays = {
            n: getattr(data, n)()
            for n in ("coffee", "chelsea", "astronaut", "rocket", "cat", "hubble_deep_field")
        }
    except Exception:  # no scikit-image: photo-like noise of the same sizes
        rng = np.random.default_rng(0)
        arrays = {f"synthetic{i}": rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for i in range(4)}
    out = []
    for name, arr in arrays.items():
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        buf = io.BytesIO()
        Image.fromarray(arr[..., :3]).save(buf, format="JPEG", quality=90)
        out.append((f"{name}.jpg", buf.getvalue()))
    return out


# ----------------------------------------------------------------------------------- the server


@contextlib.contextmanager
def server(
    model_dir: Path, max_batch: int, max_wait_ms: float, args: argparse.Namespace
) -> Iterator[tuple[str, int]]:
    """Run ``python -m serving`` on 127.0.0.1 until ready; yield its URL and pid; stop it on exit."""
    port = free_port()
    queue = max(1024, 4 * max(args.concurrency) * args.images_per_request)
    env = {
        "CLCE_MAX_QUEUE": str(queue),
        "CLCE_MAX_FILES": str(max(32, args.images_per_request)),
        "CLCE_API_KEY": "",
    }
    with tempfile.TemporaryDirectory(prefix="clce-bench-db-") as tmp:
        cmd = [
            sys.executable, "-m", "serving",
            "--model-dir", str(model_dir),
            "--host", "127.0.0.1", "--port", str(port),
            "--device", args.device,
            "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
            "--db-path", str(Path(tmp) / "bench.sqlite3"),
            "--log-level", "warning",
        ]  # fmt: skip
        try:
            with Server(cmd, port, env=env, capture=False, stop_timeout=15) as running:
                yield running.wait_ready(180).url, running.proc.pid
        except ServerError as e:
            fail(str(e))


async def drive(
    url: str,
    images: list[tuple[str, bytes]],
    concurrency: int,
    n_requests: int,
    max_seconds: float,
    per_request: int,
) -> dict:
    """``n_requests`` POST /classify from ``concurrency`` workers; stops early after ``max_seconds``."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    issued = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        # multipart bodies encoded once, so the client spends its (shared) CPU on sending, not encoding
        bodies = []
        for i in range(len(images)):
            picks = [images[(i * per_request + j) % len(images)] for j in range(per_request)]
            files = [("images", (name, data, "image/jpeg")) for name, data in picks]
            request = client.build_request("POST", "/classify", files=files, params={"top_k": 1})
            bodies.append((request.read(), request.headers["content-type"]))

        async def one(i: int) -> None:
            body, content_type = bodies[i % len(bodies)]
            start = time.perf_counter()
            try:
                r = await client.post(
                    "/classify", content=body, headers={"content-type": content_type}, params={"top_k": 1}
                )
                status = str(r.status_code)
            except httpx.HTTPError as e:
                status = type(e).__name__
            if status == "200":
                latencies.append(time.perf_counter() - start)
            else:
                errors[status] = errors.get(status, 0) + 1

        async def worker(stop_at: float, count: int) -> None:
            nonlocal issued
            while issued < count and time.perf_counter() < stop_at:
                issued += 1
                await one(issued)

        # warm-up: a few rounds at this concurrency, not counted
        warm = 2 * concurrency
        await asyncio.gather(*(worker(time.perf_counter() + 60, warm) for _ in range(concurrency)))
        latencies.clear()
        errors.clear()
        issued = 0
        start, cpu_start = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(start + max_seconds, n_requests) for _ in range(concurrency)))
        seconds, client_cpu = time.perf_counter() - start, time.process_time() - cpu_start

    done = len(latencies)
    ms = sorted(x * 1000 for x in latencies)
    return {
        "concurrency": concurrency,
        "requests": done + sum(errors.values()),
        "ok": done,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "seconds": round(seconds, 3),
        "requests_per_s": round(done / seconds, 2),
        "images_per_s": round(done * per_request / seconds, 2),
        "p50_ms": round(ms[len(ms) // 2], 2) if ms else None,
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 2) if ms else None,
        "stopped_early": done + sum(errors.values()) < n_requests,
        "client_cpu_ms_per_request": round(1000 * client_cpu / max(1, done), 2),
    }


def _load() -> float | None:
    """1-minute load average: other jobs on the machine show up here (and in the numbers)."""
    return (load_average() or [None])[0]


# ----------------------------------------------------------------------------------- direct ORT


def direct_throughput(
    model_dir: Path, images: list[tuple[str, bytes]], batch: int, device: str, seconds: float = 5.0
) -> dict:
    """images/s of the encoder + head sessions on preprocessed inputs of ``batch`` images."""
    from clce_core.export_folder import read_card
    from serving.preprocessing import preprocess
    from serving.sessions import ModelRuntime

    card = read_card(model_dir)
    runtime = ModelRuntime(card, device)
    pixels = [preprocess(data, name, card.preprocess) for name, data in images]
    x = np.stack([pixels[i % len(pixels)] for i in range(batch)])  # (B, 3, H, W)
    runtime.run(x)
    runtime.run(x)
    times = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop or len(times) < 3:
        t = time.perf_counter()
        runtime.run(x)
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    # the server also decodes JPEGs; this is that cost per image, single-threaded, for context
    rounds = []
    for _ in range(3):
        t = time.perf_counter()
        for name, data in images:
            preprocess(data, name, card.preprocess)
        rounds.append((time.perf_counter() - t) / len(images))
    decode = statistics.median(rounds)
    return {
        "batch": batch,
        "calls": len(times),
        "median_ms_per_call": round(median * 1000, 2),
        "images_per_s": round(batch / median, 2),
        "preprocess_ms_per_image": round(decode * 1000, 2),
        "providers": runtime.providers,
    }


# --------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model-dir", help="export folder; default: build a tf_efficientnet_lite0 stand-in (needs torch)"
    )
    p.add_argument(
        "--export-to",
        help="without --model-dir: keep the stand-in export in this folder (reuse it with --model-dir)",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=256, help="requests per (setting, concurrency) point")
    p.add_argument("--images-per-request", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=32, help="max_batch with batching on")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--max-seconds", type=float, default=60.0, help="cap on one point's measurement")
    p.add_argument(
        "--time-limit", type=float, default=900.0, help="cap on the whole run (points left out after it)"
    )
    p.add_argument("--images", help="folder of .jpg files to send (default: skimage's photographs)")
    p.add_argument("--no-direct", action="store_true", help="skip timing the ONNX session directly")
    p.add_argument(
        "--direct-seconds", type=float, default=5.0, help="how long to time each direct batch size"
    )
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = p.parse_args(argv)

    from clce_core.export_folder import read_card

    run_deadline = time.monotonic() + args.time_limit
    images = load_jpegs(args.images)
    settings = [("on", args.max_batch, args.max_wait_ms), ("off", 1, 0.0)]
    results: list[dict] = []
    direct: list[dict] = []
    with model_folder(args.model_dir, args.export_to) as model_dir:
        card = read_card(model_dir).raw
        for name, max_batch, max_wait in settings:
            if time.monotonic() > run_deadline:
                print(f"time limit reached: batching {name} left out", flush=True)
                continue
            with server(model_dir, max_batch, max_wait, args) as (url, pid):
                for c in args.concurrency:
                    left = run_deadline - time.monotonic()
                    if left <= 0:
                        print(f"time limit reached: batching {name}, concurrency {c} left out", flush=True)
                        continue
                    before = cpu_seconds(pid)
                    point = asyncio.run(
                        drive(
                            url,
                            images,
                            c,
                            args.requests,
                            min(args.max_seconds, left),
                            args.images_per_request,
                        )
                    )
                    after = cpu_seconds(pid)
                    point.update(batching=name, max_batch=max_batch, max_wait_ms=max_wait)
                    if before is not None and after is not None:  # includes the uncounted warm-up requests
                        served = point["requests"] + 2 * c
                        point["server_cpu_ms_per_request"] = round(1000 * (after - before) / served, 2)
                    point["load_average_1m"] = _load()
                    results.append(point)
                    print(
                        f"batching {name:3} c={c:3}: {point['requests_per_s']:8.1f} req/s  "
                        f"p50 {point['p50_ms']} ms  p99 {point['p99_ms']} ms  errors {point['errors']}",
                        flush=True,
                    )
            if name == "on" and not args.no_direct:  # right after the batched server: the nearest in time
                for batch in sorted({1, args.max_batch}):
                    d = direct_throughput(model_dir, images, batch, args.device, args.direct_seconds)
                    d["load_average_1m"] = _load()
                    direct.append(d)

    top_c = max(args.concurrency)
    server_top = next((r for r in results if r["batching"] == "on" and r["concurrency"] == top_c), None)
    direct_top = next((d for d in direct if d["batch"] == args.max_batch), None)
    ratio = (
        server_top["images_per_s"] / direct_top["images_per_s"]  # unrounded: > 0 even under heavy load
        if server_top and direct_top
        else None
    )

    print()
    machine = machine_line(torch_info=False)
    print(f"Machine: {machine}. Model {card.get('model_name')} {card['input_size']}, device {args.device}, "
          f"{args.images_per_request} JPEG(s) per request")  # fmt: skip
    print()
    print(
        "| batching | concurrency | requests | req/s | images/s | p50 ms | p99 ms | errors "
        "| server CPU ms/req | client CPU ms/req | load avg |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['batching']} (max {r['max_batch']}) | {r['concurrency']} | {r['requests']} | "
            f"{r['requests_per_s']:.1f} | {r['images_per_s']:.1f} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} | "
            f"{r.get('server_cpu_ms_per_request', '')} | {r['client_cpu_ms_per_request']} | {r['load_average_1m']} |"
        )
    for d in direct:
        print(
            f"\ndirect ONNX Runtime, batch {d['batch']}: {d['images_per_s']:.1f} images/s "
            f"({d['median_ms_per_call']} ms per call; preprocessing {d['preprocess_ms_per_image']} ms/image; "
            f"load average {d['load_average_1m']})"
        )
    if ratio is not None:
        print(
            f"\nserver at concurrency {top_c} / direct at batch {args.max_batch}: {ratio:.2f}x (CPU target >= 0.8)"
        )

    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "line": machine,
        },
        "model": {"name": card.get("model_name"), "input_size": card["input_size"], "dir": str(model_dir)},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": results,
        "direct": direct,
        "server_vs_direct": ratio,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
