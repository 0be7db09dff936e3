"""Peer for benchmarks/serving_load.py: LitServe (PyPI ``litserve``) with its dynamic batching.

    python -m benchmarks.peers.litserve_server --model-dir models/NAME --port 8002 [--max-batch 32 --max-wait-ms 5]

LitServe's API server parses the multipart form and hands it to a worker process, which decodes
each request (``decode_request``: the one loading rule and timm's eval transform,
``clce_core.preprocessing``, normalised in numpy), batches up to ``--max-batch`` requests that
arrive within ``--max-wait-ms`` (``max_batch_size`` / ``batch_timeout``) and runs ``encoder.onnx`` and
``head.onnx`` as exported, with the CLCE server's ONNX Runtime session options. Answers
``POST /classify`` (``images``) with the CLCE server's response shape, top-1 class only.
"""

import argparse
from pathlib import Path

import litserve as ls
import numpy as np
import onnxruntime as ort
from fastapi import Request

from benchmarks.peers.plain_server import session_options
from clce_core.export_folder import read_card
from clce_core.metrics import softmax
from clce_core.preprocessing import load_image


class ClassifyAPI(ls.LitAPI):
    """One image per request in, ``{"model", "results": [{"filename", "top_k": [top-1]}]}`` out."""

    def __init__(self, model_dir: Path, intra_op_threads: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.model_dir, self.intra_op_threads = model_dir, intra_op_threads

    def setup(self, device: str) -> None:
        self.card = read_card(self.model_dir)
        options = session_options(self.intra_op_threads)
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(self.card.encoder_path), options, providers=providers)
        self.head = ort.InferenceSession(str(self.card.head_path), options, providers=providers)

    def decode_request(self, request: Request) -> tuple[str, np.ndarray]:
        # annotated Request (no postponed annotations in this file): LitServe then hands over the
        # parsed multipart form; "images" is its first file
        upload = request["images"]  # type: ignore[index]
        return upload.filename, self.card.preprocess(load_image(upload.file.read()))  # (3, H, W)

    def batch(self, inputs: list[tuple[str, np.ndarray]]) -> tuple[list[str], np.ndarray]:
        return [name for name, _ in inputs], np.stack([x for _, x in inputs])  # (B, 3, H, W)

    def predict(self, batch: tuple[list[str], np.ndarray]) -> list[tuple[str, int, float]]:
        names, x = batch
        embedding = self.encoder.run(["embedding"], {"pixel_values": x})[0]  # (B, D)
        probs = softmax(self.head.run(["logits"], {"embedding": embedding})[0])  # (B, C)
        best = probs.argmax(axis=1)
        return [(n, int(c), float(p[c])) for n, c, p in zip(names, best, probs, strict=True)]

    def unbatch(self, output: list[tuple[str, int, float]]) -> list[tuple[str, int, float]]:
        return output

    def encode_response(self, output: tuple[str, int, float]) -> dict:
        name, c, p = output
        return {
            "model": self.card.sha256,
            "results": [{"filename": name, "top_k": [{"label": self.card.labels[c], "probability": p}]}],
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--intra-op-threads", type=int, default=0)
    args = p.parse_args()
    api = ClassifyAPI(
        args.model_dir,
        args.intra_op_threads,
        max_batch_size=args.max_batch,
        batch_timeout=args.max_wait_ms / 1000.0,
        api_path="/classify",
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=120)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
