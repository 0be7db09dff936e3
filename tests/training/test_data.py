"""Datasets: every registry entry runs its real loading code on a tiny fake in the exact on-disk format.

torchvision checks the md5 of Flowers-102's .mat files and of CIFAR-100's pickles; a fake cannot match
them, so the ``no_md5`` fixture replaces torchvision's ``check_integrity`` in those two modules with
"the file exists" (md5=None, torchvision's own no-checksum path). Everything else is the real code.
"""

import gzip
import json
import os
import pickle
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat
from torchvision.datasets import utils as tv_utils

from benchmarks.harness import glyphs_dir
from tests.training.test_images import _image_zoo
from tests.training.test_transforms import LITE0
from training.datasets import (
    DATA_HOME_ENV,
    DatasetError,
    ImageFiles,
    build_datasets,
    build_fewshot_split,
    class_folder_images,
    fashion_mnist,
    fewshot_classes,
    glyphs,
    list_datasets,
)
from training.datasets import torchvision as torchvision_datasets
from training.transforms import build_transforms, two_view_collate

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
GLYPHS = glyphs_dir(check=False)  # $CLCE_GLYPHS_DIR


# --------------------------------------------------------------------------- fakes, one per dataset


def _jpg(path: Path, seed: int, size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, quality=95)


def fake_flowers102(root: Path) -> dict:
    base = root / "flowers-102"
    labels = np.repeat([1, 2, 3], 6)  # 1-based, 6 images per class: 2 train / 2 val / 2 test
    for i in range(len(labels)):
        _jpg(base / "jpg" / f"image_{i + 1:05d}.jpg", i)
    ids = np.arange(1, len(labels) + 1).reshape(3, 3, 2)  # (class, split, image)
    savemat(base / "imagelabels.mat", {"labels": labels[None, :]})
    split = {k: ids[:, j].reshape(1, -1) for j, k in enumerate(("trnid", "valid", "tstid"))}
    savemat(base / "setid.mat", split)
    return {"root": root, "classes": 102, "sizes": (6, 6, 6), "carved_val": False}


def fake_oxford_pets(root: Path) -> dict:
    base = root / "oxford-iiit-pet"
    lines = {"trainval": [], "test": []}
    for label, breed in enumerate(("Abyssinian", "american_bulldog", "Bengal"), start=1):
        for i in range(1, 9):
            name = f"{breed}_{i}"
            _jpg(base / "images" / f"{name}.jpg", label * 100 + i)
            lines["trainval" if i <= 6 else "test"].append(f"{name} {label} {1 + (breed[0].islower())} 1")
    (base / "annotations").mkdir(parents=True)
    for split, rows in lines.items():
        (base / "annotations" / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return {"root": root, "classes": 3, "sizes": (15, 3, 6), "carved_val": True}


def fake_food101(root: Path) -> dict:
    base = root / "food-101"
    meta = {"train": {}, "test": {}}
    for c, food in enumerate(("apple_pie", "baklava", "ramen")):
        for i in range(10):
            _jpg(base / "images" / food / f"{1000 + i}.jpg", c * 100 + i)
            meta["train" if i < 8 else "test"].setdefault(food, []).append(f"{food}/{1000 + i}")
    (base / "meta").mkdir(parents=True)
    for split, content in meta.items():
        (base / "meta" / f"{split}.json").write_text(json.dumps(content))
    return {"root": root, "classes": 3, "sizes": (21, 3, 6), "carved_val": True}


def fake_caltech256(root: Path) -> dict:
    base = root / "caltech256" / "256_ObjectCategories"
    for c, name in enumerate(("001.ak47", "002.american-flag", "257.clutter")):
        for i in range(1, 7):
            _jpg(base / name / f"{name[:3]}_{i:04d}.jpg", c * 100 + i)
    # 6 images per class, CALTECH256_TRAIN_PER_CLASS patched to 4: train 3 / val 1 / test 2, clutter out
    return {"root": root, "classes": 2, "sizes": (6, 2, 4), "carved_val": True}


def _cifar_batch(n_per_class: int, seed: int) -> dict:
    fine = np.repeat(np.arange(100), n_per_class)
    coarse_of = {
        c: s
        for s, (_, fines) in enumerate(sorted(torchvision_datasets.CIFAR100_SUPERCLASSES.items()))
        for c in fines
    }
    rng = np.random.default_rng(seed)
    return {
        "data": rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8),
        "fine_labels": fine.tolist(),
        "coarse_labels": [coarse_of[torchvision_datasets.CIFAR100_CLASSES[f]] for f in fine],
        "filenames": [f"img_{i}.png" for i in range(len(fine))],
    }


