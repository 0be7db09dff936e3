"""Server settings, read from the environment with the prefix ``CLCE_`` (pydantic-settings).

    CLCE_MODEL_DIR=models/flowers CLCE_DEVICE=cuda uvicorn serving.app:create_app --factory

Every field below is ``CLCE_<NAME>`` in the environment (``CLCE_MAX_BATCH=16``); ``python -m serving``
sets the same fields from its flags.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DB_PATH = Path("~/.local/share/clce/support_sets.sqlite3")


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class Settings(BaseSettings):
    """Everything the server reads at start-up.

    Attributes:
        model_dir: The export folder: ``encoder.onnx``, ``head.onnx``, ``model.json``.
        device: ``cpu`` or ``cuda`` (ONNX Runtime's CUDA execution provider; the server is not ready
            unless the session really runs on it).
        api_key: When set, every endpoint except ``/health/*`` and ``/metrics`` needs it in ``X-API-Key``.
        db_url: The support-set database: ``sqlite:///path/file.sqlite3`` (one process) or
            ``postgresql://user:password@host:5432/db`` (shared by replicas). Default: ``db_path``.
        db_path: SQLite file of the support sets, created when missing; the same as
            ``db_url=sqlite:///<db_path>`` (kept for existing set-ups; ``db_url`` wins when both are set,
            so an image's default ``CLCE_DB_PATH`` does not stand in the way of ``CLCE_DB_URL``).
        keep_support_images: Keep support images in the database (content-addressed by sha256),
            so that sets survive a model change: a new model re-embeds them on first use.
        max_batch: Most images in one ONNX Runtime call; 1 switches batching off.
        max_wait_ms: How long the first image of a batch waits for more to join it.
        max_queue: Most images waiting for the model; a request that would overflow it gets 429.
        max_files: Most image files in one request (160: a 10-way 10-shot call with 5 queries per
            class, 150 images, fits).
        max_upload_bytes: Most bytes in one request body (413 above).
        max_image_pixels: Most pixels (width × height) in one image, checked before decoding.
        max_request_pixels: Most pixels all the images of one request decode to, checked from their
            headers before any is decoded (JPEGs count at their reduced ``draft`` size): it bounds
            a request's decoding work, whatever the file count.
        warmup: Run the model once at start-up (batch 1 and ``max_batch``) before reporting ready.
        intra_op_threads: ONNX Runtime intra-op threads; 0 lets it choose (one per physical core).
        intra_op_spinning: Let ONNX Runtime's idle threads spin. Off by default: in a server the
            spinning threads take the CPU from image decoding and the event loop between calls.
        preprocess_threads: Threads that decode and resize images; 0: one per CPU this process may
            use (:func:`cpu_count`).
        drain_seconds: On SIGTERM, the longest wait for admitted requests before exiting; also the
            longest wait for requests on the old model after a reload.
        log_format: ``text`` (default) or ``json`` (one JSON object per line, access lines too).
        log_level: Level of the application's log (``python -m serving --log-level`` sets it too).
    """

    model_config = SettingsConfigDict(env_prefix="CLCE_", extra="ignore")

    model_dir: Path
    device: Literal["cpu", "cuda"] = "cpu"
    api_key: SecretStr | None = None
    db_url: str | None = None
    db_path: Path = DEFAULT_DB_PATH
    keep_support_images: bool = False
    max_batch: int = Field(32, ge=1, le=4096)
    max_wait_ms: float = Field(5.0, ge=0.0, le=10_000.0)
    max_queue: int = Field(256, ge=1)
    max_files: int = Field(160, ge=1)
    max_upload_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_request_pixels: int = Field(200_000_000, ge=1)
    warmup: bool = True
    intra_op_threads: int = Field(0, ge=0)
    intra_op_spinning: bool = False
    preprocess_threads: int = Field(0, ge=0, le=64)
    drain_seconds: float = Field(30.0, ge=0.0, le=3600.0)
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.max_files > self.max_queue:
            raise ValueError(
                f"max_files ({self.max_files}) must not exceed max_queue ({self.max_queue}): a request "
                "with more images than the queue holds could never be served"
            )
        if self.api_key is not None and not self.api_key.get_secret_value():
            self.api_key = None  # CLCE_API_KEY= (empty) means no key
        return self

    @property
    def resolved_db_url(self) -> str:
        """``db_url``, or the SQLite URL of ``db_path`` (``~`` expanded)."""
        return self.db_url or f"sqlite:///{self.db_path.expanduser()}"

    @property
    def decode_threads(self) -> int:
        """``preprocess_threads``, or one per usable CPU when it is 0."""
        return self.preprocess_threads or cpu_count()
