"""The model in service, and replacing it without downtime (``POST /admin/reload`` or ``SIGHUP``).

A :class:`LoadedModel` is one export folder at work: its card, its ONNX Runtime sessions and its own
micro-batcher (queue and inference thread). :class:`ModelSlot` holds the one that serves NEW
requests. Each request pins the model it started with (:meth:`ModelSlot.pin`, taken by the
``ServiceDep`` dependency), so a request that decoded its images for one model is embedded by that
model and compared with support embeddings of that model, whatever happens meanwhile.

A reload (:meth:`ModelSlot.reload`), one at a time:

1. reads and verifies ``CLCE_MODEL_DIR`` again (resolving symlinks anew: swap a symlink to the new
   export, then reload); the same ``encoder.onnx`` sha256 as now is a no-op;
2. loads the new sessions BESIDE the old ones and warms them up on their own inference thread
   (the old model keeps serving; on a GPU both are in memory for that time);
3. switches: one assignment on the event loop, so every later request gets the new model;
4. waits until the requests pinned to the old model are done (at most ``CLCE_DRAIN_SECONDS``),
   then stops the old batcher and drops its sessions.

A folder that fails to load or warm up changes nothing: :class:`~serving.errors.ReloadFailed`
(409) says why, and the old model keeps serving. Support sets follow lazily: a set whose images
the store kept is re-embedded by the new model on first use (:mod:`serving.support_sets`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from clce_core.export_folder import ExportFolderError, ModelCard, read_card
from serving.batching import MicroBatcher
from serving.errors import ReloadFailed
from serving.metrics import Metrics
from serving.sessions import ModelRuntime
from serving.settings import Settings

logger = logging.getLogger(__name__)

_pinned: contextvars.ContextVar[LoadedModel | None] = contextvars.ContextVar("clce_model", default=None)


async def read_model_dir(settings: Settings) -> ModelCard:
    """Read and verify ``CLCE_MODEL_DIR`` with its symlinks resolved once, so that the card and the
    sessions come from the same folder even if the link is swapped meanwhile.

    Raises:
        ExportFolderError: with a message saying what to fix.
    """
    return await run_in_threadpool(read_card, settings.model_dir.expanduser().resolve())


@dataclass(eq=False)
class LoadedModel:
    """One export folder at work: card, sessions and batcher; ``users`` counts the requests pinned to it."""

    card: ModelCard
    runtime: ModelRuntime
    batcher: MicroBatcher
    users: int = 0

    @classmethod
    async def load(cls, card: ModelCard, settings: Settings, metrics: Metrics) -> LoadedModel:
        """Load the sessions of a verified export folder (:func:`read_model_dir`); start its batcher.

        Raises:
            ExportFolderError: with a message saying what to fix.
        """
        runtime = await run_in_threadpool(
            ModelRuntime, card, settings.device, settings.intra_op_threads, settings.intra_op_spinning
        )
        batcher = MicroBatcher(
            runtime.run, settings.max_batch, settings.max_wait_ms, settings.max_queue, metrics=metrics
        )
        # the batcher's task must not inherit the context of the request that asked for a reload
        # (its request id in the batcher's log lines, its pinned model)
        await contextvars.Context().run(asyncio.ensure_future, batcher.start())
        return cls(card, runtime, batcher)

    async def warm_up(self, max_batch: int) -> tuple[int, ...]:
        """Run batch sizes 1 and ``max_batch`` through the sessions, on the model's inference thread."""
        sizes = (1, max_batch)
        await self.batcher.call_blocking(lambda: self.runtime.warmup(sizes))
        return sizes

    async def close(self) -> None:
        """Stop the batcher (what is still queued gets 503) and release the inference thread."""
        await self.batcher.stop()


@dataclass(frozen=True)
class ReloadResult:
    previous: str
    model: str
    changed: bool
    seconds: float


class ModelSlot:
    """The model that serves new requests, the pins of running ones, and reloads (see the module doc)."""

    def __init__(self, model: LoadedModel, settings: Settings, metrics: Metrics) -> None:
        self.current = model
        self.settings = settings
        self.metrics = metrics
        self._lock = asyncio.Lock()

    @property
    def model(self) -> LoadedModel:
        """The model of the request this code runs for (pinned), else the current one."""
        return _pinned.get() or self.current

    @contextlib.contextmanager
    def pin(self) -> Iterator[LoadedModel]:
        """Serve the enclosed request with the current model, even if a reload switches meanwhile."""
        model = self.current
        model.users += 1
        token = _pinned.set(model)
        try:
            yield model
        finally:
            model.users -= 1
            with contextlib.suppress(ValueError):  # left in another context: that one ends with its request
                _pinned.reset(token)

    async def reload(self) -> ReloadResult:
        """Load ``CLCE_MODEL_DIR`` again and switch to it if it is another model.

        Raises:
            ReloadFailed: the folder cannot be loaded or warmed up; the old model keeps serving.
        """
        async with self._lock:
            start = time.perf_counter()
            old = self.current
            still = f"; still serving model {old.card.sha256[:12]}…"
            try:
                card = await read_model_dir(self.settings)
                if card.sha256 == old.card.sha256:
                    logger.info("reload: %s holds the model in service already", self.settings.model_dir)
                    return ReloadResult(old.card.sha256, old.card.sha256, False, time.perf_counter() - start)
                new = await LoadedModel.load(card, self.settings, self.metrics)
            except ExportFolderError as e:
                raise ReloadFailed(f"cannot reload: {e}{still}") from None
            try:
                if self.settings.warmup:
                    await new.warm_up(self.settings.max_batch)
            except Exception as e:
                await new.close()
                raise ReloadFailed(f"cannot reload: the new model failed its warm-up: {e}{still}") from None
            self.current = new  # the switch: requests from here on get the new model
            logger.info(
                "reload: switched from model %s to %s (%s, %d classes)",
                old.card.sha256[:12],
                new.card.sha256[:12],
                new.card.model_name,
                len(new.card.labels),
            )
            await self._retire(old)
            return ReloadResult(old.card.sha256, new.card.sha256, True, time.perf_counter() - start)

    async def _retire(self, old: LoadedModel) -> None:
        deadline = time.monotonic() + self.settings.drain_seconds
        while old.users > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if old.users > 0:
            logger.warning(
                "reload: %d requests still use model %s after CLCE_DRAIN_SECONDS; closing it anyway",
                old.users,
                old.card.sha256[:12],
            )
        await old.close()
        logger.info("reload: model %s closed", old.card.sha256[:12])

    async def close(self) -> None:
        await self.current.close()


def install_sighup(slot: ModelSlot) -> bool:
    """Reload on ``SIGHUP`` (only possible in the main thread of the process; returns whether it was)."""
    loop = asyncio.get_running_loop()

    async def reload_logged() -> None:
        try:
            result = await slot.reload()
            logger.info("SIGHUP reload done in %.2f s (changed: %s)", result.seconds, result.changed)
        except ReloadFailed as e:
            logger.error("SIGHUP: %s", e.message)

    try:
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload_logged()))
    except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or no signals here
        return False
    return True
