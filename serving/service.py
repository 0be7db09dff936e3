"""What the routes share: the loaded model, the batcher, the store, and the upload -> model path.

:class:`Service` is built once by the app's lifespan (``Service.start``) and reached from the
routes through the ``ServiceDep`` dependency.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from fastapi import UploadFile
from PIL import Image
from starlette.concurrency import run_in_threadpool

from clce_core.export_folder import ModelCard
from clce_core.preprocessing import EvalTransform
from serving.batching import MicroBatcher, Outputs, Reservation
from serving.errors import LabelsMismatch, MissingField, ServingError, TooManyFiles, TooManyPixels
from serving.metrics import Metrics
from serving.preprocessing import decode, decoded_pixels, open_upload
from serving.reload import LoadedModel, ModelSlot, read_model_dir
from serving.schemas import MAX_LABEL_LENGTH
from serving.sessions import ModelRuntime
from serving.settings import Settings
from serving.store import SupportSetStore

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Upload:
    """One uploaded file, read into memory."""

    field: str
    index: int
    filename: str
    data: bytes

    @property
    def where(self) -> str:
        return f"{self.field}[{self.index}]"


@dataclass(eq=False)
class Service:
    """The running model and everything around it.

    ``card``, ``runtime`` and ``batcher`` are those of the model the current request is pinned to
    (:class:`~serving.reload.ModelSlot`): the same from a request's start to its end, across a reload.
    """

    settings: Settings
    models: ModelSlot
    store: SupportSetStore
    metrics: Metrics
    pool: ThreadPoolExecutor
    warmed: bool = False
    warmup_error: str | None = None
    _warm_task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def card(self) -> ModelCard:
        return self.models.model.card

    @property
    def runtime(self) -> ModelRuntime:
        return self.models.model.runtime

    @property
    def batcher(self) -> MicroBatcher:
        return self.models.model.batcher

    @classmethod
    async def start(cls, settings: Settings, metrics: Metrics) -> Service:
        """Load and verify the model, open the store, start the batcher and the warm-up.

        Raises:
            ExportFolderError, StoreError: with a message saying what to fix.
        """
        model = await LoadedModel.load(await read_model_dir(settings), settings, metrics)
        try:
            store = await run_in_threadpool(SupportSetStore, settings.resolved_db_url)
        except BaseException:
            await model.close()
            raise
        pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="clce-preprocess")
        service = cls(settings, ModelSlot(model, settings, metrics), store, metrics, pool)
        logger.info(
            "model %s (%s, %d classes, D=%d) on %s; support sets in %s",
            model.card.sha256[:12],
            model.card.model_name,
            len(model.card.labels),
            model.card.embedding_dim,
            ", ".join(model.runtime.providers),
            store.display,
        )
        if settings.warmup:
            service._warm_task = asyncio.get_running_loop().create_task(service._warm_up(model))
        else:
            service.warmed = True
        return service

    async def _warm_up(self, model: LoadedModel) -> None:
        try:
            sizes = await model.warm_up(self.settings.max_batch)
            self.warmed = True
            logger.info("warm-up done (batch sizes %s)", sizes)
        except Exception as e:  # the server stays not-ready and says why
            self.warmup_error = f"warm-up failed: {e}"
            logger.exception("warm-up failed")

    async def stop(self) -> None:
        if self._warm_task is not None and not self._warm_task.done():
            self._warm_task.cancel()
        await self.models.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.store.close()

    def not_ready_reasons(self) -> list[str]:
        """Empty when ready: model loaded, warmed up, and on CUDA when ``device=cuda``."""
        reasons = []
        if self.warmup_error:
            reasons.append(self.warmup_error)
        elif not self.warmed:
            reasons.append("warming up")
        if self.settings.device == "cuda" and not self.runtime.cuda_active:
            reasons.append(
                "CLCE_DEVICE=cuda but the sessions run on "
                f"{', '.join(self.runtime.providers)}: CUDAExecutionProvider is not active "
                "(onnxruntime-gpu installed? CUDA 12 and cuDNN 9 libraries found? GPU visible?)"
            )
        return reasons

    # ------------------------------------------------------------------------------- uploads

    async def read_uploads(self, groups: Sequence[tuple[str, Sequence[UploadFile]]]) -> list[list[Upload]]:
        """Read the files of one request, checking the per-request file limit over all groups.

        Args:
            groups: ``(field name, files)`` pairs, e.g. ``[("support", ...), ("queries", ...)]``.

        Returns:
            The uploads of each group, in order.
        """
        total = sum(len(files) for _, files in groups)
        if total > self.settings.max_files:
            counts = " + ".join(f"{len(files)} {name}" for name, files in groups)
            raise TooManyFiles(
                f"got {total} files ({counts}); the limit is {self.settings.max_files} per request "
                "(CLCE_MAX_FILES): split them over several requests"
            )
        out = []
        for name, files in groups:
            if not files:
                raise MissingField(f"{name}: at least one file is required")
            out.append(
                [Upload(name, i, f.filename or f"{name}[{i}]", await f.read()) for i, f in enumerate(files)]
            )
        return out

    def _open_all(self, uploads: Sequence[Upload], transform: EvalTransform) -> list[Image.Image]:
        """Every upload's header, checked; the request's decoded pixels against its budget.

        Runs in a preprocessing thread, where the request's pinned model is not visible: the
        caller passes its ``transform``.

        Raises:
            ServingError: for the first bad file (named by field, index and file name), or
                TooManyPixels; no image is left open.
        """
        images: list[Image.Image] = []
        limit = self.settings.max_image_pixels
        try:
            for upload in uploads:
                try:
                    images.append(open_upload(upload.data, upload.filename, transform, limit))
                except ServingError as e:
                    e.message = f"{upload.where}: {e.message}"
                    raise
            self._check_budget(uploads, images)
        except BaseException:
            for image in images:
                image.close()
            raise
        return images

    def _check_budget(self, uploads: Sequence[Upload], images: Sequence[Image.Image]) -> None:
        sizes = [decoded_pixels(image) for image in images]
        total, budget = sum(sizes), self.settings.max_request_pixels
        if total > budget:
            largest = sorted(range(len(sizes)), key=lambda i: -sizes[i])[:3]
            named = ", ".join(f"{uploads[i].where} {images[i].size[0]}x{images[i].size[1]}" for i in largest)
            raise TooManyPixels(
                f"the {len(images)} images of this request decode to {total} pixels (largest: {named}), "
                f"over the limit of {budget} per request (CLCE_MAX_REQUEST_PIXELS); send fewer or smaller "
                "images per request (JPEGs count at the reduced size they are decoded at)"
            )

    async def _decode_and_put(
        self, upload: Upload, image: Image.Image, transform: EvalTransform, places: Reservation
    ) -> Outputs:
        loop = asyncio.get_running_loop()
        pixels = await loop.run_in_executor(self.pool, decode, image, upload.filename, transform)
        return await places.put(pixels)  # (H, W, 3) uint8 -> (embedding (D,), logits (C,))

    async def infer(self, uploads: Sequence[Upload]) -> tuple[np.ndarray, np.ndarray]:
        """Uploads -> ``embedding`` ``(N, D)`` un-normalised and ``logits`` ``(N, C)``, batched.

        Queue places are checked first (429 before any work), then every header and the request's
        pixel budget (in a preprocessing thread), then the images are decoded in the preprocessing
        threads, each joining the batch queue as soon as it is decoded.

        Raises:
            ServingError: for the first bad file, named by field, index and file name.
        """
        batcher, transform = self.batcher, self.card.preprocess  # the request's pinned model
        batcher.check_room(len(uploads))  # full already: answer 429 before reading anything
        loop = asyncio.get_running_loop()
        images = await loop.run_in_executor(self.pool, self._open_all, uploads, transform)
        try:
            with batcher.reserve(len(uploads)) as places:
                jobs = [
                    self._decode_and_put(u, image, transform, places)
                    for u, image in zip(uploads, images, strict=True)
                ]
                results = await asyncio.gather(*jobs, return_exceptions=True)
        finally:
            for image in images:  # decode closes each; these are the ones it never reached
                image.close()
        for upload, result in zip(uploads, results, strict=True):
            if isinstance(result, ServingError):
                result.message = f"{upload.where}: {result.message}"
                raise result
            if isinstance(result, BaseException):
                raise result
        outputs: list[Outputs] = results  # type: ignore[assignment]
        return np.stack([o[0] for o in outputs]), np.stack([o[1] for o in outputs])  # (N, D), (N, C)

    async def run_store(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking store call off the event loop."""
        return await run_in_threadpool(fn, *args)


