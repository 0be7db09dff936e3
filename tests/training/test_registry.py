"""The dataset registry is complete however training.data is reached (a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys


def test_every_dataset_is_registered_on_import() -> None:
    code = (
        "import training.finetune; from training.data import list_datasets; print(','.join(list_datasets()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    expected = {
        "caltech256",
        "cifar-fs",
        "cifar100",
        "fashion-mnist",
        "fc100",
        "flowers102",
        "food101",
        "imagefolder",
        "oxford-pets",
    }
    assert set(out.split(",")) == expected