def fake_cifar100(root: Path) -> dict:
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    for name, batch in (("train", _cifar_batch(4, 0)), ("test", _cifar_batch(2, 1))):
        (base / name).write_bytes(pickle.dumps(batch))
    meta = {
        "fine_label_names": torchvision_datasets.CIFAR100_CLASSES,
        "coarse_label_names": sorted(torchvision_datasets.CIFAR100_SUPERCLASSES),
    }
    (base / "meta").write_bytes(pickle.dumps(meta))
    # 4 training images per class: val 1 / train 3; 2 test images per class
    return {"root": root, "classes": 100, "sizes": (300, 100, 200), "carved_val": True}


def fake_cifar_fs(root: Path) -> dict:
    fake_cifar100(root)
    return {"root": root, "classes": 64, "sizes": (192, 64, 128), "carved_val": True}


def fake_fc100(root: Path) -> dict:
    fake_cifar100(root)
    return {"root": root, "classes": 60, "sizes": (180, 60, 120), "carved_val": True}


def _idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """Write the real IDX format: 0x00 0x00 0x08 ndim, big-endian int32 dims, uint8 data."""
    payload = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload += array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def write_fashion_files(folder: Path, compress: bool = True) -> None:
    rng = np.random.default_rng(0)
    for prefix, per_class in (("train", 10), ("t10k", 3)):
        labels = np.repeat(np.arange(10), per_class)
        _idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (len(labels), 28, 28)), compress)
        _idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress)


def fake_fashion_mnist(root: Path) -> dict:
    write_fashion_files(root / "FashionMNIST" / "raw")
    return {"root": root, "classes": 10, "sizes": (90, 10, 30), "carved_val": True}


def fake_imagefolder(root: Path) -> dict:
    for split, n in (("train", 5), ("val", 2), ("test", 2)):
        for c, name in enumerate(("cat", "dog", "fox")):
            for i in range(n):
                _jpg(root / split / name / f"{i}.jpg", c * 100 + i)
    return {"root": root, "classes": 3, "sizes": (15, 6, 6), "carved_val": False}


def fake_glyphs64(root: Path) -> dict:
    """The rendered layout: base/CLASS/NN.png, 64×64-style grey PNGs (8×8 here), 5 per class."""
    rng = np.random.default_rng(0)
    for name in glyphs.glyph_classes("train"):
        (root / "base" / name).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(root / "base" / name / f"{i:02d}.png")
    return {"root": root, "classes": 96, "sizes": (288, 96, 96), "carved_val": True}


FAKES = {
    "flowers102": fake_flowers102,
    "oxford-pets": fake_oxford_pets,
    "food101": fake_food101,
    "caltech256": fake_caltech256,
    "cifar100": fake_cifar100,
    "cifar-fs": fake_cifar_fs,
    "fc100": fake_fc100,
    "fashion-mnist": fake_fashion_mnist,
    "imagefolder": fake_imagefolder,
    "glyphs64": fake_glyphs64,
}


MISSING_WORDS = {  # what the one-line "not found" message must name
    "flowers102": "jpg/, imagelabels.mat and setid.mat",
    "oxford-pets": "annotations/ (trainval.txt, test.txt)",
    "food101": "meta/ (train.json, test.json)",
    "caltech256": "256_ObjectCategories/",
    "cifar100": "train, test and meta",
    "cifar-fs": "train, test and meta",
    "fc100": "train, test and meta",
    "fashion-mnist": "train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz)",
    "imagefolder": "--data-dir",
    "glyphs64": "python -m benchmarks.render_glyphs",
}
NO_DOWNLOAD = {"imagefolder", "glyphs64"}  # nothing to download: a folder the user has or renders


@pytest.fixture(autouse=True)
def no_md5(monkeypatch):
    """Fakes cannot match the official md5s: check existence only (torchvision's md5=None path)."""

    def exists(fpath, md5=None):
        return os.path.isfile(fpath)

    import torchvision.datasets.cifar
    import torchvision.datasets.flowers102

    monkeypatch.setattr(torchvision.datasets.flowers102, "check_integrity", exists)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", exists)
    monkeypatch.setattr(torchvision_datasets, "CALTECH256_TRAIN_PER_CLASS", 4)


