"""One dataclass describes a fine-tuning run; the CLI, YAML files and checkpoints all use it.

Precedence: dataclass defaults < ``--config run.yaml`` < command-line flags. The resolved config is
written to ``<output>/config.yaml`` and stored in every checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from clce_core.losses import list_losses, loss_options


class ConfigError(ValueError):
    """A run configuration that cannot work; the message says which option and why."""


def _opt(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    """A dataclass field carrying its CLI help text (and extra argparse options)."""
    meta = {"help": help, **argparse_kwargs}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    """Everything a fine-tuning run needs. Comments are the ``--help`` text."""

    # --- data
    dataset: str = _opt("", "dataset name (see --help's list), e.g. flowers102, fashion-mnist, imagefolder")
    data_dir: str | None = _opt(
        None,
        "where the dataset lives (default: ~/.cache/clce/data/NAME, or $CLCE_DATA_HOME/NAME; the image folder itself for imagefolder)",
    )
    download: bool = _opt(False, "download the dataset with torchvision if it is missing (needs a network)")
    train_per_class: int | None = _opt(None, "keep only K training images per class (low-data runs)")
    val_fraction: float = _opt(
        0.1, "share of each training class held out for validation when the dataset has no val split"
    )
    val_per_class: int | None = _opt(None, "cap the validation split at N images per class (faster epochs)")
    test_per_class: int | None = _opt(
        None, "cap the test split at N images per class (quick looks; the full split is the reported number)"
    )
    img_size: int | None = _opt(None, "training and evaluation resolution (default: the model's own)")
    workers: int = _opt(2, "data-loading worker processes")
    # --- augmentation (two independent views per image for contrastive losses)
    crop_scale: float = _opt(0.25, "RandomResizedCrop minimum area fraction")
    hflip: float = _opt(0.5, "horizontal flip probability (0 for glyphs, digits, text)")
    color_jitter: float = _opt(0.4, "colour jitter strength (0 disables)")
    # --- model
    model: str = _opt("tf_efficientnet_lite0", "any timm model name")
    pretrained: str = _opt(
        "auto", "packaged | hub | none | PATH; auto = packaged weights where they exist, else hub"
    )
    # --- loss
    loss: str = _opt("clce", "loss from the registry", choices=list_losses())
    lam: float = _opt(0.9, "λ: weight of the contrastive term, (1-λ)·CE + λ·contrastive (paper Eq. 1)")
    tau: float = _opt(0.5, "τ: temperature of the contrastive term")
    beta: float = _opt(1.0, "β: H-SCL hardness (hscl only)")
    detach_weights: bool = _opt(False, "treat CLCE's hard-negative weights as constants in backward")
    # --- batches
    batch_size: int = _opt(
        64,
        "images per optimisation step, over all processes under torchrun (each of N processes loads "
        "batch-size / N); contrastive losses see 2 views of each",
    )
    per_class: int | None = _opt(
        None,
        "images per class in a batch (class-balanced batches); "
        "default 4 for contrastive losses, 0 (plain shuffling) for ce",
    )
    chunk_size: int | None = _opt(
        None,
        "gradient caching (Gao et al. 2021): each process runs the model over its rows at most C rows "
        "(views) at a time, so activation memory is that of C rows while the loss still sees the whole "
        "batch; about one extra forward pass. The gradient is the one-pass gradient (dropout replays "
        "its masks), except that BatchNorm layers in training mode normalise each chunk by its own "
        "statistics (as DDP does per process): models without BatchNorm, or with it in eval mode, get "
        "the identical gradient (none = one pass)",
    )
    channels_last: bool = _opt(
        True,
        "keep images and convolution weights channels-last (NHWC): EfficientNet steps ran about 1.5× "
        "faster on the CPU this way (same maths up to float rounding); --no-channels-last for NCHW",
    )
    # --- optimisation
    epochs: int = _opt(10, "training epochs")
    optimizer: str = _opt("adamw", "optimizer", choices=["adamw", "sgd"])
    lr: float = _opt(3e-4, "encoder learning rate (peak, after warm-up)")
    head_lr: float | None = _opt(None, "head learning rate (default 10 × --lr)")
    weight_decay: float = _opt(0.05, "weight decay (not applied to norms and biases)")
    momentum: float = _opt(0.9, "SGD momentum")
    warmup_epochs: float = _opt(1.0, "linear warm-up length in epochs (may be fractional), then cosine decay")
    clip_grad: float | None = _opt(1.0, "clip the gradient norm to this value (none to disable)")
    amp: str = _opt(
        "auto",
        "mixed precision: auto (bf16 on CUDA when supported, else fp16; off on CPU), off, bf16, fp16",
        choices=["auto", "off", "bf16", "fp16"],
    )
    ema: bool = _opt(
        False,
        "keep an exponential moving average of the weights; it is what gets evaluated and saved as best",
    )
    ema_decay: float = _opt(0.999, "EMA decay per step")
    # --- run
    seed: int = _opt(0, "random seed (data split, sampling, augmentation, init)")
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N")
    output: str | None = _opt(None, "run folder (default runs/DATASET-LOSS)")
    resume: str | None = _opt(None, "checkpoint to continue from (e.g. runs/X/last.pt); restores everything")
    max_steps_per_epoch: int | None = _opt(None, "stop each epoch after N steps (smoke tests)")

    def resolved(self) -> RunConfig:
        """A copy with defaults that depend on other fields filled in, after validation."""
        cfg = dataclasses.replace(self)
        if not cfg.dataset:
            raise ConfigError("--dataset is required (e.g. --dataset fashion-mnist)")
        if cfg.loss not in list_losses():
            raise ConfigError(f"--loss {cfg.loss!r} is unknown; choose one of: {', '.join(list_losses())}")
        if cfg.per_class is None:
            cfg.per_class = 0 if cfg.loss == "ce" else 4
        if cfg.head_lr is None:
            cfg.head_lr = 10 * cfg.lr
        if cfg.output is None:
            cfg.output = str(Path("runs") / f"{cfg.dataset}-{cfg.loss}")
        positive = {"batch_size": cfg.batch_size, "epochs": cfg.epochs, "lr": cfg.lr, "tau": cfg.tau}
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        if not 0.0 <= cfg.lam <= 1.0:
            raise ConfigError(f"--lam must be in [0, 1], got {cfg.lam}")
        if cfg.per_class < 0:
            raise ConfigError(f"--per-class must be >= 0, got {cfg.per_class}")
        if cfg.train_per_class is not None and cfg.train_per_class < 1:
            raise ConfigError(f"--train-per-class must be >= 1, got {cfg.train_per_class}")
        for name in ("val_per_class", "test_per_class"):
            value = getattr(cfg, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if not 0.0 < cfg.crop_scale <= 1.0:
            raise ConfigError(f"--crop-scale must be in (0, 1], got {cfg.crop_scale}")
        if cfg.chunk_size is not None and cfg.chunk_size < 1:
            raise ConfigError(f"--chunk-size must be >= 1 (or none), got {cfg.chunk_size}")
        if cfg.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {cfg.workers}")
        return cfg

    def loss_kwargs(self) -> dict[str, float | bool]:
        """The loss flags that the chosen ``--loss`` takes, as :func:`clce_core.losses.create_loss`
        keywords (``ce`` none; ``clce`` lam, temperature, detach_weights; ...)."""
        flags = {
            "lam": self.lam,
            "temperature": self.tau,
            "beta": self.beta,
            "detach_weights": self.detach_weights,
        }
        return {k: v for k, v in flags.items() if k in loss_options(self.loss)}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> RunConfig:
        """Build from a mapping; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}")
        return cls(**values)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML run file; keys may use dashes or underscores."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def save_yaml(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _parse_optional(kind: type) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in {"none", "null"} else kind(text)

    parse.__name__ = kind.__name__
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field, ``--field-name``; defaults are suppressed so only given flags override."""
    parser.add_argument("--config", help="YAML file of options; flags given here override it")
    for f in fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        meta = dict(f.metadata)
        help_text = meta.pop("help")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if "default" not in help_text and default not in (None, ""):
            help_text += f" (default: {default})"
        if f.type in ("bool",):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
            continue
        kind = {"int": int, "float": float, "str": str}.get(str(f.type).split(" |")[0], str)
        parse = _parse_optional(kind) if "None" in str(f.type) else kind
        parser.add_argument(flag, type=parse, default=argparse.SUPPRESS, help=help_text, **meta)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Defaults < YAML (``--config``) < explicit flags."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_yaml(args.config))
    values.update({k: v for k, v in vars(args).items() if k != "config"})
    return RunConfig.from_dict(values, source=getattr(args, "config", None) or "arguments")
