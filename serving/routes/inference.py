"""``POST /classify`` and ``POST /embed``."""

from __future__ import annotations

from fastapi import APIRouter

from clce_core.fewshot import l2_normalize
from serving.classification import OpenSetUnavailable, predict, resolve_threshold
from serving.deps import ServiceDep
from serving.errors import InvalidField
from serving.schemas import (
    ERROR_RESPONSES,
    ClassifyResponse,
    ClassifyResult,
    ClassifyThreshold,
    EmbedResponse,
    Images,
    LabelProbability,
    TopK,
)

router = APIRouter(tags=["inference"], responses=ERROR_RESPONSES)


@router.post("/classify", response_model=ClassifyResponse, summary="Classify images with the trained head")
async def classify(
    service: ServiceDep, images: Images, top_k: TopK = 5, threshold: ClassifyThreshold = None
) -> ClassifyResponse:
    """The ``top_k`` most probable classes of each image (softmax of the head's logits), its best
    cosine to the training-class prototypes (``similarity``) and, below ``threshold``, ``unknown``.
    """
    try:
        applied = resolve_threshold(service.card, threshold)
    except OpenSetUnavailable as e:
        raise InvalidField(f"threshold: {e}") from None
    (uploads,) = await service.read_uploads([("images", images)])
    embedding, logits = await service.infer(uploads)
    predictions = predict(service.card, embedding, logits, top_k, applied)
    results = [
        ClassifyResult(
            filename=u.filename,
            label=p.label,
            rejected=p.rejected,
            similarity=p.similarity,
            top_k=[LabelProbability(label=label, probability=prob) for label, prob in p.top_k],
        )
        for u, p in zip(uploads, predictions, strict=True)
    ]
    return ClassifyResponse(model=service.card.sha256, threshold=applied, results=results)


@router.post("/embed", response_model=EmbedResponse, summary="L2-normalised embeddings of images")
async def embed(service: ServiceDep, images: Images) -> EmbedResponse:
    """The encoder's embedding of each image, L2-normalised, one row per file in order."""
    (uploads,) = await service.read_uploads([("images", images)])
    embedding, _ = await service.infer(uploads)
    unit = l2_normalize(embedding)  # (N, D)
    return EmbedResponse(model=service.card.sha256, dim=int(unit.shape[1]), embeddings=unit.tolist())
