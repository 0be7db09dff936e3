"""Tests for clce_core.models: shapes, the on-line probe, backbone names (weight sources: test_weights.py)."""

from __future__ import annotations

import pytest
import torch

from clce_core.models import create_model

LITE0 = "tf_efficientnet_lite0"


# ------------------------------------------------------------------------------------------ shapes, probe


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backbone", "kwargs", "size"),
    [
        ("resnet10t", {}, 48),
        (LITE0, {}, 64),
        ("mobilenetv3_small_050", {}, 32),  # D = head_hidden_size (1024), not num_features (288)
        ("vit_tiny_patch16_224", {"img_size": 32}, 32),
    ],
)
def test_forward_shapes(backbone: str, kwargs: dict, size: int) -> None:
    model = create_model(backbone, num_classes=7, pretrained="none", **kwargs)
    images = torch.randn(3, 3, size, size)
    embedding, logits = model(images)
    assert embedding.shape == (3, model.embedding_dim)
    assert logits.shape == (3, 7)
    assert model.num_classes == 7 and model.model_name == backbone and model.weights == "random"
    torch.testing.assert_close(model.embed(images), embedding)


@pytest.mark.slow
def test_data_config_follows_img_size() -> None:
    config = create_model("vit_tiny_patch16_224", 3, pretrained="none", img_size=32).data_config
    assert config["input_size"] == (3, 32, 32)
    assert {"interpolation", "crop_pct", "mean", "std"} <= set(config)


@pytest.mark.slow
def test_detach_head_trains_head_only() -> None:
    model = create_model("resnet10t", num_classes=4, pretrained="none")
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for detach, encoder_learns in [(True, False), (False, True)]:
        model.zero_grad(set_to_none=True)
        _, logits = model(images, detach_head=detach)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        encoder_grads = [p.grad for p in model.encoder.parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in encoder_grads) == encoder_learns
        assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------- argument checks


def test_unknown_model_name_suggests_close_matches() -> None:
    with pytest.raises(ValueError, match="unknown timm model 'resnet_10t'.*resnet10t"):
        create_model("resnet_10t", 3, pretrained="none")
    with pytest.raises(ValueError, match="num_classes"):
        create_model("resnet10t", 0, pretrained="none")
