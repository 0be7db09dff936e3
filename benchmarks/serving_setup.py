"""What benchmarks/serving_load.py serves and sends: an export folder and real photographs of several sizes.

Without ``--model-dir``: if torch, timm and the packaged EfficientNet-Lite0 weights are importable,
``tf_efficientnet_lite0`` (ImageNet head, 224 px) is exported to a temporary folder (or
``--export-to DIR``, to keep it) with the project's exporter ``training.exporter.export_model``, or,
where that is not importable, a minimal stand-in in the same folder format (legacy ONNX exporter,
opset 17). Photographs: ``skimage.data``'s, at their native sizes and upscaled to 3000 px on the
longer side, as JPEG (quality 90), or the ``.jpg`` files of a folder.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

PHOTOS = ("coffee", "chelsea", "astronaut", "rocket", "hubble_deep_field")
UPSCALED = ("coffee", "astronaut")  # also sent at 3000 px on the longer side
UPSCALE_TO = 3000


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

    Uses the project's exporter (``training.exporter.export_model``, with its parity check) when it is
    importable, else a minimal stand-in written here in the same folder format.
    """
    from clce_core.models import create_model

    model = create_model("tf_efficientnet_lite0", num_classes=1000, pretrained="packaged").eval()
    labels = imagenet_labels()
    try:
        from training.card_info import CardInfo
        from training.exporter import export_model
    except ImportError as e:
        print(f"training.exporter not importable ({e}); using the stand-in exporter", flush=True)
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
    """Real photographs as JPEG bytes: ``folder``'s ``*.jpg``, else skimage's, native and upscaled."""
    if folder:
        paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[:limit]
        if not paths:
            sys.exit(f"error: no .jpg files in {folder}")
        return [(p.name, p.read_bytes()) for p in paths]
    from PIL import Image

    try:
        import skimage.data as data

        arrays = {n: getattr(data, n)() for n in PHOTOS}
    except Exception:  # no scikit-image: photo-like noise of similar sizes
        rng = np.random.default_rng(0)
        arrays = {f"synthetic{i}": rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for i in range(4)}
    images = {}
    for name, arr in arrays.items():
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        images[name] = Image.fromarray(arr[..., :3])
    for name in UPSCALED:
        if name in images:
            w, h = images[name].size
            scale = UPSCALE_TO / max(w, h)
            big = images[name].resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC)
            images[f"{name}_{UPSCALE_TO}"] = big
    out = []
    for name, image in images.items():
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        out.append((f"{name}.jpg", buf.getvalue()))
    return out
