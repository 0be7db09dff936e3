"""Fine-tune a timm encoder with CLCE or a baseline loss.

    python -m training.finetune --dataset fashion-mnist --train-per-class 20 --img-size 64 --epochs 3
    python -m training.finetune --dataset flowers102 --model vit_base_patch16_224 --batch-size 64 --download
    python -m training.finetune --config run.yaml --lr 1e-4          # flags override the YAML file
    python -m training.finetune --resume runs/flowers102-clce/last.pt  # continue exactly
    python -m training.finetune --dataset cifar100 --batch-size 1024 --chunk-size 128   # big batch, small memory
    torchrun --nproc-per-node 4 -m training.finetune --dataset flowers102 --batch-size 256  # 4 GPUs, DDP

Under torchrun (``--nproc-per-node N``, ``--nnodes``) every process trains on ``--batch-size / N``
images of each step and the contrastive loss sees the rows of all processes; rank 0 alone logs,
evaluates and writes the outputs. A checkpoint resumes under any number of processes.

Writes to ``--output`` (default ``runs/DATASET-LOSS``): ``config.yaml`` (resolved), ``metrics.jsonl``
(one object per epoch, then one with the test metrics), ``best.pt`` (best validation top-1),
``last.pt`` (after every epoch, and on Ctrl-C) and TensorBoard event files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from clce_core.losses import create_loss
from clce_core.models import ClassifierModel, WeightsError, create_model, model_data_config
from training import distributed
from training.checkpoint import (
    CheckpointError,
    Progress,
    eval_module,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
    training_state,
)
from training.config import ConfigError, RunConfig, add_arguments, config_from_args, save_yaml
from training.datasets import DatasetError, list_datasets
from training.device import resolve_device
from training.engine import EvalResult, TrainingError, build_step_context, evaluate, train_one_epoch
from training.loaders import build_loaders, build_splits
from training.optim import build_optimizer, build_scheduler
from training.seeding import rank_epoch_seed, seed_everything

log = logging.getLogger("clce.finetune")

# Options that may differ from the checkpoint's when resuming (they do not change the maths).
RESUME_OVERRIDABLE = {
    "epochs",
    "output",
    "device",
    "workers",
    "resume",
    "max_steps_per_epoch",
    "data_dir",
    "download",
    "val_per_class",
    "test_per_class",
    "chunk_size",  # the same gradient (BatchNorm aside, see --help): fit the memory you have now
    "channels_last",  # a memory layout: the same maths up to float rounding
}


def build_model(cfg: RunConfig, num_classes: int, pretrained: str) -> ClassifierModel:
    """The timm encoder + linear head; ``--img-size`` reaches models that take it (ViTs)."""
    return create_model(cfg.model, num_classes, pretrained, img_size=cfg.img_size)


class Run:
    """A fine-tuning run: builds everything from a :class:`RunConfig`, then :meth:`fit`.

    Under torchrun (a process group initialised by :func:`training.distributed.init_from_env`) every
    rank builds the same run; the model is wrapped in DDP, and rank 0 alone logs, evaluates and
    writes files while the others wait at a barrier.
    """

    def __init__(
        self, cfg: RunConfig, resume_state: dict[str, Any] | None = None, show_progress: bool = True
    ):
        self.cfg = cfg
        self.world = distributed.current()
        self.is_main = self.world.is_main
        self.show_progress = show_progress and self.is_main
        self.out = Path(cfg.output)  # type: ignore[arg-type]
        self.device = resolve_device(cfg.device, self.world.local_rank if self.world.world_size > 1 else None)
        seed_everything(cfg.seed)  # the same on every rank: the same initial weights

        self.loss_fn = create_loss(cfg.loss, **cfg.loss_kwargs())
        self.data_config = model_data_config(cfg.model, cfg.img_size)
        self.data = build_splits(cfg, self.data_config, self.loss_fn.views)
        log.info("%s", self.data.describe())
        self.memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
        pretrained = "none" if resume_state is not None else cfg.pretrained  # a resume loads its own weights
        self.model = build_model(cfg, self.data.num_classes, pretrained).to(
            self.device, memory_format=self.memory_format
        )
        self.loaders = build_loaders(cfg, self.data, self.loss_fn.views, self.device, self.world)
        optimizer = build_optimizer(cfg, self.model, self.device)
        scheduler = build_scheduler(cfg, optimizer, self.loaders.steps_per_epoch)
        self.ctx = build_step_context(
            cfg, self.model, self.loss_fn, optimizer, scheduler, self.device, self.world.world_size,
            self.memory_format,
        )  # fmt: skip
        self.progress = Progress() if resume_state is None else restore_training_state(resume_state, self.ctx)

    # ------------------------------------------------------------------ checkpoints
    @property
    def eval_model(self) -> torch.nn.Module:
        """What is evaluated and saved: the EMA weights when ``--ema`` is on, else the model."""
        return eval_module(self.ctx)

    def state(self) -> dict[str, Any]:
        """The checkpoint of the run as it stands (see :func:`training.checkpoint.training_state`)."""
        return training_state(self.ctx, self.cfg, self.data.classes, self.data_config, self.progress)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, float]:
        """Train the remaining epochs, then evaluate ``best.pt`` on the test split once (rank 0)."""
        writer = None
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_yaml(self.cfg, self.out / "config.yaml")
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.out))
        try:
            while self.progress.epoch < self.cfg.epochs:
                self._one_epoch(writer)
        except KeyboardInterrupt:
            if self.is_main:
                save_checkpoint(self.state(), self.out / "last.pt")
                log.warning(
                    "interrupted: saved %s; continue with --resume %s",
                    self.out / "last.pt",
                    self.out / "last.pt",
                )
            raise
        finally:
            if writer is not None:
                writer.close()
        return self._test()

    def _one_epoch(self, writer: Any) -> None:
        """Train one epoch; rank 0 then validates and saves while the other ranks wait at a barrier."""
        cfg, progress = self.cfg, self.progress
        self.loaders.set_epoch(progress.epoch)
        if self.world.world_size > 1:
            # Each rank draws its own augmentations and dropout masks (one process keeps the
            # checkpointed generators instead, which resume exactly too).
            seed_everything(rank_epoch_seed(cfg.seed, progress.epoch, self.world.rank))
        train = train_one_epoch(
            self.ctx, self.loaders.train, progress.epoch + 1, cfg.max_steps_per_epoch, self.show_progress
        )
        progress.global_step += self.loaders.steps_per_epoch
        if not self.is_main:  # rank 0 evaluates and writes; the others wait for it
            progress.epoch += 1
            distributed.barrier()
            return
        try:
            self._evaluate_and_save(train, writer)
        finally:
            distributed.barrier()

    def _evaluate_and_save(self, train: dict[str, float], writer: Any) -> None:
        """Validate, append to ``metrics.jsonl`` and TensorBoard, save ``last.pt`` (and ``best.pt``)."""
        progress = self.progress
        val = self._evaluate(self.loaders.val, "val")
        progress.epoch += 1
        metrics = {"epoch": progress.epoch, **train, "val_top1": val.top1, "val_top5": val.top5}
        progress.metrics = metrics
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        for key, value in metrics.items():
            if key != "epoch":
                writer.add_scalar(key, value, progress.epoch)
        improved = val.top1 > progress.best_val_top1
        if improved:
            progress.best_val_top1 = val.top1
        state = self.state()
        save_checkpoint(state, self.out / "last.pt")
        if improved:
            save_checkpoint(state, self.out / "best.pt")
        log.info(
            "epoch %d/%d  loss %.4f (ce %.4f, contrastive %.4f)  val top-1 %.2f%%  %.1f img/s%s",
            progress.epoch,
            self.cfg.epochs,
            train["train_loss"],
            train["train_ce"],
            train["train_contrastive"],
            val.top1,
            train["images_per_s"],
            "  (best)" if improved else "",
        )

    def _evaluate(self, loader: Any, desc: str) -> EvalResult:
        return evaluate(
            self.eval_model,
            loader,
            self.device,
            self.ctx.amp_dtype,
            desc=desc,
            show_progress=self.show_progress,
            memory_format=self.memory_format,
        )

    def _test(self) -> dict[str, float]:
        """Evaluate ``best.pt``'s weights on the test split, once; append to ``metrics.jsonl`` (rank 0)."""
        if not self.is_main:
            distributed.barrier()
            return {}
        try:
            return self._test_on_main()
        finally:
            distributed.barrier()

    def _test_on_main(self) -> dict[str, float]:
        if self.loaders.test is None:
            log.info("no test split: skipping the final test evaluation")
            return {}
        best = load_checkpoint(self.out / "best.pt", map_location=self.device)
        self.eval_model.load_state_dict(best["model"])
        test = self._evaluate(self.loaders.test, "test")
        final = {"best_epoch": best["epoch"], "test_top1": test.top1, "test_top5": test.top5}
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(final) + "\n")
        return final


