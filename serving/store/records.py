"""What the store takes (newly embedded images) and returns (a set's description, its embeddings)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SupportSetInfo:
    """A support set's description (no embeddings), as seen by one model.

    Attributes:
        model_sha256: The encoder that created the set; ``embedding_dim`` is that encoder's.
        classes: Image count per label, labels in order of first appearance.
        kept_images: How many of the ``num_images`` images the database keeps (re-embeddable).
        embedded: How many images have an embedding of the model the info was asked for.
        unusable: Images that model can never use: no embedding of it and no kept image. The set is
            usable by that model when this is 0.
    """

    id: str
    name: str
    model_sha256: str
    embedding_dim: int
    num_images: int
    classes: dict[str, int]
    created: str
    updated: str
    kept_images: int
    embedded: int
    unusable: int

    @property
    def usable(self) -> bool:
        """Whether the model the info was asked for can use the set (maybe after re-embedding)."""
        return self.unusable == 0


@dataclass(frozen=True)
class KeptImage:
    """A support image that the asked model has no embedding of yet, with its stored bytes."""

    item_id: int
    filename: str
    data: bytes


@dataclass(frozen=True)
class SetEmbeddings:
    """One consistent snapshot of a set's images for one model.

    Attributes:
        labels: ``(N,)`` one label per image, in insertion order.
        embeddings: ``N`` entries: the ``(D,)`` float32 un-normalised embedding, or ``None`` where
            the model has none yet (then ``missing`` holds that image).
        missing: The images to embed before the set is complete (lazy re-embedding).
    """

    info: SupportSetInfo
    labels: list[str]
    item_ids: list[int]
    embeddings: list[np.ndarray | None]
    missing: list[KeptImage]


@dataclass(frozen=True)
class NewImages:
    """Support images of one upload, embedded by one model, to store in a set.

    Attributes:
        labels: ``(N,)`` one label per image.
        embeddings: ``(N, D)`` float32, the encoder's un-normalised outputs.
        filenames: ``(N,)`` the uploaded file names (for reference).
        images: ``(N,)`` the uploaded files, to keep (content-addressed); ``None`` keeps none.

    Raises:
        ValueError: the four do not have one entry per image.
    """

    labels: Sequence[str]
    embeddings: np.ndarray
    filenames: Sequence[str]
    images: Sequence[bytes] | None = None

    def __post_init__(self) -> None:
        n, emb = len(self.labels), self.embeddings
        counts = (len(emb), len(self.filenames), n if self.images is None else len(self.images))
        if emb.ndim != 2 or counts != (n, n, n):
            raise ValueError(
                f"need (N, D) embeddings and N labels, filenames (and images), got {emb.shape}, {n}, {counts}"
            )
