"""The float work in the graph or in numpy: the composed uint8 encoder against the exported float32 one.

    python -m benchmarks.pixel_graph_speed --model-dir models/NAME     # default: build tf_efficientnet_lite0

Times, interleaved over ``--rounds`` rounds (median per call), at batch 1 and ``--batch``:

- ``uint8 graph``: the serving runtime's encoder (serving.pixel_graph in front of ``encoder.onnx``)
  on ``(N, H, W, 3)`` uint8 crops;
- ``numpy + float32``: ``EvalTransform.normalize`` in numpy (``/255``, ``- mean``, ``/ std``,
  transpose) and ``encoder.onnx`` as exported on the ``(N, 3, H, W)`` float32 result,

with the same session options: wall time and CPU time of the process (all threads; the more robust
figure on a shared machine), and checks that both give the same embeddings (max abs difference).
Writes ``benchmarks/results/pixel_graph_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import RESULTS
from benchmarks.peers.plain_server import session_options
from benchmarks.serving_setup import load_jpegs, model_folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", help="export folder; default: build tf_efficientnet_lite0 (needs torch)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--output", type=Path, default=RESULTS / "pixel_graph_speed.json")
    args = p.parse_args(argv)

    import onnxruntime as ort

    from clce_core.export_folder import read_card
    from serving.preprocessing import preprocess
    from serving.sessions import ModelRuntime

    rows = []
    with model_folder(args.model_dir, None) as model_dir:
        card = read_card(model_dir)
        transform = card.preprocess
        composed = ModelRuntime(card).encoder
        plain = ort.InferenceSession(
            str(card.encoder_path), session_options(), providers=["CPUExecutionProvider"]
        )
        crops = [preprocess(data, name, transform) for name, data in load_jpegs(None)]
        for n in sorted({1, args.batch}):
            u8 = np.stack([crops[i % len(crops)] for i in range(n)])  # (N, H, W, 3) uint8

            def graph(u8: np.ndarray = u8) -> np.ndarray:
                return composed.run(["embedding"], {"pixels": u8})[0]

            def numpy_float(u8: np.ndarray = u8) -> np.ndarray:
                return plain.run(["embedding"], {"pixel_values": transform.normalize(u8)})[0]

            def normalise_only(u8: np.ndarray = u8) -> np.ndarray:
                return transform.normalize(u8)

            fns = {
                "uint8 graph": graph,
                "numpy + float32": numpy_float,
                "numpy normalise alone": normalise_only,
            }
            for fn in fns.values():
                fn()
            times: dict[str, list[float]] = {name: [] for name in fns}
            cpu: dict[str, list[float]] = {name: [] for name in fns}
            for _ in range(args.rounds):
                for name, fn in fns.items():
                    start, cpu_start = time.perf_counter(), time.process_time()
                    fn()
                    times[name].append(time.perf_counter() - start)
                    cpu[name].append(time.process_time() - cpu_start)  # all threads: robust to other load
            difference = float(np.abs(graph() - numpy_float()).max())
            for name in fns:
                rows.append(
                    {
                        "batch": n,
                        "path": name,
                        "median_ms": round(1000 * statistics.median(times[name]), 3),
                        "median_cpu_ms": round(1000 * statistics.median(cpu[name]), 3),
                    }
                )
            rows.append({"batch": n, "path": "max abs embedding difference", "value": difference})
    print("| batch | path | median ms per call | median CPU ms per call |\n|---:|---|---:|---:|")
    for r in rows:
        print(
            f"| {r['batch']} | {r['path']} | {r.get('median_ms', r.get('value'))} | {r.get('median_cpu_ms', '')} |"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps({"model": card.model_name, "rounds": args.rounds, "rows": rows}, indent=2)
    )
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
