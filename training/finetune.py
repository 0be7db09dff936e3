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
``last.pt`` (after every epoch) and TensorBoard event files. A folder that already holds a run's
checkpoints is refused: continue it with ``--resume``, or replace it with ``--force`` (its files are
moved aside, not deleted). A run killed at any instant continues with ``--resume OUTPUT/last.pt`` (or,
killed before the first epoch was saved, with the same command) to the weights and ``best.pt`` of an
uninterrupted run.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from clce_core.losses import create_loss
from clce_core.models import ClassifierModel, WeightsError, create_model, model_data_config
from training import distributed
from training.checkpoint import CheckpointError, load_checkpoint, model_for_checkpoint, save_checkpoint
from training.config import ConfigError, RunConfig, add_arguments, config_from_args, save_yaml
from training.datasets import DatasetError, list_datasets
from training.device import resolve_device
from training.engine import EvalResult, TrainingError, build_step_context, evaluate, train_one_epoch
from training.faults import kill_point
from training.loaders import build_loaders, build_splits
from training.optim import build_optimizer, build_scheduler
from training.resume import resume_config
from training.run_folder import append_metrics, check_output, set_aside, tidy
from training.run_state import Progress, eval_module, restore_training_state, training_state
from training.seeding import rank_epoch_seed, seed_everything

log = logging.getLogger("clce.finetune")

# Bad input, a run folder that cannot take the run, or a file that cannot be written: one line, exit 2.
CLI_ERRORS = (ConfigError, DatasetError, WeightsError, CheckpointError, TrainingError, ValueError, OSError)


def build_model(cfg: RunConfig, num_classes: int, pretrained: str) -> ClassifierModel:
    """The timm encoder + linear head; ``--img-size`` reaches models that take it (ViTs)."""
    return create_model(cfg.model, num_classes, pretrained, img_size=cfg.img_size)