@pytest.fixture
def offline(monkeypatch):
    """No network: every urlopen fails as it does on this machine."""

    def fail(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", fail)


def _keys(split) -> set:
    """Identity of each item: its file, or (source, row) for arrays."""
    if isinstance(split.source, ImageFiles):
        return {split.source.paths[i] for i in split.indices}
    return {(id(split.source), int(i)) for i in split.indices}


def test_every_dataset_has_a_fake():
    assert sorted(FAKES) == sorted(MISSING_WORDS) == list_datasets()


# --------------------------------------------------------------------------- parametrised over the registry


@pytest.mark.parametrize("name", list_datasets())
def test_builds_from_its_on_disk_format(name, tmp_path):
    fake = FAKES[name](tmp_path)
    splits = build_datasets(name, fake["root"], False, None, None, None, seed=0)
    assert splits.num_classes == fake["classes"] and len(splits.classes) == fake["classes"]
    sizes = (len(splits.train), len(splits.val), len(splits.test))
    assert sizes == fake["sizes"], splits.describe()
    assert not _keys(splits.train) & _keys(splits.val)
    assert not _keys(splits.train) & _keys(splits.test) and not _keys(splits.val) & _keys(splits.test)
    for part in (splits.train, splits.val, splits.test):
        assert len(part.targets) == len(part) and all(0 <= t < fake["classes"] for t in part.targets)
        for i in (0, len(part) - 1):
            image, label = part[i]
            assert isinstance(image, Image.Image) and image.mode == "RGB"
            assert label == part.targets[i]
    assert set(splits.val.targets) == set(splits.train.targets)  # every class is validated


@pytest.mark.parametrize("name", list_datasets())
def test_val_split_is_seeded(name, tmp_path):
    fake = FAKES[name](tmp_path)
    vals = [_keys(build_datasets(name, fake["root"], False, None, None, seed=s).val) for s in (0, 0, 1, 2)]
    vals = [{k[1] if isinstance(k, tuple) else k for k in v} for v in vals]  # array rows across builds
    assert vals[0] == vals[1]
    assert (vals[0] != vals[2] or vals[0] != vals[3]) == fake["carved_val"]


@pytest.mark.parametrize("name", list_datasets())
def test_train_per_class_keeps_k(name, tmp_path):
    fake = FAKES[name](tmp_path)
    full = build_datasets(name, fake["root"], False, None, None, seed=3)
    low = build_datasets(name, fake["root"], False, None, None, train_per_class=2, seed=3)
    available = Counter(full.train.targets)
    assert Counter(low.train.targets) == {c: min(2, n) for c, n in available.items()}
    assert np.array_equal(low.val.indices, full.val.indices)  # the validation split does not depend on K
    one = build_datasets(name, fake["root"], False, None, None, train_per_class=1, seed=3)
    low_rows = set(low.train.indices.tolist())
    assert set(one.train.indices.tolist()) <= low_rows  # nested in K


@pytest.mark.parametrize("name", list_datasets())
def test_missing_files_error_is_one_line(name, tmp_path):
    empty = tmp_path / "nothing-here"
    with pytest.raises(DatasetError) as info:
        build_datasets(name, empty, False, None, None)
    message = str(info.value)
    assert "\n" not in message and MISSING_WORDS[name] in message
    if name not in NO_DOWNLOAD:
        assert str(empty) in message and "--download" in message


@pytest.mark.parametrize("name", [n for n in list_datasets() if n not in NO_DOWNLOAD])
def test_failed_download_error_is_one_line(name, tmp_path, offline):
    with pytest.raises(DatasetError) as info:
        build_datasets(name, tmp_path, True, None, None)
    message = str(info.value)
    assert "\n" not in message and "download failed" in message and "name resolution" in message


def test_unknown_name_lists_the_datasets():
    with pytest.raises(DatasetError, match="choose one of: caltech256, cifar-fs") as info:
        build_datasets("imagenet-22k", None, False, None, None)
    assert "imagefolder" in str(info.value)


def test_present_but_corrupt_files_say_so(tmp_path, monkeypatch):
    fake_flowers102(tmp_path)
    import torchvision.datasets.flowers102

    monkeypatch.setattr(torchvision.datasets.flowers102, "check_integrity", tv_utils.check_integrity)
    with pytest.raises(DatasetError, match="did not load .*replace jpg/, imagelabels.mat and setid.mat"):
        build_datasets("flowers102", tmp_path, False, None, None)


# --------------------------------------------------------------------------- dataset specifics


def test_default_root_is_data_home_per_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_HOME_ENV, str(tmp_path))
    fake_flowers102(tmp_path / "flowers102")
    fake_cifar100(tmp_path / "cifar100")  # cifar-fs and fc100 read cifar100's folder
    assert len(build_datasets("flowers102", None, False, None, None).train) == 6
    assert build_datasets("fc100", None, False, None, None).num_classes == 60
    with pytest.raises(DatasetError, match=f"not found in {tmp_path / 'food101' / 'food-101'}"):
        build_datasets("food101", None, False, None, None)


