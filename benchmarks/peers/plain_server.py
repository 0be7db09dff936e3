"""Peer for benchmarks/serving_load.py: the FastAPI + onnxruntime server a user would write by hand.

    python -m benchmarks.peers.plain_server --model-dir models/NAME --port 8001

No batching: a plain ``def`` endpoint, so FastAPI runs each request in its thread pool, where the
upload is decoded (the one loading rule and timm's eval transform, ``clce_core.preprocessing``),
normalised in numpy and run through ``encoder.onnx`` and ``head.onnx`` as exported (float32 input).
Same export, same answers (``/classify?top_k=k``, ``images`` repeated) and the same ONNX Runtime
session options as the CLCE server, so the comparison is about the serving path alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, File, UploadFile

from clce_core.export_folder import read_card
from clce_core.metrics import softmax
from clce_core.preprocessing import load_image


def session_options(intra_op_threads: int = 0) -> ort.SessionOptions:
    """The CLCE server's session options (serving.sessions): full optimisation, no spinning threads."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads > 0:
        options.intra_op_num_threads = intra_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def create_app(model_dir: Path, intra_op_threads: int = 0) -> FastAPI:
    card = read_card(model_dir)
    transform = card.preprocess
    options = session_options(intra_op_threads)
    encoder = ort.InferenceSession(str(card.encoder_path), options, providers=["CPUExecutionProvider"])
    head = ort.InferenceSession(str(card.head_path), options, providers=["CPUExecutionProvider"])
    app = FastAPI(title="plain FastAPI + onnxruntime")

    @app.get("/health")
    def health() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/classify")
    def classify(images: list[UploadFile] = File(...), top_k: int = 5) -> dict:  # noqa: B008
        x = np.stack([transform(load_image(f.file.read())) for f in images])  # (N, 3, H, W)
        embedding = encoder.run(["embedding"], {"pixel_values": x})[0]  # (N, D)
        probs = softmax(head.run(["logits"], {"embedding": embedding})[0])  # (N, C)
        results = []
        for f, p in zip(images, probs, strict=True):
            order = np.argsort(-p)[:top_k]
            results.append(
                {
                    "filename": f.filename,
                    "top_k": [{"label": card.labels[i], "probability": float(p[i])} for i in order],
                }
            )
        return {"model": card.sha256, "results": results}

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--intra-op-threads", type=int, default=0)
    args = p.parse_args()
    uvicorn.run(
        create_app(args.model_dir, args.intra_op_threads),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
