"""The export folder (CONTRACTS "Export folder"): the one contract between training and serving.

``models/NAME/`` holds ``encoder.onnx`` (``pixel_values`` (N, 3, H, W) -> ``embedding`` (N, D),
un-normalised), ``head.onnx`` (``embedding`` (N, D) -> ``logits`` (N, C)) and ``model.json``, the
model card. The sha256 of ``encoder.onnx`` is the model's identity: support sets are tied to it.

The only place that names the files, the graph inputs and outputs and the schema version, and the
only reader and writer of the card (numpy and Pillow only: no torch, no onnxruntime).
:func:`write_card` records the sha256 of every file it is given; :func:`read_card` checks the card
(schema version, required keys, values) and every file it lists against its sha256. docs/export.md
describes the folder for users.

Extending the contract without a new schema version:

* an **optional card field**: one :class:`ModelCard` attribute with a default (plus its check in
  ``__post_init__``); it is read, written and defaulted for older cards with no other change. Keys
  this version does not model are kept in :attr:`ModelCard.extras` and written back unchanged.
* an **optional file**: put it in the folder and pass its name to :func:`write_card`
  (``extra_files``); it is listed under ``files`` with its sha256, and :func:`read_card` verifies it
  like the ONNX files. :meth:`ModelCard.path` finds it.

The one optional file this version models: ``prototypes.npy`` (:data:`PROTOTYPES_FILE`), the
training-class prototypes for open-set ``/classify``: ``(C, D)`` float32, row ``c`` the unit-length
mean L2-normalised embedding of class ``labels[c]``, written by :func:`write_prototypes`, loaded and
checked by :func:`read_card` into :attr:`ModelCard.prototypes`. The card's ``open_set`` key says how
they were made and holds the calibrated rejection ``threshold`` (:attr:`ModelCard.calibrated_threshold`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from clce_core.preprocessing import DEFAULT_CROP_PCT, EvalTransform

ENCODER_FILE = "encoder.onnx"
HEAD_FILE = "head.onnx"
CARD_FILE = "model.json"
#: Optional: training-class prototypes ``(C, D)`` float32 for open-set classification.
PROTOTYPES_FILE = "prototypes.npy"
#: The files every export holds besides the card; optional files are listed in the card's ``files``.
MODEL_FILES = (ENCODER_FILE, HEAD_FILE)
#: Graph input / output names: encoder ``pixel_values`` -> ``embedding``, head ``embedding`` -> ``logits``.
ENCODER_INPUT, EMBEDDING, LOGITS = "pixel_values", "embedding", "logits"
SCHEMA_VERSION = 1
#: What a card must hold to be used; every other key has a default.
REQUIRED_KEYS = ("schema_version", "labels", "embedding_dim", "input_size", "mean", "std", "files")

#: The card keys of the eval transform (a timm data config has the same names).
PREPROCESS_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")
_HOW_TO_EXPORT = "create one with `python -m training.export --checkpoint RUN/best.pt --output models/NAME`"


class ExportFolderError(ValueError):
    """The export folder or its card is missing, incomplete, inconsistent or altered.

    ``str(e)`` is one line naming the file and what to do (re-export, restore the files, ...).
    """


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (of ``encoder.onnx``: the model's identity)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _json_safe(value: Any) -> Any:
    """JSON-safe copy: tuples to lists, numpy scalars to Python numbers, NaN and inf to None."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _integer(value: Any, name: str) -> int:
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ExportFolderError(f"'{name}' must be an integer, got {value!r}")


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ExportFolderError(f"'{name}' must be a JSON object, got {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


def _plain_name(name: str) -> str:
    """``name`` if it is a file name inside the folder (no folder part, not hidden)."""
    if not name or Path(name).name != name or name.startswith("."):
        raise ExportFolderError(f"{name!r} under 'files' is not a plain file name inside the export folder")
    return name


def _no_loss() -> dict[str, Any]:
    return {"name": None, "lam": None, "tau": None}


@dataclass(frozen=True, kw_only=True)
class ModelCard:
    """``model.json``: one attribute per key, in the order they are written (CONTRACTS order).

    Values are checked and normalised on construction (lists of numbers become tuples, ``crop_pct``
    0 or missing becomes 0.875, ...); a value that cannot be used raises :class:`ExportFolderError`.

    Attributes:
        schema_version: :data:`SCHEMA_VERSION`.
        model_name: The timm model name of the encoder.
        labels: Class names in logit order (C of them, distinct).
        embedding_dim: D.
        input_size, interpolation, crop_pct, crop_mode, mean, std: The eval transform
            (see :class:`~clce_core.preprocessing.EvalTransform`, also as :attr:`preprocess`).
        loss: ``{"name", "lam", "tau"}`` of the training run (nulls for a head never trained).
        metrics: Training metrics in percent (``val_top1``, ``test_top1``, ...).
        opset: ONNX opset of the files.
        precision: Compute precision inside the graphs (``"fp32"``, ``"fp16"``, ``"int8"``); I/O is float32.
        quantization: int8 only (None otherwise): the scheme (``format``, ``weights``,
            ``activations``, ...), the ``calibration`` (``images``, ``method``, ``seed``, ``source``)
            and the top-1 against the float32 encoder (``validation``: ``fp32_top1``, ``int8_top1``,
            ``drop``, ``max_drop``, ...).
        open_set: How ``prototypes.npy`` was made and the calibrated rejection ``threshold`` (a cosine
            in [-1, 1] or null), e.g. ``{"threshold", "keep", "calibration_images", ...}``; None when
            the export has no prototypes (docs/export.md, "Open-set prototypes").
        versions: Library versions that wrote the files (``torch``, ``timm``, ``onnx``).
        files: ``{file name: sha256 hex}``: the ONNX files and any optional file.
        created: Export time, ISO 8601 UTC (stamped by :func:`write_card` when empty).
        extras: Keys this version does not model (``parity``, ``accuracy``, notes, newer fields),
            written after the others.
        model_dir: The folder the card was read from or written to (not a key).
        prototypes: ``(C, D)`` float32 contents of ``prototypes.npy``, loaded and checked by
            :func:`read_card` / :func:`write_card`; None when the folder has none (not a key).
    """

    schema_version: int = SCHEMA_VERSION
    model_name: str = "unknown"
    labels: list[str]
    embedding_dim: int
    input_size: tuple[int, int, int]
    interpolation: str = "bilinear"
    crop_pct: float = DEFAULT_CROP_PCT
    crop_mode: str = "center"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    loss: dict[str, Any] = field(default_factory=_no_loss)
    metrics: dict[str, Any] = field(default_factory=dict)
    opset: int | None = None
    precision: str = "fp32"
    quantization: dict[str, Any] | None = None
    open_set: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    created: str = ""
    extras: dict[str, Any] = field(default_factory=dict)
    model_dir: Path | None = None
    preprocess: EvalTransform = field(init=False, repr=False, compare=False)
    prototypes: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        labels = self.labels
        if not isinstance(labels, list | tuple) or not labels:
            raise ExportFolderError("'labels' must be a non-empty list of class names")
        put("labels", [str(v) for v in labels])
        if len(set(self.labels)) != len(self.labels):
            raise ExportFolderError("'labels' has duplicate class names")
        put("schema_version", _integer(self.schema_version, "schema_version"))
        put("embedding_dim", _integer(self.embedding_dim, "embedding_dim"))
        if self.embedding_dim < 1:
            raise ExportFolderError(f"embedding_dim must be positive, got {self.embedding_dim}")
        put("opset", None if self.opset is None else _integer(self.opset, "opset"))
        try:
            pre = EvalTransform.from_card({k: getattr(self, k) for k in PREPROCESS_KEYS})
        except (TypeError, ValueError) as e:
            raise ExportFolderError(str(e)) from None
        for key in PREPROCESS_KEYS:
            put(key, getattr(pre, key))
        put("preprocess", pre)
        for key in ("model_name", "precision", "created"):
            put(key, str(getattr(self, key)))
        put("loss", _mapping(self.loss, "loss"))
        if self.quantization is not None:
            put("quantization", _mapping(self.quantization, "quantization"))
        put("metrics", _mapping(self.metrics, "metrics"))
        put("versions", {k: str(v) for k, v in _mapping(self.versions, "versions").items()})
        put("files", _mapping(self.files, "files"))
        put("extras", _mapping(self.extras, "extras"))
        if self.open_set is not None:
            put("open_set", _mapping(self.open_set, "open_set"))
            threshold = self.open_set.get("threshold")
            if threshold is not None and not (
                isinstance(threshold, int | float)
                and not isinstance(threshold, bool)
                and -1 <= threshold <= 1
            ):
                raise ExportFolderError(
                    f"open_set.threshold must be a cosine in [-1, 1] or null, got {threshold!r}"
                )
        if self.model_dir is not None:
            put("model_dir", Path(self.model_dir))

    # ------------------------------------------------------------------------------- identity, paths

    @property
    def sha256(self) -> str:
        """sha256 of ``encoder.onnx``: the model's identity."""
        return self.files[ENCODER_FILE]

    def path(self, name: str) -> Path:
        """The path of a file the card lists under ``files`` (ONNX or optional).

        Raises:
            ExportFolderError: the card lists no such file, or belongs to no folder.
        """
        if name not in self.files:
            raise ExportFolderError(f"the model card lists no {name!r} under 'files'; re-export with it")
        if self.model_dir is None:
            raise ExportFolderError("this model card was neither read from nor written to a folder")
        return self.model_dir / name

    @property
    def calibrated_threshold(self) -> float | None:
        """The rejection threshold calibrated at export (``open_set.threshold``), or None."""
        threshold = (self.open_set or {}).get("threshold")
        return None if threshold is None else float(threshold)

    @property
    def encoder_path(self) -> Path:
        return self.path(ENCODER_FILE)

    @property
    def head_path(self) -> Path:
        return self.path(HEAD_FILE)

    # ------------------------------------------------------------------------------- JSON form

    @classmethod
    def _keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("extras", "model_dir")]

    def to_dict(self) -> dict[str, Any]:
        """``model.json`` as a JSON-safe dict: the attributes in order, then :attr:`extras`."""
        card = {key: getattr(self, key) for key in self._keys()}
        return _json_safe({**card, **{k: v for k, v in self.extras.items() if k not in card}})

    @property
    def raw(self) -> dict[str, Any]:
        """The card as a dict, optional extras included (what ``model.json`` holds)."""
        return self.to_dict()

    @classmethod
    def from_data_config(cls, data_config: Mapping[str, Any], **fields: Any) -> ModelCard:
        """A card whose preprocessing comes from a timm data config (a key absent or None: the default).

        Args:
            data_config: ``input_size``, ``mean``, ``std`` and optionally ``interpolation``,
                ``crop_pct``, ``crop_mode`` (e.g. ``ClassifierModel.data_config``).
            fields: The other attributes (``labels``, ``embedding_dim``, ...).
        """
        preprocess = {k: data_config[k] for k in PREPROCESS_KEYS if data_config.get(k) is not None}
        return cls(**preprocess, **fields)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], model_dir: str | os.PathLike[str] | None = None) -> ModelCard:
        """A card from ``model.json``'s object (holding :data:`REQUIRED_KEYS`); unknown keys go to :attr:`extras`.

        Raises:
            ExportFolderError: a value is unusable.
        """
        keys = set(cls._keys())
        known = {k: v for k, v in raw.items() if k in keys}
        extras = {str(k): v for k, v in raw.items() if k not in keys}
        return cls(**known, extras=extras, model_dir=model_dir)


