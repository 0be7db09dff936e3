"""``POST /classify`` and ``POST /embed``."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter

from clce_core.fewshot import l2_normalize
from clce_core.metrics import softmax
from serving.deps import ServiceDep
from serving.schemas import (
    ERROR_RESPONSES,
    ClassifyResponse,
    ClassifyResult,
    EmbedResponse,
    Images,
    LabelProbability,
    TopK,
)

router = APIRouter(tags=["inference"], responses=ERROR_RESPONSES)


@router.post("/classify", response_model=ClassifyResponse, summary="Classify images with the trained head")
async def classify(service: ServiceDep, images: Images, top_k: TopK = 5) -> ClassifyResponse:
    """The ``top_k`` most probable classes of each image (softmax of the head's logits)."""
    (uploads,) = await service.read_uploads([("images", images)])
    _, logits = await service.infer(uploads)
    probs = softmax(logits)  # (N, C)
    k = min(top_k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # (N, k)
    labels = service.card.labels
    results = [
        ClassifyResult(
            filename=u.filename,
            top_k=[LabelProbability(label=labels[c], probability=float(probs[i, c])) for c in order[i]],
        )
        for i, u in enumerate(uploads)
    ]
    return ClassifyResponse(model=service.card.sha256, results=results)


@router.post("/embed", response_model=EmbedResponse, summary="L2-normalised embeddings of images")
async def embed(service: ServiceDep, images: Images) -> EmbedResponse:
    """The encoder's embedding of each image, L2-normalised, one row per file in order."""
    (uploads,) = await service.read_uploads([("images", images)])
    embedding, _ = await service.infer(uploads)
    unit = l2_normalize(embedding)  # (N, D)
    return EmbedResponse(model=service.card.sha256, dim=int(unit.shape[1]), embeddings=unit.tolist())
