"""The server's log lines: every one carries the request's ``X-Request-ID`` and ``traceparent``.

``CLCE_LOG_FORMAT=text`` (default)::

    2025-01-01T12:00:00.123Z INFO serving.app [3f2a… 00-4bf9…-00f0…-01] model 1a2b… on CPUExecutionProvider

``CLCE_LOG_FORMAT=json``: one JSON object per line, with ``time``, ``level``, ``logger``,
``message``, ``request_id``, ``traceparent`` (``null`` outside a request), ``exception`` when there
is one, and for uvicorn's access lines also ``client``, ``method``, ``path``, ``http_version`` and
``status``.

The application's loggers and uvicorn's (``uvicorn.error``, ``uvicorn.access``) all go to one
handler on stderr with that formatter, the same for ``python -m serving`` and ``uvicorn
serving.app:create_app --factory`` (uvicorn configures its own loggers before it calls the factory;
:func:`configure_logging` then takes them over). A process that configured logging itself (the root
logger has handlers, e.g. under pytest or an embedding application) is left alone.
"""

from __future__ import annotations

import json
import logging
import logging.config
import time
from typing import Any, Literal

from serving import request_id

LogFormat = Literal["text", "json"]
_HANDLER = "clce"
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


class RequestContextFilter(logging.Filter):
    """Add ``request_id`` and ``traceparent`` (``None`` outside a request) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        identity = request_id.current()
        record.request_id = identity.request_id if identity else None
        record.traceparent = identity.traceparent if identity else None
        return True


def _utc(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """``time level logger [request_id traceparent] message`` (``-`` for a missing value)."""

    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", None) or "-"
        parent = getattr(record, "traceparent", None) or "-"
        line = f"{_utc(record)} {record.levelname} {record.name} [{rid} {parent}] {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (tracebacks included as a string)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _utc(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "traceparent": getattr(record, "traceparent", None),
        }
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, http_version, status = record.args
            out.update(client=client, method=method, path=path, http_version=http_version, status=status)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def logging_dict(log_format: LogFormat, level: str = "info") -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of the server: one stderr handler for every logger.

    Uvicorn's loggers lose their own handlers and propagate to it; their levels (uvicorn's
    ``--log-level``) are kept.
    """
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request": {"()": RequestContextFilter}},
        "formatters": {"clce": {"()": formatter}},
        "handlers": {
            _HANDLER: {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "clce",
                "filters": ["request"],
            }
        },
        "root": {"handlers": [_HANDLER], "level": level.upper()},
        "loggers": {name: {"handlers": [], "propagate": True} for name in UVICORN_LOGGERS},
    }


def configure_logging(log_format: LogFormat, level: str = "info", force: bool = False) -> bool:
    """Route every log line through the server's formatter, unless logging is configured already.

    Args:
        log_format: ``text`` or ``json``.
        level: Level of the application's loggers.
        force: Configure even when the root logger has handlers (``python -m serving`` does).

    Returns:
        Whether logging was configured.
    """
    root = logging.getLogger()
    ours = any(getattr(h, "name", None) == _HANDLER for h in root.handlers)
    if root.handlers and not ours and not force:
        return False
    logging.config.dictConfig(logging_dict(log_format, level))
    return True
