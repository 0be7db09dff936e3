"""The servers benchmarks/serving_load.py compares: how each is started, stopped and observed.

:func:`server_specs` names them (the CLCE server with and without batching, LitServe, a plain
FastAPI server; benchmarks/peers/); :func:`running` starts one on a free loopback port until it is
ready and stops it with the processes it started; :func:`tree_cpu_seconds` reads the CPU time of
a server and its children from ``/proc``; :func:`batch_totals` reads the CLCE server's batch sizes
from ``/metrics``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.harness import REPO, Server, ServerError, fail, free_port, load_average

SERVERS = ("clce", "clce-h11", "clce-nobatch", "baseline", "litserve", "plain")


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server: its command (``{port}`` filled in), environment and readiness path."""

    name: str
    cmd: list[str]
    ready_path: str
    env: dict[str, str]
    batches: bool  # exposes clce_batch_size on /metrics
    code: Path = REPO  # the checkout whose code it runs (cwd and PYTHONPATH)


def server_specs(model_dir: Path, db: Path, args: argparse.Namespace) -> dict[str, ServerSpec]:
    """Every server :data:`SERVERS` names, for this export and these benchmark arguments.

    ``clce-h11`` is the CLCE server under uvicorn with asyncio's event loop and the pure-Python h11
    parser (what uvicorn uses without ``uvicorn[standard]``); ``args.server_code`` (default: this
    checkout) runs the CLCE variants from another checkout, e.g. to profile an older version;
    ``baseline`` is ``clce-h11`` from ``args.baseline_code`` (e.g. the main branch before a change).
    """
    queue = max(1024, 4 * max(args.concurrency) * args.images_per_request)
    code = Path(getattr(args, "server_code", None) or REPO)
    env = {
        "CLCE_MAX_QUEUE": str(queue),
        "CLCE_API_KEY": "",
        "CLCE_MAX_FILES": str(max(160, args.images_per_request)),
        "CLCE_MODEL_DIR": str(model_dir),
        "CLCE_DEVICE": args.device,
    }

    def clce(
        name: str, max_batch: int, max_wait: float, http: list[str] | None = None, where_code: Path = code
    ) -> ServerSpec:
        where = ["--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning"]
        if http is None:
            cmd = [sys.executable, "-m", "serving", *where]
        else:
            factory = ["uvicorn", "serving.app:create_app", "--factory", "--no-access-log"]
            cmd = [sys.executable, "-m", *factory, *where, *http]
        variant = {
            "CLCE_MAX_BATCH": str(max_batch),
            "CLCE_MAX_WAIT_MS": str(max_wait),
            "CLCE_DB_PATH": str(db / f"{name}.sqlite3"),
        }
        return ServerSpec(name, cmd, "/health/ready", {**env, **variant}, batches=True, code=where_code)

    def peer(name: str, *extra: str) -> ServerSpec:
        module = f"benchmarks.peers.{name}_server"
        cmd = [sys.executable, "-m", module, "--model-dir", str(model_dir), "--port", "{port}", *extra]
        return ServerSpec(name, cmd, "/health", {}, batches=False)

    h11 = ["--loop", "asyncio", "--http", "h11"]
    baseline = Path(getattr(args, "baseline_code", None) or REPO)
    return {
        "baseline": clce("baseline", args.max_batch, args.max_wait_ms, h11, baseline),
        "clce": clce("clce", args.max_batch, args.max_wait_ms),
        "clce-h11": clce("clce-h11", args.max_batch, args.max_wait_ms, h11),
        "clce-nobatch": clce("clce-nobatch", 1, 0.0),
        "litserve": peer(
            "litserve", "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)
        ),
        "plain": peer("plain"),
    }


@contextlib.contextmanager
def running(spec: ServerSpec, timeout: float = 240.0) -> Iterator[tuple[int, int]]:
    """Start ``spec`` on a free port until its readiness path answers 200; yield ``(port, pid)``.

    The server runs in its own process group, stopped as a whole (LitServe starts worker processes).
    """
    port = free_port()
    cmd = [part.replace("{port}", str(port)) for part in spec.cmd]
    env = {"PYTHONPATH": str(spec.code), **spec.env}
    with Server(cmd, port, env, capture=False, stop_timeout=20.0, process_group=True, cwd=spec.code) as server:
        try:
            server.wait_ready(timeout, spec.ready_path)
        except ServerError as e:
            fail(f"{spec.name}: {e}")
        yield port, server.proc.pid


def tree_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process and its live descendants (Linux ``/proc``; None elsewhere)."""
    stats: dict[int, tuple[int, float]] = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    if pid not in stats:
        return None
    total, frontier = 0.0, [pid]
    while frontier:
        current = frontier.pop()
        total += stats[current][1]
        frontier += [p for p, (parent, _) in stats.items() if parent == current]
    return total


def batch_totals(port: int) -> tuple[float, float]:
    """``(images, calls)`` so far from the CLCE server's ``clce_batch_size`` histogram."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    found = dict(re.findall(r"^clce_batch_size_(sum|count) ([0-9.e+]+)$", text, re.M))
    return float(found.get("sum", 0)), float(found.get("count", 0))


def load_1m() -> float:
    """The 1-minute load average: other jobs on the machine show up here (and in the numbers)."""
    return load_average()[0]
