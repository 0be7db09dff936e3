"""Real server processes for the tests: ``python -m serving`` or ``uvicorn --factory`` on a free port.

The process itself is :class:`benchmarks.harness.Server` (the one home of server start/stop, shared
with the benchmarks): it keeps the output (stdout and stderr together) in a file, so tests can read
its log lines, and can be sent any signal (SIGTERM to drain, SIGHUP to reload, SIGKILL to crash);
leaving the ``with`` block stops a server that still runs (SIGTERM, SIGKILL after 10 s).
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.harness import REPO, Server, free_port

__all__ = ["REPO", "Server", "free_port", "serving_command", "start_server"]


def serving_command(how: str, port: int, *flags: str) -> list[str]:
    """The command line of ``how`` (``python -m serving`` or ``uvicorn --factory``) on ``port``.

    ``flags`` go to ``python -m serving`` only; give ``uvicorn`` its settings in the environment.
    """
    if how == "python -m serving":
        return [sys.executable, "-m", "serving", "--port", str(port), *flags]
    if how == "uvicorn --factory":
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "serving.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
    raise ValueError(f"unknown way to run the server: {how!r}")


def start_server(how: str, model_dir: Path, *flags: str, **settings: object) -> Server:
    """Start ``how`` (see :func:`serving_command`) on a free port with ``CLCE_MODEL_DIR=model_dir``.

    ``settings`` become ``CLCE_<NAME>`` variables (``db_path=...`` is ``CLCE_DB_PATH``); ONNX Runtime
    gets one intra-op thread unless told otherwise (the tests share two cores).
    """
    port = free_port()
    env = {"CLCE_MODEL_DIR": str(model_dir), "CLCE_INTRA_OP_THREADS": "1"}
    env.update({f"CLCE_{name.upper()}": str(value) for name, value in settings.items()})
    return Server(serving_command(how, port, *flags), port, env)