# ------------------------------------------------------------------------------------ write


def write_card(folder: str | os.PathLike[str], card: ModelCard, extra_files: Iterable[str] = ()) -> ModelCard:
    """Record the sha256 of the folder's files in ``card`` and write it as ``folder/model.json``.

    Args:
        folder: The export folder, holding ``encoder.onnx``, ``head.onnx`` and ``extra_files``.
        card: Everything but ``files`` (replaced) and ``created`` (stamped now when empty).
        extra_files: Names of optional files in ``folder`` to list and verify like the ONNX files.

    Returns:
        The card as written and as :func:`read_card` will return it (``files``, ``created`` and
        ``model_dir`` set; NaN metrics are None).

    Raises:
        ExportFolderError: a file is missing or unreadable, or a name is not a plain file name.
        OSError: ``model.json`` cannot be written.
    """
    folder = Path(folder)
    names = list(dict.fromkeys([*MODEL_FILES, *map(_plain_name, extra_files)]))
    try:
        files = {name: sha256_file(folder / name) for name in names}
    except OSError as e:
        raise ExportFolderError(
            f"cannot hash {e.filename}: {e.strerror or e}; write the file first"
        ) from None
    created = card.created or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    raw = dataclasses.replace(card, files=files, created=created).to_dict()
    (folder / CARD_FILE).write_text(json.dumps(raw, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return _with_prototypes(ModelCard.from_dict(raw, folder))


def write_prototypes(folder: str | os.PathLike[str], prototypes: np.ndarray) -> str:
    """Write the training-class prototypes as ``folder/prototypes.npy`` (before :func:`write_card`).

    Args:
        folder: The export folder.
        prototypes: ``(C, D)`` unit rows in label order (e.g. :func:`clce_core.open_set.class_prototypes`).

    Returns:
        :data:`PROTOTYPES_FILE`, to pass to :func:`write_card` in ``extra_files`` (which checks the
        shape against the card).
    """
    np.save(
        Path(folder) / PROTOTYPES_FILE, np.ascontiguousarray(prototypes, dtype=np.float32), allow_pickle=False
    )
    return PROTOTYPES_FILE


def _with_prototypes(card: ModelCard) -> ModelCard:
    """``card`` with :attr:`ModelCard.prototypes` loaded from its (verified) folder and checked.

    Raises:
        ExportFolderError: ``open_set`` without the file, an unreadable file, or a shape other than
            ``(len(labels), embedding_dim)``, or values that are not finite.
    """
    where = card.model_dir / CARD_FILE if card.model_dir is not None else CARD_FILE
    if PROTOTYPES_FILE not in card.files:
        if card.open_set is not None:
            raise ExportFolderError(
                f"{where} has 'open_set' but lists no {PROTOTYPES_FILE} under 'files'; re-export the model"
            )
        return card
    path = card.path(PROTOTYPES_FILE)
    try:
        protos = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):  # numpy's own message would suggest an unsafe pickle load
        raise ExportFolderError(f"{path} is not a .npy array of numbers; re-export the model") from None
    want = (len(card.labels), card.embedding_dim)
    if protos.shape != want or not np.issubdtype(protos.dtype, np.floating) or not np.isfinite(protos).all():
        raise ExportFolderError(
            f"{path} holds a {protos.dtype} array of shape {protos.shape}, but {CARD_FILE} needs finite floats "
            f"of shape {want} (one prototype per label, embedding_dim wide); re-export the model"
        )
    object.__setattr__(card, "prototypes", protos.astype(np.float32, copy=False))
    return card


# ------------------------------------------------------------------------------------ read, verify


def read_card(model_dir: str | os.PathLike[str]) -> ModelCard:
    """Read ``model.json`` and check it and every file it lists against each other.

    Raises:
        ExportFolderError: missing folder or file, unreadable or incomplete card, unknown schema
            version, an unusable value, or a file whose sha256 differs from the card's.
    """
    folder = Path(model_dir).expanduser()
    if not folder.is_dir():
        raise ExportFolderError(
            f"model folder {str(folder)!r} does not exist, so it is not a model export; {_HOW_TO_EXPORT} "
            "and pass that folder (--model-dir, or CLCE_MODEL_DIR for the server)"
        )
    missing = [name for name in (*MODEL_FILES, CARD_FILE) if not (folder / name).is_file()]
    if missing:
        raise ExportFolderError(
            f"model folder {str(folder)!r} lacks {', '.join(missing)}, so it is not a model export: an export "
            f"holds {ENCODER_FILE}, {HEAD_FILE} and {CARD_FILE}; {_HOW_TO_EXPORT}"
        )
    where = folder / CARD_FILE
    try:
        raw = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportFolderError(f"{where} is not readable JSON: {e}; re-export the model") from None
    if not isinstance(raw, dict):
        raise ExportFolderError(
            f"{where} must hold a JSON object, got {type(raw).__name__}; re-export the model"
        )
    absent = [key for key in REQUIRED_KEYS if key not in raw]
    if absent:
        raise ExportFolderError(f"{where} lacks {', '.join(absent)}; re-export the model")
    if raw["schema_version"] != SCHEMA_VERSION:
        raise ExportFolderError(
            f"{where} has schema_version {raw['schema_version']!r}, but this version of clce reads version "
            f"{SCHEMA_VERSION}; re-export the model with this version, or use the clce version that wrote it"
        )
    try:
        card = ModelCard.from_dict(raw, folder)
    except ExportFolderError as e:
        raise ExportFolderError(f"{where}: {e}; re-export the model") from None
    verify_files(card)
    return _with_prototypes(card)


def verify_files(card: ModelCard) -> None:
    """Check that the ONNX files and every optional file under ``files`` exist with the recorded sha256.

    Raises:
        ExportFolderError: naming the file, both digests and what to do.
    """
    if card.model_dir is None:
        raise ExportFolderError("this model card was neither read from nor written to a folder")
    where = card.model_dir / CARD_FILE
    for name in MODEL_FILES:
        if not isinstance(card.files.get(name), str):
            raise ExportFolderError(f"{where} has no sha256 for {name} under 'files'; re-export the model")
    for name, expected in card.files.items():
        try:
            path = card.model_dir / _plain_name(name)
        except ExportFolderError as e:
            raise ExportFolderError(f"{where}: {e}; re-export the model") from None
        if not isinstance(expected, str):
            raise ExportFolderError(
                f"{where}: the sha256 of {name} must be a hex string; re-export the model"
            )
        if not path.is_file():
            raise ExportFolderError(
                f"{where} lists {name} under 'files' but the folder has no such file; restore it or re-export"
            )
        actual = sha256_file(path)
        if actual != expected.lower():
            raise ExportFolderError(
                f"{path} has sha256 {actual} but {CARD_FILE} records {expected}: the file was changed or comes "
                "from another export. Refusing to start: re-export the model or restore the matching files"
            )
