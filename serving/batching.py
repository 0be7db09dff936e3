"""Micro-batching: the images of concurrent requests merged into one ONNX Runtime call.

:class:`MicroBatcher` sits between the routes and :meth:`serving.sessions.ModelRuntime.run`:

- a request first reserves places for all its images (:meth:`MicroBatcher.reserve`), before it
  decodes any: if they do not all fit under ``max_queue`` images (queued + reserved), it gets
  :class:`~serving.errors.QueueFull` (429 with ``Retry-After``), so memory and latency stay
  bounded under overload and no request is turned away half-way;
- each image then joins the queue as soon as it is decoded (:meth:`Reservation.put`), so the
  model starts on a large request's first images while its others are still being decoded;
- one asyncio task forms batches: it takes the oldest image, then, while images are reserved but
  not yet queued (still decoding), waits until ``max_batch`` images are queued or the oldest has
  waited ``max_wait_ms``, and hands the batch (at most ``max_batch``) to a single worker thread,
  so the blocking ONNX call never runs on the event loop and calls never overlap (ONNX Runtime
  parallelises inside a call). Images arriving during a call form the next batch, which starts as
  soon as the call returns. With nothing about to join, waiting would only add latency, so a lone
  request runs at once;
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

from serving.errors import NotReady, QueueFull
from serving.metrics import Metrics

logger = logging.getLogger(__name__)

#: ``run(pixels (N, H, W, 3) uint8) -> (embedding (N, D), logits (N, C))``
RunFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
Outputs = tuple[np.ndarray, np.ndarray]


@dataclass(eq=False)
class _Item:
    pixels: np.ndarray  # one image's network input, e.g. (H, W, 3) uint8
    future: asyncio.Future[Outputs]
    enqueued: float = field(default_factory=time.perf_counter)


class Reservation:
    """Places in the queue held for one request's images; :meth:`put` fills one (see :meth:`MicroBatcher.reserve`)."""

    def __init__(self, batcher: MicroBatcher, n: int) -> None:
        self._batcher = batcher
        self.left = n

    def enqueue(self, pixels: np.ndarray) -> asyncio.Future[Outputs]:
        """Queue one image in a reserved place now; its future gets ``(embedding (D,), logits (C,))``."""
        if self.left <= 0:
            raise RuntimeError("every reserved place is already used")
        self.left -= 1
        return self._batcher._enqueue(pixels)

    async def put(self, pixels: np.ndarray) -> Outputs:
        """Queue one image in a reserved place and wait for its ``(embedding (D,), logits (C,))``."""
        return (await _wait([self.enqueue(pixels)]))[0]


async def _wait(futures: list[asyncio.Future[Outputs]]) -> list[Outputs]:
    """The futures' results; if the waiter is cancelled, the futures too (freeing their queue places)."""
    try:
        return list(await asyncio.gather(*futures))
    except BaseException:
        for future in futures:
            future.cancel()
        raise


class MicroBatcher:
    """Merge the images of concurrent requests into batched calls of ``run`` (see the module doc).

    Args:
        run: Blocking ``run(pixels (N, H, W, 3) uint8) -> (embedding (N, D), logits (N, C))``.
        max_batch: Most images per call.
        max_wait_ms: How long the oldest queued image waits for more to join it.
        max_queue: Most images queued or reserved; beyond that :meth:`reserve` raises ``QueueFull``.
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
        self._reserved = 0  # places held for images still being decoded

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
    def reserve(self, n: int) -> Iterator[Reservation]:
        """Hold ``n`` places in the queue for a request's images while they are decoded.

        Raises ``QueueFull`` (nothing held) unless they fit now; a forming batch waits for held
        places to be filled (up to ``max_wait_ms``). Places still held when the block ends (an
        image that failed to decode, a cancelled request) are released.
        """
        if self._task is None:
            raise NotReady("the model is not running")
        self.check_room(n)
        reservation = Reservation(self, n)
        self._reserved += n
        try:
            yield reservation
        finally:
            self._reserved -= reservation.left
            reservation.left = 0
            self._wakeup.set()  # a batch waiting only for these places may go now

    async def call_blocking(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` on the inference thread (between batches), e.g. the warm-up."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained, at least 1."""
        batches = math.ceil(len(self._pending) / self.max_batch) + 1
        return max(1, math.ceil(batches * self._batch_seconds))

    def check_room(self, n: int) -> None:
        """Raise ``QueueFull`` (429, with ``Retry-After``) unless ``n`` more images fit in the queue now.

        Images held by a :meth:`reserve` count as queued. The service calls this before it reads
        a request's headers, so that an overloaded server turns requests away before spending CPU
        on them.
        """
        waiting = len(self._pending) + self._reserved
        if waiting + n > self.max_queue:
            self.metrics.rejections.inc()
            wait = self.retry_after()
            raise QueueFull(
                f"the server is busy: {waiting} images are queued or being decoded and this request "
                f"adds {n}, over the limit of {self.max_queue} (CLCE_MAX_QUEUE); retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )

    async def submit(self, pixels: np.ndarray) -> Outputs:
        """Queue a request's images at once and wait for their outputs.

        Args:
            pixels: ``(n, ...)``: ``n`` images' network inputs.

        Returns:
            ``embedding`` ``(n, D)`` and ``logits`` ``(n, C)``, rows in input order.

        Raises:
            QueueFull: the ``n`` images do not fit in the queue now (nothing was queued).
        """
        n = len(pixels)
        if n == 0:
            raise ValueError("submit needs at least one image")
        with self.reserve(n) as places:
            outputs = await _wait([places.enqueue(pixels[i]) for i in range(n)])
        return np.stack([o[0] for o in outputs]), np.stack([o[1] for o in outputs])  # (n, D), (n, C)

    def _enqueue(self, pixels: np.ndarray) -> asyncio.Future[Outputs]:
        item = _Item(pixels, asyncio.get_running_loop().create_future())
        self._pending.append(item)
        self._reserved -= 1
        self.metrics.queue_depth.set(len(self._pending))
        self._wakeup.set()
        return item.future

    async def _next_batch(self) -> list[_Item]:
        while True:
            while self._pending and self._pending[0].future.done():  # cancelled while queued
                self._pending.popleft()
            if self._pending:
                break
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = self._pending[0].enqueued + self.max_wait
        while len(self._pending) < self.max_batch and self._reserved > 0:
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
