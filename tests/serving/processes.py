"""Real server processes for the tests: ``python -m serving`` or ``uvicorn --factory`` on a free port.

A :class:`Server` keeps the process's output (stdout and stderr together) in a file, so tests can
read its log lines, and can be sent any signal (SIGTERM to drain, SIGHUP to reload, SIGKILL to
crash); leaving the ``with`` block stops a server that still runs (SIGTERM, SIGKILL after 10 s).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


class Server:
    """A server process (a context manager: stopped at the end if still running).

    Args:
        cmd: The command line; it must listen on ``port``.
        env: Variables set on top of this process's environment.
    """

    def __init__(self, cmd: list[str], port: int, env: dict[str, str] | None = None) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self._log = tempfile.NamedTemporaryFile("w+b", suffix=".log")  # noqa: SIM115  (closed in __exit__)
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env={**os.environ, **(env or {})}, stdout=self._log, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        """Everything the process wrote so far."""
        return Path(self._log.name).read_bytes().decode(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> Server:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while True:
                assert self.proc.poll() is None, (
                    f"the server exited ({self.proc.returncode}):\n{self.output()}"
                )
                try:
                    if client.get("/health/ready").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"server not ready in {timeout} s:\n{self.output()}"
                time.sleep(0.1)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """The exit code, waiting at most ``timeout`` seconds (``subprocess.TimeoutExpired`` after)."""
        return self.proc.wait(timeout)

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc.poll() is None:  # still running: SIGTERM (it drains, nothing is in flight), then SIGKILL
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