class Run:
    """A fine-tuning run: builds everything from a :class:`RunConfig`, then :meth:`fit`.

    Under torchrun (a process group initialised by :func:`training.distributed.init_from_env`) every
    rank builds the same run; the model is wrapped in DDP, and rank 0 alone logs, evaluates and
    writes files while the others wait at a barrier.

    A run refuses an output folder that holds another run's checkpoints unless ``force`` is set
    (see :func:`training.run_folder.check_output`).
    """

    def __init__(
        self,
        cfg: RunConfig,
        resume_state: dict[str, Any] | None = None,
        show_progress: bool = True,
        force: bool = False,
    ):
        self.cfg = cfg
        self.world = distributed.current()
        self.is_main = self.world.is_main
        self.show_progress = show_progress and self.is_main
        self.out = Path(cfg.output)  # type: ignore[arg-type]
        self.resumed = resume_state is not None
        self.replace_earlier = check_output(self.out, cfg.resume if self.resumed else None, force)
        self.device = resolve_device(cfg.device, self.world.local_rank if self.world.world_size > 1 else None)
        seed_everything(cfg.seed)  # the same on every rank: the same initial weights

        self.loss_fn = create_loss(cfg.loss, **cfg.loss_kwargs())
        self.data_config = model_data_config(cfg.model, cfg.img_size)
        self.data = build_splits(cfg, self.data_config, self.loss_fn.views)
        log.info("%s", self.data.describe())
        self.memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
        self.model = (
            model_for_checkpoint(cfg.model, self.data.num_classes, cfg.img_size, cfg.resume)  # type: ignore[arg-type]
            if self.resumed  # the checkpoint's weights are loaded below
            else build_model(cfg, self.data.num_classes, cfg.pretrained)
        ).to(self.device, memory_format=self.memory_format)
        self.loaders = build_loaders(cfg, self.data, self.loss_fn.views, self.device, self.world)
        optimizer = build_optimizer(cfg, self.model, self.device)
        scheduler = build_scheduler(cfg, optimizer, self.loaders.steps_per_epoch)
        self.ctx = build_step_context(
            cfg, self.model, self.loss_fn, optimizer, scheduler, self.device, self.world.world_size,
            self.memory_format,
        )  # fmt: skip
        self.progress = Progress() if resume_state is None else restore_training_state(resume_state, self.ctx)
        if self.resumed:
            log.info("resuming %s after epoch %d of %d", cfg.resume, self.progress.epoch, cfg.epochs)

    # ------------------------------------------------------------------ checkpoints
    @property
    def eval_model(self) -> torch.nn.Module:
        """What is evaluated and saved: the EMA weights when ``--ema`` is on, else the model."""
        return eval_module(self.ctx)

    def state(self) -> dict[str, Any]:
        """The checkpoint of the run as it stands (see :func:`training.run_state.training_state`)."""
        return training_state(self.ctx, self.cfg, self.data.classes, self.data_config, self.progress)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, float]:
        """Train the remaining epochs, then evaluate ``best.pt`` on the test split once (rank 0)."""
        writer = None
        if self.is_main:
            self._prepare_folder()
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides the events of epochs that a killed run logged and this one trains again
            writer = SummaryWriter(str(self.out), purge_step=self.progress.epoch + 1)
        try:
            while self.progress.epoch < self.cfg.epochs:
                self._one_epoch(writer)
        except KeyboardInterrupt:
            # Half an epoch is not saved (it could not continue exactly): last.pt stays the last
            # completed epoch.
            if self.is_main:
                last = self.out / "last.pt"
                again = f"--resume {last}" if last.is_file() else "the same command (no epoch was saved yet)"
                log.warning("interrupted: continue with %s", again)
            raise
        finally:
            if writer is not None:
                writer.close()
        return self._test()

    def _prepare_folder(self) -> None:
        """Set an earlier run aside (``--force``), tidy up after a kill, repair ``best.pt``, write the config."""
        self.out.mkdir(parents=True, exist_ok=True)
        if self.replace_earlier:
            set_aside(self.out)
        tidy(self.out, self.progress.epoch)
        progress = self.progress
        if self.resumed and progress.epoch > 0 and progress.best_epoch == progress.epoch:
            # The checkpoint resumed is the best so far, so best.pt must hold it: a kill between the
            # last.pt and best.pt writes left best.pt older (or missing).
            save_checkpoint(self.state(), self.out / "best.pt")
        save_yaml(self.cfg, self.out / "config.yaml")

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
        kill_point(f"trained@{progress.epoch + 1}")
        if not self.is_main:  # rank 0 evaluates and writes; the others wait for it
            progress.epoch += 1
            distributed.barrier()
            return
        try:
            self._evaluate_and_save(train, writer)
        finally:
            distributed.barrier()

    def _evaluate_and_save(self, train: dict[str, float], writer: Any) -> None:
        """Validate, append to ``metrics.jsonl`` and TensorBoard, save ``last.pt`` (and ``best.pt``).

        The order makes every kill recoverable: the metrics line first (a resume cuts it back), then
        ``last.pt``, then ``best.pt`` (a resume rewrites it when ``last.pt`` says it is the best).
        """
        progress = self.progress
        val = self._evaluate(self.loaders.val, "val")
        progress.epoch += 1
        metrics = {"epoch": progress.epoch, **train, "val_top1": val.top1, "val_top5": val.top5}
        progress.metrics = metrics
        append_metrics(self.out, metrics)
        kill_point(f"metrics@{progress.epoch}")
        for key, value in metrics.items():
            if key != "epoch":
                writer.add_scalar(key, value, progress.epoch)
        improved = val.top1 > progress.best_val_top1
        if improved:
            progress.best_val_top1, progress.best_epoch = val.top1, progress.epoch
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
        append_metrics(self.out, final)
        kill_point("tested")
        return final


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.finetune",
        description=__doc__.split("\n\n")[0] + f"\n\nDatasets: {', '.join(list_datasets())}.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace the run already in --output: its files (checkpoints, config, metrics, TensorBoard "
        "events) move to OUTPUT/replaced-<time>/; without it a folder holding best.pt or last.pt is refused",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    force = vars(args).pop("force")  # how to treat the folder, not part of the run's config
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
        run = Run(cfg, state, show_progress=sys.stderr.isatty(), force=force)
        start = time.perf_counter()
        final = run.fit()
    except CLI_ERRORS as e:
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