def test_flowers_uses_the_official_splits(tmp_path):
    splits = build_datasets("flowers102", fake_flowers102(tmp_path)["root"], False, None, None)
    assert [p.name for p in splits.train.source.paths][:2] == ["image_00001.jpg", "image_00002.jpg"]
    assert splits.val.targets == [0, 0, 1, 1, 2, 2] and splits.classes[0] == "pink primrose"


def test_caltech_leaves_out_clutter_and_splits_per_class(tmp_path):
    splits = build_datasets("caltech256", fake_caltech256(tmp_path)["root"], False, None, None)
    assert splits.classes == ["ak47", "american-flag"]
    assert Counter(splits.train.targets) == {0: 3, 1: 3} and Counter(splits.test.targets) == {0: 2, 1: 2}


def test_fashion_mnist_reads_plain_and_gz_and_debian_in_place(tmp_path, monkeypatch):
    write_fashion_files(tmp_path / "plain" / "FashionMNIST" / "raw", compress=False)
    plain = build_datasets("fashion-mnist", tmp_path / "plain", False, None, None)
    assert len(plain.test) == 30 and plain.classes[0] == "T-shirt/top"
    debian = tmp_path / "debian"
    write_fashion_files(debian)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST", debian)
    monkeypatch.setenv(DATA_HOME_ENV, str(tmp_path / "empty"))
    splits = build_datasets("fashion-mnist", None, False, None, None)
    assert len(splits.test) == 30 and not (tmp_path / "empty").exists()  # nothing copied
    assert np.array_equal(np.asarray(splits.test[0][0])[..., 0], np.asarray(plain.test[0][0])[..., 0])
    with pytest.raises(DatasetError, match="dataset-fashion-mnist"):
        monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
        build_datasets("fashion-mnist", None, False, None, None)


@pytest.mark.skipif(
    not fashion_mnist.DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist not installed"
)
def test_real_debian_fashion_mnist(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_HOME_ENV, str(tmp_path))
    splits = build_datasets("fashion-mnist", None, False, None, None, train_per_class=5)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (50, 6000, 10000)
    image, label = splits.test[0]
    assert image.size == (28, 28) and image.mode == "RGB" and label == 9  # the first test image: ankle boot


def test_fewshot_class_splits():
    for name, sizes in (("cifar-fs", (64, 16, 20)), ("fc100", (60, 20, 20))):
        parts = [fewshot_classes(name, s) for s in ("train", "val", "test")]
        assert tuple(map(len, parts)) == sizes
        assert sorted(sum(parts, [])) == torchvision_datasets.CIFAR100_CLASSES
    assert "whale" in fewshot_classes("cifar-fs", "test") and "whale" in fewshot_classes("fc100", "test")
    with pytest.raises(DatasetError, match="cifar-fs, fc100"):
        fewshot_classes("flowers102", "test")


def test_build_fewshot_split_takes_all_images_of_the_classes(tmp_path):
    images, classes = build_fewshot_split("cifar-fs", "test", fake_cifar100(tmp_path)["root"])
    assert len(classes) == 20 and Counter(images.targets) == {c: 6 for c in range(20)}


def test_split_files_match_shared():
    for name in ("cifar-fs", "fc100"):
        packaged = torchvision_datasets.SPLITS_DIR / f"{name}.json"
        assert packaged.is_file()
        shared = SHARED / "splits" / f"{name}.json"
        if shared.is_file():
            assert json.loads(packaged.read_text()) == json.loads(shared.read_text())


def test_imagefolder_single_folder_with_every_image_kind(tmp_path):
    root = tmp_path / "set"
    _image_zoo(root / "mixed")
    for i in range(6):
        _jpg(root / "plain" / f"{i}.jpg", i)
    splits = build_datasets("imagefolder", root, False, None, None, seed=0)
    assert splits.classes == ["mixed", "plain"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 2, 2)
    for part in (splits.train, splits.val, splits.test):
        for i in range(len(part)):
            assert part[i][0].mode == "RGB"
    images, classes = class_folder_images(root)
    assert classes == ["mixed", "plain"] and len(images) == 12
    rotated = [i for i, p in enumerate(images.source.paths) if p.name == "rotated.jpg"][0]
    assert images[rotated][0].size == (10, 20)


