"""``POST /fewshot``: nearest-prototype classification from support images or a stored support set."""

from __future__ import annotations

from fastapi import APIRouter

from clce_core.fewshot import classify
from clce_core.open_set import rejected
from serving.classification import UNKNOWN
from serving.deps import ServiceDep
from serving.errors import InvalidField, MissingField
from serving.schemas import (
    ERROR_RESPONSES,
    FewShotResponse,
    FewShotResult,
    OptionalSupportImages,
    OptionalSupportLabels,
    Queries,
    SupportSetId,
    Threshold,
)
from serving.service import check_labels
from serving.support_sets import set_embeddings

router = APIRouter(tags=["few-shot"], responses=ERROR_RESPONSES)


@router.post("/fewshot", response_model=FewShotResponse, summary="Few-shot classification")
async def fewshot(
    service: ServiceDep,
    queries: Queries,
    support: OptionalSupportImages = None,
    support_labels: OptionalSupportLabels = None,
    support_set_id: SupportSetId = None,
    threshold: Threshold = None,
) -> FewShotResponse:
    """Label each query with the class whose prototype (mean of its L2-normalised support
    embeddings) is nearest by cosine similarity; below ``threshold`` the query is ``rejected`` and
    labelled ``unknown`` (``rejected`` tells it apart from a support class named ``unknown``).

    Give either ``support`` files with ``support_labels`` (one per file, same order), or the
    ``support_set_id`` of a stored set.
    """
    set_id = support_set_id.strip() if support_set_id else None
    if set_id and (support or support_labels):
        raise InvalidField("give either support images with support_labels, or support_set_id, not both")
    if set_id:
        await service.run_store(service.store.check_usable, set_id, service.card.sha256)
        (query_uploads,) = await service.read_uploads([("queries", queries)])
        query_emb, _ = await service.infer(query_uploads)
        labels, support_emb = await set_embeddings(service, set_id)
    else:
        if not support:
            raise MissingField("support: upload support images with support_labels, or give a support_set_id")
        support_uploads, query_uploads = await service.read_uploads(
            [("support", support), ("queries", queries)]
        )
        labels = check_labels(support_labels, support_uploads)
        embedding, _ = await service.infer([*support_uploads, *query_uploads])
        support_emb, query_emb = embedding[: len(support_uploads)], embedding[len(support_uploads) :]
    predictions, scores, classes = classify(query_emb, support_emb, labels)  # scores (Q, C)
    rejects = rejected(scores.max(axis=1), threshold)  # (Q,)
    results = [
        FewShotResult(
            filename=u.filename,
            label=UNKNOWN if rejects[i] else str(predictions[i]),
            rejected=bool(rejects[i]),
            scores={str(c): float(scores[i, j]) for j, c in enumerate(classes)},
        )
        for i, u in enumerate(query_uploads)
    ]
    return FewShotResponse(
        model=service.card.sha256,
        classes=[str(c) for c in classes],
        threshold=threshold,
        support_set_id=set_id,
        results=results,
    )
