"""Latency and throughput of the exported model in ONNX Runtime against PyTorch eager.

    python -m benchmarks.inference_speed                      # tf_efficientnet_lite0, packaged weights, 224 px
    python -m benchmarks.inference_speed --checkpoint runs/X/best.pt --repeats 100
    python -m benchmarks.inference_speed --model resnet50 --pretrained none --threads 4
    python -m benchmarks.inference_speed --checkpoint runs/quickstart/best.pt --int8   # + int8 rows

One model, built without a training run (``create_model(MODEL, 10, PRETRAINED)``) or from
``--checkpoint``, is exported by the product's own ``training.exporter.export_model`` (so the ONNX
files are verified against PyTorch first) into a temporary folder. Then, in one run, each
configuration classifies the same random images, encoder then head, as serving does:

* ``PyTorch eager``: ``model(x)`` under ``torch.inference_mode``, ``torch.set_num_threads(--threads)``;
* ``ORT CPU, defaults``: ``InferenceSession(path)`` with no options (what a first try gets);
* ``ORT CPU, tuned``: graph optimisation level ``ORT_ENABLE_ALL``, ``intra_op_num_threads = --threads``,
  sequential execution (what a user tunes first);
* ``ORT CPU fp16`` (with ``--fp16``): the ``--fp16`` export, tuned options;
* ``ORT CPU int8`` (with ``--int8``): the ``--int8`` export (``training.quantize``), tuned options.
  With ``--checkpoint`` it is calibrated and judged as ``python -m training.export --int8`` does
  (``--calibration-images`` from the run's training split, top-1 on its validation split); without
  one, calibrated on the 7 check images and not judged (no labels): a speed figure only;
* ``ORT CPU fp32, pads frozen`` (with ``--int8``): the float32 encoder after the int8 path's graph
  preparation (computed "same" pads frozen, ``quant_pre_process``), to separate what the
  preparation gains from what int8 gains;
* ``ORT CUDA`` when onnxruntime has the CUDA execution provider (onnxruntime-gpu).

Latency: median over ``--repeats`` calls at batch 1. Throughput: batch 32 images divided by the
median over ``--repeats-32`` calls. Both after ``--warmup`` calls per configuration, the
configurations interleaved round-robin (the order rotating each round), so that other load on the
machine hits them alike, with a ``--pause-ms`` sleep before each timed call: the worker threads of
both runtimes spin-wait after a call, and without the pause the previous configuration's spinning
threads steal the cores of the next one. Prints a Markdown table; writes JSON.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import RESULTS, load_average, machine_line, publish

Runner = Callable[[np.ndarray], np.ndarray]
EAGER = "PyTorch eager"
TUNED = "ORT CPU, tuned"
FROZEN = "ORT CPU fp32, pads frozen"
INT8 = "ORT CPU int8, tuned"


def machine(threads: int) -> str:
    import onnxruntime as ort

    return machine_line(f"onnxruntime {ort.__version__}", threads=threads)


def _eager(model: torch.nn.Module) -> Runner:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x))[1].numpy()

    return run


def ort_runner(folder: Path, provider: str, threads: int | None) -> Runner:
    """Encoder then head; ``threads`` None = a session with no options at all."""
    import onnxruntime as ort

    def session(path: Path) -> ort.InferenceSession:
        if threads is None:
            return ort.InferenceSession(str(path), providers=[provider])
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        return ort.InferenceSession(str(path), options, providers=[provider])

    encoder, head = session(folder / "encoder.onnx"), session(folder / "head.onnx")

    def run(x: np.ndarray) -> np.ndarray:
        return head.run(None, {"embedding": encoder.run(None, {"pixel_values": x})[0]})[0]

    return run


def load_model(args: argparse.Namespace) -> tuple[torch.nn.Module, object, dict | None]:
    """The model (``--checkpoint``, else ``--model`` built fresh), its card info and the checkpoint's state."""
    from clce_core.models import create_model
    from training.card_info import CardInfo

    if args.checkpoint:
        from training.checkpoint import model_from_checkpoint

        model, state = model_from_checkpoint(args.checkpoint)
        return model, CardInfo.from_checkpoint(state, args.checkpoint), state
    model = create_model(args.model, 10, args.pretrained, img_size=args.img_size).eval()
    info = CardInfo.from_model(model)
    if args.img_size:
        info.data_config["input_size"] = (3, args.img_size, args.img_size)
    return model, info, None


