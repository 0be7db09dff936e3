"""int8 schemes side by side: the kernels ONNX Runtime runs, their speed, and what they do to the model.

    python -m benchmarks.int8_variants --checkpoint runs/quickstart/best.pt
    python -m benchmarks.int8_variants --model tf_efficientnet_lite0 --img-size 224   # kernels and speed only

The float32 export (``training.exporter.export_model``) is quantised by ``training.quantize.quantize_encoder``
once per variant: the product's scheme (``Scheme()``, what ``--int8`` writes) and one change at a
time: int8 activations (the quantisation tool's default), one weight scale per tensor, the computed
"same" pads left in, no float32 convolutions, entropy and percentile calibration. With
``--checkpoint`` the calibration images are ``--int8``'s (class-balanced, the run's training split);
without, the 7 check images.

For every variant: the convolutions the CPU provider runs as ``QLinearConv`` and as float32 after
its graph optimisations; batch ``--batch`` images/s, interleaved round-robin with the float32
export (median of ``--repeats`` calls, ``--pause-ms`` sleep before each); and with ``--checkpoint``,
on the run's validation split, the embedding cosine with the float32 encoder (median and 5th
percentile), top-1 and the predictions that differ from float32's. Prints a Markdown table;
writes JSON.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.harness import RESULTS, load_average, publish
from benchmarks.inference_speed import (
    int8_calibration,
    load_model,
    machine,
    measure,
    model_parser,
    ort_runner,
)
from training.quantize import Scheme

FP32, FROZEN = "fp32 export (as shipped)", "fp32, pads frozen"
VARIANTS: dict[str, tuple[Scheme, str]] = {
    "int8: the product's scheme": (Scheme(), "minmax"),
    "int8 activations (tool default)": (Scheme(activations="int8"), "minmax"),
    "per-tensor weights": (Scheme(per_channel=False), "minmax"),
    "pads not frozen": (Scheme(freeze_pads=False), "minmax"),
    "no float32 convolutions": (Scheme(float_convs=0), "minmax"),
    "entropy calibration": (Scheme(), "entropy"),
    "percentile calibration": (Scheme(), "percentile"),
}


def kernels(path: Path) -> dict[str, int]:
    """Convolutions in the graph the CPU provider runs: ``qlinear`` (int8) and ``float`` ones."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(path.with_suffix(".optimised.onnx"))
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)
    return {"qlinear": ops["QLinearConv"], "float": ops["Conv"] + ops["FusedConv"]}