def check_labels(labels: Sequence[str] | None, uploads: Sequence[Upload]) -> list[str]:
    """Check that support images and labels pair up one to one; return the stripped labels.

    Raises:
        MissingField: no labels at all.
        LabelsMismatch: counts differ (naming the classes left without an image, or the images
            left without a label), or a label is empty or too long.
    """
    if not labels:
        raise MissingField("support_labels: give one label per support image, in the same order")
    clean = [label.strip() for label in labels]
    for i, label in enumerate(clean):
        if not label:
            raise LabelsMismatch(f"support_labels[{i}] is empty; every support image needs a class name")
        if len(label) > MAX_LABEL_LENGTH:
            raise LabelsMismatch(f"support_labels[{i}] is longer than {MAX_LABEL_LENGTH} characters")
    n = len(uploads)
    if len(clean) > n:
        orphans = [c for c in dict.fromkeys(clean[n:]) if c not in clean[:n]]
        detail = (
            f"class {', '.join(repr(c) for c in orphans)} has no support image"
            if orphans
            else f"labels {clean[n:]!r} have no image"
        )
        raise LabelsMismatch(
            f"got {n} support images but {len(clean)} support_labels: {detail}. "
            "Send exactly one label per support image, in the same order"
        )
    if len(clean) < n:
        unlabeled = ", ".join(
            f"support[{i}] ({u.filename!r})" for i, u in enumerate(uploads) if i >= len(clean)
        )
        raise LabelsMismatch(
            f"got {n} support images but {len(clean)} support_labels: {unlabeled} have no label. "
            "Send exactly one label per support image, in the same order"
        )
    return clean
