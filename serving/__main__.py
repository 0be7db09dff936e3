"""``python -m serving --model-dir models/NAME [--host 127.0.0.1] [--port 8000] [--device cpu|cuda]``.

Flags override the ``CLCE_*`` environment; every other setting (``CLCE_MAX_BATCH``, ``CLCE_API_KEY``,
...) comes from the environment. The export folder is verified before the server starts: a bad
folder gives a one-line ``error: ...`` and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from clce_core.export_folder import ExportFolderError, read_card
from serving.app import SettingsError, create_app, load_settings
from serving.logging_config import configure_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m serving",
        description="Serve an exported CLCE model over HTTP (FastAPI + ONNX Runtime); OpenAPI docs at /docs.",
        epilog="Every other setting comes from CLCE_* environment variables: CLCE_API_KEY, CLCE_MAX_QUEUE, "
        "CLCE_MAX_FILES, CLCE_MAX_UPLOAD_BYTES, CLCE_MAX_IMAGE_PIXELS, CLCE_WARMUP, CLCE_INTRA_OP_THREADS, "
        "CLCE_PREPROCESS_THREADS, CLCE_DB_URL, CLCE_KEEP_SUPPORT_IMAGES, CLCE_LOG_FORMAT (serving/settings.py).",
    )
    p.add_argument(
        "--model-dir", help="export folder (encoder.onnx, head.onnx, model.json); env CLCE_MODEL_DIR"
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 in a container)"
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", choices=("cpu", "cuda"), help="env CLCE_DEVICE (default cpu)")
    p.add_argument(
        "--db-url",
        help="support-set database, sqlite:///FILE or postgresql://USER:PASSWORD@HOST:PORT/DB; env CLCE_DB_URL",
    )
    p.add_argument(
        "--db-path", help="support-set SQLite file (same as --db-url sqlite:///FILE); env CLCE_DB_PATH"
    )
    p.add_argument(
        "--max-batch", type=int, help="images per ONNX Runtime call, 1 = no batching; env CLCE_MAX_BATCH"
    )
    p.add_argument("--max-wait-ms", type=float, help="batching wait; env CLCE_MAX_WAIT_MS")
    p.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), help="env CLCE_LOG_LEVEL (default info)"
    )
    p.add_argument(
        "--no-access-log", action="store_true", help="no line per request (they carry the X-Request-ID)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    flags = {
        "model_dir": args.model_dir,
        "device": args.device,
        "db_url": args.db_url,
        "db_path": args.db_path,
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "log_level": args.log_level,
    }
    try:
        settings = load_settings(**{k: v for k, v in flags.items() if v is not None})
        read_card(settings.model_dir)  # fail fast, with the message, before uvicorn starts
    except (SettingsError, ExportFolderError) as e:
        print(f"error: {e}", file=sys.stderr)  # noqa: T201  (entry point)
        return 2

    import uvicorn

    configure_logging(settings.log_format, settings.log_level, force=True)
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_config=None,  # configure_logging did it: one formatter for uvicorn's lines and ours
        log_level=settings.log_level,
        access_log=not args.no_access_log,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
