"""A run folder that holds a run is never overwritten unasked; --force moves the old run aside."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.training.kit import error_line, image_folder, run_args, run_cli
from training import finetune
from training.checkpoint import load_checkpoint

ONE_STEP = ("--epochs", "1", "--max-steps-per-epoch", "1")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_folder(tmp_path_factory.mktemp("colours"), {"train": 8, "val": 3, "test": 3})


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.slow
def test_a_finished_run_is_refused_then_replaced_with_force(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert finetune.main(run_args(data_dir, out, *ONE_STEP)) == 0
    before = _files(out)
    assert {"best.pt", "last.pt", "config.yaml", "metrics.jsonl"} <= set(before)

    again = run_cli("training.finetune", *run_args(data_dir, out, *ONE_STEP, "--lr", "0.5"))
    line = error_line(again)
    assert f"{out} already holds a run (last.pt, best.pt)" in line
    assert f"--resume {out / 'last.pt'}" in line and "--force" in line and "new --output" in line
    assert _files(out) == before  # nothing touched, not even config.yaml

    forced = run_cli("training.finetune", *run_args(data_dir, out, *ONE_STEP, "--lr", "0.5", "--force"))
    assert forced.returncode == 0, forced.stderr[-2000:]
    (aside,) = out.glob("replaced-*")
    assert "--force: moved the earlier run" in forced.stderr and str(aside) in forced.stderr
    assert _files(aside) == before  # every file of the old run, byte for byte
    assert load_checkpoint(out / "last.pt")["config"]["lr"] == 0.5
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row.get("epoch") for row in lines] == [1, None]  # the new run's epoch and test line only


def test_other_folders_that_cannot_take_the_run(data_dir: Path, tmp_path: Path, capsys) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert finetune.main(run_args(data_dir, out, *ONE_STEP)) == 0
    capsys.readouterr()
    # resuming one run into another run's folder would mix them
    assert finetune.main(["--resume", str(a / "last.pt"), "--output", str(b), "--epochs", "2"]) == 2
    assert f"{b} already holds a run" in capsys.readouterr().err
    # a file where the folder should be
    (tmp_path / "file").write_text("")
    assert finetune.main(run_args(data_dir, tmp_path / "file", *ONE_STEP)) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --output {tmp_path / 'file'} is a file; pass a folder for the run"
    # resuming a run in its own folder continues it
    assert finetune.main(["--resume", str(a / "last.pt"), "--epochs", "2", "--workers", "0"]) == 0
    assert load_checkpoint(a / "last.pt")["epoch"] == 2 and not list(a.glob("replaced-*"))
