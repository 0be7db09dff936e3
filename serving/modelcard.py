"""The export folder (CONTRACTS "Export folder"): read ``model.json`` and verify the ONNX files.

``models/NAME/`` holds ``encoder.onnx`` (``pixel_values`` (N, 3, H, W) -> ``embedding`` (N, D),
un-normalised), ``head.onnx`` (``embedding`` (N, D) -> ``logits`` (N, C)) and ``model.json``. The
sha256 of ``encoder.onnx`` is the model's identity: support sets are tied to it. Both files'
sha256 must equal the ones the card records, or the server refuses to start.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clce_core.preprocessing import EvalTransform as PreprocessConfig

ENCODER_FILE = "encoder.onnx"
HEAD_FILE = "head.onnx"
CARD_FILE = "model.json"
SCHEMA_VERSION = 1
REQUIRED_KEYS = ("schema_version", "labels", "embedding_dim", "input_size", "mean", "std", "files")


class ModelLoadError(RuntimeError):
    """The export folder is missing, incomplete, inconsistent or altered; ``str(e)`` says what to do."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelCard:
    """A verified export folder.

    Attributes:
        model_dir: The folder.
        sha256: sha256 of ``encoder.onnx``: the model's identity.
        head_sha256: sha256 of ``head.onnx``.
        labels: Class names in logit order, as strings.
        embedding_dim: D.
        preprocess: The eval transform (input size, interpolation, crop, mean/std).
        raw: ``model.json`` as read.
    """

    model_dir: Path
    sha256: str
    head_sha256: str
    labels: list[str]
    embedding_dim: int
    preprocess: PreprocessConfig
    raw: dict[str, Any]

    @property
    def encoder_path(self) -> Path:
        return self.model_dir / ENCODER_FILE

    @property
    def head_path(self) -> Path:
        return self.model_dir / HEAD_FILE

    @property
    def model_name(self) -> str:
        return str(self.raw.get("model_name", "unknown"))


def load_model_card(model_dir: str | Path) -> ModelCard:
    """Read ``model.json`` and check it and the ONNX files against each other.

    Raises:
        ModelLoadError: missing folder or file, unreadable or incomplete card, unknown schema version,
            a file whose sha256 differs from the card's, or an unsupported preprocessing setting.
    """
    folder = Path(model_dir).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(
            f"model folder {str(folder)!r} does not exist; export a model with `python -m training.export` "
            "and pass its folder (--model-dir or CLCE_MODEL_DIR)"
        )
    missing = [name for name in (ENCODER_FILE, HEAD_FILE, CARD_FILE) if not (folder / name).is_file()]
    if missing:
        raise ModelLoadError(
            f"model folder {str(folder)!r} lacks {', '.join(missing)}; an export folder holds "
            f"{ENCODER_FILE}, {HEAD_FILE} and {CARD_FILE}"
        )
    try:
        raw = json.loads((folder / CARD_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{folder / CARD_FILE} is not readable JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{folder / CARD_FILE} must hold a JSON object, got {type(raw).__name__}")
    absent = [key for key in REQUIRED_KEYS if key not in raw]
    if absent:
        raise ModelLoadError(f"{folder / CARD_FILE} lacks {', '.join(absent)}; re-export the model")
    if raw["schema_version"] != SCHEMA_VERSION:
        raise ModelLoadError(
            f"{folder / CARD_FILE} has schema_version {raw['schema_version']!r}; this server reads "
            f"version {SCHEMA_VERSION}"
        )

    files = raw["files"] if isinstance(raw["files"], dict) else {}
    actual: dict[str, str] = {}
    for name in (ENCODER_FILE, HEAD_FILE):
        expected = files.get(name)
        if not isinstance(expected, str):
            raise ModelLoadError(
                f"{folder / CARD_FILE} has no sha256 for {name} under 'files'; re-export the model"
            )
        actual[name] = sha256_file(folder / name)
        if actual[name] != expected.lower():
            raise ModelLoadError(
                f"{folder / name} has sha256 {actual[name]} but {CARD_FILE} records {expected}: the file was "
                "changed or comes from another export. Refusing to start; re-export the model or restore "
                "the matching files"
            )

    labels = raw["labels"]
    if not isinstance(labels, list) or not labels:
        raise ModelLoadError(f"{folder / CARD_FILE}: 'labels' must be a non-empty list of class names")
    labels = [str(v) for v in labels]
    if len(set(labels)) != len(labels):
        raise ModelLoadError(f"{folder / CARD_FILE}: 'labels' has duplicate class names")
    try:
        embedding_dim = int(raw["embedding_dim"])
        preprocess = PreprocessConfig.from_card(raw)
    except (TypeError, ValueError, KeyError) as e:
        raise ModelLoadError(f"{folder / CARD_FILE}: {e}") from None
    if embedding_dim < 1:
        raise ModelLoadError(f"{folder / CARD_FILE}: embedding_dim must be positive, got {embedding_dim}")
    return ModelCard(
        model_dir=folder,
        sha256=actual[ENCODER_FILE],
        head_sha256=actual[HEAD_FILE],
        labels=labels,
        embedding_dim=embedding_dim,
        preprocess=preprocess,
        raw=raw,
    )