def test_imagefolder_without_test_and_with_foreign_val_class(tmp_path):
    for c in ("a", "b"):
        for i in range(4):
            _jpg(tmp_path / "train" / c / f"{i}.png", i)
    splits = build_datasets("imagefolder", tmp_path, False, None, None)
    assert splits.test is None and len(splits.val) == 2 and "test none" in splits.describe()
    _jpg(tmp_path / "val" / "zebra" / "0.jpg", 0)
    with pytest.raises(DatasetError, match="zebra"):
        build_datasets("imagefolder", tmp_path, False, None, None)
    with pytest.raises(DatasetError, match="--data-dir"):
        build_datasets("imagefolder", None, False, None, None)


@pytest.mark.skipif(not (GLYPHS / "base").is_dir(), reason="no glyph set at $CLCE_GLYPHS_DIR")
def test_glyph_set_as_imagefolder():
    splits = build_datasets("imagefolder", GLYPHS / "base", False, None, None, seed=0)
    assert splits.num_classes == 128 and len(splits.train) + len(splits.val) + len(splits.test) == 128 * 20
    assert splits.train[0][0].mode == "RGB"


# --------------------------------------------------------------------------- datasets through the DataLoader


def test_two_view_collate_in_a_dataloader(tmp_path):
    root = tmp_path / "set"
    for c in ("a", "b"):
        for i in range(4):
            _jpg(root / "train" / c / f"{i}.jpg", i + 10 * (c == "b"), size=(30, 30))
            _jpg(root / "val" / c / f"{i}.jpg", i)
    train_tf, eval_tf = build_transforms(LITE0, img_size=16, two_views=True)
    splits = build_datasets("imagefolder", root, False, train_tf, eval_tf)
    loader = torch.utils.data.DataLoader(
        splits.train, batch_size=4, shuffle=False, collate_fn=two_view_collate
    )
    rows, labels = next(iter(loader))
    assert rows.shape == (8, 3, 16, 16) and labels.tolist() == splits.train.targets[:4] * 2
    image, _ = splits.val[0]
    assert image.shape == (3, 16, 16)  # eval stays one view


def test_training_loop_wiring(tmp_path):
    """What the training loop does: split targets -> class-balanced batches -> two-view rows."""
    from training.samplers import ClassBalancedBatchSampler

    train_tf, eval_tf = build_transforms(LITE0, img_size=16, two_views=True)
    splits = build_datasets("cifar-fs", fake_cifar100(tmp_path)["root"], False, train_tf, eval_tf, seed=0)
    sampler = ClassBalancedBatchSampler(splits.train.targets, batch_size=8, per_class=4, seed=0)
    loader = torch.utils.data.DataLoader(splits.train, batch_sampler=sampler, collate_fn=two_view_collate)
    rows, labels = next(iter(loader))
    assert rows.shape == (16, 3, 16, 16) and sorted(Counter(labels.tolist()).values()) == [8, 8]
    assert torch.equal(labels[:8], labels[8:])


def test_glyphs64_few_shot_splits_are_the_class_lists(tmp_path, monkeypatch):
    """train/val come from base/, test from novel/; the three class lists are disjoint; env var root."""
    train, val, novel = (set(glyphs.glyph_classes(s)) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(novel)) == (96, 32, 144)
    assert not train & val and not train & novel and not val & novel
    for folder, names in (("base", sorted(train | val)), ("novel", sorted(novel))):
        for name in names:
            (tmp_path / folder / name).mkdir(parents=True)
            Image.new("L", (8, 8), 255).save(tmp_path / folder / name / "00.png")
    monkeypatch.setenv(glyphs.GLYPHS_ENV, str(tmp_path))
    from training.embed import load_class_set

    for split, names in (("train", train), ("val", val), ("test", novel)):
        images, classes = glyphs.glyph_class_set(split)
        assert set(classes) == names and len(images) == len(names)
        assert load_class_set("glyphs64", split).classes == classes
    (tmp_path / "novel" / sorted(novel)[0] / "00.png").unlink()
    (tmp_path / "novel" / sorted(novel)[0]).rmdir()
    with pytest.raises(DatasetError, match="lacks 1 of its 144 class folders"):
        glyphs.glyph_class_set("test")
