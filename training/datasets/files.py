"""Where a dataset's files live, and the one-line errors when they are missing or do not load.

With no root given, a dataset lives in ``$CLCE_DATA_HOME/<folder>`` (``~/.cache/clce/data/<folder>``
when the variable is unset). torchvision reads (and, with ``--download``, fetches) the official
files; :func:`call_torchvision` turns its "not found" and failed downloads into a
:class:`~training.datasets.registry.DatasetError` that says where to put which files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from training.datasets.registry import DatasetError

__all__ = ["DATA_HOME_ENV", "DEFAULT_DATA_HOME", "call_torchvision", "data_root"]

T = TypeVar("T")

DATA_HOME_ENV = "CLCE_DATA_HOME"  # with no root given, a dataset lives in $CLCE_DATA_HOME/<folder>
DEFAULT_DATA_HOME = "~/.cache/clce/data"  # ... or here, when the variable is unset


def data_root(root: Path | None, folder: str) -> Path:
    """The given root, or the default one of a dataset: ``$CLCE_DATA_HOME/folder``."""
    if root is not None:
        return root
    return Path(os.environ.get(DATA_HOME_ENV) or DEFAULT_DATA_HOME).expanduser() / folder


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


def call_torchvision(
    make: Callable[[], T], title: str, where: Path, files: str, required: Sequence[Path], download: bool
) -> T:
    """Call a torchvision dataset constructor; failures become one-line :class:`DatasetError`\\ s.

    Args:
        make: builds the torchvision dataset (it reads, or with ``download`` fetches, the files).
        title: the dataset's name in messages, e.g. ``Flowers-102``.
        where: the folder the files belong in.
        files: what to put there, in words (``jpg/, imagelabels.mat and setid.mat``).
        required: paths whose presence means "the files are there" (then no download is tried).
        download: whether torchvision may download missing files.

    Raises:
        DatasetError: files missing without ``download``, present but unreadable, or the download failed.
    """
    present = all(p.exists() for p in required)
    if not present and not download:
        raise DatasetError(
            f"{title} not found in {where}: put {files} there, or pass --download (needs a network)"
        )
    try:
        return make()
    except Exception as e:
        if present:
            raise DatasetError(
                f"{title} in {where} did not load ({_one_line(e)}): replace {files} with the official "
                "files, or remove them and pass --download"
            ) from e
        raise DatasetError(
            f"{title} download failed ({_one_line(e)}): put {files} in {where} by hand, "
            "or retry with a network"
        ) from e
