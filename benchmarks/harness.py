"""What every benchmark shares: the machine line, load, memory, timing, publishing, a server, data paths.

The benchmarks (and the tests that start a server: ``tests/serving/processes.py``) import this module; nothing in ``clce_core``,
``training`` or ``serving`` does. torch, httpx and ``training`` are imported inside the functions
that need them, so a serving-only install can use the server helpers and a training-only one the rest.

Data: the glyph set is the folder ``$CLCE_GLYPHS_DIR`` (else ``$CLCE_DATA_HOME/glyphs64``, default
``~/.cache/clce/data/glyphs64``), holding ``base/`` and ``novel/`` class folders, found as
``--dataset glyphs64`` finds it (:func:`training.datasets.glyphs.glyphs_root`); :func:`glyphs_dir`
is the benchmarks' way to it.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
GLYPHS_ENV = "CLCE_GLYPHS_DIR"  # the variable training.datasets.glyphs reads (a test pins the two equal)
MIB = 2**20


# ------------------------------------------------------------------------------------------ the machine
def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(*extra: str, threads: int | None = None, torch_info: bool = True) -> str:
    """``"AMD EPYC, 2 CPUs, 2 threads, torch 2.14.1[, NVIDIA H200], <extra>..."``, a table's first line.

    Args:
        extra: further parts, appended in order (e.g. ``"onnxruntime 1.20.1"``).
        threads: the thread count to report; default torch's intra-op thread count.
        torch_info: name torch's version, threads and GPU (imports torch); ``False`` for a client
            that must not import torch (the serving load test), which then names ``threads`` only if given.
    """
    parts = [cpu_name(), f"{os.cpu_count()} CPUs"]
    if torch_info:
        import torch

        parts += [f"{threads or torch.get_num_threads()} threads", f"torch {torch.__version__}"]
        if torch.cuda.is_available():
            parts.append(torch.cuda.get_device_name())
    elif threads:
        parts.append(f"{threads} threads")
    return ", ".join([*parts, *extra])


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages (empty where the OS has none), for timing tables."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ------------------------------------------------------------------------------------------ memory, CPU time
def rss_kib(field: str, pid: int | str = "self") -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak) of a process, KiB, from /proc/PID/status (Linux).

    Raises:
        RuntimeError: the field is not in the file. ``OSError`` when the process is gone.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux ``/proc``; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def release_memory() -> None:
    """Collect garbage and give freed heap pages back to the OS (glibc ``malloc_trim``), so that the
    resident memory measured next is the live memory."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _is_cuda(device: str | torch.device) -> bool:
    return str(device).startswith("cuda")


def reset_peak_memory(device: str | torch.device = "cpu") -> float:
    """Reset the peak-memory counter of ``device``; returns the memory held now, MiB.

    CPU: this process's ``VmHWM`` is reset to its ``VmRSS`` by writing 5 to /proc/self/clear_refs
    (``ru_maxrss`` survives exec, so a child would inherit its parent's peak; ``VmHWM`` does not), so
    :func:`peak_memory_mib` minus this value is the peak of what ran in between. CUDA: the allocator's
    peak statistics are reset and ``memory_allocated`` is returned.
    """
    if _is_cuda(device):
        import torch

        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / MIB
    Path("/proc/self/clear_refs").write_text("5")
    return rss_kib("VmRSS") / 1024


def peak_memory_mib(device: str | torch.device = "cpu") -> float:
    """Peak memory since :func:`reset_peak_memory`, MiB: ``VmHWM`` on the CPU, ``max_memory_allocated`` on CUDA."""
    if _is_cuda(device):
        import torch

        return torch.cuda.max_memory_allocated(device) / MIB
    return rss_kib("VmHWM") / 1024


# ------------------------------------------------------------------------------------------ timing
def sync(device: str | torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if _is_cuda(device):
        import torch

        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: str | torch.device = "cpu") -> float:
    """Seconds one call of ``fn`` takes, the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------ processes, output
def module_command(module: str, *args: str) -> list[str]:
    """``[python, -m, module, *args]``: a benchmark's child process; run it with ``cwd=REPO``."""
    return [sys.executable, "-m", module, *args]


def publish(results: dict, output: Path, table: str) -> None:
    """Write a benchmark's JSON to ``output`` and print its Markdown table (the benchmarks' last step)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    print(table)
    print(f"\nwrote {output}")


def fail(message: str) -> NoReturn:
    """End a benchmark the house way: one line ``error: MESSAGE`` on stderr, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


