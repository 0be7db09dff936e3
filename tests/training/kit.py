"""Helpers of the training tests: a tiny learnable image folder, the tiny run's flags, the CLIs as
subprocesses, and bit rot inside a checkpoint's tensor data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["red", "green", "blue", "grey"]
COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200), "grey": (128, 128, 128)}


def image_folder(root: Path, per_split: dict[str, int]) -> Path:
    """``root/SPLIT/CLASS/i.png``: 40×40 noisy colour squares, learnable in a few steps."""
    rng = np.random.default_rng(0)
    for split, n in per_split.items():
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(COLOURS[name]) + rng.normal(0, 25, (40, 40, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def run_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    """The flags of a two-epoch run of ``test_efficientnet`` at 32 px on :func:`image_folder` (seconds)."""
    return [
        "--dataset", "imagefolder", "--data-dir", str(data_dir), "--model", "test_efficientnet",
        "--pretrained", "none", "--img-size", "32", "--batch-size", "8", "--per-class", "2",
        "--epochs", "2", "--workers", "0", "--lr", "1e-3", "--output", str(out), *extra,
    ]  # fmt: skip


def run_cli(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` from the repository, one thread (reproducible, and kind to 2 cores)."""
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=600)


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one ``error: ...`` line a CLI ends with (exit code 2), checked to be alone and traceback-free."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr[-2000:]
    return errors[0]


def flip_tensor_bytes(path: Path, count: int = 100) -> str:
    """Flip one bit in each of ``count`` bytes inside the data of the checkpoint's largest weight, on disk.

    Returns:
        The name of the weight that was hit.
    """
    state = torch.load(path, weights_only=True)
    name = max(state["model"], key=lambda k: state["model"][k].numel())
    stored = bytes(state["model"][name].untyped_storage())  # the bytes as the file holds them
    data = bytearray(path.read_bytes())
    start = data.find(stored)
    assert start >= 0 and len(stored) > 8 * count, "the tensor's bytes are not stored as they are"
    for i in range(count):
        data[start + 8 * i + 3] ^= 0x10
    path.write_bytes(bytes(data))
    return name
