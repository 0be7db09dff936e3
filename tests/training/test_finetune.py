"""python -m training.finetune end to end on a tiny image folder with a tiny timm model (CPU, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clce_core.losses import create_loss, list_losses
from tests.training.kit import CLASSES, image_folder, run_args
from training import engine, finetune
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.config import RunConfig


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_folder(tmp_path_factory.mktemp("colours"), {"train": 8, "val": 3, "test": 3})


@pytest.mark.slow
def test_run_writes_the_contracted_outputs(data_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert finetune.main(run_args(data_dir, out)) == 0
    assert {"config.yaml", "metrics.jsonl", "best.pt", "last.pt"} <= {p.name for p in out.iterdir()}
    assert any(p.name.startswith("events.out.tfevents") for p in out.iterdir())
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    for epoch, row in enumerate(lines[:2], start=1):
        assert row["epoch"] == epoch
        for key in (
            "lr",
            "train_loss",
            "train_ce",
            "train_contrastive",
            "images_per_s",
            "val_top1",
            "val_top5",
        ):
            assert isinstance(row[key], float), key
        assert 0 <= row["val_top1"] <= 100
    assert {"test_top1", "test_top5"} <= set(lines[2])
    state = load_checkpoint(out / "best.pt")
    assert state["classes"] == sorted(CLASSES)
    assert state["config"]["loss"] == "clce" and state["config"]["per_class"] == 2
    assert state["data_config"]["input_size"] == [3, 32, 32]
    assert "test top-1" in capsys.readouterr().out
    model, _ = model_from_checkpoint(out / "best.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(value, state["model"][key]), key
    assert model(torch.randn(2, 3, 32, 32))[1].shape == (2, len(CLASSES))


@pytest.mark.slow
def test_resume_continues_exactly(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """2 epochs in one go == 1 epoch, Ctrl-C, --resume for the second: the same weights."""
    straight = tmp_path / "straight"
    assert finetune.main(run_args(data_dir, straight)) == 0

    original = finetune.Run._one_epoch

    def interrupt_after_first(self: finetune.Run, writer) -> None:
        original(self, writer)
        if self.progress.epoch == 1:
            raise KeyboardInterrupt

    broken = tmp_path / "broken"
    monkeypatch.setattr(finetune.Run, "_one_epoch", interrupt_after_first)
    assert finetune.main(run_args(data_dir, broken)) == 130
    assert load_checkpoint(broken / "last.pt")["epoch"] == 1
    monkeypatch.setattr(finetune.Run, "_one_epoch", original)
    assert finetune.main(["--resume", str(broken / "last.pt"), "--workers", "0"]) == 0

    a = load_checkpoint(straight / "last.pt")
    b = load_checkpoint(broken / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_ctrl_c_inside_an_epoch_resumes_exactly(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C at the 2nd step of epoch 2 keeps last.pt at epoch 1 (it used to save the half-trained
    weights as epoch 1, and the resumed run drifted from the uninterrupted one)."""
    straight = tmp_path / "straight"
    assert finetune.main(run_args(data_dir, straight)) == 0
    steps = {"n": 0}
    original = engine.train_step

    def interrupt_at_step_6(*args, **kwargs):
        steps["n"] += 1
        if steps["n"] == 6:  # 4 steps per epoch
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    broken = tmp_path / "broken"
    monkeypatch.setattr(engine, "train_step", interrupt_at_step_6)
    assert finetune.main(run_args(data_dir, broken)) == 130
    assert load_checkpoint(broken / "last.pt")["epoch"] == 1
    monkeypatch.setattr(engine, "train_step", original)
    assert finetune.main(["--resume", str(broken / "last.pt"), "--workers", "0"]) == 0
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(broken / "last.pt")
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("loss", list_losses())
def test_every_loss_trains(loss: str, data_dir: Path, tmp_path: Path) -> None:
    per_class = "0" if loss == "ce" else "2"
    args = run_args(data_dir, tmp_path / loss, "--loss", loss, "--epochs", "1", "--max-steps-per-epoch", "2")
    args[args.index("--per-class") + 1] = per_class
    assert finetune.main(args) == 0
    first = json.loads((tmp_path / loss / "metrics.jsonl").read_text().splitlines()[0])
    assert np.isfinite(first["train_loss"])
    assert (first["train_contrastive"] == 0.0) == (loss == "ce")


@pytest.mark.parametrize("loss", list_losses())
def test_the_loss_flags_reach_the_entry_that_takes_them(loss: str) -> None:
    cfg = RunConfig(loss=loss, lam=0.3, tau=0.2, beta=2.0, detach_weights=True)
    loss_fn = create_loss(loss, **cfg.loss_kwargs())  # the strict factory: only the entry's options
    expected = {"lam": 0.3, "temperature": 0.2, "beta": 2.0, "detach_weights": True}
    assert {k: getattr(loss_fn, k) for k in cfg.loss_kwargs()} == {k: expected[k] for k in cfg.loss_kwargs()}
    assert ("lam" in cfg.loss_kwargs()) == (loss in {"clce", "clce-nohnm", "ce+supcon"})
    assert ("beta" in cfg.loss_kwargs()) == (loss == "hscl")


