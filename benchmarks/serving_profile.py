"""Profile a server under load with py-spy: the frames that take its time, by own time.

    python -m benchmarks.serving_profile --model-dir models/NAME                 # the CLCE server, c = 32
    python -m benchmarks.serving_profile --model-dir models/NAME --server clce-h11 --server-code ../main

Starts one server of benchmarks/serving_servers.py (``--server``; ``--server-code`` runs the CLCE
variants from another checkout, e.g. an older version), drives it with the benchmark's client at
``--concurrency`` with the benchmark's photographs, and after a few seconds of load samples it with
``py-spy record --format raw`` (``--rate`` Hz, ``--seconds``, non-blocking, active threads only).
Prints the top ``--top`` Python frames by own time (a frame's share of the samples in which it is the
innermost Python frame: its own Python code and the C code it calls, e.g. ``Image.resize``), and
writes them with the run's throughput to ``--output`` (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from benchmarks.harness import REPO, RESULTS
from benchmarks.load_client import drive, multipart_request
from benchmarks.serving_servers import SERVERS, load_average, running, server_specs
from benchmarks.serving_setup import load_jpegs, model_folder


def own_time(raw: str) -> tuple[Counter[str], int]:
    """``(samples per innermost frame, total samples)`` from py-spy's raw (collapsed-stack) output."""
    counts: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        leaf = stack.split(";")[-1]
        # "resize (PIL/Image.py:2310)" -> "resize (PIL/Image.py)": one row per function
        leaf = re.sub(r":\d+\)$", ")", leaf)
        leaf = re.sub(r"\(.*?(site-packages|lib/python3\.\d+)/", "(", leaf)
        counts[leaf] += int(n)
        total += int(n)
    return counts, total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", help="export folder; default: build tf_efficientnet_lite0 (needs torch)")
    p.add_argument("--server", choices=SERVERS, default="clce")
    p.add_argument("--server-code", help="checkout whose CLCE server code runs (default: this one)")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seconds", type=float, default=30.0, help="how long py-spy samples")
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--output", type=Path, default=RESULTS / "serving_profile.json")
    args = p.parse_args(argv)
    args.images_per_request = 1
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        sys.exit("error: py-spy is not installed (pip install py-spy, in the [dev] extra)")

    images = load_jpegs(None)
    with model_folder(args.model_dir, None) as model_dir, tempfile.TemporaryDirectory() as tmp:
        args.concurrency = [args.concurrency]
        spec = server_specs(model_dir, Path(tmp), args)[args.server]
        with running(spec) as (port, pid):
            host = f"127.0.0.1:{port}"
            requests = [multipart_request(host, "/classify?top_k=1", "images", [im]) for im in images]
            warm, load = 5.0, {}

            def drive_load() -> None:
                load["point"] = asyncio.run(
                    drive("127.0.0.1", port, requests, args.concurrency[0], 10**9, warm + args.seconds)
                )

            thread = threading.Thread(target=drive_load)
            thread.start()
            time.sleep(warm)
            raw = Path(tmp) / "profile.txt"
            cmd = [spy, "record", "--pid", str(pid), "--duration", str(int(args.seconds)), "--rate", str(args.rate),
                   "--format", "raw", "--output", str(raw), "--nonblocking"]  # fmt: skip
            spied = subprocess.run(cmd, capture_output=True, text=True)
            thread.join()
            if spied.returncode != 0 or not raw.exists():
                sys.exit(f"error: py-spy failed: {(spied.stderr or spied.stdout).strip()[-500:]}")
            counts, total = own_time(raw.read_text())
    point = load["point"].summary()
    top = [{"frame": f, "share": round(n / total, 4)} for f, n in counts.most_common(args.top)]
    print(f"{args.server} at concurrency {args.concurrency[0]}: {point['requests_per_s']} req/s, "
          f"p50 {point['p50_ms']} ms, {total} samples, load average {load_average()}\n")  # fmt: skip
    print("| own time | frame |\n|---:|---|")
    for row in top:
        print(f"| {100 * row['share']:.1f} % | `{row['frame']}` |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {"server": args.server, "server_code": str(args.server_code or REPO), "load": point,
              "samples": total, "load_average_1m": load_average(), "top": top}  # fmt: skip
    args.output.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
