"""Fashion-MNIST, the offline default: the four official IDX files, plain or gzipped, read in place.

Registered as ``fashion-mnist``. With no ``--data-dir`` it looks in ``$CLCE_DATA_HOME/fashion-mnist``
(``~/.cache/clce/data`` by default), then in Debian's ``/usr/share/datasets/fashion-mnist`` (package
``dataset-fashion-mnist``); ``--download`` lets torchvision fetch the files. ``import training.datasets``
registers it.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from training.datasets.files import call_torchvision, data_root
from training.datasets.images import ImageArray, LabeledImages
from training.datasets.registry import DatasetError, RawSplits, register
from training.datasets.splits import carve_val

__all__ = ["DEBIAN_FASHION_MNIST", "FASHION_MNIST_CLASSES", "read_idx"]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def read_idx(path: Path) -> np.ndarray:
    """Read a uint8 IDX file (``*-ubyte`` or ``*-ubyte.gz``) into an array of its dimensions."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path} is not a uint8 IDX file (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise DatasetError(
            f"{path} is truncated: header says {shape}, found {len(data) - offset} bytes of data"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _idx_files(folder: Path) -> dict[str, Path] | None:
    """The four Fashion-MNIST files in ``folder`` (plain or .gz), or None if any is missing."""
    found = {}
    for stem in (s for pair in _FASHION_FILES.values() for s in pair):
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                found[stem] = candidate
                break
        else:
            return None
    return found


@register("fashion-mnist")
def _fashion_mnist(root: Path | None, download: bool, seed: int, val_fraction: float) -> RawSplits:
    """Fashion-MNIST: ``<root>/FashionMNIST/raw/*-ubyte(.gz)``, read in place (no copy).

    With no root: ``~/.cache/clce/data/fashion-mnist`` (see :func:`build_datasets`), then Debian's ``/usr/share/datasets/fashion-mnist``.
    Official train / test; val = ``val_fraction`` of each training class. (torchvision 0.29's own
    FashionMNIST reads only uncompressed files, so the .gz files are decoded here; torchvision still
    does the downloading.)
    """
    raw = data_root(root, "fashion-mnist") / "FashionMNIST" / "raw"
    candidates = [raw] if root is not None else [raw, DEBIAN_FASHION_MNIST]
    files = next((f for f in map(_idx_files, candidates) if f is not None), None)
    if files is None:
        names = ", ".join(f"{s}(.gz)" for pair in _FASHION_FILES.values() for s in pair)
        debian = "" if root is not None else ", install Debian's dataset-fashion-mnist (apt-get)"
        if not download:
            raise DatasetError(
                f"Fashion-MNIST not found in {raw}: put {names} there{debian}, "
                "or pass --download (needs a network)"
            )
        from torchvision.datasets import FashionMNIST

        call_torchvision(
            lambda: FashionMNIST(str(data_root(root, "fashion-mnist")), train=True, download=True),
            "Fashion-MNIST",
            raw,
            names,
            [raw / stem for pair in _FASHION_FILES.values() for stem in pair],  # absent: a download
            download,
        )
        files = _idx_files(raw)
        if files is None:
            raise DatasetError(f"Fashion-MNIST download left no files in {raw}: put {names} there by hand")
    splits = {}
    for split, (images, labels) in _FASHION_FILES.items():
        x, y = read_idx(files[images]), read_idx(files[labels])
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DatasetError(f"Fashion-MNIST {split} files disagree: images {x.shape}, labels {y.shape}")
        splits[split] = LabeledImages(ImageArray(x, y))
    train, val = carve_val(splits["train"], val_fraction, seed)
    return RawSplits(list(FASHION_MNIST_CLASSES), train, val, splits["test"])