def validation_arrays(loader: object, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``limit`` validation images ``(N, 3, H, W)`` and labels ``(N,)`` from labelled batches."""
    xs, ys = [], []
    for images, labels in loader:  # type: ignore[attr-defined]
        xs.append(images.float().numpy())
        ys.append(labels.numpy())
        if sum(len(y) for y in ys) >= limit:
            break
    return np.concatenate(xs)[:limit], np.concatenate(ys)[:limit]


def embed(encoder: object, x: np.ndarray) -> np.ndarray:
    """``(N, D)`` embeddings of ``x`` ``(N, 3, H, W)``, 64 images per call."""
    return np.concatenate(
        [encoder.run(None, {"pixel_values": x[i : i + 64]})[0] for i in range(0, len(x), 64)]
    )  # type: ignore[attr-defined]


def fidelity(
    folder: Path, reference: np.ndarray, x: np.ndarray, y: np.ndarray, fp32_pred: np.ndarray
) -> dict:
    """Embedding cosine with float32's (median, 5th percentile), top-1 and disagreements on ``x``.

    Args:
        folder: the variant's export folder.
        reference: the float32 embeddings ``(N, D)`` of ``x`` ``(N, 3, H, W)``; ``y`` ``(N,)`` labels;
            ``fp32_pred`` ``(N,)`` the float32 export's predictions.
    """
    from training.onnx_export import ort_session

    embedding = embed(ort_session(folder / "encoder.onnx"), x)  # (N, D)
    head = ort_session(folder / "head.onnx")
    norms = np.linalg.norm(embedding, axis=1) * np.linalg.norm(reference, axis=1)  # (N,)
    cos = (embedding * reference).sum(1) / np.maximum(norms, 1e-12)  # a zero embedding: cosine 0
    pred = head.run(None, {"embedding": embedding})[0].argmax(1)
    return {
        "cos_median": float(np.median(cos)),
        "cos_p5": float(np.percentile(cos, 5)),
        "top1": float(100 * (pred == y).mean()),
        "disagreements": int((pred != fp32_pred).sum()),
    }


def run(args: argparse.Namespace) -> dict:
    from training.exporter import export_model
    from training.onnx_export import ort_session
    from training.quantize import prepare_float, quantize_encoder

    with tempfile.TemporaryDirectory(prefix="clce-int8-variants-") as tmp:
        work = Path(tmp)
        model, info, state = load_model(args)
        card = export_model(model, info, work / "fp32").card
        plan = int8_calibration(state, card, args.calibration_images)
        folders = {FP32: work / "fp32", FROZEN: work / "frozen"}
        (work / "frozen").mkdir()
        prepare_float(work / "fp32" / "encoder.onnx", work / "frozen" / "encoder.onnx")
        for i, (name, (scheme, method)) in enumerate(VARIANTS.items()):
            folders[name] = work / f"v{i}"
            folders[name].mkdir()
            quantize_encoder(
                work / "fp32" / "encoder.onnx", folders[name] / "encoder.onnx", plan.images, method, scheme
            )
            print(f"quantised: {name}", file=sys.stderr)
        for folder in folders.values():
            if folder != work / "fp32":
                shutil.copy(work / "fp32" / "head.onnx", folder / "head.onnx")
        runners = {
            name: ort_runner(folder, "CPUExecutionProvider", args.threads) for name, folder in folders.items()
        }
        c, h, w = card["input_size"]
        batch = np.random.default_rng(0).standard_normal((args.batch, c, h, w), dtype=np.float32)
        times = measure(runners, batch, args.repeats, 2, args.pause_ms / 1e3)
        rows = {}
        base = args.batch / statistics.median(times[FP32])
        x = y = None
        if args.checkpoint:
            x, y = validation_arrays(plan.validation, args.val_images)
            reference = embed(ort_session(folders[FP32] / "encoder.onnx"), x)
            fp32_pred = (
                ort_session(folders[FP32] / "head.onnx").run(None, {"embedding": reference})[0].argmax(1)
            )
        for name, folder in folders.items():
            speed = args.batch / statistics.median(times[name])
            rows[name] = {**kernels(folder / "encoder.onnx"), "images_per_s": speed, "speedup": speed / base}
            if x is not None:
                rows[name].update(fidelity(folder, reference, x, y, fp32_pred))
    return {
        "machine": machine(args.threads),
        "model": card["model_name"],
        "input_size": card["input_size"],
        "batch": args.batch,
        "repeats": args.repeats,
        "calibration": {"images": len(plan.images), "source": plan.source},
        "validation_images": 0 if x is None else len(x),
        "load_average": load_average(),
        "variants": rows,
    }


def table(results: dict) -> str:
    size = "×".join(str(v) for v in results["input_size"][1:])
    checked = results["validation_images"]
    lines = [
        f"Machine: {results['machine']}; {results['model']} at {size} px; batch {results['batch']}: median of "
        f"{results['repeats']} interleaved calls; calibration: {results['calibration']['images']} images "
        f"({results['calibration']['source']}); fidelity on {checked} validation images; load average "
        f"{', '.join(f'{v:.2f}' for v in results['load_average'])}.",
        "",
        "| variant | QLinearConv | float Conv | img/s | × fp32 | cosine median | cosine p5 | top-1 | differ |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["variants"].items():
        cells = [name, r["qlinear"], r["float"], f"{r['images_per_s']:.1f}", f"{r['speedup']:.2f}"]
        if "top1" in r:
            cells += [f"{r['cos_median']:.4f}", f"{r['cos_p5']:.4f}", f"{r['top1']:.1f}", r["disagreements"]]
        else:
            cells += [""] * 4
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--batch", type=int, default=32, help="throughput batch size")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per variant")
    parser.add_argument("--pause-ms", type=float, default=50, help="sleep before each timed call")
    parser.add_argument("--calibration-images", type=int, default=300, help="with --checkpoint")
    parser.add_argument(
        "--val-images", type=int, default=1000, help="validation images for the fidelity columns"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "int8_variants.json")
    args = parser.parse_args(argv)
    results = run(args)
    publish(results, args.output, table(results))


if __name__ == "__main__":
    main()