def resume_config(args: argparse.Namespace) -> tuple[RunConfig, dict[str, Any]]:
    """The checkpoint's config, with only :data:`RESUME_OVERRIDABLE` options taken from the flags."""
    state = load_checkpoint(args.resume)
    base = RunConfig.from_dict(state["config"], source=str(args.resume))
    given = {k: v for k, v in vars(args).items() if k != "config"}
    changed = sorted(k for k, v in given.items() if k not in RESUME_OVERRIDABLE and getattr(base, k) != v)
    if changed:
        raise ConfigError(
            f"cannot change {', '.join('--' + k.replace('_', '-') for k in changed)} when resuming; "
            f"only {', '.join(sorted('--' + k.replace('_', '-') for k in RESUME_OVERRIDABLE))} may differ"
        )
    overrides = {k: v for k, v in given.items() if k in RESUME_OVERRIDABLE}
    return dataclasses.replace(base, **overrides).resolved(), state


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.finetune",
        description=__doc__.split("\n\n")[0] + f"\n\nDatasets: {', '.join(list_datasets())}.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    joined = False
    try:
        if getattr(args, "resume", None):
            cfg, state = resume_config(args)
        else:
            cfg, state = config_from_args(args).resolved(), None
        already = distributed.is_distributed()  # e.g. a caller's own process group: leave it be
        world = distributed.init_from_env(resolve_device(cfg.device).type)  # torchrun, or 1 process
        joined = world.world_size > 1 and not already
        if not world.is_main:
            logging.getLogger().setLevel(logging.ERROR)  # rank 0 speaks for everyone
        run = Run(cfg, state, show_progress=sys.stderr.isatty())
        start = time.perf_counter()
        final = run.fit()
    except (ConfigError, DatasetError, WeightsError, CheckpointError, TrainingError, ValueError) as e:
        if distributed.is_main():
            print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if joined:
            distributed.cleanup()
    if not run.is_main:
        return 0
    minutes = (time.perf_counter() - start) / 60
    summary = f"done in {minutes:.1f} min: best val top-1 {run.progress.best_val_top1:.2f}%"
    if final:
        summary += f", test top-1 {final['test_top1']:.2f}% (top-5 {final['test_top5']:.2f}%)"
    print(f"{summary}; outputs in {run.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
