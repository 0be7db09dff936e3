"""python -m benchmarks.serving_load runs end to end on the tiny export, stops by itself and writes its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.harness import REPO


@pytest.mark.slow
def test_serving_load_benchmark_smoke(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "serving_load.json"
    cmd = [
        sys.executable, "-m", "benchmarks.serving_load",
        "--model-dir", str(model_dir),
        "--requests", "6", "--concurrency", "1", "4", "--max-batch", "4",
        "--max-seconds", "10", "--time-limit", "60", "--direct-seconds", "0.2",
        "--output", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    points = {(r["batching"], r["concurrency"]) for r in report["results"]}
    assert points == {("on", 1), ("on", 4), ("off", 1), ("off", 4)}
    assert all(r["errors"] == 0 and r["ok"] == 6 for r in report["results"])
    assert [d["batch"] for d in report["direct"]] == [1, 4] and report["server_vs_direct"] > 0
    assert "| batching | concurrency |" in proc.stdout
