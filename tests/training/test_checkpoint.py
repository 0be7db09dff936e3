"""Checkpoints carry a digest of their contents: bit rot is refused by every reader, through the CLIs."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from tests.training.kit import error_line, flip_tensor_bytes, image_folder, run_args, run_cli
from training import finetune
from training.checkpoint import (
    DIGEST_KEY,
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    payload_digest,
)

DAMAGED = "is damaged: its contents do not match the digest stored when it was written"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digest")
    data = image_folder(root / "data", {"train": 8, "val": 3, "test": 3})
    out = root / "run"
    assert finetune.main(run_args(data, out, "--epochs", "1", "--max-steps-per-epoch", "1")) == 0
    return out


@pytest.mark.slow
def test_bit_rot_in_tensor_data_is_refused_by_evaluate_and_export(run: Path, tmp_path: Path) -> None:
    rotten = tmp_path / "rotten" / "best.pt"
    rotten.parent.mkdir()
    shutil.copy(run / "best.pt", rotten)
    flip_tensor_bytes(rotten, 100)
    data = run.parent / "data" / "train"
    fewshot = ["--ways", "2", "--shots", "1", "--queries", "1", "--episodes", "2", "--workers", "0"]
    evaluated = run_cli("training.evaluate", "--checkpoint", str(rotten), "--data-dir", str(data), *fewshot)
    assert f"checkpoint {rotten} {DAMAGED}" in error_line(evaluated)
    exported = run_cli("training.export", "--checkpoint", str(rotten), "--output", str(tmp_path / "model"))
    assert DAMAGED in error_line(exported)
    assert not (tmp_path / "model").exists()


def test_every_value_is_covered_and_the_layout_is_not(run: Path, tmp_path: Path) -> None:
    state = load_checkpoint(run / "last.pt")
    assert state[DIGEST_KEY].startswith("sha256:") and state[DIGEST_KEY] == payload_digest(state)
    contiguous = {**state, "model": {k: v.contiguous() for k, v in state["model"].items()}}
    assert any(not v.is_contiguous() for v in state["model"].values())  # channels-last weights
    assert payload_digest(contiguous) == state[DIGEST_KEY]  # the values count, not the memory layout
    state["metrics"]["val_top1"] += 1e-9  # one float elsewhere in the file
    torch.save(state, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match=DAMAGED):
        load_checkpoint(tmp_path / "edited.pt")


def test_a_checkpoint_from_before_digests_loads_with_a_warning(run: Path, tmp_path: Path, caplog) -> None:
    state = load_checkpoint(run / "best.pt")
    del state[DIGEST_KEY]
    torch.save(state, tmp_path / "old.pt")
    with caplog.at_level(logging.WARNING, logger="clce.checkpoint"):
        model, _ = model_from_checkpoint(tmp_path / "old.pt")
    assert "has no digest (written by an older clce): its contents are not verified" in caplog.text
    for key, value in model.state_dict().items():
        assert torch.equal(value, state["model"][key]), key
