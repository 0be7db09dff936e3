"""Atomic checkpoints holding everything a resume, an evaluation or an export needs.

A checkpoint is a ``torch.save`` dict of tensors and plain Python values only, so it loads with
``weights_only=True`` (no pickled code runs when a checkpoint is opened). Keys:

    format          "clce-checkpoint"
    version         FORMAT_VERSION
    model           ClassifierModel state dict (the EMA weights when EMA is on; see ``raw_model``)
    raw_model       the non-EMA weights when EMA is on (else absent)
    optimizer, scheduler, scaler     state dicts (absent from exported-only checkpoints)
    epoch           number of completed epochs
    global_step     optimizer steps taken
    rng             python / numpy / torch (/ cuda) generator states
    config          the resolved RunConfig as a dict
    classes         class names in label order
    data_config     the eval preprocessing: input_size, interpolation, crop_pct, mean, std
    metrics         the metrics of the last completed epoch (val_top1, ...)
    best_val_top1   best validation top-1 so far
    model_name, embedding_dim   the timm name and D, for readers that do not rebuild the model
    versions        torch, timm, clce
    best_epoch      the epoch ``best.pt`` holds (0: none yet)
    digest          "sha256:<hex>" of everything above (:func:`payload_digest`), checked on every load

A checkpoint whose contents no longer match its digest (a flipped bit on disk, a bad copy) is refused
with one line; one written before digests existed still loads, with a warning.

What goes into a run's checkpoint and how ``--resume`` puts it back: :mod:`training.run_state`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from clce_core.models import ClassifierModel
from training.faults import kill_point

FORMAT = "clce-checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("model", "config", "classes", "data_config", "epoch")
DIGEST_KEY = "digest"

log = logging.getLogger("clce.checkpoint")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit; the message says which and why."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` and its digest to ``path`` atomically: a temporary file in the same folder,
    flushed to disk, then a rename (and the folder's entry flushed too).

    A kill at any instant leaves either the previous file or the new one, never a mixture; a kill
    before the rename leaves an orphaned ``.NAME.*.tmp`` that :func:`training.run_folder.tidy` removes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {k: v for k, v in state.items() if k not in ("format", "version", DIGEST_KEY)}
    state = {"format": FORMAT, "version": FORMAT_VERSION, **payload}
    state[DIGEST_KEY] = payload_digest(state)
    point = f"{path.name}@{state.get('epoch')}"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        kill_point(f"{point}:written")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)
    kill_point(f"{point}:replaced")


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename) to disk, where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems do not sync folders; the rename itself is still atomic
    finally:
        os.close(fd)


def payload_digest(state: dict[str, Any]) -> str:
    """``"sha256:<hex>"`` of a checkpoint's contents: every key but the digest, tensors by dtype,
    shape and bytes (row-major, whatever the memory layout), other values by type and ``repr``."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != DIGEST_KEY})
    return f"sha256:{h.hexdigest()}"


def _feed(h: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        h.update(f"D{len(value)}".encode())
        for k, v in value.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(value, list | tuple):
        h.update(f"L{len(value)}".encode())
        for v in value:
            _feed(h, v)
    else:
        text = repr(value).encode()
        h.update(f"V{type(value).__name__}{len(text)}:".encode() + text)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint written by :func:`save_checkpoint`.

    Only tensors and plain values are read (``weights_only=True``): no code in a file ever runs.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, not a CLCE checkpoint, from a
            newer format, lacks a required key, or its contents do not match its digest.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch.load of a foreign file raises anything from KeyError to RuntimeError
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a PyTorch checkpoint ({_load_failure(e)}); "
            "pass a best.pt or last.pt written by python -m training.finetune"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a CLCE training checkpoint (no 'format': {FORMAT!r}); "
            "pass a best.pt or last.pt written by python -m training.finetune"
        )
    if state.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {state['version']}, this code reads up to {FORMAT_VERSION}; "
            "upgrade clce"
        )
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}")
    _verify_digest(state, path)
    return state


def _load_failure(e: Exception) -> str:
    """Why ``torch.load`` refused a file, in one short clause (never PyTorch's advice to unpickle it)."""
    text = str(e).strip()
    if "Weights only load failed" in text:
        return "it holds pickled Python objects, which are never loaded: no code from a file is run"
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__


def _verify_digest(state: dict[str, Any], path: Path) -> None:
    stored = state.get(DIGEST_KEY)
    if stored is None:
        log.warning(
            "checkpoint %s has no digest (written by an older clce): its contents are not verified", path
        )
        return
    if stored != payload_digest(state):
        raise CheckpointError(
            f"checkpoint {path} is damaged: its contents do not match the digest stored when it was "
            "written (bits changed on disk, or an incomplete copy); use another copy of it, or "
            "last.pt / best.pt of the same run"
        )


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Hold back a logger's INFO lines for a moment."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def model_for_checkpoint(
    model_name: str, num_classes: int, img_size: int | None, source: str | Path
) -> ClassifierModel:
    """The architecture a checkpoint's weights are loaded into next; ``model.weights`` names the
    checkpoint (not "random": create_model's log line would say so, and is held back).
    """
    from clce_core.models import create_model

    with _quiet("clce_core.models"):
        model = create_model(model_name, num_classes, "none", img_size=img_size)
    model.weights = f"checkpoint:{source}"
    return model


def model_from_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[ClassifierModel, dict[str, Any]]:
    """Rebuild the trained :class:`ClassifierModel` (in eval mode) from a checkpoint.

    Returns:
        ``(model, state)``; ``state`` is the whole checkpoint (classes, data_config, config, metrics...).

    Raises:
        CheckpointError: unreadable checkpoint, or weights that do not fit the model it names.
    """
    state = load_checkpoint(path, map_location)
    cfg = state["config"]
    model = model_for_checkpoint(cfg["model"], len(state["classes"]), cfg.get("img_size"), path)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(
            f"checkpoint {path}: weights do not fit {cfg['model']} ({first[:200]})"
        ) from None
    log.info(
        "loaded %s from %s (epoch %d, D=%d, C=%d)",
        cfg["model"], path, state["epoch"], model.embedding_dim, len(state["classes"]),
    )  # fmt: skip
    return model.eval(), state
