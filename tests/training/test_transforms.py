"""Train / eval transforms, two views and the CONTRACTS row layout."""

import numpy as np
import pytest
import torch
from PIL import Image

from training.transforms import AugConfig, TwoViews, build_transforms, eval_transform, stack_views

LITE0 = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "crop_pct": 0.875,
    "crop_mode": "center",
}


def test_transforms_shapes_and_eval_equals_timm():
    from timm.data import create_transform
    from torchvision.transforms import InterpolationMode

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    train_tf, eval_tf = build_transforms(LITE0, img_size=32)
    timm_eval = create_transform(**{**LITE0, "input_size": (3, 32, 32)}, is_training=False)
    assert torch.equal(eval_tf(image), timm_eval(image)) and eval_tf(image).shape == (3, 32, 32)
    assert train_tf(image).shape == (3, 32, 32)
    crop = train_tf.transforms[0]
    assert crop.interpolation == InterpolationMode.BICUBIC and crop.scale == AugConfig().scale
    names = [
        type(t).__name__
        for t in build_transforms(LITE0, 32, aug=AugConfig(hflip=0, color_jitter=0))[0].transforms
    ]
    assert names == ["RandomResizedCrop", "ToTensor", "Normalize"]
    assert build_transforms(LITE0)[1](image).shape == (3, 224, 224)
    with pytest.raises(ValueError, match="scale"):
        build_transforms(LITE0, 32, aug=AugConfig(scale=(0.5, 0.2)))


def test_one_eval_transform_reads_every_form_of_the_data_config():
    """A checkpoint / model card stores lists and may hold None: the same transform as timm's tuples."""
    from timm.data import create_transform

    from training import embed, onnx_export

    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (41, 29, 3), dtype=np.uint8))
    timm_eval = create_transform(**{**LITE0, "input_size": (3, 24, 24)}, is_training=False)
    stored = {k: list(v) if isinstance(v, tuple) else v for k, v in LITE0.items()}
    stored |= {"input_size": [3, 24, 24], "crop_mode": None, "labels": ["a"]}  # card: lists, None, extras
    assert torch.equal(eval_transform(stored)(image), timm_eval(image))
    assert torch.equal(build_transforms(LITE0, img_size=24)[1](image), timm_eval(image))
    assert onnx_export.eval_transform is eval_transform and not hasattr(embed, "eval_transform")


def test_two_views_are_independent_augmentations():
    torch.manual_seed(0)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    train_tf, _ = build_transforms(LITE0, img_size=24, two_views=True)
    assert isinstance(train_tf, TwoViews)
    views = train_tf(image)
    assert views.shape == (2, 3, 24, 24) and not torch.equal(views[0], views[1])


def test_stack_views_row_layout():
    b = 3
    images = torch.arange(b * 2, dtype=torch.float32).view(b, 2, 1, 1, 1).expand(b, 2, 3, 2, 2)  # value 2i+v
    rows, labels = stack_views(images, torch.tensor([7, 8, 9]))
    assert rows.shape == (2 * b, 3, 2, 2)
    assert rows[:, 0, 0, 0].tolist() == [0, 2, 4, 1, 3, 5]  # [view 1 of 0..B-1; view 2 of 0..B-1]
    assert labels.tolist() == [7, 8, 9, 7, 8, 9]