def int8_calibration(state: dict | None, card: dict, images: int, max_accuracy_drop: float = 1.0) -> object:
    """The ``Int8Plan`` as ``python -m training.export --int8`` builds it from a checkpoint's ``state``
    (``images`` class-balanced training images, seed 0, minmax), else the 7 check images, not judged."""
    from training.calibration import Int8Plan
    from training.export import int8_plan, run_datasets
    from training.onnx_export import check_images

    if state is None:
        return Int8Plan(images=check_images(card), validation=(), source="the check images")
    options = argparse.Namespace(
        workers=0, calibration_images=images, calibration_seed=0, calibration_method="minmax",
        max_accuracy_drop=max_accuracy_drop,
    )  # fmt: skip
    return int8_plan(run_datasets(state, None, None), state["config"], options)


def build(args: argparse.Namespace, workdir: Path) -> tuple[torch.nn.Module, dict[str, Runner], dict]:
    """The model, its exports, and one runner per configuration."""
    import onnxruntime as ort

    from training.exporter import export_model

    model, info, state = load_model(args)
    card = export_model(model, info, workdir / "fp32").card
    runners: dict[str, Runner] = {
        EAGER: _eager(model),
        "ORT CPU, defaults": ort_runner(workdir / "fp32", "CPUExecutionProvider", None),
        TUNED: ort_runner(workdir / "fp32", "CPUExecutionProvider", args.threads),
    }
    if args.fp16:
        export_model(model, info, workdir / "fp16", fp16=True)
        runners["ORT CPU fp16, tuned"] = ort_runner(workdir / "fp16", "CPUExecutionProvider", args.threads)
    if args.int8:
        card["quantization"] = _int8_exports(args, model, info, card, workdir, state)
        runners[FROZEN] = ort_runner(workdir / "fp32-frozen", "CPUExecutionProvider", args.threads)
        runners[INT8] = ort_runner(workdir / "int8", "CPUExecutionProvider", args.threads)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        runners["ORT CUDA"] = ort_runner(workdir / "fp32", "CUDAExecutionProvider", args.threads)
        if args.fp16:
            runners["ORT CUDA fp16"] = ort_runner(workdir / "fp16", "CUDAExecutionProvider", args.threads)
    return model, runners, card


def _int8_exports(
    args: argparse.Namespace,
    model: torch.nn.Module,
    info: object,
    card: dict,
    workdir: Path,
    state: dict | None,
) -> dict:
    """Write ``workdir/int8`` (the product's int8 export) and ``workdir/fp32-frozen``; the int8 card's ``quantization``."""
    from training.exporter import export_model
    from training.quantize import prepare_float

    plan = int8_calibration(state, card, args.calibration_images, args.max_accuracy_drop)
    quantization = export_model(model, info, workdir / "int8", int8=plan).card["quantization"]
    (workdir / "fp32-frozen").mkdir()
    prepare_float(workdir / "fp32" / "encoder.onnx", workdir / "fp32-frozen" / "encoder.onnx")
    shutil.copy(workdir / "fp32" / "head.onnx", workdir / "fp32-frozen" / "head.onnx")
    return quantization


