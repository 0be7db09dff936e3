"""ONNX Runtime sessions and micro-batching.

:class:`ModelRuntime` owns ONE ``InferenceSession`` per ONNX file (encoder and head), shared by
every request. :class:`MicroBatcher` merges the images of concurrent requests into one call:

- a request's images enter a queue (one entry per image) only if they all fit under ``max_queue``
  images; otherwise :class:`~serving.errors.QueueFull` (429 with ``Retry-After``), so memory and
  latency stay bounded under overload;
- one asyncio task forms batches: it takes the oldest image, then waits until ``max_batch``
  images are queued or the oldest has waited ``max_wait_ms``, and hands the batch (at most
  ``max_batch``) to a single worker thread, so the blocking ONNX call never runs on the event
  loop and calls never overlap (ONNX Runtime parallelises inside a call). Images arriving during
  a call form the next batch, which starts as soon as the call returns;
- the wait is cut short when no request is being decoded (:meth:`MicroBatcher.arriving`): with
  nothing about to join, waiting would only add latency, so a lone request runs at once;
- ``max_batch = 1`` switches batching off: every image is its own call.

A request's images may be split across batches and share batches with other requests; each
image's future receives its own rows of the outputs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from serving.errors import NotReady, QueueFull
from serving.metrics import Metrics
from serving.modelcard import ModelCard, ModelLoadError

logger = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"

#: ``run(pixel_values (N, 3, H, W)) -> (embedding (N, D), logits (N, C))``
RunFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def _providers(device: str) -> list[str | tuple[str, dict[str, str]]]:
    if device != "cuda":
        return [CPU_PROVIDER]
    if CUDA_PROVIDER not in ort.get_available_providers():
        logger.error(
            "CLCE_DEVICE=cuda but this onnxruntime build has no %s (available: %s); install "
            "onnxruntime-gpu instead of onnxruntime. Running on the CPU; /health/ready reports not ready.",
            CUDA_PROVIDER,
            ", ".join(ort.get_available_providers()),
        )
        return [CPU_PROVIDER]
    return [(CUDA_PROVIDER, {"device_id": "0", "arena_extend_strategy": "kSameAsRequested"}), CPU_PROVIDER]


def _dim(value: object) -> int | None:
    return value if isinstance(value, int) else None


class ModelRuntime:
    """The encoder and head sessions of one export folder.

    Args:
        card: The verified export folder.
        device: ``"cpu"`` or ``"cuda"``.
        intra_op_threads: ONNX Runtime intra-op threads; 0 lets it choose.
        spinning: Whether idle intra-op threads spin (fast hand-over, but they burn CPU that image
            decoding could use).

    Raises:
        ModelLoadError: a file ONNX Runtime cannot load, or inputs/outputs that break the contract.
    """

    def __init__(
        self, card: ModelCard, device: str = "cpu", intra_op_threads: int = 0, spinning: bool = False
    ) -> None:
        self.card = card
        self.device = device
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads > 0:
            options.intra_op_num_threads = intra_op_threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        providers = _providers(device)
        try:
            self.encoder = ort.InferenceSession(str(card.encoder_path), options, providers=providers)
            self.head = ort.InferenceSession(str(card.head_path), options, providers=providers)
        except Exception as e:
            raise ModelLoadError(f"ONNX Runtime cannot load the model in {card.model_dir}: {e}") from None
        self._check_io()

    @property
    def providers(self) -> list[str]:
        """The encoder session's execution providers, in priority order."""
        return list(self.encoder.get_providers())

    @property
    def cuda_active(self) -> bool:
        """Whether the CUDA execution provider really runs both sessions."""
        return all(s.get_providers()[0] == CUDA_PROVIDER for s in (self.encoder, self.head))

    def _check_io(self) -> None:
        enc_in, enc_out = self.encoder.get_inputs(), self.encoder.get_outputs()
        head_in, head_out = self.head.get_inputs(), self.head.get_outputs()
        where = self.card.model_dir
        names = {
            "encoder.onnx inputs": ([i.name for i in enc_in], ["pixel_values"]),
            "encoder.onnx outputs": ([o.name for o in enc_out], ["embedding"]),
            "head.onnx inputs": ([i.name for i in head_in], ["embedding"]),
            "head.onnx outputs": ([o.name for o in head_out], ["logits"]),
        }
        for what, (found, wanted) in names.items():
            if found[:1] != wanted or (what.endswith("inputs") and len(found) != 1):
                raise ModelLoadError(f"{where}: {what} are {found}, the export contract says {wanted}")
        _, c, h, w = (list(enc_in[0].shape) + [None] * 4)[:4]
        expected = self.card.preprocess.input_size
        for got, want, name in (
            (c, expected[0], "channels"),
            (h, expected[1], "height"),
            (w, expected[2], "width"),
        ):
            if _dim(got) is not None and got != want:
                raise ModelLoadError(
                    f"{where}: encoder.onnx takes {name} {got} but model.json input_size says {want}"
                )
        dim = self.card.embedding_dim
        for got, name in ((enc_out[0].shape, "encoder output"), (head_in[0].shape, "head input")):
            if len(got) != 2 or (_dim(got[1]) is not None and got[1] != dim):
                raise ModelLoadError(f"{where}: {name} has shape {got}, model.json embedding_dim is {dim}")
        n_classes = len(self.card.labels)
        got = head_out[0].shape
        if len(got) != 2 or (_dim(got[1]) is not None and got[1] != n_classes):
            raise ModelLoadError(
                f"{where}: head output has shape {got} but model.json lists {n_classes} labels"
            )

    def run(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Blocking inference.

        Args:
            pixel_values: ``(N, 3, H, W)`` float32, preprocessed.

        Returns:
            ``embedding`` ``(N, D)`` (un-normalised) and ``logits`` ``(N, C)``, float32.
        """
        embedding = self.encoder.run(["embedding"], {"pixel_values": pixel_values})[0]  # (N, D)
        logits = self.head.run(["logits"], {"embedding": embedding})[0]  # (N, C)
        return np.asarray(embedding, dtype=np.float32), np.asarray(logits, dtype=np.float32)

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run zeros through both sessions once per batch size (allocations, kernel choice)."""
        _, h, w = self.card.preprocess.input_size
        for n in sorted(set(batch_sizes)):
            self.run(np.zeros((n, 3, h, w), dtype=np.float32))


@dataclass(eq=False)
class _Item:
    pixels: np.ndarray  # (3, H, W)
    future: asyncio.Future[tuple[np.ndarray, np.ndarray]]
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Merge the images of concurrent requests into batched calls of ``run`` (see the module doc).

    Args:
        run: Blocking ``run(x (N, 3, H, W)) -> (embedding (N, D), logits (N, C))``.
        max_batch: Most images per call.
        max_wait_ms: How long the oldest queued image waits for more to join it.
        max_queue: Most images waiting; beyond that :meth:`submit` raises ``QueueFull``.
        metrics: Where batch sizes, queue depth and call durations are recorded.
    """

    def __init__(
        self, run: RunFn, max_batch: int, max_wait_ms: float, max_queue: int, metrics: Metrics | None = None
    ) -> None:
        self._run = run
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics or Metrics()
        self._pending: collections.deque[_Item] = collections.deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clce-infer")
        self._task: asyncio.Task[None] | None = None
        self._batch_seconds = 0.0  # moving average of one call, for Retry-After
        self._arriving = 0  # requests decoding images that will be submitted soon

    @property
    def queue_depth(self) -> int:
        """Images waiting for a batch (not counting the batch running now)."""
        return len(self._pending)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="clce-batcher")

    async def stop(self) -> None:
        """Stop forming batches, fail what is still queued, release the worker thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(NotReady("the server is shutting down; retry on another instance"))
        self.metrics.queue_depth.set(0)
        self._executor.shutdown(wait=True)

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Announce a request whose images are being decoded: a forming batch waits for it.

        Leave the block right before :meth:`submit` (no ``await`` in between), or on error.
        """
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1
            self._wakeup.set()  # a batch waiting only for this request may go now

    async def call_blocking(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` on the inference thread (between batches), e.g. the warm-up."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained, at least 1."""
        batches = math.ceil(len(self._pending) / self.max_batch) + 1
        return max(1, math.ceil(batches * self._batch_seconds))

    def check_room(self, n: int) -> None:
        """Raise ``QueueFull`` (429, with ``Retry-After``) unless ``n`` more images fit in the queue now.

        The service also calls this before decoding a request's images, so that an overloaded
        server turns requests away before spending CPU on them.
        """
        if len(self._pending) + n > self.max_queue:
            self.metrics.rejections.inc()
            wait = self.retry_after()
            raise QueueFull(
                f"the server is busy: {len(self._pending)} images are queued and this request adds {n}, "
                f"over the limit of {self.max_queue} (CLCE_MAX_QUEUE); retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )

    async def submit(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Queue a request's images and wait for their outputs.

        Args:
            pixel_values: ``(n, 3, H, W)`` float32.

        Returns:
            ``embedding`` ``(n, D)`` and ``logits`` ``(n, C)``, rows in input order.

        Raises:
            QueueFull: the ``n`` images do not fit in the queue now (nothing was queued).
        """
        n = len(pixel_values)
        if n == 0:
            raise ValueError("submit needs at least one image")
        if self._task is None:
            raise NotReady("the model is not running")
        self.check_room(n)
        loop = asyncio.get_running_loop()
        items = [_Item(pixel_values[i], loop.create_future()) for i in range(n)]
        self._pending.extend(items)
        self.metrics.queue_depth.set(len(self._pending))
        self._wakeup.set()
        try:
            outputs = await asyncio.gather(*(item.future for item in items))
        except BaseException:
            for item in items:  # a cancelled request frees its queue places
                item.future.cancel()
            raise
        embedding = np.stack([o[0] for o in outputs])  # (n, D)
        logits = np.stack([o[1] for o in outputs])  # (n, C)
        return embedding, logits

    async def _next_batch(self) -> list[_Item]:
        while True:
            while self._pending and self._pending[0].future.done():  # cancelled while queued
                self._pending.popleft()
            if self._pending:
                break
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = self._pending[0].enqueued + self.max_wait
        while len(self._pending) < self.max_batch and self._arriving > 0:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                break
        batch: list[_Item] = []
        while self._pending and len(batch) < self.max_batch:
            item = self._pending.popleft()
            if not item.future.done():
                batch.append(item)
        self.metrics.queue_depth.set(len(self._pending))
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            start = time.perf_counter()
            for item in batch:
                self.metrics.queue_wait_seconds.observe(start - item.enqueued)
            pixels = np.stack([item.pixels for item in batch])  # (B, 3, H, W)
            try:
                embedding, logits = await loop.run_in_executor(self._executor, self._run, pixels)
            except asyncio.CancelledError:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(NotReady("the server is shutting down"))
                raise
            except Exception as e:
                logger.exception("inference failed on a batch of %d images", len(batch))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(RuntimeError(f"inference failed: {e}"))
                continue
            seconds = time.perf_counter() - start
            self._batch_seconds = (
                seconds if self._batch_seconds == 0 else 0.8 * self._batch_seconds + 0.2 * seconds
            )
            self.metrics.batch_size.observe(len(batch))
            self.metrics.inference_seconds.observe(seconds)
            self.metrics.images.inc(len(batch))
            for i, item in enumerate(batch):
                if not item.future.done():
                    item.future.set_result((embedding[i], logits[i]))
