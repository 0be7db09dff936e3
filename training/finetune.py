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
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler

from clce_core.losses import create_loss
from clce_core.models import ClassifierModel, WeightsError, create_model, model_data_config
from training import distributed
from training.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from training.config import ConfigError, RunConfig, add_arguments, config_from_args, save_yaml
from training.datasets import DatasetError, DatasetSplits, build_datasets, take_per_class
from training.engine import (
    StepContext,
    TrainingError,
    evaluate,
    param_groups,
    resolve_amp,
    train_one_epoch,
    warmup_cosine,
)
from training.samplers import ClassBalancedBatchSampler
from training.transforms import AugConfig, build_transforms, two_view_collate

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


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """``auto``: CUDA when available, else the CPU. Under torchrun a CUDA process takes GPU ``local_rank``."""
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
    if device.type == "cuda" and local_rank is not None:
        device = torch.device("cuda", local_rank)
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: RunConfig, num_classes: int, pretrained: str) -> ClassifierModel:
    """The timm encoder + linear head; ``--img-size`` reaches models that take it (ViTs)."""
    return create_model(cfg.model, num_classes, pretrained, img_size=cfg.img_size)


class _EveryNth(Sampler[list[int]]):
    """Batches ``rank, rank + n, ...`` of a batch sampler that every rank builds identically."""

    def __init__(self, batches: Sampler[list[int]], n: int, rank: int) -> None:
        self.batches, self.n, self.rank = batches, n, rank

    def __len__(self) -> int:
        return len(self.batches) // self.n  # type: ignore[arg-type]

    def __iter__(self):
        for i, batch in enumerate(self.batches):
            if i // self.n == len(self):
                return
            if i % self.n == self.rank:
                yield batch


