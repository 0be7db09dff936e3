"""What JPEG ``draft`` decoding changes: model input and embedding, against the full decode, on real photos.

    python -m benchmarks.draft_effect --model-dir models/NAME     # default: build tf_efficientnet_lite0

The server decodes a JPEG at the smallest DCT scale (1/2, 1/4, 1/8) that still covers the model's
resize target (``EvalTransform.draft``); the full decode followed by the same resize is what timm's
eval transform computes. For each photograph (benchmarks/serving_setup.py: skimage's at native size
and upscaled to 3000 px, JPEG quality 90) this prints the draft scale, the max and mean absolute
difference of the normalised model input (``(x / 255 - mean) / std``, float32) and the cosine
similarity of the two embeddings, and the decode + resize time of both (median of 5, one thread).
Writes ``benchmarks/results/draft_effect.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.harness import RESULTS
from benchmarks.serving_setup import load_jpegs, model_folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", help="export folder; default: build tf_efficientnet_lite0 (needs torch)")
    p.add_argument("--output", type=Path, default=RESULTS / "draft_effect.json")
    args = p.parse_args(argv)

    from clce_core.export_folder import read_card
    from clce_core.fewshot import l2_normalize
    from serving.preprocessing import preprocess
    from serving.sessions import ModelRuntime

    rows = []
    with model_folder(args.model_dir, None) as model_dir:
        card = read_card(model_dir)
        runtime, transform = ModelRuntime(card), card.preprocess
        for name, data in load_jpegs(None):
            pixels, seconds = {}, {}
            for draft in (False, True):
                runs = []
                for _ in range(5):
                    start = time.perf_counter()
                    pixels[draft] = preprocess(data, name, transform, draft=draft)  # (H, W, 3) uint8
                    runs.append(time.perf_counter() - start)
                seconds[draft] = statistics.median(runs)
            with Image.open(io.BytesIO(data)) as image:
                size = image.size
                scale = size[0] / transform.draft(image)[0]
            diff = np.abs(transform.normalize(pixels[True]) - transform.normalize(pixels[False]))
            embedding, _ = runtime.run(np.stack([pixels[False], pixels[True]]))
            unit = l2_normalize(embedding)  # (2, D)
            rows.append(
                {
                    "photo": name,
                    "size": list(size),
                    "bytes": len(data),
                    "draft_scale": f"1/{round(scale)}",
                    "max_abs_diff": round(float(diff.max()), 4),
                    "mean_abs_diff": round(float(diff.mean()), 4),
                    "embedding_cosine": round(float(unit[0] @ unit[1]), 5),
                    "full_decode_ms": round(1000 * seconds[False], 2),
                    "draft_decode_ms": round(1000 * seconds[True], 2),
                }
            )
        model = {"name": card.model_name, "input_size": list(transform.input_size)}
    print(f"Model {model['name']} {model['input_size']}\n")
    print("| photo | size | draft | max abs diff | mean abs diff | embedding cosine | full ms | draft ms |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['photo']} | {r['size'][0]}x{r['size'][1]} | {r['draft_scale']} | {r['max_abs_diff']} | "
            f"{r['mean_abs_diff']} | {r['embedding_cosine']} | {r['full_decode_ms']} | {r['draft_decode_ms']} |"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"model": model, "photos": rows}, indent=2))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
