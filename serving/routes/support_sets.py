"""Support sets: ``POST /support-sets``, ``POST /support-sets/{id}/images``, ``GET``, ``DELETE``."""

from __future__ import annotations

import logging

from fastapi import APIRouter, status

from serving.deps import ServiceDep
from serving.schemas import (
    ERROR_RESPONSES,
    DeleteResponse,
    SetName,
    SupportImages,
    SupportLabels,
    SupportSetList,
    SupportSetOut,
)
from serving.service import check_labels
from serving.store import SupportSetInfo
from serving.support_sets import new_images

router = APIRouter(prefix="/support-sets", tags=["support sets"], responses=ERROR_RESPONSES)
logger = logging.getLogger(__name__)


def _out(info: SupportSetInfo) -> SupportSetOut:
    return SupportSetOut(
        id=info.id,
        name=info.name,
        model=info.model_sha256,
        compatible=info.usable,
        embedding_dim=info.embedding_dim,
        num_images=info.num_images,
        kept_images=info.kept_images,
        classes=info.classes,
        created=info.created,
        updated=info.updated,
    )


@router.post(
    "", response_model=SupportSetOut, status_code=status.HTTP_201_CREATED, summary="Create a support set"
)
async def create_support_set(
    service: ServiceDep, name: SetName, support: SupportImages, support_labels: SupportLabels
) -> SupportSetOut:
    """Embed the support images and store their embeddings under a new id (and the images
    themselves when the server keeps them, ``CLCE_KEEP_SUPPORT_IMAGES``)."""
    (uploads,) = await service.read_uploads([("support", support)])
    labels = check_labels(support_labels, uploads)
    embedding, _ = await service.infer(uploads)
    new = new_images(service, uploads, labels, embedding)
    info = await service.run_store(service.store.create, name.strip() or name, service.card.sha256, new)
    logger.info("support set %s created: %d images, %d classes", info.id, info.num_images, len(info.classes))
    return _out(info)


@router.post("/{set_id}/images", response_model=SupportSetOut, summary="Add images to a support set")
async def add_support_images(
    service: ServiceDep, set_id: str, support: SupportImages, support_labels: SupportLabels
) -> SupportSetOut:
    """Embed more support images (new or existing labels) and append them to the set."""
    await service.run_store(service.store.check_usable, set_id, service.card.sha256)
    (uploads,) = await service.read_uploads([("support", support)])
    labels = check_labels(support_labels, uploads)
    embedding, _ = await service.infer(uploads)
    new = new_images(service, uploads, labels, embedding)
    info = await service.run_store(service.store.add, set_id, service.card.sha256, new)
    logger.info("support set %s: %d images added, %d in all", set_id, len(uploads), info.num_images)
    return _out(info)


@router.get("", response_model=SupportSetList, summary="List support sets")
async def list_support_sets(service: ServiceDep) -> SupportSetList:
    """Every stored set, from one snapshot; ``compatible`` is false for sets this model cannot use."""
    infos = await service.run_store(service.store.list_sets, service.card.sha256)
    return SupportSetList(support_sets=[_out(info) for info in infos])


@router.get("/{set_id}", response_model=SupportSetOut, summary="Describe a support set")
async def get_support_set(service: ServiceDep, set_id: str) -> SupportSetOut:
    return _out(await service.run_store(service.store.get, set_id, service.card.sha256))


@router.delete("/{set_id}", response_model=DeleteResponse, summary="Delete a support set")
async def delete_support_set(service: ServiceDep, set_id: str) -> DeleteResponse:
    await service.run_store(service.store.delete, set_id)
    logger.info("support set %s deleted", set_id)
    return DeleteResponse(id=set_id, deleted=True)
