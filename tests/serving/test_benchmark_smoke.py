"""benchmarks/serving_load.py runs end to end on the tiny export, with its peers, stops by itself and writes its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_serving_load_benchmark_smoke(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "serving_load.json"
    cmd = [
        sys.executable, "-m", "benchmarks.serving_load",
        "--model-dir", str(model_dir),
        "--servers", "clce", "litserve", "plain",
        "--requests", "6", "--concurrency", "1", "4", "--rounds", "2", "--max-batch", "4",
        "--max-seconds", "10", "--time-limit", "240", "--direct-seconds", "0.2",
        "--output", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    points = {(r["server"], r["round"], r["concurrency"]) for r in report["results"]}
    assert points == {(s, r, c) for s in ("clce", "litserve", "plain") for r in (1, 2) for c in (1, 4)}
    assert all(r["errors"] == 0 and r["ok"] == 6 for r in report["results"])
    assert all(r["server_cpu_ms_per_request"] > 0 for r in report["results"])
    # the client shares the machine: it must stay cheap (httpx's pool cost 1.9-7.3 ms per request)
    assert all(r["client_cpu_ms_per_request"] < 1.0 for r in report["results"]), report["results"]
    clce = [r for r in report["results"] if r["server"] == "clce"]
    assert all(r["mean_batch"] >= 1 for r in clce)  # read from the server's /metrics
    assert [(s["server"], s["concurrency"], s["rounds"]) for s in report["summary"]] == [
        (s, c, 2) for s in ("clce", "litserve", "plain") for c in (1, 4)
    ]
    assert [d["batch"] for d in report["direct"]] == [1, 4] and report["direct"][1]["images_per_s"] > 0
    assert "| server | concurrency |" in proc.stdout and "| litserve | 4 |" in proc.stdout