def build_loaders(
    cfg: RunConfig,
    data: DatasetSplits,
    views: int,
    device: torch.device,
    world: distributed.DistInfo | None = None,
) -> dict[str, Any]:
    """Training loader (class-balanced or shuffled batches) and eval loaders; ``set_epoch`` reseeds.

    Under DDP each of the ``world.world_size`` processes loads ``batch_size / world_size`` images
    per step: its own share of the same seeded sequence of batches (``num_replicas`` / ``rank``).
    """
    world = world or distributed.DistInfo()
    common = {"num_workers": cfg.workers, "pin_memory": device.type == "cuda"}
    collate = two_view_collate if views == 2 else None
    if cfg.batch_size % world.world_size:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} does not split evenly over {world.world_size} processes; "
            f"use a multiple of {world.world_size}"
        )
    per_rank = cfg.batch_size // world.world_size
    if cfg.per_class:
        try:
            sampler: Sampler[list[int]] = ClassBalancedBatchSampler(
                data.train.targets,
                per_rank,
                cfg.per_class,
                seed=cfg.seed,
                num_replicas=world.world_size,
                rank=world.rank,
            )
        except ValueError as e:
            if world.world_size == 1:
                raise
            raise ConfigError(
                f"each of {world.world_size} processes gets {per_rank} of the --batch-size {cfg.batch_size} "
                f"images: {e}"
            ) from None
        generator = None
    else:
        if len(data.train) < cfg.batch_size:
            raise ConfigError(
                f"--batch-size {cfg.batch_size} is larger than the {len(data.train)} training images; lower it"
            )
        generator = torch.Generator()
        sampler = BatchSampler(RandomSampler(data.train, generator=generator), per_rank, drop_last=True)
        if world.world_size > 1:
            sampler = _EveryNth(sampler, world.world_size, world.rank)

    def set_epoch(epoch: int) -> None:
        if generator is not None:
            generator.manual_seed(cfg.seed * 100_003 + epoch)
        else:
            sampler.set_epoch(epoch)  # type: ignore[attr-defined]

    eval_bs = max(cfg.batch_size, 64)
    loaders = {
        "train": DataLoader(data.train, batch_sampler=sampler, collate_fn=collate, **common),
        "val": DataLoader(data.val, batch_size=eval_bs, **common),
        "test": DataLoader(data.test, batch_size=eval_bs, **common) if data.test is not None else None,
        "set_epoch": set_epoch,
    }
    return loaders


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
        pretrained = "none" if resume_state is not None else cfg.pretrained
        self.data_config = data_config = model_data_config(cfg.model, cfg.img_size)
        train_tf, eval_tf = build_transforms(
            data_config,
            cfg.img_size,
            two_views=self.loss_fn.views == 2,
            aug=AugConfig(scale=(cfg.crop_scale, 1.0), hflip=cfg.hflip, color_jitter=cfg.color_jitter),
        )
        with distributed.main_first():  # a --download happens once, on rank 0
            self.data = build_datasets(
                cfg.dataset,
                cfg.data_dir,
                cfg.download,
                train_tf,
                eval_tf,
                cfg.train_per_class,
                cfg.seed,
                cfg.val_fraction,
            )
        if cfg.val_per_class is not None:  # seeded and class-balanced, like every split decision
            self.data.val = self.data.val.subset(
                take_per_class(self.data.val.targets, cfg.val_per_class, cfg.seed)
            )
        if cfg.test_per_class is not None and self.data.test is not None:
            self.data.test = self.data.test.subset(
                take_per_class(self.data.test.targets, cfg.test_per_class, 0)
            )
        log.info("%s", self.data.describe())
        self.memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
        self.model = build_model(cfg, self.data.num_classes, pretrained).to(
            self.device, memory_format=self.memory_format
        )
        self.loaders = build_loaders(cfg, self.data, self.loss_fn.views, self.device, self.world)

        steps_per_epoch = len(self.loaders["train"])
        if cfg.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
        if steps_per_epoch == 0:
            raise ConfigError(
                f"no full batch of {cfg.batch_size} images in {len(self.data.train)} training images; "
                "lower --batch-size"
            )
        groups = param_groups(self.model, cfg.lr, cfg.head_lr, cfg.weight_decay)  # type: ignore[arg-type]
        if cfg.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True
            )
        else:
            # fused: one kernel for all parameters (CPU and CUDA), about 4× faster than the per-tensor loop
            self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, fused=self.device.type in ("cpu", "cuda"))
        total = steps_per_epoch * cfg.epochs
        warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(total, warmup))
        amp_dtype = resolve_amp(cfg.amp, self.device)
        scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
        ema = None
        if cfg.ema:
            from timm.utils import ModelEmaV3

            ema = ModelEmaV3(self.model, decay=cfg.ema_decay, device=self.device)
        train_model: torch.nn.Module = self.model
        if self.world.world_size > 1:  # after the optimizer and EMA, which hold the unwrapped model
            train_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            log.info(
                "DDP: %d processes × %d images per step, backend %s",
                self.world.world_size,
                cfg.batch_size // self.world.world_size,
                torch.distributed.get_backend(),
            )
        self.ctx = StepContext(
            train_model,
            self.loss_fn,
            self.optimizer,
            self.scheduler,
            self.device,
            amp_dtype,
            scaler,
            cfg.clip_grad,
            ema,
            world_size=self.world.world_size,
            chunk_size=cfg.chunk_size,
            memory_format=self.memory_format,
        )
        self.epoch = 0
        self.global_step = 0
        self.best_val_top1 = -1.0
        self.last_metrics: dict[str, float] = {}
        if resume_state is not None:
            self._restore(resume_state)

    # ------------------------------------------------------------------ checkpoints
    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ctx.ema.module if self.ctx.ema is not None else self.model

    def state(self) -> dict[str, Any]:
        import timm

        import clce_core

        state = {
            "model": self.eval_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "rng": rng_state(),
            "config": self.cfg.to_dict(),
            "classes": list(self.data.classes),
            "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in self.data_config.items()},
            "model_name": self.cfg.model,
            "embedding_dim": self.model.embedding_dim,
            "metrics": dict(self.last_metrics),
            "best_val_top1": self.best_val_top1,
            "versions": {
                "torch": str(torch.__version__),
                "timm": timm.__version__,
                "clce": clce_core.__version__,
            },
        }
        if self.ctx.ema is not None:
            state["raw_model"] = self.model.state_dict()
        if self.ctx.scaler is not None:
            state["scaler"] = self.ctx.scaler.state_dict()
        return state

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["raw_model"] if "raw_model" in state else state["model"])
            if self.ctx.ema is not None:
                self.ctx.ema.module.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, KeyError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"the checkpoint does not fit this run ({first[:200]})") from None
        if self.ctx.scaler is not None and "scaler" in state:
            self.ctx.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state.get("global_step", 0))
        self.best_val_top1 = float(state.get("best_val_top1", -1.0))
        self.last_metrics = dict(state.get("metrics", {}))
        set_rng_state(state["rng"])

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
            while self.epoch < self.cfg.epochs:
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
        cfg = self.cfg
        self.loaders["set_epoch"](self.epoch)
        if self.world.world_size > 1:
            # Each rank draws its own augmentations and dropout masks, from (seed, epoch, rank): a
            # resume under the same number of processes repeats them (one process keeps the
            # checkpointed generators instead, which resume exactly too).
            seed_everything(
                int(np.random.SeedSequence([cfg.seed, self.epoch, self.world.rank]).generate_state(1)[0])
            )
        train = train_one_epoch(
            self.ctx, self.loaders["train"], self.epoch + 1, cfg.max_steps_per_epoch, self.show_progress
        )
        self.global_step += (
            min(len(self.loaders["train"]), cfg.max_steps_per_epoch)
            if cfg.max_steps_per_epoch
            else len(self.loaders["train"])
        )
        if not self.is_main:  # rank 0 evaluates and writes; the others wait for it
            self.epoch += 1
            distributed.barrier()
            return
        try:
            self._evaluate_and_save(train, writer)
        finally:
            distributed.barrier()

    def _evaluate_and_save(self, train: dict[str, float], writer: Any) -> None:
        cfg = self.cfg
        val = evaluate(
            self.eval_model,
            self.loaders["val"],
            self.device,
            self.ctx.amp_dtype,
            desc="val",
            show_progress=self.show_progress,
            memory_format=self.memory_format,
        )
        self.epoch += 1
        metrics = {"epoch": self.epoch, **train, "val_top1": val.top1, "val_top5": val.top5}
        self.last_metrics = metrics
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        for key, value in metrics.items():
            if key != "epoch":
                writer.add_scalar(key, value, self.epoch)
        improved = val.top1 > self.best_val_top1
        if improved:
            self.best_val_top1 = val.top1
        state = self.state()
        save_checkpoint(state, self.out / "last.pt")
        if improved:
            save_checkpoint(state, self.out / "best.pt")
        log.info(
            "epoch %d/%d  loss %.4f (ce %.4f, contrastive %.4f)  val top-1 %.2f%%  %.1f img/s%s",
            self.epoch,
            cfg.epochs,
            train["train_loss"],
            train["train_ce"],
            train["train_contrastive"],
            val.top1,
            train["images_per_s"],
            "  (best)" if improved else "",
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
        if self.loaders["test"] is None:
            log.info("no test split: skipping the final test evaluation")
            return {}
        best = load_checkpoint(self.out / "best.pt", map_location=self.device)
        self.eval_model.load_state_dict(best["model"])
        test = evaluate(
            self.eval_model,
            self.loaders["test"],
            self.device,
            self.ctx.amp_dtype,
            desc="test",
            show_progress=self.show_progress,
            memory_format=self.memory_format,
        )
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
    from training.datasets import list_datasets

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
    summary = f"done in {minutes:.1f} min: best val top-1 {run.best_val_top1:.2f}%"
    if final:
        summary += f", test top-1 {final['test_top1']:.2f}% (top-5 {final['test_top5']:.2f}%)"
    print(f"{summary}; outputs in {run.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
