"""``python -m serving --model-dir models/NAME [--host 127.0.0.1] [--port 8000] [--device cpu|cuda]``.

Flags override the ``CLCE_*`` environment; every other setting (``CLCE_MAX_BATCH``, ``CLCE_API_KEY``,
...) comes from the environment. Before anything is loaded or created, the port is bound (a port in
use, a privileged port or an address the machine does not have gives a one-line ``error: ...``) and
the export folder is verified (a missing or bad folder: the same); both exit with code 2. uvicorn
then serves on the sockets already bound, so no other process can take the port in between.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys

from clce_core.export_folder import ExportFolderError, read_card
from serving.app import SettingsError, create_app, load_settings
from serving.logging_config import configure_logging

logger = logging.getLogger("serving")
MODEL_DIR_ENV = "CLCE_MODEL_DIR"


class ListenError(OSError):
    """The server cannot listen on the host and port; ``str(e)`` is one line saying what to do."""


def bind(host: str, port: int) -> list[socket.socket]:
    """Bind (not yet listen on) every address ``host`` resolves to, as asyncio's server would.

    Raises:
        ListenError: the port is in use, needs privileges, or ``host`` is no address of this machine.
    """
    where = f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ListenError(
            f"cannot listen on {where}: --host {host!r} does not resolve ({e.strerror}); use an address such "
            "as 127.0.0.1 or 0.0.0.0"
        ) from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restarts in TIME_WAIT
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as e:
        for sock in sockets:
            sock.close()
        reasons = {
            errno.EADDRINUSE: f"port {port} is already in use on {host} (another server running?): stop that "
            "process or choose another --port",
            errno.EACCES: f"permission denied for port {port} (ports below 1024 need privileges): choose "
            "another --port, e.g. 8000",
            errno.EADDRNOTAVAIL: f"{host} is not an address of this machine: use 127.0.0.1, 0.0.0.0 or one "
            "of its own addresses",
        }
        raise ListenError(f"cannot listen on {where}: {reasons.get(e.errno, e.strerror or e)}") from None
    return sockets


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is an integer from 0 to 65535, got {value!r}")
    return port


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m serving",
        description="Serve an exported CLCE model over HTTP (FastAPI + ONNX Runtime); OpenAPI docs at /docs.",
        epilog="Every other setting comes from CLCE_* environment variables: CLCE_API_KEY, CLCE_MAX_QUEUE, "
        "CLCE_MAX_FILES, CLCE_MAX_UPLOAD_BYTES, CLCE_MAX_IMAGE_PIXELS, CLCE_MAX_REQUEST_PIXELS, CLCE_WARMUP, "
        "CLCE_INTRA_OP_THREADS, CLCE_PREPROCESS_THREADS, CLCE_DB_URL, CLCE_KEEP_SUPPORT_IMAGES, CLCE_LOG_FORMAT "
        "(serving/settings.py).",
    )
    p.add_argument(
        "--model-dir", help="export folder (encoder.onnx, head.onnx, model.json); env CLCE_MODEL_DIR"
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 in a container)"
    )
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000)")
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
    sockets: list[socket.socket] = []
    try:
        if args.model_dir is None and not any(k.upper() == MODEL_DIR_ENV for k in os.environ):
            raise SettingsError(
                f"no model to serve: pass --model-dir models/NAME or set {MODEL_DIR_ENV}=models/NAME (an export "
                "folder; create one with `python -m training.export --checkpoint RUN/best.pt --output models/NAME`)"
            )
        settings = load_settings(**{k: v for k, v in flags.items() if v is not None})
        sockets = bind(args.host, args.port)  # first: nothing is loaded or created if the port is taken
        read_card(settings.model_dir)  # fail fast, with the message, before uvicorn starts
    except (SettingsError, ListenError, ExportFolderError) as e:
        for sock in sockets:
            sock.close()
        print(f"error: {e}", file=sys.stderr)  # noqa: T201  (entry point)
        return 2

    import uvicorn

    configure_logging(settings.log_format, settings.log_level, force=True)
    config = uvicorn.Config(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_config=None,  # configure_logging did it: one formatter for uvicorn's lines and ours
        log_level=settings.log_level,
        access_log=not args.no_access_log,
    )
    host = f"[{args.host}]" if ":" in args.host else args.host
    logger.info("listening on http://%s:%d (Ctrl+C to quit)", host, sockets[0].getsockname()[1])
    uvicorn.Server(config).run(sockets=sockets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
