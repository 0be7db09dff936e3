"""Load test of POST /classify: the CLCE server beside LitServe and a plain FastAPI server, in one run.

    python -m benchmarks.serving_load                      # builds a tf_efficientnet_lite0 export first
    python -m benchmarks.serving_load --model-dir models/NAME --concurrency 1 8 32 64 --rounds 2

Servers (``--servers``), each on the same export and 127.0.0.1 (loopback only), started as their
own process and stopped when measured:

- ``clce``: ``python -m serving`` with batching (``--max-batch``, ``--max-wait-ms``);
- ``clce-nobatch``: the same with ``max_batch`` 1; ``clce-h11``: the same under uvicorn with asyncio
  and h11 instead of uvloop and httptools; ``baseline``: ``clce-h11`` from ``--baseline-code``
  (another checkout, e.g. main before a change) (none of the three in the default list);
- ``litserve``: LitServe with its dynamic batching, same batch size and wait
  (benchmarks/peers/litserve_server.py);
- ``plain``: a hand-written FastAPI + onnxruntime server without batching
  (benchmarks/peers/plain_server.py).

The peers decode with the same loading rule and eval transform (``clce_core.preprocessing``) and
run the exported ONNX files with the same session options. Every server is driven by the same
client (benchmarks/load_client.py: keep-alive connections, requests encoded once) at each
``--concurrency``: ``--requests`` requests of ``--images-per-request`` real photographs
(benchmarks/serving_setup.py: skimage's at native size and upscaled to 3000 px, as JPEG), after a
warm-up that is not counted. ``--rounds`` rounds are interleaved (servers in turn, the order
reversed each round), so that the machine's other load falls on all of them alike; the table gives
the median over rounds. Reported per point: requests/s, images/s, p50 and p99 latency, errors,
server CPU ms per request (the server's processes, children included, from ``/proc``), the mean
batch (clce: from its ``/metrics``) and the 1-minute load average.

After the first round the ONNX session itself is timed in this process ("direct", the CLCE
runtime: the composed uint8 graph, same options) at batch 1 and ``--max-batch`` on already
preprocessed inputs; the CLCE server's images/s at concurrency 32 over the direct images/s at
batch 32 is the ratio CONTRACTS sets a CPU target for (>= 0.8). Ratios to the peers and between
concurrencies 64 and 32 are printed below the table. Everything is bounded: ``--requests`` and
``--max-seconds`` per point, ``--time-limit`` for the run; servers are stopped on exit.

To add a row (e.g. an int8 export), add a ``ServerSpec`` to ``benchmarks/serving_servers.py:server_specs``.

Prints a Markdown table; writes ``benchmarks/results/serving_load.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks.harness import RESULTS, machine_line
from benchmarks.load_client import drive, multipart_request
from benchmarks.serving_report import print_report, ratios, summarise
from benchmarks.serving_servers import (
    SERVERS,
    ServerSpec,
    batch_totals,
    load_1m,
    running,
    server_specs,
    tree_cpu_seconds,
)
from benchmarks.serving_setup import load_jpegs, model_folder

DEFAULT_OUTPUT = RESULTS / "serving_load.json"


# ----------------------------------------------------------------------------------- direct ORT


def direct_throughput(
    model_dir: Path, images: list[tuple[str, bytes]], batch: int, device: str, seconds: float = 5.0
) -> dict:
    """images/s of the CLCE runtime (uint8 graph + encoder, head) on preprocessed inputs of ``batch`` images."""
    from clce_core.export_folder import read_card
    from serving.preprocessing import preprocess
    from serving.sessions import ModelRuntime

    card = read_card(model_dir)
    runtime = ModelRuntime(card, device)
    pixels = [preprocess(data, name, card.preprocess) for name, data in images]
    x = np.stack([pixels[i % len(pixels)] for i in range(batch)])  # (B, H, W, 3) uint8
    runtime.run(x)
    runtime.run(x)
    times = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop or len(times) < 3:
        t = time.perf_counter()
        runtime.run(x)
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    per_image = {}  # the decode a server adds, single-threaded, for context
    for name, data in images:
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            preprocess(data, name, card.preprocess)
            runs.append(time.perf_counter() - t)
        per_image[name] = round(1000 * statistics.median(runs), 2)
    return {
        "batch": batch,
        "calls": len(times),
        "median_ms_per_call": round(median * 1000, 2),
        "images_per_s": round(batch / median, 2),
        "preprocess_ms_per_image": per_image,
        "providers": runtime.providers,
    }


# --------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", help="export folder; default: build tf_efficientnet_lite0 (needs torch)")
    p.add_argument("--export-to", help="without --model-dir: keep the built export in this folder")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--servers", nargs="+", choices=SERVERS, default=["clce", "litserve", "plain"])
    p.add_argument("--baseline-code", help="checkout the `baseline` server runs (e.g. a worktree of main)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (the table gives medians)")
    p.add_argument(
        "--requests", type=int, default=400, help="requests per (server, concurrency, round) point"
    )
    p.add_argument("--images-per-request", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=32, help="batch size of clce and litserve")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--max-seconds", type=float, default=30.0, help="cap on one point's measurement")
    p.add_argument(
        "--time-limit", type=float, default=2400.0, help="cap on the whole run (points left out after it)"
    )
    p.add_argument("--images", help="folder of .jpg files to send (default: skimage's photographs)")
    p.add_argument("--no-direct", action="store_true", help="skip timing the ONNX session directly")
    p.add_argument(
        "--direct-seconds", type=float, default=5.0, help="how long to time each direct batch size"
    )
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    return p.parse_args(argv)


def measure(spec: ServerSpec, round_: int, images: list[tuple[str, bytes]], args: argparse.Namespace,
            deadline: float) -> list[dict]:  # fmt: skip
    """Every concurrency point of one server in one round."""
    points = []
    per = args.images_per_request
    with running(spec) as (port, pid):
        host = f"127.0.0.1:{port}"
        requests = [
            multipart_request(host, "/classify?top_k=1", "images", [images[(i * per + j) % len(images)] for j in range(per)])
            for i in range(len(images))
        ]  # fmt: skip
        for c in args.concurrency:
            left = deadline - time.monotonic()
            if left <= 0:
                print(f"time limit reached: {spec.name} round {round_} c={c} left out", flush=True)
                continue
            cpu0, batch0 = tree_cpu_seconds(pid), batch_totals(port) if spec.batches else None
            point = asyncio.run(
                drive("127.0.0.1", port, requests, c, args.requests, min(args.max_seconds, left))
            )
            cpu1, batch1 = tree_cpu_seconds(pid), batch_totals(port) if spec.batches else None
            row = {"server": spec.name, "round": round_, **point.summary(), "load_average_1m": load_1m()}
            row["images_per_s"] = round(row["requests_per_s"] * per, 2)
            if cpu0 is not None and cpu1 is not None:  # the warm-up's 2c requests ran in between too
                row["server_cpu_ms_per_request"] = round(1000 * (cpu1 - cpu0) / (row["requests"] + 2 * c), 2)
            if batch0 and batch1 and batch1[1] > batch0[1]:
                row["mean_batch"] = round((batch1[0] - batch0[0]) / (batch1[1] - batch0[1]), 2)
            points.append(row)
            print(
                f"round {round_} {spec.name:12} c={c:3}: {row['requests_per_s']:7.1f} req/s  p50 {row['p50_ms']} ms  "
                f"p99 {row['p99_ms']} ms  errors {row['errors']}  cpu {row.get('server_cpu_ms_per_request')} ms/req  "
                f"batch {row.get('mean_batch')}  load {row['load_average_1m']}",
                flush=True,
            )
    return points


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from clce_core.export_folder import read_card

    deadline = time.monotonic() + args.time_limit
    images = load_jpegs(args.images)
    results: list[dict] = []
    direct: list[dict] = []
    with model_folder(args.model_dir, args.export_to) as model_dir, tempfile.TemporaryDirectory() as db:
        card = read_card(model_dir).raw
        specs = server_specs(model_dir, Path(db), args)
        for round_ in range(1, args.rounds + 1):
            order = args.servers if round_ % 2 else list(reversed(args.servers))
            for name in order:
                if time.monotonic() > deadline:
                    print(f"time limit reached: {name} round {round_} left out", flush=True)
                    continue
                results += measure(specs[name], round_, images, args, deadline)
            if round_ == 1 and not args.no_direct:
                for batch in sorted({1, args.max_batch}):
                    d = direct_throughput(model_dir, images, batch, args.device, args.direct_seconds)
                    d["load_average_1m"] = load_1m()
                    direct.append(d)

    rows = summarise(results, args.servers, args.concurrency)
    ratio = ratios(rows, direct, args.max_batch)
    print_report(card, args, rows, direct, ratio)
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_line(torch_info=False),
        "model": {"name": card.get("model_name"), "input_size": card["input_size"], "dir": str(model_dir)},
        "images": {name: len(data) for name, data in images},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "summary": rows,
        "ratios": ratio,
        "results": results,
        "direct": direct,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