@pytest.mark.slow
def test_yaml_config_with_flag_override(data_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"dataset: imagefolder\ndata-dir: {data_dir}\nloss: ce\nlr: 0.5\nepochs: 1\n")
    out = tmp_path / "run"
    args = ["--config", str(cfg), "--lr", "1e-3", "--model", "test_efficientnet", "--pretrained", "none"]
    args += ["--img-size", "32", "--batch-size", "8", "--workers", "0", "--output", str(out)]
    assert finetune.main(args) == 0
    state = load_checkpoint(out / "last.pt")
    assert (
        state["config"]["loss"] == "ce" and state["config"]["lr"] == 1e-3 and state["config"]["epochs"] == 1
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dataset", "nope"], "unknown dataset 'nope'"),
        (["--lam", "1.5"], "--lam must be in [0, 1]"),
        (["--batch-size", "6", "--per-class", "4"], "not a multiple"),
        (["--batch-size", "4", "--per-class", "4"], "holds"),
        (["--pretrained", "/no/such/weights.pt"], "weights.pt"),
        (["--chunk-size", "0"], "--chunk-size must be >= 1"),
        (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--lr", "-1"], "--device cuda:0"),
        (["--device", "gpu0"], "--device 'gpu0' is not a device"),
    ],
)
def test_bad_options_give_one_line_errors(extra, message, data_dir: Path, tmp_path: Path, capsys) -> None:
    args = run_args(data_dir, tmp_path / "run")
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert finetune.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert message in err


def test_missing_data_gives_one_line_error(tmp_path: Path, capsys) -> None:
    assert finetune.main(["--dataset", "flowers102", "--data-dir", str(tmp_path), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "--download" in err


def test_resume_refuses_a_corrupt_or_foreign_checkpoint(data_dir: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint at all")
    assert finetune.main(["--resume", str(bad)]) == 2
    assert "corrupt" in capsys.readouterr().err
    torch.save({"weights": torch.zeros(2)}, bad)
    assert finetune.main(["--resume", str(bad)]) == 2
    assert "not a CLCE training checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_refuses_changed_maths(data_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert finetune.main(run_args(data_dir, out, "--epochs", "1", "--max-steps-per-epoch", "1")) == 0
    capsys.readouterr()
    assert finetune.main(["--resume", str(out / "last.pt"), "--loss", "ce"]) == 2
    assert "cannot change --loss when resuming" in capsys.readouterr().err


@pytest.mark.slow
def test_ema_and_sgd_options(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ema"
    extra = (
        "--ema",
        "--ema-decay",
        "0.5",
        "--optimizer",
        "sgd",
        "--epochs",
        "1",
        "--max-steps-per-epoch",
        "2",
    )
    assert finetune.main(run_args(data_dir, out, *extra)) == 0
    state = load_checkpoint(out / "last.pt")
    assert "raw_model" in state  # the EMA weights are `model`, the trained ones `raw_model`
    differs = [not torch.equal(state["model"][k], state["raw_model"][k]) for k in state["model"]]
    assert any(differs)
    assert state["optimizer"]["param_groups"][0]["momentum"] == 0.9


@pytest.mark.slow
def test_chunk_size_matches_the_one_pass_run(data_dir: Path, tmp_path: Path) -> None:
    """--chunk-size (gradient caching) trains like the one-pass run: with this model's BatchNorm in
    training mode the chunks normalise by their own statistics, so close, not equal."""
    runs = {}
    for name, extra in (("plain", ()), ("chunked", ("--chunk-size", "8"))):
        out = tmp_path / name
        args = run_args(data_dir, out, "--epochs", "1", "--max-steps-per-epoch", "2", *extra)
        assert finetune.main(args) == 0
        runs[name] = load_checkpoint(out / "last.pt")
    assert runs["chunked"]["config"]["chunk_size"] == 8 and runs["plain"]["config"]["chunk_size"] is None
    first = json.loads((tmp_path / "chunked" / "metrics.jsonl").read_text().splitlines()[0])
    assert np.isfinite(first["train_loss"]) and first["train_contrastive"] > 0


@pytest.mark.slow
def test_channels_last_trains_like_nchw(data_dir: Path, tmp_path: Path) -> None:
    """--channels-last (the default) is a memory layout: two steps give the NCHW run's losses and
    predictions up to float rounding (weights are not compared one by one: BatchNorm biases that feed
    another BatchNorm have a zero gradient in exact maths, ~1e-7 of rounding noise here, which Adam
    rescales to full-size steps that the next BatchNorm cancels)."""
    logits = {}
    for name, flag in (("nhwc", "--channels-last"), ("nchw", "--no-channels-last")):
        out = tmp_path / name
        assert (
            finetune.main(run_args(data_dir, out, "--epochs", "1", "--max-steps-per-epoch", "2", flag)) == 0
        )
        state = load_checkpoint(out / "last.pt")
        assert state["config"]["channels_last"] is (name == "nhwc")
        conv = next(v for v in state["model"].values() if v.dim() == 4 and v.shape[-1] > 1)
        assert conv.is_contiguous(memory_format=torch.channels_last) is (name == "nhwc")
        model, _ = model_from_checkpoint(out / "last.pt")  # a fresh NCHW model loads either
        with torch.no_grad():
            logits[name] = model.eval()(
                torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
            )[1]
        logits[f"{name} loss"] = torch.tensor(
            json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["train_loss"]
        )
    torch.testing.assert_close(logits["nhwc loss"], logits["nchw loss"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits["nhwc"], logits["nchw"], rtol=1e-3, atol=1e-3)