# ------------------------------------------------------------------------------------------ a server process
class ServerError(RuntimeError):
    """The server process exited, or did not answer ready, before its deadline."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real server process listening on 127.0.0.1:``port``, started in ``REPO``.

    A context manager: leaving the ``with`` block stops a server that still runs (SIGTERM, then
    SIGKILL after ``stop_timeout`` seconds). Its stdout and stderr together go to a temporary file
    (:meth:`output`, for log lines and error messages) unless ``capture`` is False, when they pass
    through to this process's. It can be sent any signal (SIGTERM drains, SIGHUP reloads, SIGKILL crashes).

    Args:
        cmd: the command line, e.g. ``[python, -m, serving, --port, PORT, ...]``; it must listen on ``port``.
        port: the TCP port on 127.0.0.1.
        env: variables set on top of this process's environment.
        capture: keep the output in a file (True) or let it through (False).
        stop_timeout: seconds between SIGTERM and SIGKILL when the block ends.
        process_group: start it in a new session and stop the whole process group (a server that
            starts worker processes of its own).
        cwd: the folder it runs in (another checkout, to compare with).
    """

    def __init__(
        self,
        cmd: list[str],
        port: int,
        env: dict[str, str] | None = None,
        capture: bool = True,
        stop_timeout: float = 10.0,
        process_group: bool = False,
        cwd: Path = REPO,
    ) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.stop_timeout = stop_timeout
        self.process_group = process_group
        self._log = tempfile.NamedTemporaryFile("w+b", suffix=".log") if capture else None  # noqa: SIM115  (closed in __exit__)
        out = {"stdout": self._log, "stderr": subprocess.STDOUT} if self._log else {}
        self.proc = subprocess.Popen(
            cmd, cwd=cwd, env={**os.environ, **(env or {})}, start_new_session=process_group, **out
        )

    def output(self) -> str:
        """Everything the process wrote so far (empty without ``capture``)."""
        return Path(self._log.name).read_bytes().decode(errors="replace") if self._log else ""

    def wait_ready(self, timeout: float = 60.0, path: str = "/health/ready") -> Server:
        """Poll ``GET path`` every 0.1 s until it answers 200; returns the server.

        Raises:
            ServerError: the process exited first, or ``path`` did not answer 200 within ``timeout`` s;
                the message quotes the end of its output.
        """
        import httpx

        deadline, last = time.monotonic() + timeout, "no answer"
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while True:
                if self.proc.poll() is not None:
                    raise ServerError(
                        f"the server exited with code {self.proc.returncode} before it was ready: {self._tail()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    r = client.get(path)
                    if r.status_code == 200:
                        return self
                    last = f"{r.status_code} {r.text[:200]}"
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"the server at {self.url} was not ready within {timeout:g} s (GET {path}: {last}): "
                        f"{self._tail()}"
                    )
                time.sleep(0.1)

    def _tail(self) -> str:
        return self.output()[-3000:] if self._log else "(its output is above)"

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the server (to its whole process group with ``process_group``)."""
        if self.process_group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signum)
        else:
            self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """The exit code, waiting at most ``timeout`` seconds (``subprocess.TimeoutExpired`` after)."""
        return self.proc.wait(timeout)

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc.poll() is None or self.process_group:  # a group may outlive its leader
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait()
        if self._log:
            self._log.close()


# ------------------------------------------------------------------------------------------ data
def glyphs_dir(check: bool = True) -> Path:
    """The glyph set's folder: ``$CLCE_GLYPHS_DIR``, else ``$CLCE_DATA_HOME/glyphs64`` (default
    ``~/.cache/clce/data/glyphs64``), as :func:`training.datasets.glyphs.glyphs_root` finds it
    (imports ``training``, hence torch).

    Args:
        check: raise when the folder is missing (benchmarks); ``False`` returns the path anyway
            (tests skip when it is not a directory).

    Raises:
        FileNotFoundError: ``check`` and the folder does not exist; the message says how to get it.
    """
    from training.datasets.glyphs import glyphs_root

    path = glyphs_root()
    if check and not path.is_dir():
        raise FileNotFoundError(
            f"the glyph set is not at {path}: set {GLYPHS_ENV} to the folder holding its base/ and novel/ "
            f"class folders, or render it there with `python -m benchmarks.render_glyphs`"
        )
    return path
