"""What machine a benchmark ran on, for the first line of its table."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(*extra: str, threads: int | None = None) -> str:
    """``"AMD EPYC, 2 CPUs, 2 threads, torch 2.14.1[, NVIDIA H200], <extra>..."``.

    ``threads`` defaults to torch's intra-op thread count; the GPU is named when CUDA is available.
    """
    import torch

    parts = [
        cpu_name(),
        f"{os.cpu_count()} CPUs",
        f"{threads or torch.get_num_threads()} threads",
        f"torch {torch.__version__}",
    ]
    if torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name())
    return ", ".join([*parts, *extra])


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages (empty where the OS has none), for timing tables."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def publish(results: dict, output: Path, table: str) -> None:
    """Write a benchmark's JSON to ``output`` and print its Markdown table (the benchmarks' last step)."""
    import json

    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    print(table)  # noqa: T201
    print(f"\nwrote {output}")  # noqa: T201
