"""clce_core.export_folder: the card round-trips, optional fields and files verify, bad folders are named.

Serving's own refusals (altered files, broken cards, the app not starting) are in
tests/serving/test_store.py; the exporter's card keys and order in tests/training/test_export.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clce_core.export_folder import (
    CARD_FILE,
    ENCODER_FILE,
    HEAD_FILE,
    PROTOTYPES_FILE,
    SCHEMA_VERSION,
    ExportFolderError,
    ModelCard,
    read_card,
    sha256_file,
    write_card,
    write_prototypes,
)

REPO = Path(__file__).resolve().parents[2]
DATA_CONFIG = {"input_size": (3, 24, 20), "interpolation": "bicubic", "crop_pct": None, "mean": (0.5,) * 3, "std": (0.25,) * 3}  # fmt: skip


def _card(**fields: object) -> ModelCard:
    values: dict[str, object] = {"model_name": "m", "labels": ["a", "b"], "embedding_dim": 4, **fields}
    return ModelCard.from_data_config(DATA_CONFIG, **values)


def _folder(tmp_path: Path, *extra: str) -> Path:
    """A folder with stand-in bytes for the ONNX files (the card does not parse them) and ``extra`` files."""
    folder = tmp_path / "m"
    folder.mkdir()
    for name in (ENCODER_FILE, HEAD_FILE, *extra):
        (folder / name).write_bytes(name.encode() * 100)
    return folder


def test_imports_neither_torch_nor_onnxruntime() -> None:
    code = (
        "import sys, clce_core.export_folder\n"
        "bad = sorted(m for m in ('torch', 'timm', 'onnx', 'onnxruntime', 'training', 'serving') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    written = write_card(folder, _card(metrics={"val_top1": float("nan")}, extras={"parity": {"images": 7}}))
    raw = json.loads((folder / CARD_FILE).read_text())
    assert list(raw)[:5] == ["schema_version", "model_name", "labels", "embedding_dim", "input_size"]
    assert list(raw)[-3:] == ["files", "created", "parity"]  # extras after the contract's keys
    assert raw["schema_version"] == SCHEMA_VERSION and raw["input_size"] == [3, 24, 20]
    assert raw["crop_pct"] == 0.875 and raw["interpolation"] == "bicubic"  # None -> timm's default
    assert raw["metrics"] == {"val_top1": None} and raw["created"].endswith("Z")  # NaN is not JSON
    assert raw["files"] == {n: sha256_file(folder / n) for n in (ENCODER_FILE, HEAD_FILE)}
    card = read_card(folder)
    assert card == written and card.raw == raw
    assert card.sha256 == raw["files"][ENCODER_FILE] and card.encoder_path == folder / ENCODER_FILE
    assert card.extras == {"parity": {"images": 7}} and card.precision == "fp32"
    assert card.preprocess.input_size == (3, 24, 20) and card.preprocess.std == (0.25, 0.25, 0.25)


def test_an_older_card_gets_the_defaults_and_keeps_unknown_keys(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    write_card(folder, _card())
    raw = json.loads((folder / CARD_FILE).read_text())
    for key in (
        "model_name",
        "interpolation",
        "crop_pct",
        "crop_mode",
        "loss",
        "metrics",
        "opset",
        "precision",
    ):
        del raw[key]
    raw["calibration"] = {"temperature": 1.5}  # a key a later version may add
    (folder / CARD_FILE).write_text(json.dumps(raw))
    card = read_card(folder)
    assert (card.model_name, card.interpolation, card.crop_pct, card.precision) == (
        "unknown",
        "bilinear",
        0.875,
        "fp32",
    )
    assert card.loss == {"name": None, "lam": None, "tau": None} and card.opset is None
    assert card.extras == {"calibration": {"temperature": 1.5}} and card.raw["calibration"] == {
        "temperature": 1.5
    }


def test_optional_files_are_listed_and_verified(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "notes.bin")
    write_card(folder, _card(), extra_files=["notes.bin"])
    card = read_card(folder)
    assert set(card.files) == {ENCODER_FILE, HEAD_FILE, "notes.bin"}
    assert card.path("notes.bin") == folder / "notes.bin"
    with pytest.raises(ExportFolderError, match="lists no 'calibration.json'"):
        card.path("calibration.json")
    (folder / "notes.bin").write_bytes(b"changed")
    with pytest.raises(ExportFolderError, match="notes.bin has sha256 .* Refusing to start"):
        read_card(folder)
    (folder / "notes.bin").unlink()
    with pytest.raises(
        ExportFolderError, match="lists notes.bin under 'files' but the folder has no such file"
    ):
        read_card(folder)


def test_prototypes_and_the_calibrated_threshold_round_trip(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    protos = np.eye(2, 4, dtype=np.float64)  # (C, D) = (2, 4); stored as float32
    name = write_prototypes(folder, protos)
    written = write_card(folder, _card(open_set={"threshold": 0.25, "keep": 0.95}), extra_files=[name])
    card = read_card(folder)
    assert name == PROTOTYPES_FILE and card.files[PROTOTYPES_FILE] == sha256_file(folder / PROTOTYPES_FILE)
    assert card.prototypes is not None and card.prototypes.dtype == np.float32
    np.testing.assert_array_equal(card.prototypes, protos)
    np.testing.assert_array_equal(written.prototypes, protos)
    assert card.calibrated_threshold == 0.25 and card.raw["open_set"] == {"threshold": 0.25, "keep": 0.95}
    assert list(card.raw).index("open_set") < list(card.raw).index("files")

    (tmp_path / "older").mkdir()
    older = _folder(tmp_path / "older")  # no prototypes, no open_set: still a valid export
    card = write_card(older, _card())
    assert card.prototypes is None and card.calibrated_threshold is None and card.open_set is None
    assert read_card(older).prototypes is None


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (
            np.ones((3, 4), np.float32),
            r"shape \(3, 4\), but model.json needs finite floats of shape \(2, 4\)",
        ),
        (np.ones((2, 5), np.float32), r"shape \(2, 5\)"),
        (np.full((2, 4), np.nan, np.float32), "finite floats"),
        (np.ones((2, 4), np.int64), "int64 array"),
        (np.array([{"a": 1}, None], dtype=object), "not a .npy array of numbers"),
        (b"not an npy file", "not a .npy array of numbers"),
    ],
)
def test_unusable_prototypes_are_named(tmp_path: Path, content: object, words: str) -> None:
    folder = _folder(tmp_path)
    if isinstance(content, bytes):
        (folder / PROTOTYPES_FILE).write_bytes(content)
    else:
        np.save(folder / PROTOTYPES_FILE, content, allow_pickle=True)
    with pytest.raises(ExportFolderError, match=words) as caught:
        write_card(folder, _card(), extra_files=[PROTOTYPES_FILE])
    assert "allow_pickle" not in str(caught.value) and "re-export the model" in str(caught.value)
    with pytest.raises(ExportFolderError, match=words):
        read_card(folder)


def test_open_set_needs_its_prototypes_and_a_cosine(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    with pytest.raises(ExportFolderError, match="has 'open_set' but lists no prototypes.npy"):
        write_card(folder, _card(open_set={"threshold": 0.5}))
    for bad in (1.5, -2, "high", True, float("nan")):
        with pytest.raises(ExportFolderError, match=r"open_set.threshold must be a cosine in \[-1, 1\]"):
            _card(open_set={"threshold": bad})
    assert _card(open_set={"threshold": None}).calibrated_threshold is None


@pytest.mark.parametrize("name", ["../outside.npy", "sub/x.npy", ".hidden"])
def test_file_names_stay_inside_the_folder(tmp_path: Path, name: str) -> None:
    folder = _folder(tmp_path)
    with pytest.raises(ExportFolderError, match="not a plain file name"):
        write_card(folder, _card(), extra_files=[name])
    write_card(folder, _card())
    raw = json.loads((folder / CARD_FILE).read_text())
    raw["files"][name] = "0" * 64
    (folder / CARD_FILE).write_text(json.dumps(raw))
    with pytest.raises(ExportFolderError, match="not a plain file name"):
        read_card(folder)


def test_write_card_needs_the_files(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / HEAD_FILE).unlink()
    with pytest.raises(ExportFolderError, match=f"cannot hash .*{HEAD_FILE}: No such file"):
        write_card(folder, _card())
    assert not (folder / CARD_FILE).exists()


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"labels": ["a", "a"]}, "duplicate class names"),
        ({"labels": "ab"}, "non-empty list"),
        ({"embedding_dim": 0}, "embedding_dim must be positive"),
        ({"embedding_dim": 2.5}, "'embedding_dim' must be an integer"),
        ({"opset": "seventeen"}, "'opset' must be an integer"),
        ({"crop_mode": "zoom"}, "crop_mode 'zoom' is not supported"),
        ({"metrics": [1, 2]}, "'metrics' must be a JSON object"),
    ],
)
def test_unusable_values_are_named(fields: dict[str, object], words: str) -> None:
    with pytest.raises(ExportFolderError, match=words):
        _card(**fields)


def test_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(
        ExportFolderError, match="does not exist, so it is not a model export; create one with"
    ):
        read_card(tmp_path / "nope")
    folder = _folder(tmp_path)
    with pytest.raises(ExportFolderError, match=f"lacks {CARD_FILE}, so it is not a model export"):
        read_card(folder)
    write_card(folder, _card())
    raw = json.loads((folder / CARD_FILE).read_text())
    (folder / CARD_FILE).write_text(json.dumps({k: v for k, v in raw.items() if k not in ("mean", "files")}))
    with pytest.raises(ExportFolderError, match="lacks mean, files; re-export the model"):
        read_card(folder)