def measure(
    runners: dict[str, Runner], x: np.ndarray, repeats: int, warmup: int, pause: float
) -> dict[str, list[float]]:
    """Seconds per call of every runner on ``x``, interleaved round-robin with a rotating order.

    ``pause`` seconds of sleep precede every timed call: both runtimes' worker threads spin-wait for
    a while after a call, and on a small CPU the spinning threads of the previous configuration
    would otherwise steal the cores of the next (eager measured 10-20x slower without it).
    """
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name](x)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            time.sleep(pause)
            t0 = time.perf_counter()
            runners[name](x)
            times[name].append(time.perf_counter() - t0)
    return times


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="clce-inference-speed-") as tmp:
        _, runners, card = build(args, Path(tmp))
        c, h, w = card["input_size"]
        rng = np.random.default_rng(0)
        one = rng.standard_normal((1, c, h, w), dtype=np.float32)
        many = rng.standard_normal((args.batch, c, h, w), dtype=np.float32)
        pause = args.pause_ms / 1e3
        lat = measure(runners, one, args.repeats, args.warmup, pause)
        print("batch 1 done", file=sys.stderr)
        thr = measure(runners, many, args.repeats_32, max(1, args.warmup // 3), pause)
    results = {
        "machine": machine(args.threads),
        "model": card["model_name"],
        "input_size": card["input_size"],
        "batch": args.batch,
        "repeats": args.repeats,
        "repeats_batch": args.repeats_32,
        "pause_ms": args.pause_ms,
        "parity": card["parity"],
        "load_average": load_average(),
        "configs": {},
    }
    if card.get("quantization"):
        results["quantization"] = card["quantization"]
    eager_lat = statistics.median(lat[EAGER])
    eager_thr = args.batch / statistics.median(thr[EAGER])
    for name in runners:
        latency = statistics.median(lat[name])
        throughput = args.batch / statistics.median(thr[name])
        results["configs"][name] = {
            "latency_ms": 1e3 * latency,
            "latency_p90_ms": 1e3 * float(np.percentile(lat[name], 90)),
            "speedup_latency": eager_lat / latency,
            "images_per_s": throughput,
            "speedup_throughput": throughput / eager_thr,
            "all_latency_ms": [1e3 * t for t in lat[name]],
            "all_batch_ms": [1e3 * t for t in thr[name]],
        }
    return results


def table(results: dict) -> str:
    size = "×".join(str(v) for v in results["input_size"][1:])
    lines = [
        f"Machine: {results['machine']}; {results['model']} at {size} px, encoder + head; batch 1: median of "
        f"{results['repeats']} calls, batch {results['batch']}: median of {results['repeats_batch']}; "
        f"{results['pause_ms']:g} ms pause before each call, configurations interleaved.",
        "",
        f"| runtime | batch 1 latency (ms) | p90 (ms) | × eager | batch {results['batch']} (img/s) | × eager |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["configs"].items():
        lines.append(
            f"| {name} | {r['latency_ms']:.2f} | {r['latency_p90_ms']:.2f} | {r['speedup_latency']:.2f} | "
            f"{r['images_per_s']:.1f} | {r['speedup_throughput']:.2f} |"
        )
    configs = results["configs"]
    if INT8 in configs:
        fp32, frozen, int8 = configs[TUNED], configs[FROZEN], configs[INT8]
        check = results["quantization"]["validation"]
        accuracy = (
            f"top-1 on {check['images']} {check['split']} images {check['int8_top1']:.2f}% vs fp32 "
            f"{check['fp32_top1']:.2f}% (drop {check['drop']:.2f} points)"
            if check["images"]
            else "accuracy not checked (no labelled data without --checkpoint)"
        )
        lines += [
            "",
            f"int8 vs fp32 (both tuned): batch 1 latency {fp32['latency_ms'] / int8['latency_ms']:.2f}× "
            f"lower, batch {results['batch']} throughput {int8['images_per_s'] / fp32['images_per_s']:.2f}× "
            f"(vs fp32 with frozen pads: {int8['images_per_s'] / frozen['images_per_s']:.2f}×); {accuracy}.",
        ]
    if results.get("load_average"):
        lines.append(
            f"Load average at the end (1, 5, 15 min): {', '.join(f'{v:.2f}' for v in results['load_average'])}."
        )
    return "\n".join(lines)


def model_parser(doc: str) -> argparse.ArgumentParser:
    """A parser with the options :func:`load_model` reads (and ``--threads``), for this and ``int8_variants``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tf_efficientnet_lite0", help="timm model name")
    parser.add_argument("--pretrained", default="packaged", help="packaged, hub, none or a weights file")
    parser.add_argument("--img-size", type=int, default=None, help="input size (default: the model's)")
    parser.add_argument("--checkpoint", help="benchmark a training checkpoint instead of --model")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=50, help="timed batch-1 calls per configuration")
    parser.add_argument("--repeats-32", type=int, default=10, help="timed batch calls per configuration")
    parser.add_argument("--batch", type=int, default=32, help="throughput batch size")
    parser.add_argument("--warmup", type=int, default=10, help="untimed batch-1 calls per configuration")
    parser.add_argument("--fp16", action="store_true", help="also time the float16 export")
    parser.add_argument(
        "--int8", action="store_true", help="also time the int8 export (and fp32, pads frozen)"
    )
    parser.add_argument(
        "--calibration-images", type=int, default=300, help="--int8 with --checkpoint: calibration images"
    )
    parser.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=1.0,
        help="--int8 with --checkpoint: refusal limit (points)",
    )
    parser.add_argument(
        "--pause-ms", type=float, default=50, help="sleep before each timed call (spinning threads settle)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "inference_speed.json")
    args = parser.parse_args(argv)
    results = run(args)
    publish(results, args.output, table(results))


if __name__ == "__main__":
    main()
