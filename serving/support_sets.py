"""Stored support sets as the routes use them: kept images, and lazy re-embedding for a new model.

When a set holds images that the running model has no embedding of (the set was made by another
model and the server kept its images, ``CLCE_KEEP_SUPPORT_IMAGES``), the first request that uses it
embeds them (in chunks that fit the queue) and saves the embeddings, so later requests, on any
replica running the same model, find them in the store.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from serving.service import Service, Upload
from serving.store import NewImages


def new_images(
    service: Service, uploads: Sequence[Upload], labels: Sequence[str], embedding: np.ndarray
) -> NewImages:
    """Embedded uploads for the store, keeping the files only with ``CLCE_KEEP_SUPPORT_IMAGES``.

    Args:
        embedding: ``(N, D)`` the uploads' un-normalised embeddings.
    """
    images = [u.data for u in uploads] if service.settings.keep_support_images else None
    return NewImages(labels, embedding, [u.filename for u in uploads], images)


async def set_embeddings(service: Service, set_id: str) -> tuple[list[str], np.ndarray]:
    """The labels and this model's embeddings of a stored set, re-embedding kept images it lacks.

    Returns:
        ``labels`` (N,) and ``embeddings`` ``(N, D)`` float32, un-normalised.

    Raises:
        SupportSetNotFound: no such set, also when it is deleted while this runs.
        ModelMismatch: images of another model that were not kept.
    """
    model = service.card.sha256
    loaded = await service.run_store(service.store.load, set_id, model)
    rows = list(loaded.embeddings)
    position = {item_id: i for i, item_id in enumerate(loaded.item_ids)}
    chunk = service.settings.max_files
    for start in range(0, len(loaded.missing), chunk):
        images = loaded.missing[start : start + chunk]
        uploads = [
            Upload(f"support set {set_id!r} image", position[k.item_id], k.filename, k.data) for k in images
        ]
        embedding, _ = await service.infer(uploads)  # (n, D)
        item_ids = [k.item_id for k in images]
        await service.run_store(service.store.save_embeddings, set_id, model, item_ids, embedding)
        for k, row in zip(images, embedding, strict=True):
            rows[position[k.item_id]] = row
    return loaded.labels, np.stack(rows).astype(np.float32, copy=False)  # type: ignore[arg-type]  # (N, D)
