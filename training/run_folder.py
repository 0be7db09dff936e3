"""The rules of a run folder (``--output``): another run's checkpoints are never replaced unasked, and a
run that was killed is tidied up before it continues.

* :func:`check_output` refuses a folder that holds another run's ``best.pt`` / ``last.pt`` (one line
  naming ``--resume``, ``--force`` and a new folder); a folder without checkpoints holds nothing to lose.
* :func:`set_aside` is what ``--force`` does: the earlier run's files move to ``replaced-<time>/``
  inside the folder (nothing is deleted; TensorBoard shows it as its own run).
* :func:`tidy` runs before the first epoch of every (re)started run: orphaned temporary files of an
  interrupted write are removed and ``metrics.jsonl`` is cut back to the epoch the run continues from,
  so an epoch that is trained again is listed once.
* :func:`append_metrics` appends one line and flushes it to disk before the checkpoint that covers it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from training.config import ConfigError

__all__ = ["CHECKPOINTS", "RUN_FILES", "append_metrics", "check_output", "set_aside", "tidy"]

log = logging.getLogger("clce.finetune")

CHECKPOINTS = ("last.pt", "best.pt")
RUN_FILES = ("config.yaml", "metrics.jsonl", *CHECKPOINTS)  # + TensorBoard event files
EVENTS_GLOB = "events.out.tfevents.*"
METRICS = "metrics.jsonl"


def _temporary_files(folder: Path) -> list[Path]:
    """Leftovers of atomic writes that a kill interrupted: ``.last.pt.*.tmp``, ``.metrics.jsonl.*.tmp``..."""
    return [p for name in RUN_FILES for p in folder.glob(f".{name}.*.tmp") if p.is_file()]


def check_output(folder: str | os.PathLike[str], resume: str | os.PathLike[str] | None, force: bool) -> bool:
    """Whether a run may write to ``folder``, and whether an earlier run's files must be set aside first.

    Args:
        folder: the run's ``--output``.
        resume: the checkpoint being resumed, or None for a new run. Resuming a checkpoint of
            ``folder`` itself continues that run, so its files stay.
        force: ``--force``: replace an earlier run (its files are set aside, see :func:`set_aside`).

    Returns:
        True when ``folder`` holds another run's checkpoints and ``force`` is set.

    Raises:
        ConfigError: ``folder`` is a file, or holds another run's checkpoints and ``force`` is not set.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--output {folder} is a file; pass a folder for the run")
    saved = [name for name in CHECKPOINTS if (folder / name).is_file()]
    if not saved or (resume is not None and Path(resume).resolve().parent == folder.resolve()):
        return False
    if force:
        return True
    raise ConfigError(
        f"{folder} already holds a run ({', '.join(saved)}); continue it with --resume {folder / saved[0]}, "
        f"replace it with --force (its files move to {folder}/replaced-<time>/), or pass a new --output folder"
    )


def set_aside(folder: Path) -> Path:
    """Move an earlier run's files (config, metrics, checkpoints, TensorBoard events) to
    ``folder/replaced-YYYYmmdd-HHMMSS/``; orphaned temporary files are removed.

    Returns:
        The folder they moved to.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = folder / f"replaced-{stamp}"
    n = 1
    while target.exists():
        n += 1
        target = folder / f"replaced-{stamp}-{n}"
    target.mkdir()
    moved = [p for p in (*(folder / name for name in RUN_FILES), *folder.glob(EVENTS_GLOB)) if p.is_file()]
    for p in moved:
        p.rename(target / p.name)
    for p in _temporary_files(folder):
        p.unlink(missing_ok=True)
    log.warning("--force: moved the earlier run (%s) to %s", ", ".join(p.name for p in moved), target)
    return target


def tidy(folder: Path, epoch: int) -> None:
    """Prepare ``folder`` for a run that continues after ``epoch`` completed epochs (0: a new run).

    Removes orphaned temporary files, and cuts ``metrics.jsonl`` back to the lines of epochs
    ``1..epoch`` (later epochs, the final test line and a torn last line are dropped: the run writes
    them again), rewritten atomically.
    """
    for p in _temporary_files(folder):
        log.info("removing %s, left by an interrupted write", p)
        p.unlink(missing_ok=True)
    path = folder / METRICS
    if not path.is_file():
        return
    text = path.read_text()
    rows: dict[int, str] = {}
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int) and 1 <= row["epoch"] <= epoch:
            rows[row["epoch"]] = line  # an epoch listed twice (older versions): its last line
    kept = "".join(f"{rows[e]}\n" for e in sorted(rows))
    if kept == text:
        return
    log.info("%s: kept the lines of epochs 1-%d, the run continues from there", path, epoch)
    tmp = path.with_name(f".{METRICS}.{os.getpid()}.tmp")
    tmp.write_text(kept)
    os.replace(tmp, path)


def append_metrics(folder: Path, row: dict[str, Any]) -> None:
    """Append one JSON line to ``folder/metrics.jsonl``, flushed to disk (before the checkpoint that
    covers it is written, so a kill never leaves a checkpoint ahead of its metrics)."""
    with open(folder / METRICS, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
